"""Worked examples from GAME.md, checked against the pure rules in `llamawool.game`."""

from __future__ import annotations

import copy
import json
import math
import tomllib
from typing import Any

import pytest

from llamawool.game import (
    ActionConflict,
    BalanceError,
    BuyBuilding,
    BuyUpgrade,
    FarmState,
    InsufficientResources,
    InvalidAction,
    Prestige,
    RequirementNotMet,
    Rules,
    Shear,
    UnknownItem,
    apply_action,
    iso_week,
    parse_balance,
    parse_game_config,
    week_start,
)
from llamawool.settings import DEFAULT_CONFIG_DIR, load_rules

T0 = 1_700_000_000.0  # Tuesday 2023-11-14 22:13:20 UTC (ISO week 2023-W46)
HOUR = 3600.0
DAY = 24 * HOUR
BASIC, SILVER, GOLDEN = 0, 1, 2


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


@pytest.fixture(scope="module")
def raw_balance() -> dict[str, Any]:
    return tomllib.loads((DEFAULT_CONFIG_DIR / "game.toml").read_text())


@pytest.fixture(scope="module")
def raw_config() -> dict[str, Any]:
    return json.loads((DEFAULT_CONFIG_DIR / "game-config.json").read_text())


def farm(rules: Rules, now: float = T0, **changes: Any) -> FarmState:
    """A new farm at `now`, with some fields replaced (balances by tier key)."""
    s = rules.new_farm("p1", now)
    balances = changes.pop("balances", {})
    for tier, amount in balances.items():
        s.balances[rules.tier_index[tier]] = amount
    for name, value in changes.items():
        setattr(s, name, value)
    return s


def basic_rate(rules: Rules, state: FarmState) -> float:
    return rules.rates(state)[BASIC]


# ---- buildings: costs, bulk and "max" ---------------------------------------------------


def test_first_five_barn_levels_cost_67_4238(rules: Rules) -> None:
    barn = rules.buildings["barn"]
    singles = [rules.bulk_cost(barn, level, 1) for level in range(5)]
    assert singles == pytest.approx([10.0, 11.5, 13.225, 15.20875, 17.4900625], rel=1e-12)
    assert sum(singles) == pytest.approx(67.4238125, rel=1e-12)
    assert rules.bulk_cost(barn, 0, 5) == pytest.approx(67.4238125, rel=1e-12)


def test_buying_five_barns_at_once_costs_the_geometric_sum(rules: Rules) -> None:
    s = farm(rules, balances={"basic": 100.0})
    out = rules.buy_building(s, "barn", 5, T0)
    assert out.state.buildings["barn"] == 5
    assert out.result["bought"] == 5
    assert out.result["level"] == 5
    assert out.result["cost"] == pytest.approx(67.4238125, rel=1e-12)
    assert out.result["cost_tier"] == "basic"
    assert out.state.balances[BASIC] == pytest.approx(100.0 - 67.4238125, rel=1e-12)
    assert out.state.stats.building_levels_bought == 5
    # The input state is never mutated.
    assert s.buildings == {}
    assert s.balances[BASIC] == 100.0


def test_buying_five_barns_with_exactly_their_cost_leaves_nothing(rules: Rules) -> None:
    cost = rules.bulk_cost(rules.buildings["barn"], 0, 5)
    out = rules.buy_building(farm(rules, balances={"basic": cost}), "barn", 5, T0)
    assert out.state.buildings["barn"] == 5
    assert out.state.balances[BASIC] == 0.0


def test_buying_five_barns_one_short_is_refused(rules: Rules) -> None:
    s = farm(rules, balances={"basic": 67.42})
    with pytest.raises(InsufficientResources) as exc:
        rules.buy_building(s, "barn", 5, T0)
    assert exc.value.extra["tier"] == "basic"
    assert exc.value.extra["cost"] == pytest.approx(67.4238125)


def test_max_with_1000_basic_buys_19_barns(rules: Rules) -> None:
    barn = rules.buildings["barn"]
    assert rules.max_affordable(barn, 0, 1000.0) == 19
    assert rules.bulk_cost(barn, 0, 19) <= 1000.0 < rules.bulk_cost(barn, 0, 20)

    out = rules.buy_building(farm(rules, balances={"basic": 1000.0}), "barn", "max", T0)
    assert out.state.buildings["barn"] == 19
    assert out.result["bought"] == 19
    assert out.result["cost"] == pytest.approx(882.1181097360056, rel=1e-12)
    left = out.state.balances[BASIC]
    assert left == pytest.approx(1000.0 - 882.1181097360056, rel=1e-9)
    # One more barn is now unaffordable.
    assert rules.bulk_cost(barn, 19, 1) > left
    with pytest.raises(InsufficientResources):
        rules.buy_building(out.state, "barn", 1, T0)
    with pytest.raises(InsufficientResources):
        rules.buy_building(out.state, "barn", "max", T0)


def test_max_with_less_than_one_level_is_refused(rules: Rules) -> None:
    with pytest.raises(InsufficientResources):
        rules.buy_building(farm(rules, balances={"basic": 9.99}), "barn", "max", T0)


@pytest.mark.parametrize("quantity", [0, -1, 101])
def test_bulk_quantity_outside_1_to_100_is_invalid(rules: Rules, quantity: int) -> None:
    with pytest.raises(InvalidAction):
        rules.buy_building(farm(rules, balances={"basic": 1e300}), "barn", quantity, T0)


