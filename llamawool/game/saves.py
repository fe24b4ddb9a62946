"""Client-uploaded saves (offline play): the plausibility rules.

A client that played without a connection uploads what its farm looks like
now, based on a server save it downloaded (the base). The upload is accepted
only when everything it claims could have happened since the base: each
tier's balance plus what was spent on purchases is at most the base balance
plus what the farm could have produced (the faster of the base's and the
claimed rates x elapsed x tolerance, plus shearing at the maximum rate), and
every level and upgrade bought was affordable and allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .rules import Event, Outcome, Rules
from .state import FarmState


@dataclass(frozen=True, slots=True)
class ClaimedFarm:
    balances: dict[str, float]
    buildings: dict[str, int]
    upgrades: list[str]
    soul_shears: int
    prestige_count: int


@dataclass(frozen=True, slots=True)
class SaveCheck:
    reasons: list[str]
    produced: list[float]  # per tier: claimed balance + spent - base balance
    spent: list[float]

    @property
    def plausible(self) -> bool:
        return not self.reasons


def _claimed_state(rules: Rules, base: FarmState, claimed: ClaimedFarm) -> FarmState:
    s = base.clone()
    s.buildings = {k: v for k, v in claimed.buildings.items() if v}
    s.upgrades = list(claimed.upgrades)
    return s


def check_save(rules: Rules, base: FarmState, claimed: ClaimedFarm, now: float, tolerance: float = 1.1) -> SaveCheck:
    reasons: list[str] = []
    n = rules.n_tiers
    keys = rules.tier_keys
    for k in claimed.balances:
        if k not in rules.tier_index:
            reasons.append(f"unknown tier {k!r}")
    for k in claimed.buildings:
        if k not in rules.buildings:
            reasons.append(f"unknown building {k!r}")
    for k in claimed.upgrades:
        if k not in rules.upgrades:
            reasons.append(f"unknown upgrade {k!r}")
    if reasons:
        return SaveCheck(reasons, [0.0] * n, [0.0] * n)
    if claimed.soul_shears != base.soul_shears or claimed.prestige_count != base.prestige_count:
        reasons.append("prestige cannot happen offline: soul shears and prestige count must match the base save")
    values = [claimed.balances.get(k, 0.0) for k in keys]
    for k, v in zip(keys, values, strict=True):
        if not math.isfinite(v) or v < 0:
            reasons.append(f"{k}: balance {v!r} is not a non-negative number")
    if len(set(claimed.upgrades)) != len(claimed.upgrades):
        reasons.append("an upgrade is listed twice")
    for k in base.upgrades:
        if k not in claimed.upgrades:
            reasons.append(f"upgrade {k} was owned at the base save and cannot be lost")

    claimed_state = _claimed_state(rules, base, claimed)
    spent = [0.0] * n
    bought_in: dict[int, list[str]] = {}
    for b in rules.buildings.values():
        before = base.buildings.get(b.key, 0)
        after = claimed.buildings.get(b.key, 0)
        if after < before:
            reasons.append(f"{b.key}: level {after} is below the base save's {before}")
            continue
        if after > rules.max_level:
            reasons.append(f"{b.key}: level {after} is above the maximum {rules.max_level}")
            continue
        if after > before:
            if not rules.building_requirements_met(claimed_state, b):
                reasons.append(f"{b.key}: requirements {dict(b.requires)} are not met")
            ti = rules.tier_index[b.cost_tier]
            spent[ti] += rules.bulk_cost(b, before, after - before)
            bought_in.setdefault(ti, []).append(f"{b.key} {before}->{after}")
    for key in claimed.upgrades:
        if key in base.upgrades:
            continue
        u = rules.upgrades[key]
        missing = [m for m in rules.upgrade_missing(claimed_state, u) if not m.startswith("upgrade ")]
        missing += [f"upgrade {r}" for r in u.requires.upgrades if r not in claimed.upgrades]
        if missing:
            reasons.append(f"upgrade {key}: requires {', '.join(missing)}")
        ti = rules.tier_index[u.cost.tier]
        spent[ti] += u.cost.amount
        bought_in.setdefault(ti, []).append(f"upgrade {key}")

    elapsed = max(0.0, now - base.anchor_time)
    base_rates = rules.rates(base)
    claimed_rates = rules.rates(claimed_state)
    click = max(rules.click_power(base), rules.click_power(claimed_state))
    shear = rules.shear_rules
    produced = []
    # seconds of production per tier, live events included (a double-wool weekend doubles them)
    seconds = rules.produced([1.0] * len(keys), base.anchor_time, now)
    for i, k in enumerate(keys):
        capacity = max(base_rates[i], claimed_rates[i]) * seconds[i] * tolerance
        if i == 0:
            capacity += click * (shear.bucket_capacity + shear.bucket_refill_per_s * elapsed)
        have = base.balances[i] + capacity
        need = values[i] + spent[i]
        if need > have * (1 + 1e-9) + 1e-9:
            what = f" (including {', '.join(bought_in[i])} costing {spent[i]:.6g})" if i in bought_in else ""
            reasons.append(
                f"{k}: {need:.6g} accounted for{what} but at most {have:.6g} could exist after {elapsed:.0f}s"
            )
        produced.append(max(0.0, values[i] + spent[i] - base.balances[i]))
    return SaveCheck(reasons, produced, spent)


def apply_save(
    rules: Rules, base: FarmState, current: FarmState, claimed: ClaimedFarm, check: SaveCheck, now: float
) -> Outcome:
    """The accepted upload becomes the farm, anchored at `now`.

    Production counted once: lifetime and run value grow by what the upload
    produced since the base (any offline credit the server gave in between is
    replaced, never added on top).
    """
    s = current.clone()
    s.balances = [claimed.balances.get(k, 0.0) for k in rules.tier_keys]
    s.buildings = {k: v for k, v in claimed.buildings.items() if v}
    s.upgrades = list(claimed.upgrades)
    s.run_produced = [b + p for b, p in zip(base.run_produced, check.produced, strict=True)]
    value = rules.value_of(check.produced)
    s.lifetime_value = max(current.lifetime_value, base.lifetime_value + value)
    s.weekly_value = max(rules.weekly_score(current, now), value)
    from .rules import iso_week

    s.week = iso_week(now)
    s.anchor_time = now
    s.online = True
    s.last_active = now
    events: list[Event] = []
    for k, amount in zip(rules.tier_keys, check.produced, strict=True):
        if amount > 0 and k not in s.discovered:
            s.discovered.append(k)
            events.append({"type": "tier_discovered", "tier": k, "at": now})
    events += rules.unlock_achievements(s, now)
    return Outcome(s, events, {"accepted": True, "produced": dict(zip(rules.tier_keys, check.produced, strict=True))})
