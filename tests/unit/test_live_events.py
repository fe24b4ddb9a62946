"""Timed live events: the piecewise closed form against a step-by-step replay.

The replay walks an absence boundary by boundary, finds which events run in
each piece by looking at the events themselves (not at the schedule's
segments), and adds rate × efficiency × multiplier × piece length; the rules
credit the same absence in one closed form. They must agree to 1e-9 relative,
with the offline efficiency and the 24 h (or upgraded) cap applied.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamawool.engine.table import FarmTable
from llamawool.game import FarmState, Rules
from llamawool.game.events import LiveEvent, Schedule
from llamawool.game.saves import ClaimedFarm, check_save
from llamawool.settings import load_rules

T0 = 1_700_000_000.0
HOUR = 3600.0
RULES = load_rules()
TIERS = RULES.tier_keys
BUILDINGS = list(RULES.buildings)
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fresh_rules(events: list[LiveEvent]) -> Rules:
    rules = load_rules()
    rules.schedule = Schedule(rules.tier_keys, events)
    return rules


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


@st.composite
def live_events(draw: st.DrawFn) -> list[LiveEvent]:
    """Any mix of windows around an absence that starts at T0: before, across, inside,
    after, overlapping, some tiers or all, some cancelled (before start or while running)."""
    out = []
    for i in range(draw(st.integers(min_value=0, max_value=5))):
        start = T0 + draw(st.floats(min_value=-30 * HOUR, max_value=100 * HOUR))
        end = start + draw(st.floats(min_value=1.0, max_value=60 * HOUR))
        tiers = draw(st.one_of(st.none(), st.lists(st.sampled_from(TIERS), min_size=1, max_size=4, unique=True)))
        cancelled = draw(st.one_of(st.none(), st.floats(min_value=start - 10 * HOUR, max_value=end)))
        out.append(
            LiveEvent(
                id=f"e{i}",
                name=f"event {i}",
                multiplier=draw(st.floats(min_value=1.01, max_value=10.0)),
                tiers=tuple(tiers) if tiers is not None else None,
                starts_at=start,
                ends_at=end,
                cancelled_at=cancelled,
            )
        )
    return out


@st.composite
def offline_farms(draw: st.DrawFn) -> FarmState:
    s = RULES.new_farm("p", T0 - HOUR)
    s.buildings = draw(st.dictionaries(st.sampled_from(BUILDINGS), st.integers(min_value=1, max_value=40)))
    s.upgrades = draw(
        st.lists(
            st.sampled_from(["smart_scheduling", "ai_management", "time_dilation", "workflow_optimization"]),
            unique=True,
        )
    )
    s.soul_shears = draw(st.integers(min_value=0, max_value=30))
    s.balances = draw(st.lists(st.floats(min_value=0, max_value=1e6), min_size=len(TIERS), max_size=len(TIERS)))
    s.online = False
    s.anchor_time = T0
    return s


def replay_offline(rules: Rules, state: FarmState, events: list[LiveEvent], now: float) -> list[float]:
    """Step by step: cut the credited part of the absence at every event start and end."""
    eff = rules.offline_efficiency(state)
    went = state.anchor_time
    credited_until = went + min(max(0.0, now - went), rules.offline_cap_s(state))

    def end_of(e: LiveEvent) -> float:
        if e.cancelled_at is None:
            return e.ends_at
        return min(e.ends_at, max(e.starts_at, e.cancelled_at))

    cuts = {went, credited_until}
    for e in events:
        for t in (e.starts_at, end_of(e)):
            if went < t < credited_until:
                cuts.add(t)
    points = sorted(cuts)
    rates = rules.rates(state)
    gains = [0.0] * len(TIERS)
    for a, b in itertools.pairwise(points):
        mid = (a + b) / 2
        for k, tier in enumerate(TIERS):
            m = 1.0
            for e in events:
                if e.starts_at <= mid < end_of(e) and (e.tiers is None or tier in e.tiers):
                    m *= e.multiplier
            gains[k] += rates[k] * eff * m * (b - a)
    return gains


@FAST
@given(offline_farms(), live_events(), st.floats(min_value=0.0, max_value=100 * HOUR))
def test_offline_credit_across_event_windows_equals_a_step_by_step_replay(
    state: FarmState, events: list[LiveEvent], away: float
) -> None:
    rules = fresh_rules(events)
    now = T0 + away
    outcome = rules.come_online(state, now)
    expected = replay_offline(rules, state, events, now)
    report = outcome.result["report"]
    assert close(report["credited_s"], min(now - T0, rules.offline_cap_s(state)))
    assert report["efficiency"] == rules.offline_efficiency(state)
    for tier, want in zip(TIERS, expected, strict=True):
        assert close(report["gains"][tier], want), (tier, report["gains"][tier], want)
    for got, before, want in zip(outcome.state.balances, state.balances, expected, strict=True):
        assert close(got - before, want, 1e-9) or close(got, before + want)


def test_an_absence_longer_than_the_cap_gets_no_credit_for_an_event_after_the_cap() -> None:
    """A window that opens after the first 24 h of an absence adds nothing (the cap cuts the tail)."""
    late = LiveEvent("late", "late", 5.0, None, T0 + 30 * HOUR, T0 + 40 * HOUR)
    s = RULES.new_farm("p", T0)
    s.online, s.anchor_time = False, T0
    plain = RULES.come_online(s, T0 + 50 * HOUR).state.balances
    assert fresh_rules([late]).come_online(s, T0 + 50 * HOUR).state.balances == plain
    early = LiveEvent("early", "early", 2.0, None, T0 + HOUR, T0 + 3 * HOUR)
    doubled = fresh_rules([early]).come_online(s, T0 + 50 * HOUR).state.balances
    # basic: 0.1/s × 0.5 × (24 h + 2 h extra from the doubled hours)
    assert close(doubled[0], 0.1 * 0.5 * 26 * HOUR)


def test_a_cancelled_future_event_never_applies_and_a_running_one_ends_at_the_cancel() -> None:
    s = RULES.new_farm("p", T0)
    never = LiveEvent("n", "n", 3.0, None, T0 + 100, T0 + 200, cancelled_at=T0 + 50)
    assert fresh_rules([never]).balances_at(s, T0 + 300) == RULES.balances_at(s, T0 + 300)
    cut = LiveEvent("c", "c", 3.0, None, T0 + 100, T0 + 200, cancelled_at=T0 + 150)
    # 300 s at 0.1/s plus 50 s at two extra times the rate
    assert close(fresh_rules([cut]).balances_at(s, T0 + 300)[0], 0.1 * (300 + 2 * 50))
    assert never.status(T0) == "cancelled" and cut.view(T0 + 160)["ends_at"] == T0 + 150


@FAST
@given(live_events(), st.lists(st.floats(min_value=0.0, max_value=100 * HOUR), min_size=1, max_size=6))
def test_anchoring_at_boundaries_changes_nothing_online(events: list[LiveEvent], cuts: list[float]) -> None:
    """Re-anchoring at any instants (boundaries included) gives what one anchor gives."""
    rules = fresh_rules(events)
    s = rules.new_farm("p", T0)
    s.buildings = {"barn": 10, "shears": 5, "transport": 3}
    direct, _ = rules.advance(s, T0 + 100 * HOUR)
    step = s
    for t in sorted(cuts + list(rules.schedule.boundaries_in(T0, T0 + 100 * HOUR))):
        step, _ = rules.advance(step, T0 + t if t < T0 else t)
    step, _ = rules.advance(step, T0 + 100 * HOUR)
    for a, b in zip(step.balances, direct.balances, strict=True):
        assert close(a, b)
    assert close(step.lifetime_value, direct.lifetime_value)
    assert close(step.play_time_s, direct.play_time_s)


@FAST
@given(live_events(), st.lists(st.floats(min_value=0.0, max_value=100 * HOUR), min_size=1, max_size=8))
def test_the_vectorised_tick_re_anchors_at_boundaries_exactly(events: list[LiveEvent], ticks: list[float]) -> None:
    """The table's rows, ticked at arbitrary instants across boundaries, equal the closed form."""
    rules = fresh_rules(events)
    table = FarmTable(rules, capacity=4)
    farms = []
    for i, buildings in enumerate([{}, {"barn": 7}, {"barn": 20, "shears": 9, "transport": 4}]):
        s = rules.new_farm(f"p{i}", T0)
        s.buildings = buildings
        s.last_active = T0 + 1000 * HOUR
        row = table.add(s)
        table.connections[row] = 1
        farms.append((row, s))
    for t in sorted(ticks):
        now = T0 + t
        result = table.tick(now, 120.0)
        by_row = dict(zip(result.connected_rows.tolist(), result.balances.tolist(), strict=True))
        for row, s in farms:
            want = rules.balances_at(s, now)
            assert all(close(a, b) for a, b in zip(by_row[row], want, strict=True)), (row, now)
            assert table.anchor_time[row] <= now
        boundary = rules.schedule.last_boundary(now)
        if boundary is not None and boundary > T0:
            assert np.all(table.anchor_time[: len(farms)] == boundary)