def test_buildings_stop_at_level_1000(rules: Rules) -> None:
    s = farm(rules, balances={"basic": 1e300}, buildings={"barn": 1000})
    with pytest.raises(ActionConflict):
        rules.buy_building(s, "barn", 1, T0)
    with pytest.raises(ActionConflict):
        rules.buy_building(s, "barn", "max", T0)
    near = farm(rules, balances={"basic": 1e300}, buildings={"barn": 998})
    with pytest.raises(ActionConflict):
        rules.buy_building(near, "barn", 3, T0)
    out = rules.buy_building(near, "barn", "max", T0)
    assert out.state.buildings["barn"] == 1000
    assert out.result["bought"] == 2


def test_unknown_building_is_unknown_item(rules: Rules) -> None:
    with pytest.raises(UnknownItem):
        rules.buy_building(farm(rules, balances={"basic": 1e6}), "windmill", 1, T0)


def test_building_costs_are_paid_in_their_cost_tier(rules: Rules) -> None:
    s = farm(rules, balances={"basic": 1e9, "silver": 60.0}, buildings={"barn": 5, "shears": 3})
    out = rules.buy_building(s, "transport", 1, T0)
    assert out.state.balances[SILVER] == pytest.approx(10.0)
    assert out.state.balances[BASIC] == 1e9
    with pytest.raises(InsufficientResources):
        rules.buy_building(out.state, "transport", 1, T0)  # the next level costs 62.5 silver


# ---- building requirements ----------------------------------------------------------------


def test_shears_need_five_barns(rules: Rules) -> None:
    s = farm(rules, balances={"basic": 1e6}, buildings={"barn": 4})
    with pytest.raises(RequirementNotMet) as exc:
        rules.buy_building(s, "shears", 1, T0)
    assert exc.value.extra["requires"] == {"barn": 5}
    s.buildings["barn"] = 5
    out = rules.buy_building(s, "shears", 1, T0)
    assert out.state.buildings["shears"] == 1
    assert out.result["cost"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("building", "needs", "level"),
    [
        ("transport", "shears", 3),
        ("factory", "transport", 5),
        ("lab", "factory", 3),
        ("portal", "lab", 5),
        ("time_machine", "portal", 3),
        ("dimension_gate", "time_machine", 5),
    ],
)
def test_each_building_needs_the_previous_one(rules: Rules, building: str, needs: str, level: int) -> None:
    rich = {t: 1e300 for t in rules.tier_keys}
    below = farm(rules, balances=rich, buildings={needs: level - 1})
    with pytest.raises(RequirementNotMet):
        rules.buy_building(below, building, 1, T0)
    at = farm(rules, balances=rich, buildings={needs: level})
    assert rules.buy_building(at, building, 1, T0).state.buildings[building] == 1


# ---- production ------------------------------------------------------------------------------


def test_a_new_farm_produces_a_tenth_of_basic_per_second(rules: Rules) -> None:
    s = farm(rules)
    rates = rules.rates(s)
    assert rates[BASIC] == pytest.approx(0.1)
    assert rates[1:] == [0.0] * (rules.n_tiers - 1)
    assert rules.balances_at(s, T0 + 100.0) == pytest.approx([10.0] + [0.0] * 9)


def test_barns_and_shears_produce_per_level(rules: Rules) -> None:
    s = farm(rules, buildings={"barn": 10, "shears": 4})
    rates = rules.rates(s)
    assert rates[BASIC] == pytest.approx(0.1 + 10 * 0.5 + 4 * 2)
    assert rates[SILVER] == pytest.approx(4 * 0.05)
    assert rates[GOLDEN] == 0.0


def test_prestige_and_achievements_multiply_production(rules: Rules) -> None:
    plain = farm(rules, buildings={"barn": 10})
    boosted = farm(rules, buildings={"barn": 10}, soul_shears=3, achievements={"first_wool": T0, "first_building": T0})
    assert basic_rate(rules, boosted) == pytest.approx(basic_rate(rules, plain) * 1.3 * 1.04)


def test_balances_follow_the_closed_form_and_re_anchor(rules: Rules) -> None:
    s = farm(rules, buildings={"barn": 2})  # 1.1 basic/s
    s1, _ = rules.advance(s, T0 + 10.0)
    assert s1.anchor_time == T0 + 10.0
    assert s1.balances[BASIC] == pytest.approx(11.0)
    assert s1.run_produced[BASIC] == pytest.approx(11.0)
    assert s1.lifetime_value == pytest.approx(11.0)
    assert s1.play_time_s == pytest.approx(10.0)
    # Going back in time never produces or undoes anything.
    s2, events = rules.advance(s1, T0 + 5.0)
    assert s2.balances == s1.balances
    assert events == []


# ---- upgrades ------------------------------------------------------------------------------------


def test_sharp_shears_double_click_power(rules: Rules) -> None:
    s = farm(rules, balances={"basic": 150.0})
    assert rules.click_power(s) == 1.0
    out = rules.buy_upgrade(s, "sharp_shears", T0)
    assert out.state.upgrades == ["sharp_shears"]
    assert out.state.balances[BASIC] == pytest.approx(50.0)
    assert out.state.stats.upgrades_bought == 1
    assert rules.click_power(out.state) == 2.0
    sheared = rules.shear(out.state, 5, T0)
    assert sheared.result["wool"] == 10.0
    assert sheared.state.balances[BASIC] == pytest.approx(60.0)


def test_better_tools_need_sharp_shears_and_stack(rules: Rules) -> None:
    s = farm(rules, balances={"basic": 5000.0})
    with pytest.raises(RequirementNotMet) as exc:
        rules.buy_upgrade(s, "better_tools", T0)
    assert exc.value.extra["missing"] == ["upgrade sharp_shears"]
    s = rules.buy_upgrade(s, "sharp_shears", T0).state
    s = rules.buy_upgrade(s, "better_tools", T0).state
    assert rules.click_power(s) == 6.0
    assert s.balances[BASIC] == pytest.approx(5000.0 - 100.0 - 1000.0)


