"""The farm through the real server: state, shearing, buildings, upgrades, prestige, offline, config.

Most tests run on a fake clock with no tick loop (`frozen`), so every balance
is exact: time moves only when the test advances it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from llamawool.api.schemas import ActionResponse, FarmView
from tests.conftest import API, engine_of, new_guest
from tests.helpers import FakeClock

from .support import act, expect_problem, get_farm, ok_json, shear, take_offline

TIERS = [
    "basic",
    "silver",
    "golden",
    "rainbow",
    "cosmic",
    "ethereal",
    "temporal",
    "dimensional",
    "celestial",
    "quantum",
]
BUILDINGS = ["barn", "shears", "transport", "factory", "lab", "portal", "time_machine", "dimension_gate"]


def barn_cost(level: int, quantity: int) -> float:
    """GAME.md: level n -> n+1 costs 10 x 1.15^n basic."""
    return sum(10 * 1.15**n for n in range(level, level + quantity))


async def buy(client: TestClient, key: str, headers: dict[str, str], quantity: Any = 1) -> Any:
    return await client.post(f"{API}/farm/buildings/{key}/purchase", json={"quantity": quantity}, headers=headers)


# ---- GET /farm -------------------------------------------------------------------------


async def test_get_farm_is_the_whole_farm_with_a_strong_etag(frozen: TestClient, clock: FakeClock) -> None:
    guest = await new_guest(frozen)
    resp = await frozen.get(f"{API}/farm", headers=guest["headers"])
    farm = await ok_json(resp)
    FarmView.model_validate(farm)
    assert resp.headers["ETag"] == f'"{farm["revision"]}"'
    assert resp.headers["Cache-Control"] == "private, no-store"
    assert farm["player_id"] == guest["player"]["id"]
    assert farm["online"] is True
    assert farm["server_time"] == clock.now
    assert list(farm["balances"]) == TIERS
    assert list(farm["rates"]) == TIERS
    assert farm["balances"] == dict.fromkeys(TIERS, 0.0)
    assert farm["rates"]["basic"] == pytest.approx(0.1)
    assert all(farm["rates"][t] == 0.0 for t in TIERS[1:])
    assert farm["buildings"] == dict.fromkeys(BUILDINGS, 0)
    assert farm["upgrades"] == []
    assert farm["soul_shears"] == 0 and farm["prestige_count"] == 0
    assert farm["achievements"] == {}
    assert farm["click_power"] == 1.0
    assert farm["shear_tokens"] == 40.0

    clock.advance(50)
    later = await get_farm(frozen, guest["headers"])
    assert later["balances"]["basic"] == pytest.approx(5.0)  # 0.1/s x 50 s, in closed form
    assert later["server_time"] == clock.now
    assert later["revision"] == farm["revision"]  # passive production writes nothing


async def test_farm_routes_need_a_token(client: TestClient) -> None:
    for path in ("/farm", "/farm/production", "/farm/buildings", "/farm/upgrades", "/farm/prestige",
                 "/farm/offline-report", "/farm/achievements"):  # fmt: skip
        await expect_problem(await client.get(f"{API}{path}"), 401, "AUTH_REQUIRED")
    resp = await client.post(f"{API}/farm/shear", json={"count": 1})
    await expect_problem(resp, 401, "AUTH_REQUIRED")


# ---- shearing ----------------------------------------------------------------------------


async def test_shear_adds_count_times_click_power_basic_wool(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    before = await get_farm(frozen, guest["headers"])
    resp = await frozen.post(f"{API}/farm/shear", json={"count": 5}, headers=guest["headers"])
    body = await ok_json(resp)
    ActionResponse.model_validate(body)
    assert body["result"] == {"requested": 5, "sheared": 5, "dropped": 0, "wool": 5.0}
    assert body["farm"]["balances"]["basic"] == 5.0
    assert body["farm"]["revision"] == before["revision"] + 1
    assert resp.headers["ETag"] == f'"{body["farm"]["revision"]}"'
    assert body["farm"]["stats"]["shears"] == 5
    events = {e["type"] for e in body["events"]}
    assert {"tier_discovered", "achievement_unlocked"} <= events
    assert "first_wool" in body["farm"]["achievements"]

    after = await get_farm(frozen, guest["headers"])
    assert after["balances"]["basic"] == 5.0
    assert after["revision"] == body["farm"]["revision"]


async def test_shear_without_a_body_shears_once(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    body = await ok_json(await frozen.post(f"{API}/farm/shear", headers=guest["headers"]))
    assert body["result"]["sheared"] == 1


async def test_shear_token_bucket_drops_the_excess(frozen: TestClient, clock: FakeClock) -> None:
    guest = await new_guest(frozen)
    results = await asyncio.gather(*(shear(frozen, guest["headers"], 20) for _ in range(3)))
    assert sorted(r["result"]["sheared"] for r in results) == [0, 20, 20]
    assert sorted(r["result"]["dropped"] for r in results) == [0, 0, 20]
    farm = await get_farm(frozen, guest["headers"])
    assert farm["balances"]["basic"] == 40.0  # only the admitted shears were credited
    assert farm["stats"]["shears"] == 40
    assert farm["shear_tokens"] == 0.0

    clock.advance(0.5)  # refills 20/s
    half = await shear(frozen, guest["headers"], 20)
    assert half["result"] == {"requested": 20, "sheared": 10, "dropped": 10, "wool": 10.0}


async def test_shear_count_outside_1_to_20_is_422(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    for count in (0, 21, -1, "five", 2.5, None, [5]):
        resp = await frozen.post(f"{API}/farm/shear", json={"count": count}, headers=guest["headers"])
        body = await expect_problem(resp, 422, "VALIDATION_ERROR")
        assert body["errors"][0]["field"] == "count", count
    farm = await get_farm(frozen, guest["headers"])
    assert farm["balances"]["basic"] == 0.0
    assert farm["stats"]["shears"] == 0


# ---- buildings -----------------------------------------------------------------------------


async def test_buy_a_barn_with_wool_that_accrued(frozen: TestClient, clock: FakeClock, farmer: dict[str, Any]) -> None:
    clock.advance(150)  # 15 basic
    resp = await buy(frozen, "barn", farmer["headers"])
    body = await ok_json(resp)
    ActionResponse.model_validate(body)
    assert body["result"]["building"] == "barn"
    assert body["result"]["bought"] == 1
    assert body["result"]["level"] == 1
    assert body["result"]["cost"] == pytest.approx(10.0)
    farm = body["farm"]
    assert farm["buildings"]["barn"] == 1
    assert farm["balances"]["basic"] == pytest.approx(5.0)
    # first_wool and first_building unlocked: (0.1 + 0.5) x 1.04
    assert set(farm["achievements"]) == {"first_wool", "first_building"}
    assert farm["rates"]["basic"] == pytest.approx(0.6 * 1.04)
    assert resp.headers["ETag"] == f'"{farm["revision"]}"'

    clock.advance(10)
    later = await get_farm(frozen, farmer["headers"])
    assert later["balances"]["basic"] == pytest.approx(5.0 + 10 * 0.6 * 1.04)


async def test_buying_without_enough_wool_is_409_and_changes_nothing(
    frozen: TestClient, clock: FakeClock, farmer: dict[str, Any]
) -> None:
    clock.advance(50)  # 5 basic, a barn costs 10
    before = await get_farm(frozen, farmer["headers"])
    resp = await buy(frozen, "barn", farmer["headers"])
    body = await expect_problem(resp, 409, "INSUFFICIENT_RESOURCES")
    assert body["tier"] == "basic"
    assert body["cost"] == pytest.approx(10.0)
    assert body["balance"] == pytest.approx(5.0)
    after = await get_farm(frozen, farmer["headers"])
    assert after["revision"] == before["revision"]
    assert after["buildings"]["barn"] == 0
    assert after["balances"] == before["balances"]


async def test_buying_a_locked_building_is_409_requirement_not_met(
    frozen: TestClient, clock: FakeClock, farmer: dict[str, Any]
) -> None:
    clock.advance(10_000)  # plenty of basic wool for Auto Shears (100)
    resp = await buy(frozen, "shears", farmer["headers"])
    body = await expect_problem(resp, 409, "REQUIREMENT_NOT_MET")
    assert body["requires"] == {"barn": 5}
    farm = await get_farm(frozen, farmer["headers"])
    assert farm["buildings"]["shears"] == 0


async def test_buying_an_unknown_building_is_404(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    resp = await buy(frozen, "castle", guest["headers"])
    body = await expect_problem(resp, 404, "NOT_FOUND")
    assert body["building"] == "castle"


async def test_buy_quantity_max_buys_the_most_affordable(
    frozen: TestClient, clock: FakeClock, farmer: dict[str, Any]
) -> None:
    clock.advance(1000)  # 100 basic: 6 barns cost 87.5, 7 cost 110.7
    body = await ok_json(await buy(frozen, "barn", farmer["headers"], "max"))
    assert body["result"]["bought"] == 6
    assert body["farm"]["buildings"]["barn"] == 6
    assert body["result"]["cost"] == pytest.approx(barn_cost(0, 6))
    assert body["farm"]["balances"]["basic"] == pytest.approx(100.0 - barn_cost(0, 6))

    # Nothing affordable now: "max" refuses instead of buying zero.
    resp = await buy(frozen, "barn", farmer["headers"], "max")
    await expect_problem(resp, 409, "INSUFFICIENT_RESOURCES")


async def test_buy_a_quantity_pays_the_geometric_sum(
    frozen: TestClient, clock: FakeClock, farmer: dict[str, Any]
) -> None:
    clock.advance(1000)
    body = await ok_json(await buy(frozen, "barn", farmer["headers"], 3))
    assert body["result"]["bought"] == 3
    assert body["result"]["cost"] == pytest.approx(barn_cost(0, 3))
    body = await ok_json(await buy(frozen, "barn", farmer["headers"], 2))
    assert body["result"]["level"] == 5
    assert body["result"]["cost"] == pytest.approx(barn_cost(3, 2))


async def test_buy_quantity_must_be_1_to_100_or_max(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    for quantity in (0, 101, "all", "MAX", -3, 1.5):
        resp = await buy(frozen, "barn", guest["headers"], quantity)
        body = await expect_problem(resp, 422, "VALIDATION_ERROR")
        assert all(e["field"].startswith("quantity") for e in body["errors"]), (quantity, body)


async def test_get_buildings_lists_cost_affordability_and_requirements(
    frozen: TestClient, clock: FakeClock, farmer: dict[str, Any]
) -> None:
    clock.advance(250)  # 25 basic
    resp = await frozen.get(f"{API}/farm/buildings", headers=farmer["headers"])
    body = await ok_json(resp)
    assert resp.headers["ETag"] == f'"{body["revision"]}"'
    by_key = {b["key"]: b for b in body["buildings"]}
    assert list(by_key) == BUILDINGS
    barn = by_key["barn"]
    assert barn["level"] == 0
    assert barn["next_cost"] == pytest.approx(10.0)
    assert barn["cost_10"] == pytest.approx(barn_cost(0, 10))
    assert barn["max_affordable"] == 2  # 10 + 11.5 <= 25 < 34.7
    assert barn["unlocked"] is True
    assert barn["produces"] == {"basic": 0.5}
    assert by_key["shears"]["unlocked"] is False
    assert by_key["shears"]["requires"] == {"barn": 5}
    assert by_key["shears"]["max_affordable"] == 0


# ---- upgrades ---------------------------------------------------------------------------------


async def test_upgrades_list_and_purchase(frozen: TestClient, clock: FakeClock, farmer: dict[str, Any]) -> None:
    listing = await ok_json(await frozen.get(f"{API}/farm/upgrades", headers=farmer["headers"]))
    by_key = {u["key"]: u for u in listing["upgrades"]}
    assert len(by_key) == 12
    assert by_key["sharp_shears"]["cost"] == {"tier": "basic", "amount": 100.0}
    assert by_key["sharp_shears"]["owned"] is False
    assert by_key["sharp_shears"]["missing_requirements"] == []
    assert by_key["better_tools"]["missing_requirements"] == ["upgrade sharp_shears"]

    resp = await frozen.post(f"{API}/farm/upgrades/sharp_shears/purchase", headers=farmer["headers"])
    body = await expect_problem(resp, 409, "INSUFFICIENT_RESOURCES")
    assert body["cost"] == 100.0

    clock.advance(1001)  # 100.1 basic
    resp = await frozen.post(f"{API}/farm/upgrades/better_tools/purchase", headers=farmer["headers"])
    await expect_problem(resp, 409, "REQUIREMENT_NOT_MET")

    bought = await act(frozen, "/farm/upgrades/sharp_shears/purchase", farmer["headers"])
    assert bought["result"] == {"upgrade": "sharp_shears", "cost": 100.0, "cost_tier": "basic"}
    assert bought["farm"]["upgrades"] == ["sharp_shears"]
    assert bought["farm"]["click_power"] == 2.0
    assert bought["farm"]["balances"]["basic"] == pytest.approx(0.1)

    sheared = await shear(frozen, farmer["headers"], 3)
    assert sheared["result"]["wool"] == 6.0  # click x2

    again = await frozen.post(f"{API}/farm/upgrades/sharp_shears/purchase", json={}, headers=farmer["headers"])
    await expect_problem(again, 409, "CONFLICT")
    listing = await ok_json(await frozen.get(f"{API}/farm/upgrades", headers=farmer["headers"]))
    owned = {u["key"] for u in listing["upgrades"] if u["owned"]}
    assert owned == {"sharp_shears"}


async def test_unknown_upgrade_is_404_and_the_body_must_be_empty(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    resp = await frozen.post(f"{API}/farm/upgrades/time_travel/purchase", headers=guest["headers"])
    body = await expect_problem(resp, 404, "NOT_FOUND")
    assert body["upgrade"] == "time_travel"
    resp = await frozen.post(
        f"{API}/farm/upgrades/sharp_shears/purchase", json={"quantity": 2}, headers=guest["headers"]
    )
    await expect_problem(resp, 422, "VALIDATION_ERROR")


# ---- prestige -----------------------------------------------------------------------------------


async def test_prestige_preview_and_refusal_on_a_young_farm(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    preview = await ok_json(await frozen.get(f"{API}/farm/prestige", headers=guest["headers"]))
    assert preview["gain"] == 0
    assert preview["allowed"] is False
    assert preview["next_gain_at_run_value"] == pytest.approx(1e7)
    resp = await frozen.post(f"{API}/farm/prestige", json={"confirm": True}, headers=guest["headers"])
    await expect_problem(resp, 409, "REQUIREMENT_NOT_MET")


async def test_prestige_with_the_expected_gain(frozen: TestClient, clock: FakeClock, farmer: dict[str, Any]) -> None:
    clock.advance(1.5e8)  # 0.1/s -> a run value of 1.5e7: gain floor(log10(15)) = 1
    preview = await ok_json(await frozen.get(f"{API}/farm/prestige", headers=farmer["headers"]))
    assert preview["run_value"] == pytest.approx(1.5e7)
    assert preview["gain"] == 1
    assert preview["allowed"] is True
    assert preview["soul_shears_after"] == 1

    resp = await frozen.post(
        f"{API}/farm/prestige", json={"confirm": True, "expected_gain": 2}, headers=farmer["headers"]
    )
    body = await expect_problem(resp, 409, "CONFLICT")
    assert body["gain"] == 1
    resp = await frozen.post(f"{API}/farm/prestige", json={"confirm": False}, headers=farmer["headers"])
    await expect_problem(resp, 422, "VALIDATION_ERROR")
    resp = await frozen.post(f"{API}/farm/prestige", json={"expected_gain": 1}, headers=farmer["headers"])
    body = await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert body["errors"][0]["field"] == "confirm"
    untouched = await get_farm(frozen, farmer["headers"])
    assert untouched["soul_shears"] == 0
    assert untouched["balances"]["basic"] == pytest.approx(1.5e7)

    done = await act(frozen, "/farm/prestige", farmer["headers"], {"confirm": True, "expected_gain": 1})
    assert done["result"] == {"gain": 1, "soul_shears": 1, "prestige_count": 1}
    assert any(e["type"] == "prestige" and e["gain"] == 1 for e in done["events"])
    farm = done["farm"]
    assert farm["soul_shears"] == 1
    assert farm["prestige_count"] == 1
    assert farm["balances"] == dict.fromkeys(TIERS, 0.0)
    assert farm["run_value"] == 0.0
    assert farm["lifetime_value"] == pytest.approx(1.5e7)  # kept
    assert "first_prestige" in farm["achievements"]
    assert farm["click_power"] == pytest.approx(1.1)  # +10 % per soul shear

    after = await ok_json(await frozen.get(f"{API}/farm/prestige", headers=farmer["headers"]))
    assert after["gain"] == 0 and after["allowed"] is False and after["soul_shears"] == 1


# ---- offline ----------------------------------------------------------------------------------------


async def test_offline_report_after_an_absence(frozen: TestClient, clock: FakeClock) -> None:
    guest = await new_guest(frozen)
    pid = guest["player"]["id"]
    resp = await frozen.get(f"{API}/farm/offline-report", headers=guest["headers"])
    await expect_problem(resp, 404, "NOT_FOUND")

    await shear(frozen, guest["headers"], 5)  # discovers basic, unlocks first_wool: rate 0.1 x 1.02
    t0 = clock.now
    engine = engine_of(frozen)
    clock.advance(121)  # past the 120 s online window
    await take_offline(frozen, pid)
    assert engine.resident_state(pid) is None
    clock.advance(3600)

    back = await get_farm(frozen, guest["headers"])
    assert back["online"] is True
    rate = 0.1 * 1.02
    assert back["rates"]["basic"] == pytest.approx(rate)

    resp = await frozen.get(f"{API}/farm/offline-report", headers=guest["headers"])
    report = await ok_json(resp)
    assert resp.headers["ETag"] == f'"{back["revision"]}"'
    assert report["went_offline_at"] == pytest.approx(t0 + 120)
    assert report["returned_at"] == pytest.approx(clock.now)
    assert report["elapsed_s"] == pytest.approx(3601)
    assert report["credited_s"] == pytest.approx(3601)
    assert report["capped"] is False
    assert report["efficiency"] == 0.5
    assert report["cap_s"] == 24 * 3600
    gain = rate * 0.5 * 3601
    assert report["gains"]["basic"] == pytest.approx(gain)
    assert all(report["gains"][t] == 0.0 for t in TIERS[1:])
    assert report["value_gained"] == pytest.approx(gain)
    # online until the window ran out, then half speed while away
    assert back["balances"]["basic"] == pytest.approx(5 + rate * 120 + gain)
    assert back["stats"]["offline_credits"] == 1

    # Coming back is credited once: more requests credit nothing more.
    again = await get_farm(frozen, guest["headers"])
    assert again["revision"] == back["revision"]
    assert again["balances"] == back["balances"]
    assert again["stats"]["offline_credits"] == 1
    still = await ok_json(await frozen.get(f"{API}/farm/offline-report", headers=guest["headers"]))
    assert still == report


async def test_offline_credit_is_capped_at_24_hours(frozen: TestClient, clock: FakeClock) -> None:
    guest = await new_guest(frozen)
    await shear(frozen, guest["headers"], 5)
    clock.advance(121)
    await take_offline(frozen, guest["player"]["id"])
    clock.advance(30 * 3600)
    report = await ok_json(await frozen.get(f"{API}/farm/offline-report", headers=guest["headers"]))
    assert report["capped"] is True
    assert report["credited_s"] == 24 * 3600
    assert report["elapsed_s"] == pytest.approx(30 * 3600 + 1)
    assert report["gains"]["basic"] == pytest.approx(0.1 * 1.02 * 0.5 * 24 * 3600)


async def test_a_farm_silent_past_the_online_window_is_offline_even_before_a_tick(
    frozen: TestClient, clock: FakeClock
) -> None:
    """No tick noticed the absence (none ran); the next request still credits it
    as offline from the moment the 120 s window ran out."""
    guest = await new_guest(frozen)
    await shear(frozen, guest["headers"], 5)  # rate 0.1 x 1.02 from now
    t0 = clock.now
    clock.advance(150)
    farm = await get_farm(frozen, guest["headers"])
    report = await ok_json(await frozen.get(f"{API}/farm/offline-report", headers=guest["headers"]))
    assert report["went_offline_at"] == pytest.approx(t0 + 120)
    assert report["elapsed_s"] == pytest.approx(30)
    rate = 0.1 * 1.02
    assert farm["balances"]["basic"] == pytest.approx(5 + rate * 120 + rate * 0.5 * 30)


async def test_an_action_after_an_absence_is_credited_first(frozen: TestClient, clock: FakeClock) -> None:
    guest = await new_guest(frozen)
    await shear(frozen, guest["headers"], 5)
    clock.advance(121)
    await take_offline(frozen, guest["player"]["id"])
    clock.advance(3600)
    body = await shear(frozen, guest["headers"], 1)
    credit = 0.1 * 1.02 * 0.5 * 3601
    assert body["farm"]["balances"]["basic"] == pytest.approx(5 + 0.102 * 120 + credit + 1)
    assert body["farm"]["stats"]["offline_credits"] == 1
    assert body["result"]["sheared"] == 1


# ---- production, achievements, config ------------------------------------------------------------------


async def test_production_breakdown(frozen: TestClient, clock: FakeClock, farmer: dict[str, Any]) -> None:
    clock.advance(1000)
    await ok_json(await buy(frozen, "barn", farmer["headers"], 4))
    resp = await frozen.get(f"{API}/farm/production", headers=farmer["headers"])
    body = await ok_json(resp)
    assert resp.headers["ETag"] == f'"{body["revision"]}"'
    tiers = {t["tier"]: t for t in body["tiers"]}
    assert list(tiers) == TIERS
    basic = tiers["basic"]
    assert basic["base"] == pytest.approx(0.1)
    assert basic["buildings"] == {"barn": pytest.approx(4 * 0.5)}
    assert basic["tier_mult"] == 1.0 and basic["all_mult"] == 1.0 and basic["prestige_mult"] == 1.0
    assert basic["achievement_mult"] == pytest.approx(1.04)  # first_wool, first_building
    assert basic["auto_clicker"] == 0.0
    assert basic["rate"] == pytest.approx((0.1 + 2.0) * 1.04)
    assert tiers["silver"]["rate"] == 0.0 and tiers["silver"]["buildings"] == {}
    assert body["value_per_second"] == pytest.approx(basic["rate"])
    assert body["click_power"] == 1.0
    assert body["offline_efficiency"] == 0.5
    assert body["offline_cap_s"] == 24 * 3600
    farm = await get_farm(frozen, farmer["headers"])
    assert farm["rates"]["basic"] == pytest.approx(basic["rate"])


async def test_achievements_with_unlock_time_and_progress(
    frozen: TestClient, clock: FakeClock, farmer: dict[str, Any]
) -> None:
    body = await ok_json(await frozen.get(f"{API}/farm/achievements", headers=farmer["headers"]))
    assert len(body["achievements"]) == 16
    assert body["bonus"] == 1.0
    assert all(a["unlocked_at"] is None for a in body["achievements"])

    await shear(frozen, farmer["headers"], 10)
    unlock_time = clock.now
    clock.advance(900)  # 90 more basic: lifetime 100 of 1e3
    body = await ok_json(await frozen.get(f"{API}/farm/achievements", headers=farmer["headers"]))
    by_key = {a["key"]: a for a in body["achievements"]}
    assert by_key["first_wool"]["unlocked_at"] == unlock_time
    assert by_key["first_wool"]["progress"] == 1.0
    assert by_key["wool_collector"]["unlocked_at"] is None
    assert by_key["wool_collector"]["progress"] == pytest.approx((10 + 900 * 0.102) / 1e3)
    assert by_key["dedicated_player"]["progress"] == pytest.approx(900 / 3600)
    assert body["bonus"] == pytest.approx(1.02)


async def test_config_is_public_and_complete(client: TestClient) -> None:
    resp = await client.get(f"{API}/config")
    body = await ok_json(resp)
    assert "public" in resp.headers["Cache-Control"]
    assert [t["key"] for t in body["tiers"]] == TIERS
    assert [b["key"] for b in body["buildings"]] == BUILDINGS
    assert len(body["upgrades"]) == 12
    assert len(body["achievements"]) == 16
    assert body["tick_interval_s"] == 0.05
    assert body["max_building_level"] == 1000
    assert body["max_bulk_quantity"] == 100
    assert body["shear"]["bucket_capacity"] == 40
    assert body["offline"]["online_window_s"] == 120
    assert body["offline"]["base_efficiency"] == 0.5
    assert body["base_production_rate"] == 0.1
    assert body["max_actions_per_minute"] == 60
