"""Every rule of GAME.md as pure functions over `FarmState`.

No I/O, no clock reads, no asyncio: callers pass `now` (server seconds since
the epoch). Each action returns a new state (the input is never mutated), the
events it caused and a small result. Everything else in the project calls in
here; nothing here imports the rest of the project.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from . import daily
from .balance import Achievement, BalanceTables, Building, GameConfig, Upgrade
from .errors import ActionConflict, InsufficientResources, InvalidAction, RequirementNotMet, UnknownItem
from .events import Schedule
from .state import FarmState, OfflineReport

Event = dict[str, Any]
Quantity = int | Literal["max"]
HOUR = 3600.0
RATES_CACHE_MAX = 65_536


@dataclass(slots=True)
class Outcome:
    """What an action did: the new state, its events and a result for the caller."""

    state: FarmState
    events: list[Event] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TierRate:
    tier: str
    base: float
    buildings: dict[str, float]
    tier_mult: float
    all_mult: float
    prestige_mult: float
    achievement_mult: float
    auto_clicker: float
    rate: float


class Rules:
    """The compiled rule book: balance tables and the ConfigMap block, indexed."""

    def __init__(self, balance: BalanceTables, config: GameConfig) -> None:
        self.balance = balance
        self.config = config
        self.tiers = balance.tiers
        self.tier_keys: tuple[str, ...] = tuple(t.key for t in balance.tiers)
        self.tier_index = {k: i for i, k in enumerate(self.tier_keys)}
        self.tier_values: tuple[float, ...] = tuple(t.value for t in balance.tiers)
        self.buildings: dict[str, Building] = {b.key: b for b in balance.buildings.list}
        self.upgrades: dict[str, Upgrade] = {u.key: u for u in balance.upgrades}
        self.achievements: dict[str, Achievement] = {a.key: a for a in balance.achievements}
        self.max_level = balance.buildings.max_level
        self.max_bulk = balance.buildings.max_bulk_quantity
        self.shear_rules = balance.shear
        self.base_rate = config.production.baseProductionRate
        self.online_window_s = balance.offline.online_window_s
        self._rates_cache: dict[tuple[object, ...], tuple[float, ...]] = {}
        # The live events in force (none until the engine loads them): every duration
        # that multiplies a rate goes through `produced`, which integrates them.
        self.schedule = Schedule(self.tier_keys)

    @property
    def n_tiers(self) -> int:
        return len(self.tier_keys)

    # ---- production -------------------------------------------------------

    def _effects(self, state: FarmState, kind: str) -> list[tuple[str | None, float]]:
        return [(e.target, e.value) for key in state.upgrades for e in self.upgrades[key].effects if e.kind == kind]

    def _product(self, state: FarmState, kind: str, target: str | None = None) -> float:
        out = 1.0
        for t, v in self._effects(state, kind):
            if t == target:
                out *= v
        return out

    def prestige_mult(self, state: FarmState) -> float:
        return 1.0 + self.balance.prestige.production_bonus_per_soul_shear * state.soul_shears

    def achievement_mult(self, state: FarmState) -> float:
        return 1.0 + self.balance.achievement_bonus.per_achievement * len(state.achievements)

    def click_power(self, state: FarmState) -> float:
        return self.shear_rules.base_click_power * self._product(state, "click_mult") * self.prestige_mult(state)

    def auto_shears_per_s(self, state: FarmState) -> float:
        return sum(v for _, v in self._effects(state, "auto_shears"))

    def production(self, state: FarmState) -> list[TierRate]:
        """Rates per tier with every multiplier, as GAME.md's formula."""
        all_mult = self._product(state, "all_mult")
        p_mult = self.prestige_mult(state)
        a_mult = self.achievement_mult(state)
        auto = self.auto_shears_per_s(state) * self.click_power(state)
        out = []
        for i, tier in enumerate(self.tier_keys):
            base = self.base_rate if i == 0 else 0.0
            per_building = {}
            for b in self.buildings.values():
                level = state.buildings.get(b.key, 0)
                per_unit = b.produces.get(tier, 0.0)
                if level and per_unit:
                    per_building[b.key] = level * per_unit * self._product(state, "building_mult", b.key)
            t_mult = self._product(state, "tier_mult", tier)
            auto_k = auto if i == 0 else 0.0
            rate = (base + sum(per_building.values())) * t_mult * all_mult * p_mult * a_mult + auto_k
            out.append(TierRate(tier, base, per_building, t_mult, all_mult, p_mult, a_mult, auto_k, rate))
        return out

    def rates(self, state: FarmState) -> list[float]:
        """Rates per tier. They depend only on what the farm owns, so they are
        memoised by that (a pure function of its key; the cache is bounded)."""
        key = (
            tuple(sorted(state.buildings.items())),
            tuple(state.upgrades),
            state.soul_shears,
            len(state.achievements),
        )
        hit = self._rates_cache.get(key)
        if hit is None:
            if len(self._rates_cache) >= RATES_CACHE_MAX:
                self._rates_cache.clear()
            hit = self._rates_cache[key] = tuple(r.rate for r in self.production(state))
        return list(hit)

    def value_of(self, amounts: list[float]) -> float:
        return sum(a * v for a, v in zip(amounts, self.tier_values, strict=True))

    def produced(self, rates: list[float], t0: float, t1: float) -> list[float]:
        """What `rates` make over [t0, t1]: rate × the integral of the events'
        multiplier (piecewise constant), per tier; plainly rate × (t1 - t0) when
        no event touches the interval."""
        secs = self.schedule.effective_seconds(t0, t1)
        if secs is None:
            d = max(0.0, t1 - t0)
            return [r * d for r in rates]
        return [r * x for r, x in zip(rates, secs, strict=True)]

    def live_rates(self, state: FarmState, at: float) -> list[float]:
        """The farm's rates with the events in force at `at` (what it makes per second then)."""
        mults = self.schedule.multipliers_at(at)
        return [r * m for r, m in zip(self.rates(state), mults, strict=True)]

    # ---- closed form -------------------------------------------------------

    def balances_at(self, state: FarmState, now: float, rates: list[float] | None = None) -> list[float]:
        if not state.online or now <= state.anchor_time:
            return list(state.balances)
        rates = self.rates(state) if rates is None else rates
        made = self.produced(rates, state.anchor_time, now)
        return [b + p for b, p in zip(state.balances, made, strict=True)]

    def advance(self, state: FarmState, now: float) -> tuple[FarmState, list[Event]]:
        """Re-anchor at `now`: the closed form's values become the new anchor.

        An offline farm produces nothing here (its absence is credited once by
        `come_online`). Returns events for tiers discovered on the way.
        """
        s = state.clone()
        if now <= s.anchor_time:
            return s, []
        if not s.online:
            s.anchor_time = now
            return s, []
        rates = self.rates(s)
        dt_s = now - s.anchor_time
        produced = self.produced(rates, s.anchor_time, now)
        s.balances = [b + p for b, p in zip(s.balances, produced, strict=True)]
        s.run_produced = [q + p for q, p in zip(s.run_produced, produced, strict=True)]
        s.lifetime_value = s.lifetime_value + self.value_of(produced)
        s.weekly_value = self.weekly_score(s, now, rates)
        s.week = iso_week(now)
        s.play_time_s = s.play_time_s + dt_s
        s.anchor_time = now
        return s, self._discover(s, produced, now)

    def weekly_score(self, state: FarmState, now: float, rates: list[float] | None = None) -> float:
        """Value produced in the ISO week (UTC) that contains `now`."""
        if not state.online:
            return state.weekly_value if state.week == iso_week(now) else 0.0
        rates = self.rates(state) if rates is None else rates
        if state.week == iso_week(now):
            return state.weekly_value + self.value_of(self.produced(rates, state.anchor_time, now))
        start = max(week_start(now), state.anchor_time)
        return self.value_of(self.produced(rates, start, now))

    def _credit(self, s: FarmState, gains: list[float], now: float) -> float:
        """Wool the farm did not produce second by second (offline credit, the daily
        reward) added to its balances and to every total produced; returns its value."""
        s.balances = [b + g for b, g in zip(s.balances, gains, strict=True)]
        s.run_produced = [p + g for p, g in zip(s.run_produced, gains, strict=True)]
        value = self.value_of(gains)
        s.lifetime_value += value
        s.weekly_value = (s.weekly_value if s.week == iso_week(now) else 0.0) + value
        s.week = iso_week(now)
        return value

    def _discover(self, s: FarmState, produced: list[float], now: float) -> list[Event]:
        events: list[Event] = []
        for tier, amount in zip(self.tier_keys, produced, strict=True):
            if amount > 0 and tier not in s.discovered:
                s.discovered.append(tier)
                events.append({"type": "tier_discovered", "tier": tier, "at": now})
        return events

    # ---- achievements --------------------------------------------------------

    def metric(self, state: FarmState, metric: str) -> float:
        if metric == "lifetime_value":
            return state.lifetime_value
        if metric == "building_levels":
            return float(sum(state.buildings.values()))
        if metric == "all_buildings":
            return float(all(state.buildings.get(k, 0) >= 1 for k in self.buildings))
        if metric == "prestiges":
            return float(state.prestige_count)
        if metric == "soul_shears":
            return float(state.soul_shears)
        if metric == "play_hours":
            return state.play_time_s / HOUR
        raise ValueError(metric)

    def unlock_achievements(self, state: FarmState, now: float) -> list[Event]:
        """Unlock (in place) every achievement whose condition holds at the anchor.

        The caller has re-anchored at `now`, so the +2 % applies from `now` on.
        """
        events: list[Event] = []
        for a in self.achievements.values():
            if a.key not in state.achievements and self.metric(state, a.metric) >= a.threshold:
                state.achievements[a.key] = now
                events.append({"type": "achievement_unlocked", "key": a.key, "name": a.name, "at": now})
        return events

    # ---- the tick's event ---------------------------------------------------

    def settle(self, state: FarmState, now: float) -> Outcome:
        """Re-anchor at `now` and unlock what was reached: what a tick does when
        it detects a threshold crossing. Idempotent when nothing was reached."""
        s, events = self.advance(state, now)
        events += self.unlock_achievements(s, now)
        return Outcome(s, events)

    # ---- buildings -------------------------------------------------------------

    def building(self, key: str) -> Building:
        b = self.buildings.get(key)
        if b is None:
            raise UnknownItem(f"unknown building {key!r}", building=key)
        return b

    def bulk_cost(self, b: Building, level: int, quantity: int) -> float:
        """Cost of levels level..level+quantity-1: a geometric sum."""
        if quantity <= 0:
            return 0.0
        g = b.growth
        return b.base_cost * g**level * (g**quantity - 1.0) / (g - 1.0)

    def max_affordable(self, b: Building, level: int, budget: float) -> int:
        """The largest q with bulk_cost(q) <= budget, in closed form.

        The logarithm is exact up to rounding; the two guards below settle the
        last unit either way, so the answer is exact without a loop over levels.
        """
        room = self.max_level - level
        if room <= 0 or budget <= 0:
            return 0
        g = b.growth
        first = b.base_cost * g**level
        q = math.floor(math.log1p(budget * (g - 1.0) / first) / math.log(g))
        q = max(0, min(q, room))
        if q > 0 and self.bulk_cost(b, level, q) > budget:
            q -= 1
        if q < room and self.bulk_cost(b, level, q + 1) <= budget:
            q += 1
        return q

    def building_requirements_met(self, state: FarmState, b: Building) -> bool:
        return all(state.buildings.get(k, 0) >= n for k, n in b.requires.items())

    def buy_building(self, state: FarmState, key: str, quantity: Quantity, now: float) -> Outcome:
        b = self.building(key)
        if quantity != "max" and not (1 <= quantity <= self.max_bulk):
            raise InvalidAction(f'quantity must be 1..{self.max_bulk} or "max"', field="quantity")
        s, events = self.advance(state, now)
        if not self.building_requirements_met(s, b):
            needs = ", ".join(f"{k} >= {n}" for k, n in b.requires.items())
            raise RequirementNotMet(f"{b.name} requires {needs}", requires=dict(b.requires))
        level = s.buildings.get(key, 0)
        if level >= self.max_level:
            raise ActionConflict(f"{b.name} is at its maximum level {self.max_level}")
        ti = self.tier_index[b.cost_tier]
        have = s.balances[ti]
        if quantity == "max":
            q = self.max_affordable(b, level, have)
            if q == 0:
                raise InsufficientResources(
                    f"{b.name} costs {self.bulk_cost(b, level, 1):.6g} {b.cost_tier}; you have {have:.6g}",
                    tier=b.cost_tier,
                    cost=self.bulk_cost(b, level, 1),
                    balance=have,
                )
        else:
            q = quantity
            if level + q > self.max_level:
                raise ActionConflict(f"{b.name} can rise only {self.max_level - level} more levels")
        cost = self.bulk_cost(b, level, q)
        if cost > have:
            raise InsufficientResources(
                f"{q} x {b.name} costs {cost:.6g} {b.cost_tier}; you have {have:.6g}",
                tier=b.cost_tier,
                cost=cost,
                balance=have,
            )
        s.balances[ti] = max(0.0, have - cost)
        s.buildings[key] = level + q
        s.stats.building_levels_bought += q
        events += self.unlock_achievements(s, now)
        return Outcome(
            s, events, {"building": key, "bought": q, "level": level + q, "cost": cost, "cost_tier": b.cost_tier}
        )

    # ---- upgrades ----------------------------------------------------------------

    def upgrade(self, key: str) -> Upgrade:
        u = self.upgrades.get(key)
        if u is None:
            raise UnknownItem(f"unknown upgrade {key!r}", upgrade=key)
        return u

    def upgrade_missing(self, state: FarmState, u: Upgrade) -> list[str]:
        missing = [f"upgrade {k}" for k in u.requires.upgrades if k not in state.upgrades]
        missing += [f"{k} >= {n}" for k, n in u.requires.buildings.items() if state.buildings.get(k, 0) < n]
        if state.prestige_count < u.requires.prestiges:
            missing.append(f"prestiges >= {u.requires.prestiges}")
        return missing

    def buy_upgrade(self, state: FarmState, key: str, now: float) -> Outcome:
        u = self.upgrade(key)
        s, events = self.advance(state, now)
        if key in s.upgrades:
            raise ActionConflict(f"{u.name} is already owned")
        missing = self.upgrade_missing(s, u)
        if missing:
            raise RequirementNotMet(f"{u.name} requires {', '.join(missing)}", missing=missing)
        ti = self.tier_index[u.cost.tier]
        if s.balances[ti] < u.cost.amount:
            raise InsufficientResources(
                f"{u.name} costs {u.cost.amount:.6g} {u.cost.tier}; you have {s.balances[ti]:.6g}",
                tier=u.cost.tier,
                cost=u.cost.amount,
                balance=s.balances[ti],
            )
        s.balances[ti] = max(0.0, s.balances[ti] - u.cost.amount)
        s.upgrades.append(key)
        s.stats.upgrades_bought += 1
        events += self.unlock_achievements(s, now)
        return Outcome(s, events, {"upgrade": key, "cost": u.cost.amount, "cost_tier": u.cost.tier})

    # ---- shearing ------------------------------------------------------------------

    def shear_tokens_at(self, state: FarmState, now: float) -> float:
        refill = self.shear_rules.bucket_refill_per_s * max(0.0, now - state.shear_tokens_at)
        return min(self.shear_rules.bucket_capacity, state.shear_tokens + refill)

    def shear(self, state: FarmState, count: int, now: float) -> Outcome:
        if not (1 <= count <= self.shear_rules.max_per_request):
            raise InvalidAction(f"count must be 1..{self.shear_rules.max_per_request}", field="count")
        s, events = self.advance(state, now)
        tokens = self.shear_tokens_at(s, now)
        admitted = min(count, math.floor(tokens))
        s.shear_tokens = tokens - admitted
        s.shear_tokens_at = now
        wool = admitted * self.click_power(s)
        if wool > 0:
            s.balances[0] += wool
            s.run_produced[0] += wool
            s.lifetime_value += wool * self.tier_values[0]
            s.weekly_value += wool * self.tier_values[0]
            events += self._discover(s, [wool] + [0.0] * (self.n_tiers - 1), now)
        s.stats.shears += admitted
        s.stats.wool_sheared += wool
        events += self.unlock_achievements(s, now)
        return Outcome(s, events, {"requested": count, "sheared": admitted, "dropped": count - admitted, "wool": wool})

    # ---- offline ---------------------------------------------------------------------

    def offline_efficiency(self, state: FarmState) -> float:
        eff = (
            self.config.production.offlineEfficiency
            + sum(v for _, v in self._effects(state, "offline_efficiency"))
            + self.balance.offline.efficiency_per_soul_shear * state.soul_shears
        )
        return min(self.balance.offline.max_efficiency, eff)

    def offline_cap_s(self, state: FarmState) -> float:
        hours = self.config.production.maxOfflineHours + sum(v for _, v in self._effects(state, "offline_cap_hours"))
        return min(hours, self.balance.offline.cap_limit_hours) * HOUR

    def go_offline(self, state: FarmState, at: float) -> Outcome:
        """The farm stopped being online at `at`: anchor there and freeze."""
        if not state.online:
            return Outcome(state.clone())
        s, events = self.advance(state, max(at, state.anchor_time))
        events += self.unlock_achievements(s, s.anchor_time)
        s.online = False
        return Outcome(s, events)

    def come_online(self, state: FarmState, now: float) -> Outcome:
        """Credit the absence once, in closed form; an online farm is unchanged."""
        if state.online:
            return Outcome(state.clone())
        s = state.clone()
        elapsed = max(0.0, now - s.anchor_time)
        cap = self.offline_cap_s(s)
        credited = min(elapsed, cap)
        eff = self.offline_efficiency(s)
        # The credited seconds are the first ones of the absence (the cap cuts its
        # tail), with the events that ran in them: piecewise, in one closed form.
        made = self.produced(self.rates(s), s.anchor_time, s.anchor_time + credited)
        gains = [p * eff for p in made]
        value = self._credit(s, gains, now)
        report = OfflineReport(
            went_offline_at=s.anchor_time,
            returned_at=now,
            elapsed_s=elapsed,
            credited_s=credited,
            capped=elapsed > cap,
            efficiency=eff,
            cap_s=cap,
            gains=dict(zip(self.tier_keys, gains, strict=True)),
            value_gained=value,
        )
        s.anchor_time = max(now, s.anchor_time)
        s.online = True
        s.offline_report = report
        s.report_unseen = True
        s.stats.offline_credits += 1
        events = self._discover(s, gains, now)
        events += self.unlock_achievements(s, now)
        events.append({"type": "offline_report", "report": report.to_dict()})
        return Outcome(s, events, {"report": report.to_dict()})

    # ---- prestige -------------------------------------------------------------------------

    def run_value(self, state: FarmState, now: float) -> float:
        if not state.online or now <= state.anchor_time:
            return self.value_of(state.run_produced)
        made = self.produced(self.rates(state), state.anchor_time, now)
        return self.value_of([p + q for p, q in zip(state.run_produced, made, strict=True)])

    def prestige_gain(self, run_value: float) -> int:
        ratio = run_value / self.balance.prestige.divisor
        if ratio < 10.0:
            return 0
        return max(0, math.floor(math.log10(ratio)))

    def prestige_preview(self, state: FarmState, now: float) -> dict[str, Any]:
        rv = self.run_value(state, now)
        gain = self.prestige_gain(rv)
        next_at = self.balance.prestige.divisor * 10.0 ** (gain + 1)
        return {
            "run_value": rv,
            "gain": gain,
            "allowed": gain >= 1,
            "soul_shears": state.soul_shears,
            "soul_shears_after": state.soul_shears + gain,
            "next_gain_at_run_value": next_at,
        }

    def prestige(self, state: FarmState, confirm: bool, expected_gain: int | None, now: float) -> Outcome:
        if confirm is not True:
            raise InvalidAction("prestige needs confirm: true", field="confirm")
        s, events = self.advance(state, now)
        gain = self.prestige_gain(self.value_of(s.run_produced))
        if gain < 1:
            raise RequirementNotMet(
                f"prestige needs a run value of at least {self.balance.prestige.divisor * 10:.6g}", gain=gain
            )
        if expected_gain is not None and expected_gain != gain:
            raise ActionConflict(f"expected gain {expected_gain} but the gain is now {gain}", gain=gain)
        zeros = [0.0] * self.n_tiers
        s.balances = list(zeros)
        s.run_produced = list(zeros)
        s.buildings = {}
        s.upgrades = []
        s.soul_shears += gain
        s.prestige_count += 1
        events.append({"type": "prestige", "gain": gain, "soul_shears": s.soul_shears, "at": now})
        events += self.unlock_achievements(s, now)
        return Outcome(s, events, {"gain": gain, "soul_shears": s.soul_shears, "prestige_count": s.prestige_count})

    # ---- the daily return reward ------------------------------------------------------------

    def daily_status(self, state: FarmState, now: float) -> dict[str, Any]:
        """What a claim now would give, or when the next one opens."""
        cfg = self.balance.daily_reward
        today = daily.server_day(now)
        claimed = state.daily_day == today
        streak = state.daily_streak if claimed else daily.next_streak(state.daily_day, state.daily_streak, today)
        seconds = daily.reward_seconds(streak, cfg.seconds_per_streak_day, cfg.max_streak_days)
        return {
            "enabled": cfg.enabled,
            "day": today,
            "claimed_today": claimed,
            "streak": streak,
            "reward_seconds": seconds,
            "reward": dict(zip(self.tier_keys, (r * seconds for r in self.rates(state)), strict=True)),
            "next_claim_at": daily.next_day_start(now) if claimed else now,
        }

    def claim_daily_reward(self, state: FarmState, now: float) -> Outcome:
        """Credit `reward_seconds` of the farm's current production, once per server day."""
        cfg = self.balance.daily_reward
        if not cfg.enabled:
            raise RequirementNotMet("the daily reward is switched off")
        today = daily.server_day(now)
        if state.daily_day == today:
            raise ActionConflict(
                f"the daily reward for {today} was already claimed", next_claim_at=daily.next_day_start(now)
            )
        s, events = self.advance(state, now)
        streak = daily.next_streak(s.daily_day, s.daily_streak, today)
        seconds = daily.reward_seconds(streak, cfg.seconds_per_streak_day, cfg.max_streak_days)
        gains = [r * seconds for r in self.rates(s)]
        value = self._credit(s, gains, now)
        s.daily_day, s.daily_streak = today, streak
        s.stats.daily_rewards += 1
        reward = dict(zip(self.tier_keys, gains, strict=True))
        events += self._discover(s, gains, now)
        events += self.unlock_achievements(s, now)
        events.append({"type": "daily_reward", "day": today, "streak": streak, "reward": reward, "at": now})
        result = {
            "day": today,
            "streak": streak,
            "reward_seconds": seconds,
            "reward": reward,
            "value_gained": value,
            "next_claim_at": daily.next_day_start(now),
        }
        return Outcome(s, events, result)

    # ---- boards ---------------------------------------------------------------------------

    def scores(self, state: FarmState, now: float) -> dict[str, float]:
        """The four leaderboard scores at `now`. The rate board ranks the farm's own
        rate: a live event lifts every farm alike and would only reshuffle ties."""
        rates = self.rates(state)
        made = self.produced(rates, state.anchor_time, now) if state.online else [0.0] * self.n_tiers
        return {
            "lifetime": state.lifetime_value + self.value_of(made),
            "prestige": float(state.soul_shears),
            "rate": self.value_of(rates),
            "weekly": self.weekly_score(state, now, rates),
        }

    # ---- creation --------------------------------------------------------------------------

    def new_farm(self, player_id: str, now: float) -> FarmState:
        zeros = [0.0] * self.n_tiers
        return FarmState(
            player_id=player_id,
            created_at=now,
            anchor_time=now,
            balances=list(zeros),
            run_produced=list(zeros),
            lifetime_value=0.0,
            weekly_value=0.0,
            week=iso_week(now),
            play_time_s=0.0,
            online=True,
            last_active=now,
            shear_tokens=self.shear_rules.bucket_capacity,
            shear_tokens_at=now,
        )