def test_caffeine_pills_need_ten_barns_and_double_barn_output(rules: Rules) -> None:
    nine = farm(rules, balances={"basic": 1000.0}, buildings={"barn": 9})
    with pytest.raises(RequirementNotMet) as exc:
        rules.buy_upgrade(nine, "caffeine_pills", T0)
    assert exc.value.extra["missing"] == ["barn >= 10"]
    # The building achievements are already unlocked, so buying adds no other multiplier.
    unlocked = {"first_building": T0, "industrialist": T0}
    s = farm(rules, balances={"basic": 1000.0}, buildings={"barn": 10, "shears": 1}, achievements=unlocked)
    before = rules.rates(s)
    assert before[BASIC] == pytest.approx((0.1 + 5.0 + 2.0) * 1.04)
    bought = rules.buy_upgrade(s, "caffeine_pills", T0).state
    assert bought.achievements == unlocked
    assert bought.balances[BASIC] == pytest.approx(500.0)
    after = rules.rates(bought)
    # Only the barns' part doubles: the base trickle and the shears are unchanged.
    assert after[BASIC] == pytest.approx((0.1 + 10.0 + 2.0) * 1.04)
    assert after[SILVER] == pytest.approx(before[SILVER])


def test_tier_and_all_multipliers(rules: Rules) -> None:
    s = farm(rules, buildings={"barn": 5, "shears": 10, "transport": 2})
    base = rules.rates(s)
    bred = rules.rates(farm(rules, buildings=dict(s.buildings), upgrades=["selective_breeding"]))
    assert bred[SILVER] == pytest.approx(2 * base[SILVER])
    assert bred[BASIC] == pytest.approx(base[BASIC])
    assert bred[GOLDEN] == pytest.approx(base[GOLDEN])
    every = rules.rates(
        farm(rules, buildings=dict(s.buildings), upgrades=["workflow_optimization", "quantum_computing"])
    )
    assert every == pytest.approx([3.0 * r for r in base])


def test_buying_an_upgrade_twice_is_a_conflict(rules: Rules) -> None:
    s = rules.buy_upgrade(farm(rules, balances={"basic": 1000.0}), "sharp_shears", T0).state
    with pytest.raises(ActionConflict):
        rules.buy_upgrade(s, "sharp_shears", T0)


def test_unknown_upgrade_is_unknown_item(rules: Rules) -> None:
    with pytest.raises(UnknownItem):
        rules.buy_upgrade(farm(rules, balances={"basic": 1e9}), "rocket_boots", T0)


def test_an_upgrade_needs_its_cost_in_its_tier(rules: Rules) -> None:
    s = farm(rules, balances={"basic": 1e9, "silver": 199.0})
    with pytest.raises(InsufficientResources) as exc:
        rules.buy_upgrade(s, "selective_breeding", T0)
    assert exc.value.extra == {"tier": "silver", "cost": 200.0, "balance": 199.0}


def test_genetic_enhancement_needs_ten_prestiges(rules: Rules) -> None:
    s = farm(rules, balances={"quantum": 5.0}, prestige_count=9)
    with pytest.raises(RequirementNotMet):
        rules.buy_upgrade(s, "genetic_enhancement", T0)
    s.prestige_count = 10
    out = rules.buy_upgrade(s, "genetic_enhancement", T0)
    assert out.state.balances[rules.tier_index["quantum"]] == pytest.approx(4.0)
    # Buying re-anchors and unlocks first_prestige and veteran (10 prestiges): +4 %.
    assert set(out.state.achievements) == {"first_prestige", "veteran"}
    assert basic_rate(rules, out.state) == pytest.approx(0.1 * 6 * 1.04)


def test_auto_clicker_adds_click_power_to_basic(rules: Rules) -> None:
    s = farm(rules, buildings={"barn": 4}, soul_shears=2)
    without = basic_rate(rules, s)
    assert without == pytest.approx(2.1 * 1.2)
    clicker = farm(rules, buildings={"barn": 4}, soul_shears=2, upgrades=["auto_clicker"])
    assert rules.click_power(clicker) == pytest.approx(1.2)
    assert basic_rate(rules, clicker) == pytest.approx(without + 1.2)
    sharp = farm(rules, buildings={"barn": 4}, soul_shears=2, upgrades=["auto_clicker", "sharp_shears"])
    assert basic_rate(rules, sharp) == pytest.approx(without + 2.4)
    # Auto-shears add basic wool only.
    assert rules.rates(sharp)[1:] == rules.rates(s)[1:]


def test_buying_auto_clicker_through_apply_action(rules: Rules) -> None:
    s = farm(rules, balances={"golden": 300.0})
    out = apply_action(rules, s, BuyUpgrade("auto_clicker"), T0)
    assert out.state.balances[GOLDEN] == pytest.approx(50.0)
    assert basic_rate(rules, out.state) == pytest.approx(1.1)


# ---- shearing and the token bucket ----------------------------------------------------------------


def test_shear_adds_count_times_click_power(rules: Rules) -> None:
    s = farm(rules, soul_shears=5)
    out = rules.shear(s, 10, T0)
    assert out.result == {"requested": 10, "sheared": 10, "dropped": 0, "wool": pytest.approx(15.0)}
    assert out.state.balances[BASIC] == pytest.approx(15.0)
    assert out.state.run_produced[BASIC] == pytest.approx(15.0)
    assert out.state.lifetime_value == pytest.approx(15.0)
    assert out.state.stats.shears == 10
    assert out.state.stats.wool_sheared == pytest.approx(15.0)


