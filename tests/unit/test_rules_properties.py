"""Properties of the pure rules (GAME.md), checked with hypothesis."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamawool.game import (
    BuyBuilding,
    BuyUpgrade,
    FarmState,
    GameError,
    Prestige,
    Rules,
    Shear,
    apply_action,
)
from llamawool.settings import load_rules

T0 = 1_700_000_000.0
HOUR = 3600.0
WEEK = 7 * 24 * HOUR

RULES = load_rules()
BUILDINGS = list(RULES.buildings)
UPGRADES = list(RULES.upgrades)
ACHIEVEMENTS = list(RULES.achievements)
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def rules() -> Rules:
    return RULES


# ---- strategies ---------------------------------------------------------------------------------

amounts = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.0, max_value=1e4),
    st.floats(min_value=0.0, max_value=1e12),
)


@st.composite
def farms(draw: st.DrawFn, online: bool | None = None) -> FarmState:
    """A farm at T0 with arbitrary balances, buildings, upgrades, achievements and soul shears."""
    s = RULES.new_farm("p", T0)
    s.balances = draw(st.lists(amounts, min_size=RULES.n_tiers, max_size=RULES.n_tiers))
    s.run_produced = draw(st.lists(amounts, min_size=RULES.n_tiers, max_size=RULES.n_tiers))
    s.lifetime_value = RULES.value_of(s.run_produced) + draw(amounts)
    s.weekly_value = draw(st.floats(min_value=0.0, max_value=1e6))
    s.buildings = draw(
        st.dictionaries(
            st.sampled_from(BUILDINGS),
            st.one_of(st.integers(min_value=0, max_value=30), st.integers(min_value=0, max_value=RULES.max_level)),
            max_size=8,
        )
    )
    s.upgrades = draw(st.lists(st.sampled_from(UPGRADES), unique=True, max_size=len(UPGRADES)))
    s.achievements = {k: T0 for k in draw(st.lists(st.sampled_from(ACHIEVEMENTS), unique=True))}
    s.soul_shears = draw(st.integers(min_value=0, max_value=200))
    s.prestige_count = draw(st.integers(min_value=0, max_value=20))
    s.shear_tokens = draw(st.floats(min_value=0.0, max_value=RULES.shear_rules.bucket_capacity))
    s.online = draw(st.booleans()) if online is None else online
    return s


quantities = st.one_of(st.just("max"), st.integers(min_value=-1, max_value=RULES.max_bulk + 1))
actions = st.one_of(
    st.builds(Shear, st.integers(min_value=-1, max_value=RULES.shear_rules.max_per_request + 2)),
    st.builds(BuyBuilding, st.sampled_from([*BUILDINGS, "barn", "barn", "shears", "windmill"]), quantities),
    st.builds(BuyUpgrade, st.sampled_from([*UPGRADES, "rocket_boots"])),
    st.builds(Prestige, st.booleans(), st.one_of(st.none(), st.integers(min_value=0, max_value=8))),
    st.sampled_from(["go_offline", "come_online"]),
)
gaps = st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=10.0), st.floats(min_value=0.0, max_value=2e5))


# ---- balances never go negative --------------------------------------------------------------------


def _step(rules: Rules, state: FarmState, action: Any, now: float) -> FarmState:
    if action == "go_offline":
        return rules.go_offline(state, now).state
    if action == "come_online":
        return rules.come_online(state, now).state
    try:
        return apply_action(rules, state, action, now).state
    except GameError:
        return state


@FAST
@given(start=farms(), steps=st.lists(st.tuples(gaps, actions), max_size=30))
def test_balances_never_go_negative(rules: Rules, start: FarmState, steps: list[tuple[float, Any]]) -> None:
    state, now = start, T0
    lifetime = state.lifetime_value
    for gap, action in steps:
        now += gap
        before = state.to_doc()
        new = _step(rules, state, action, now)
        assert state.to_doc() == before, "an action mutated its input"
        state = new
        assert all(math.isfinite(b) and b >= 0.0 for b in state.balances), state.balances
        assert all(p >= 0.0 for p in state.run_produced)
        assert all(0 <= lvl <= rules.max_level for lvl in state.buildings.values())
        assert state.lifetime_value >= lifetime
        lifetime = state.lifetime_value
        assert len(set(state.upgrades)) == len(state.upgrades)


@FAST
@given(start=farms(online=True), steps=st.lists(st.tuples(gaps, actions), max_size=30))
def test_a_refused_action_leaves_the_state_unchanged(
    rules: Rules, start: FarmState, steps: list[tuple[float, Any]]
) -> None:
    state, now = start, T0
    for gap, action in steps:
        now += gap
        if isinstance(action, str):
            state = _step(rules, state, action, now)
            continue
        before = state.to_doc()
        try:
            state = apply_action(rules, state, action, now).state
        except GameError as exc:
            assert exc.code in {
                "INSUFFICIENT_RESOURCES",
                "REQUIREMENT_NOT_MET",
                "NOT_FOUND",
                "CONFLICT",
                "VALIDATION_ERROR",
            }
            assert state.to_doc() == before


@FAST
@given(shears=st.lists(st.tuples(gaps, st.integers(min_value=1, max_value=20)), min_size=1, max_size=40))
def test_the_bucket_never_admits_more_than_capacity_plus_refill(rules: Rules, shears: list[tuple[float, int]]) -> None:
    state, now, admitted = rules.new_farm("p", T0), T0, 0
    for gap, count in shears:
        now += gap
        out = rules.shear(state, count, now)
        assert out.result["sheared"] + out.result["dropped"] == count
        assert out.result["sheared"] >= 0
        admitted += out.result["sheared"]
        state = out.state
    cap = rules.shear_rules.bucket_capacity + rules.shear_rules.bucket_refill_per_s * (now - T0)
    assert admitted <= cap
    assert state.balances[0] >= admitted * rules.click_power(state)


# ---- building costs ------------------------------------------------------------------------------------


@st.composite
def bulk_purchases(draw: st.DrawFn) -> tuple[str, int, int]:
    key = draw(st.sampled_from(BUILDINGS))
    level = draw(st.integers(min_value=0, max_value=RULES.max_level - 1))
    quantity = draw(st.integers(min_value=1, max_value=min(RULES.max_bulk, RULES.max_level - level)))
    return key, level, quantity


@FAST
@given(purchase=bulk_purchases())
def test_bulk_cost_equals_the_sum_of_single_costs(rules: Rules, purchase: tuple[str, int, int]) -> None:
    key, level, quantity = purchase
    b = rules.buildings[key]
    singles = [rules.bulk_cost(b, level + i, 1) for i in range(quantity)]
    assert singles[0] == pytest.approx(b.base_cost * b.growth**level, rel=1e-12)
    assert rules.bulk_cost(b, level, quantity) == pytest.approx(math.fsum(singles), rel=1e-9)
    # Splitting a bulk purchase anywhere costs the same.
    split = quantity // 2
    parts = rules.bulk_cost(b, level, split) + rules.bulk_cost(b, level + split, quantity - split)
    assert parts == pytest.approx(rules.bulk_cost(b, level, quantity), rel=1e-9)


@st.composite
def budgets(draw: st.DrawFn) -> tuple[str, int, float]:
    key = draw(st.sampled_from(BUILDINGS))
    level = draw(st.integers(min_value=0, max_value=RULES.max_level - 1))
    b = RULES.buildings[key]
    first = b.base_cost * b.growth**level
    budget = draw(
        st.one_of(
            st.floats(min_value=0.0, max_value=1e300),
            st.floats(min_value=-3.0, max_value=40.0).map(lambda e: first * 10.0**e),
            # Exactly the cost of some number of levels: the boundary case.
            st.integers(min_value=1, max_value=RULES.max_level - level).map(lambda q: RULES.bulk_cost(b, level, q)),
        )
    )
    return key, level, budget


@FAST
@given(case=budgets())
def test_max_is_affordable_and_one_more_is_not(rules: Rules, case: tuple[str, int, float]) -> None:
    key, level, budget = case
    b = rules.buildings[key]
    q = rules.max_affordable(b, level, budget)
    assert 0 <= q <= rules.max_level - level
    assert rules.bulk_cost(b, level, q) <= budget
    if level + q < rules.max_level:
        assert rules.bulk_cost(b, level, q + 1) > budget


@FAST
@given(case=budgets())
def test_buying_max_spends_at_most_the_balance(rules: Rules, case: tuple[str, int, float]) -> None:
    key, level, budget = case
    b = rules.buildings[key]
    s = rules.new_farm("p", T0)
    s.buildings = {**{k: rules.max_level for k in BUILDINGS}, key: level}
    ti = rules.tier_index[b.cost_tier]
    s.balances[ti] = budget
    expected = rules.max_affordable(b, level, budget)
    try:
        out = rules.buy_building(s, key, "max", T0)
    except GameError as exc:
        assert expected == 0
        assert exc.code == "INSUFFICIENT_RESOURCES"
        return
    assert out.result["bought"] == expected >= 1
    assert out.state.buildings[key] == level + expected
    assert 0.0 <= out.state.balances[ti] <= budget
    assert out.state.balances[ti] == pytest.approx(budget - out.result["cost"], rel=1e-9, abs=1e-9 * budget)


# ---- offline credit ------------------------------------------------------------------------------------------


@FAST
@given(
    start=farms(online=False),
    elapsed=st.one_of(st.floats(min_value=0.0, max_value=80 * HOUR), st.floats(min_value=0.0, max_value=1e8)),
)
def test_offline_credit_never_exceeds_rate_times_cap(rules: Rules, start: FarmState, elapsed: float) -> None:
    rates = rules.rates(start)
    now = T0 + elapsed
    elapsed = now - T0  # what the server measures, after rounding
    out = rules.come_online(start, now)
    report = out.state.offline_report
    assert report is not None
    cap = rules.offline_cap_s(start)
    assert 24 * HOUR <= cap <= 72 * HOUR
    assert report.cap_s == cap
    assert report.credited_s == min(elapsed, cap)
    assert report.capped == (elapsed > cap)
    assert 0.5 <= report.efficiency <= 1.0
    for tier, rate in zip(rules.tier_keys, rates, strict=True):
        gain = report.gains[tier]
        assert 0.0 <= gain <= rate * cap * (1 + 1e-12)
        assert gain == pytest.approx(rate * report.efficiency * report.credited_s, rel=1e-12)
    assert out.state.online is True
    for before, after, gain in zip(start.balances, out.state.balances, report.gains.values(), strict=True):
        assert after == pytest.approx(before + gain, rel=1e-12)
    # A second return credits nothing more.
    again = rules.come_online(out.state, now + 10 * HOUR)
    assert again.state.balances == out.state.balances


# ---- the closed form is additive ----------------------------------------------------------------------------


@FAST
@given(
    start=farms(),
    t1=st.floats(min_value=0.0, max_value=3 * WEEK),
    extra=st.floats(min_value=0.0, max_value=3 * WEEK),
)
def test_advance_is_additive(rules: Rules, start: FarmState, t1: float, extra: float) -> None:
    mid, events1 = rules.advance(start, T0 + t1)
    two_step, events2 = rules.advance(mid, T0 + t1 + extra)
    direct, events = rules.advance(start, T0 + t1 + extra)

    def close(a: float, b: float) -> bool:
        return a == pytest.approx(b, rel=1e-9, abs=1e-9)

    assert all(close(a, b) for a, b in zip(two_step.balances, direct.balances, strict=True))
    assert all(close(a, b) for a, b in zip(two_step.run_produced, direct.run_produced, strict=True))
    assert close(two_step.lifetime_value, direct.lifetime_value)
    assert close(two_step.weekly_value, direct.weekly_value)
    assert close(two_step.play_time_s, direct.play_time_s)
    assert two_step.week == direct.week
    assert two_step.anchor_time == direct.anchor_time
    assert sorted(two_step.discovered) == sorted(direct.discovered)
    assert sorted(e["tier"] for e in events1 + events2) == sorted(e["tier"] for e in events)
    # The closed form agrees with re-anchoring.
    assert all(close(a, b) for a, b in zip(rules.balances_at(start, T0 + t1 + extra), direct.balances, strict=True))
    # Leaderboard scores do not depend on where the farm was last anchored.
    t2 = T0 + t1 + extra
    for board in ("lifetime", "prestige", "rate", "weekly"):
        assert close(rules.scores(start, t2)[board], rules.scores(direct, t2)[board])
        assert close(rules.scores(mid, t2)[board], rules.scores(direct, t2)[board])
    if start.online:
        assert close(rules.scores(start, t2)["lifetime"], direct.lifetime_value)
        assert close(rules.scores(start, t2)["weekly"], direct.weekly_value)


@FAST
@given(start=farms(online=True))
def test_documents_round_trip(rules: Rules, start: FarmState) -> None:
    s = rules.come_online(rules.go_offline(start, T0).state, T0 + 5 * HOUR).state
    assert FarmState.from_doc(s.to_doc(), revision=s.revision) == s