def iso_week(t: float) -> str:
    """The ISO week (UTC) containing `t`, e.g. "2026-W48"."""
    year, week, _ = dt.datetime.fromtimestamp(t, dt.UTC).isocalendar()
    return f"{year}-W{week:02d}"


def week_start(t: float) -> float:
    """Monday 00:00 UTC of the ISO week containing `t`."""
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    monday = (d - dt.timedelta(days=d.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    return monday.timestamp()


# ---- actions: what a client may ask for, applied through one function --------


@dataclass(frozen=True, slots=True)
class Shear:
    count: int


@dataclass(frozen=True, slots=True)
class BuyBuilding:
    key: str
    quantity: Quantity = 1


@dataclass(frozen=True, slots=True)
class BuyUpgrade:
    key: str


@dataclass(frozen=True, slots=True)
class Prestige:
    confirm: bool
    expected_gain: int | None = None


@dataclass(frozen=True, slots=True)
class ClaimDailyReward:
    pass


Action = Shear | BuyBuilding | BuyUpgrade | Prestige | ClaimDailyReward


def apply_action(rules: Rules, state: FarmState, action: Action, now: float) -> Outcome:
    """Apply one player action: the single entry the engine calls for REST and WS."""
    match action:
        case Shear(count):
            return rules.shear(state, count, now)
        case BuyBuilding(key, quantity):
            return rules.buy_building(state, key, quantity, now)
        case BuyUpgrade(key):
            return rules.buy_upgrade(state, key, now)
        case Prestige(confirm, expected_gain):
            return rules.prestige(state, confirm, expected_gain, now)
        case ClaimDailyReward():
            return rules.claim_daily_reward(state, now)
    raise InvalidAction(f"unknown action {action!r}")


def week_start_of(week: str) -> float:
    """Monday 00:00 UTC of an ISO week given as "2026-W48"."""
    year, _, num = week.partition("-W")
    monday = dt.datetime.fromisocalendar(int(year), int(num), 1).replace(tzinfo=dt.UTC)
    return monday.timestamp()