@pytest.mark.parametrize("count", [0, -3, 21])
def test_shear_count_must_be_1_to_20(rules: Rules, count: int) -> None:
    with pytest.raises(InvalidAction):
        rules.shear(farm(rules), count, T0)


def test_a_new_farm_has_a_full_bucket_of_40(rules: Rules) -> None:
    s = farm(rules)
    assert s.shear_tokens == 40.0
    assert rules.shear_tokens_at(s, T0) == 40.0
    assert rules.shear_tokens_at(s, T0 + 1000.0) == 40.0  # never above capacity


def test_three_requests_of_20_at_the_same_instant_shear_20_20_0(rules: Rules) -> None:
    s = farm(rules)
    results = []
    for _ in range(3):
        out = rules.shear(s, 20, T0)
        results.append(out.result)
        s = out.state
    assert [r["sheared"] for r in results] == [20, 20, 0]
    assert [r["dropped"] for r in results] == [0, 0, 20]
    assert [r["wool"] for r in results] == [20.0, 20.0, 0.0]
    assert s.balances[BASIC] == 40.0
    assert s.stats.shears == 40


def test_the_bucket_refills_20_per_second(rules: Rules) -> None:
    s = farm(rules)
    s = rules.shear(s, 20, T0).state
    s = rules.shear(s, 20, T0).state
    half = rules.shear(s, 20, T0 + 0.5)
    assert half.result["sheared"] == 10
    assert half.result["dropped"] == 10
    later = rules.shear(half.state, 20, T0 + 1.5)
    assert later.result["sheared"] == 20


def test_shear_through_apply_action(rules: Rules) -> None:
    out = apply_action(rules, farm(rules), Shear(3), T0)
    assert out.result["sheared"] == 3
    assert out.state.balances[BASIC] == 3.0


# ---- offline progress -------------------------------------------------------------------------------


def _rules_without_base_rate(rules: Rules, raw_config: dict[str, Any]) -> Rules:
    cfg = copy.deepcopy(raw_config)
    cfg["production"]["baseProductionRate"] = 0.0
    return Rules(rules.balance, parse_game_config(cfg))


def test_an_hour_offline_at_10_basic_per_s_credits_18000(rules: Rules, raw_config: dict[str, Any]) -> None:
    # Without the 0.1/s trickle, 20 barns make exactly 10 basic/s. The farm is
    # built offline: going offline re-anchors and would unlock building
    # achievements (+4 %), changing the rate.
    r10 = _rules_without_base_rate(rules, raw_config)
    off = farm(r10, buildings={"barn": 20}, online=False)
    assert basic_rate(r10, off) == 10.0
    assert r10.balances_at(off, T0 + 3600.0) == off.balances
    out = r10.come_online(off, T0 + 3600.0)
    report = out.result["report"]
    assert report["elapsed_s"] == 3600.0
    assert report["credited_s"] == 3600.0
    assert report["capped"] is False
    assert report["efficiency"] == 0.5
    assert report["gains"]["basic"] == 18_000.0
    assert report["value_gained"] == 18_000.0
    assert out.state.balances[BASIC] == 18_000.0
    assert out.state.online is True
    assert out.state.anchor_time == T0 + 3600.0


def test_an_hour_offline_credits_half_the_rate(rules: Rules) -> None:
    off = rules.go_offline(farm(rules, buildings={"barn": 19, "shears": 1}), T0).state
    rates = rules.rates(off)  # frozen at their value when the farm went offline
    out = rules.come_online(off, T0 + 3600.0)
    gains = out.result["report"]["gains"]
    assert gains["basic"] == pytest.approx(rates[BASIC] * 0.5 * 3600, rel=1e-12)
    assert gains["silver"] == pytest.approx(rates[SILVER] * 0.5 * 3600, rel=1e-12)
    assert out.state.lifetime_value == pytest.approx(gains["basic"] + 10 * gains["silver"])


def test_48_hours_offline_credits_only_the_24_hour_cap(rules: Rules) -> None:
    off = rules.go_offline(farm(rules), T0).state
    out = rules.come_online(off, T0 + 48 * HOUR)
    report = out.state.offline_report
    assert report is not None
    assert report.capped is True
    assert report.elapsed_s == 48 * HOUR
    assert report.credited_s == 86_400.0
    assert report.cap_s == 86_400.0
    assert report.gains["basic"] == pytest.approx(0.1 * 0.5 * 86_400)
    assert out.state.balances[BASIC] == pytest.approx(4320.0)
    assert out.state.report_unseen is True


def test_coming_online_twice_credits_once(rules: Rules) -> None:
    off = rules.go_offline(farm(rules), T0).state
    first = rules.come_online(off, T0 + HOUR)
    second = rules.come_online(first.state, T0 + HOUR + 1)
    assert second.state.to_doc() == first.state.to_doc()
    assert second.events == []
    assert first.state.stats.offline_credits == 1


def test_an_offline_farm_produces_nothing_until_it_returns(rules: Rules) -> None:
    off = rules.go_offline(farm(rules, buildings={"barn": 10}), T0).state
    assert rules.balances_at(off, T0 + HOUR) == off.balances
    moved, _ = rules.advance(off, T0 + HOUR)
    assert moved.balances == off.balances
    assert moved.anchor_time == T0 + HOUR