def test_a_row_synced_from_a_state_anchored_before_a_passed_boundary_starts_at_that_boundary() -> None:
    ev = LiveEvent("d", "double", 2.0, None, T0 + 10, T0 + 1000)
    rules = fresh_rules([ev])
    table = FarmTable(rules, capacity=2)
    s = rules.new_farm("p", T0)
    s.last_active = T0 + 10_000
    row = table.add(s)
    table.connections[row] = 1
    table.tick(T0 + 20, 120.0)
    table.sync(row, s)  # e.g. a settle that found nothing: the state's anchor is T0
    assert table.anchor_time[row] == T0 + 10
    assert table.rates[row][0] == 0.2
    got = table.tick(T0 + 30, 120.0).balances[0][0]
    assert close(got, 0.1 * 10 + 0.2 * 20)


def test_a_cloud_save_may_hold_what_an_event_doubled() -> None:
    """The plausibility check allows the event's extra production (and no more)."""
    ev = LiveEvent("d", "double", 2.0, ("silver",), T0, T0 + 1000)
    base = RULES.new_farm("p", T0)
    base.buildings = {"barn": 5, "shears": 10}  # silver 0.5/s
    silver = RULES.rates(base)[1]

    def claim(amount: float) -> ClaimedFarm:
        return ClaimedFarm({"silver": amount}, dict(base.buildings), [], 0, 0)

    doubled = silver * 2 * 1000
    assert not check_save(RULES, base, claim(doubled), T0 + 1000).plausible
    rules = fresh_rules([ev])
    assert check_save(rules, base, claim(doubled), T0 + 1000).plausible
    assert not check_save(rules, base, claim(doubled * 1.2), T0 + 1000).plausible