def test_offline_rates_stay_frozen_and_thresholds_unlock_on_return(rules: Rules) -> None:
    s = farm(rules, buildings={"barn": 10})  # 5.1 basic/s, no achievements yet
    off = rules.go_offline(s, T0).state
    # go_offline re-anchors: 10 barns already meet first_building and industrialist.
    assert set(off.achievements) == {"first_building", "industrialist"}
    rate = basic_rate(rules, off)
    out = rules.come_online(off, T0 + 10 * HOUR)
    assert out.result["report"]["gains"]["basic"] == pytest.approx(rate * 0.5 * 10 * HOUR)
    unlocked = [e["key"] for e in out.events if e["type"] == "achievement_unlocked"]
    assert set(unlocked) == {"first_wool", "wool_collector"}
    assert out.events[-1]["type"] == "offline_report"


def test_offline_efficiency_grows_with_upgrades_and_soul_shears_up_to_1(rules: Rules) -> None:
    assert rules.offline_efficiency(farm(rules)) == 0.5
    assert rules.offline_efficiency(farm(rules, upgrades=["smart_scheduling"])) == pytest.approx(0.65)
    both = ["smart_scheduling", "ai_management"]
    assert rules.offline_efficiency(farm(rules, upgrades=both)) == pytest.approx(0.8)
    assert rules.offline_efficiency(farm(rules, soul_shears=5)) == pytest.approx(0.6)
    assert rules.offline_efficiency(farm(rules, upgrades=both, soul_shears=5)) == pytest.approx(0.9)
    assert rules.offline_efficiency(farm(rules, upgrades=both, soul_shears=10)) == pytest.approx(1.0)
    assert rules.offline_efficiency(farm(rules, upgrades=both, soul_shears=50)) == 1.0
    assert rules.offline_efficiency(farm(rules, soul_shears=1000)) == 1.0


def test_efficiency_one_credits_the_full_rate(rules: Rules) -> None:
    off = rules.go_offline(farm(rules, upgrades=["smart_scheduling", "ai_management"], soul_shears=40), T0).state
    rate = basic_rate(rules, off)
    out = rules.come_online(off, T0 + HOUR)
    assert out.result["report"]["efficiency"] == 1.0
    assert out.result["report"]["gains"]["basic"] == pytest.approx(rate * HOUR)


def test_offline_cap_grows_to_72_hours(rules: Rules) -> None:
    assert rules.offline_cap_s(farm(rules)) == 24 * HOUR
    ai = ["smart_scheduling", "ai_management"]
    assert rules.offline_cap_s(farm(rules, upgrades=ai)) == 48 * HOUR
    full = [*ai, "time_dilation"]
    assert rules.offline_cap_s(farm(rules, upgrades=full)) == 72 * HOUR
    s = farm(rules, upgrades=full)
    out = rules.come_online(rules.go_offline(s, T0).state, T0 + 100 * HOUR)
    report = out.result["report"]
    assert report["capped"] is True
    assert report["credited_s"] == 72 * HOUR
    assert report["efficiency"] == pytest.approx(0.8)
    assert report["gains"]["basic"] == pytest.approx(0.1 * 0.8 * 72 * HOUR)
    # Under the cap nothing is cut.
    short = rules.come_online(rules.go_offline(s, T0).state, T0 + 60 * HOUR).result["report"]
    assert short["capped"] is False
    assert short["credited_s"] == 60 * HOUR


def test_time_dilation_needs_ai_management(rules: Rules) -> None:
    s = farm(rules, balances={"ethereal": 1000.0})
    with pytest.raises(RequirementNotMet):
        rules.buy_upgrade(s, "time_dilation", T0)


# ---- prestige -------------------------------------------------------------------------------------------


def _ready_to_prestige(rules: Rules, run_value: float = 1e7) -> FarmState:
    s = farm(
        rules,
        balances={"basic": 5e6, "silver": 123.0},
        buildings={"barn": 50, "shears": 20},
        upgrades=["sharp_shears"],
        achievements={"first_wool": T0 - 10, "first_building": T0 - 5},
        soul_shears=2,
        prestige_count=1,
        lifetime_value=3e7,
        weekly_value=2e6,
        play_time_s=7200.0,
    )
    s.run_produced[BASIC] = run_value
    s.stats.shears = 77
    s.stats.building_levels_bought = 70
    return s


def test_prestige_at_run_value_1e7_gives_one_soul_shear(rules: Rules) -> None:
    s = _ready_to_prestige(rules)
    assert rules.prestige_preview(s, T0)["gain"] == 1
    out = rules.prestige(s, True, 1, T0)
    p = out.state
    assert out.result == {"gain": 1, "soul_shears": 3, "prestige_count": 2}
    # Reset: balances, buildings, upgrades, run value.
    assert p.balances == [0.0] * rules.n_tiers
    assert p.run_produced == [0.0] * rules.n_tiers
    assert rules.run_value(p, T0) == 0.0
    assert p.buildings == {}
    assert p.upgrades == []
    # Kept: soul shears (plus the gain), prestige count (plus one), achievements, lifetime, stats.
    assert p.soul_shears == 3
    assert p.prestige_count == 2
    assert {"first_wool", "first_building"} <= set(p.achievements)
    assert p.achievements["first_wool"] == T0 - 10
    assert p.lifetime_value == 3e7
    assert p.stats.shears == 77
    assert p.stats.building_levels_bought == 70
    assert p.play_time_s == 7200.0
    assert any(e["type"] == "prestige" and e["gain"] == 1 for e in out.events)
    # The new run produces with the new soul shears: 0.1 × 1.3 × (1 + 0.02 × achievements).
    assert basic_rate(rules, p) == pytest.approx(0.1 * 1.3 * (1 + 0.02 * len(p.achievements)))


def test_prestige_gain_is_floor_log10_of_run_value_over_1e6(rules: Rules) -> None:
    assert rules.prestige_gain(9_999_999.0) == 0
    assert rules.prestige_gain(1e7) == 1
    assert rules.prestige_gain(9.99e7) == 1
    assert rules.prestige_gain(1e8) == 2
    assert rules.prestige_gain(5e12) == 6
    out = rules.prestige(_ready_to_prestige(rules, run_value=2.5e9), True, None, T0)
    assert out.result["gain"] == 3


def test_prestige_counts_every_tier_by_value(rules: Rules) -> None:
    s = _ready_to_prestige(rules, run_value=0.0)
    s.run_produced[rules.tier_index["golden"]] = 1e5  # 1e5 × 100 = 1e7 in value
    assert rules.prestige(s, True, 1, T0).result["gain"] == 1


def test_prestige_with_a_stale_expected_gain_is_a_conflict(rules: Rules) -> None:
    s = _ready_to_prestige(rules)
    with pytest.raises(ActionConflict) as exc:
        rules.prestige(s, True, 2, T0)
    assert exc.value.extra["gain"] == 1


def test_prestige_without_confirm_is_invalid(rules: Rules) -> None:
    with pytest.raises(InvalidAction):
        rules.prestige(_ready_to_prestige(rules), False, 1, T0)
    with pytest.raises(InvalidAction):
        apply_action(rules, _ready_to_prestige(rules), Prestige(confirm=False), T0)


def test_prestige_below_1e7_is_refused(rules: Rules) -> None:
    with pytest.raises(RequirementNotMet):
        rules.prestige(_ready_to_prestige(rules, run_value=9_999_999.0), True, None, T0)
    with pytest.raises(RequirementNotMet):
        rules.prestige(farm(rules), True, None, T0)


def test_prestige_counts_production_up_to_now(rules: Rules) -> None:
    # 9.99e6 at the anchor plus 100 s of 1,000.1 basic/s crosses 1e7.
    s = _ready_to_prestige(rules, run_value=9.99e6)
    s.buildings = {"barn": 2000}
    s.upgrades = []
    s.achievements = {}
    s.soul_shears = 0
    with pytest.raises(RequirementNotMet):
        rules.prestige(s, True, None, T0)
    out = apply_action(rules, s, Prestige(confirm=True, expected_gain=1), T0 + 100.0)
    assert out.state.soul_shears == 1


def test_first_prestige_unlocks_its_achievement(rules: Rules) -> None:
    s = _ready_to_prestige(rules)
    s.prestige_count = 0
    out = rules.prestige(s, True, 1, T0)
    assert "first_prestige" in out.state.achievements
    keys = [e["key"] for e in out.events if e["type"] == "achievement_unlocked"]
    assert keys.count("first_prestige") == 1
    # The other unlocks are the ones the farm had already reached (lifetime 3e7, 2 h played).
    assert set(keys) == {"first_prestige", "wool_collector", "wool_tycoon", "dedicated_player"}
    types = [e["type"] for e in out.events]
    assert types.index("prestige") < types.index("achievement_unlocked")
    again = rules.settle(out.state, T0 + 1.0)
    assert not [e for e in again.events if e["type"] == "achievement_unlocked"]


# ---- achievements and discovery -----------------------------------------------------------------------------


def test_achievements_unlock_exactly_once(rules: Rules) -> None:
    s = farm(rules)
    early = rules.settle(s, T0 + 9.0)
    assert early.events == [{"type": "tier_discovered", "tier": "basic", "at": T0 + 9.0}]
    first = rules.settle(early.state, T0 + 11.0)  # lifetime 1.1 ≥ 1
    unlocked = [e for e in first.events if e["type"] == "achievement_unlocked"]
    assert [e["key"] for e in unlocked] == ["first_wool"]
    assert unlocked[0]["at"] == T0 + 11.0
    assert first.state.achievements == {"first_wool": T0 + 11.0}
    again = rules.settle(first.state, T0 + 20.0)
    assert again.events == []
    assert again.state.achievements == {"first_wool": T0 + 11.0}


def test_each_achievement_adds_two_percent(rules: Rules) -> None:
    keys = list(rules.achievements)
    assert len(keys) == 16
    base = farm(rules, buildings={"barn": 3})
    for n in (1, 5, 16):
        s = farm(rules, buildings={"barn": 3}, achievements={k: T0 for k in keys[:n]})
        assert rules.achievement_mult(s) == pytest.approx(1 + 0.02 * n)
        assert basic_rate(rules, s) == pytest.approx(basic_rate(rules, base) * (1 + 0.02 * n))


def test_achievement_bonus_applies_from_the_unlock_on(rules: Rules) -> None:
    s = farm(rules, balances={"basic": 10.0})
    out = rules.buy_building(s, "barn", 1, T0)
    assert "first_building" in out.state.achievements
    rate = 0.6 * 1.02
    later, _ = rules.advance(out.state, T0 + 100.0)
    assert later.balances[BASIC] == pytest.approx(100.0 * rate)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"lifetime_value": 1e9}, "wool_emperor"),
        ({"buildings": {"barn": 100}}, "mogul"),
        ({"prestige_count": 10}, "veteran"),
        ({"prestige_count": 100}, "legend"),
        ({"soul_shears": 100}, "quantum_master"),
        ({"play_time_s": 24 * HOUR}, "committed_farmer"),
        ({"play_time_s": 1000 * HOUR}, "eternal_guardian"),
    ],
)
def test_achievement_thresholds(rules: Rules, changes: dict[str, Any], key: str) -> None:
    out = rules.settle(farm(rules, **changes), T0)
    assert key in out.state.achievements


def test_automation_master_needs_every_building(rules: Rules) -> None:
    all_but_one = {k: 1 for k in rules.buildings if k != "dimension_gate"}
    assert "automation_master" not in rules.settle(farm(rules, buildings=all_but_one), T0).state.achievements
    every = {k: 1 for k in rules.buildings}
    assert "automation_master" in rules.settle(farm(rules, buildings=every), T0).state.achievements


def test_play_time_unlocks_dedicated_player_after_an_hour_online(rules: Rules) -> None:
    s = farm(rules)
    almost = rules.settle(s, T0 + 3599.0)
    assert "dedicated_player" not in almost.state.achievements
    hour = rules.settle(almost.state, T0 + 3600.0)
    assert "dedicated_player" in hour.state.achievements


def test_tier_discovered_fires_once_per_tier(rules: Rules) -> None:
    s = farm(rules, buildings={"barn": 5, "shears": 1})
    s1, events = rules.advance(s, T0 + 1.0)
    assert [e["tier"] for e in events] == ["basic", "silver"]
    assert all(e["type"] == "tier_discovered" and e["at"] == T0 + 1.0 for e in events)
    assert s1.discovered == ["basic", "silver"]
    s2, events2 = rules.advance(s1, T0 + 2.0)
    assert events2 == []
    s2.buildings["transport"] = 1
    _, events3 = rules.advance(s2, T0 + 3.0)
    assert [e["tier"] for e in events3] == ["golden"]


def test_shearing_discovers_basic(rules: Rules) -> None:
    out = rules.shear(farm(rules), 1, T0)
    assert {"type": "tier_discovered", "tier": "basic", "at": T0} in out.events
    again = rules.shear(out.state, 1, T0)
    assert not [e for e in again.events if e["type"] == "tier_discovered"]


# ---- leaderboard scores ------------------------------------------------------------------------------------------


def test_the_four_leaderboard_scores(rules: Rules) -> None:
    s = farm(rules, buildings={"barn": 5, "shears": 2}, soul_shears=4, lifetime_value=1000.0, weekly_value=100.0)
    rates = rules.rates(s)
    value_rate = rates[BASIC] + 10 * rates[SILVER]
    assert value_rate == pytest.approx((0.1 + 2.5 + 4.0 + 10 * 0.1) * 1.4)
    scores = rules.scores(s, T0 + 60.0)
    assert set(scores) == {"lifetime", "prestige", "rate", "weekly"}
    assert scores["lifetime"] == pytest.approx(1000.0 + 60.0 * value_rate)
    assert scores["prestige"] == 4.0
    assert scores["rate"] == pytest.approx(value_rate)
    assert scores["weekly"] == pytest.approx(100.0 + 60.0 * value_rate)
    # The scores agree with re-anchoring at that instant.
    moved, _ = rules.advance(s, T0 + 60.0)
    assert moved.lifetime_value == pytest.approx(scores["lifetime"])
    assert moved.weekly_value == pytest.approx(scores["weekly"])


def test_scores_at_an_instant_before_the_anchor_do_not_go_back(rules: Rules) -> None:
    # A view computed with a slightly stale `now` shows the anchored values, never less.
    s = farm(rules, buildings={"barn": 10}, lifetime_value=100.0, weekly_value=100.0)
    scores = rules.scores(s, T0 - 10.0)
    assert scores["lifetime"] == 100.0
    assert scores["weekly"] == 100.0
    assert rules.balances_at(s, T0 - 10.0) == s.balances


def test_an_offline_farm_scores_no_growth(rules: Rules) -> None:
    off = rules.go_offline(farm(rules, buildings={"barn": 10}, lifetime_value=500.0, weekly_value=50.0), T0).state
    scores = rules.scores(off, T0 + 3600.0)
    assert scores["lifetime"] == 500.0
    assert scores["weekly"] == 50.0


def test_iso_week_and_week_start(rules: Rules) -> None:
    assert iso_week(T0) == "2023-W46"
    monday = week_start(T0)
    assert monday == 1_699_833_600.0  # Monday 2023-11-13 00:00:00 UTC
    assert week_start(monday) == monday
    assert iso_week(monday) == "2023-W46"
    assert iso_week(monday - 1.0) == "2023-W45"
    assert week_start(monday - 1.0) == monday - 7 * DAY
    # ISO years: 2020-12-31 is in 2020-W53, 2021-01-04 opens 2021-W01.
    assert iso_week(1_609_372_800.0) == "2020-W53"
    assert iso_week(1_609_718_400.0) == "2021-W01"


def test_weekly_score_resets_at_the_iso_week_boundary(rules: Rules) -> None:
    boundary = week_start(T0) + 7 * DAY  # Monday 2023-11-20 00:00 UTC
    start = boundary - 60.0
    s = farm(rules, now=start, buildings={"barn": 2}, weekly_value=500.0, lifetime_value=500.0)  # 1.1 basic/s
    assert s.week == "2023-W46"
    before = rules.scores(s, boundary - 1.0)
    assert before["weekly"] == pytest.approx(500.0 + 59 * 1.1)
    after = rules.scores(s, boundary + 60.0)
    assert after["weekly"] == pytest.approx(60 * 1.1)  # only what was made since Monday 00:00
    assert after["lifetime"] == pytest.approx(500.0 + 120 * 1.1)
    moved, _ = rules.advance(s, boundary + 60.0)
    assert moved.week == "2023-W47"
    assert moved.weekly_value == pytest.approx(60 * 1.1)
    # Re-anchoring just before the boundary then after it gives the same numbers.
    mid, _ = rules.advance(s, boundary - 10.0)
    two_step, _ = rules.advance(mid, boundary + 60.0)
    assert two_step.weekly_value == pytest.approx(moved.weekly_value)


def test_weekly_score_of_an_offline_farm_resets_next_week(rules: Rules) -> None:
    boundary = week_start(T0) + 7 * DAY
    off = rules.go_offline(farm(rules, weekly_value=250.0), T0).state
    assert rules.scores(off, boundary - 1.0)["weekly"] == 250.0
    assert rules.scores(off, boundary + 1.0)["weekly"] == 0.0
    # Returning next week counts the credited absence in the new week only.
    back = rules.come_online(off, boundary + HOUR)
    assert back.state.week == "2023-W47"
    assert back.state.weekly_value == pytest.approx(back.result["report"]["value_gained"])


# ---- storage round trip ---------------------------------------------------------------------------------------------


def test_farm_state_round_trips_through_its_document(rules: Rules) -> None:
    s = farm(rules, balances={"basic": 1e6}, buildings={"barn": 3})
    s = apply_action(rules, s, BuyBuilding("barn", 5), T0 + 5).state
    s = apply_action(rules, s, BuyUpgrade("sharp_shears"), T0 + 6).state
    s = apply_action(rules, s, Shear(7), T0 + 7).state
    s = rules.go_offline(s, T0 + 10).state
    s = rules.come_online(s, T0 + 5 * HOUR).state
    s.soul_shears = 3
    s.prestige_count = 2
    s.revision = 42
    assert s.offline_report is not None
    doc = s.to_doc()
    assert doc["v"] == 1
    assert "revision" not in doc
    back = FarmState.from_doc(json.loads(json.dumps(doc)), revision=42)
    assert back == s
    assert back.to_doc() == doc


def test_a_new_farm_round_trips(rules: Rules) -> None:
    s = farm(rules)
    assert FarmState.from_doc(s.to_doc(), revision=0) == s


# ---- bad configuration is refused with the field named -----------------------------------------------------------


def test_the_shipped_config_parses(raw_balance: dict[str, Any], raw_config: dict[str, Any]) -> None:
    balance = parse_balance(raw_balance)
    assert [t.key for t in balance.tiers][:3] == ["basic", "silver", "golden"]
    assert len(balance.buildings.list) == 8
    assert len(balance.upgrades) == 12
    assert len(balance.achievements) == 16
    assert parse_game_config(raw_config).production.baseProductionRate == 0.1


def test_a_negative_base_rate_is_refused_naming_the_field(raw_config: dict[str, Any]) -> None:
    cfg = copy.deepcopy(raw_config)
    cfg["production"]["baseProductionRate"] = -1
    with pytest.raises(BalanceError, match=r"production\.baseProductionRate"):
        parse_game_config(cfg)


def test_a_missing_config_field_is_refused_naming_it(raw_config: dict[str, Any]) -> None:
    cfg = copy.deepcopy(raw_config)
    del cfg["antiCheat"]["maxActionsPerMinute"]
    with pytest.raises(BalanceError, match=r"antiCheat\.maxActionsPerMinute"):
        parse_game_config(cfg)


def test_an_offline_efficiency_above_one_is_refused(raw_config: dict[str, Any]) -> None:
    cfg = copy.deepcopy(raw_config)
    cfg["production"]["offlineEfficiency"] = 1.5
    with pytest.raises(BalanceError, match=r"game-config\.json: production\.offlineEfficiency"):
        parse_game_config(cfg)


def test_an_unknown_cost_tier_is_refused_naming_the_building(raw_balance: dict[str, Any]) -> None:
    bal = copy.deepcopy(raw_balance)
    bal["buildings"]["list"][0]["cost_tier"] = "nope"
    with pytest.raises(BalanceError, match=r"buildings\.list\.barn\.cost_tier") as exc:
        parse_balance(bal)
    assert "'nope'" in str(exc.value)


def test_a_growth_of_one_is_refused_naming_the_field(raw_balance: dict[str, Any]) -> None:
    bal = copy.deepcopy(raw_balance)
    bal["buildings"]["list"][2]["growth"] = 1.0
    with pytest.raises(BalanceError, match=r"buildings\.list\.2\.growth"):
        parse_balance(bal)


def test_an_unknown_upgrade_requirement_is_refused(raw_balance: dict[str, Any]) -> None:
    bal = copy.deepcopy(raw_balance)
    bal["upgrades"][1]["requires"]["upgrades"] = ["blunt_shears"]
    with pytest.raises(BalanceError, match=r"upgrades\.better_tools\.requires\.upgrades"):
        parse_balance(bal)


def test_an_unknown_key_in_the_tables_is_refused(raw_balance: dict[str, Any]) -> None:
    bal = copy.deepcopy(raw_balance)
    bal["shear"]["max_per_second"] = 20
    with pytest.raises(BalanceError, match=r"shear\.max_per_second"):
        parse_balance(bal, source="custom.toml")
    with pytest.raises(BalanceError, match=r"^custom\.toml: "):
        parse_balance(bal, source="custom.toml")


def test_a_duplicate_tier_is_refused(raw_balance: dict[str, Any]) -> None:
    bal = copy.deepcopy(raw_balance)
    bal["tiers"].append(dict(bal["tiers"][0]))
    with pytest.raises(BalanceError, match="tiers: duplicate key"):
        parse_balance(bal)


def test_closed_form_never_produces_nan(rules: Rules) -> None:
    s = farm(rules, buildings={k: 1000 for k in rules.buildings}, upgrades=list(rules.upgrades), soul_shears=10**6)
    assert all(math.isfinite(r) and r > 0 for r in rules.rates(s))
