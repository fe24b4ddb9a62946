"""Cloud saves through the real server: history, signed downloads, and uploads from
offline play that are accepted only when plausible, leaving the server state
exactly as it was otherwise."""

from __future__ import annotations

import copy
import hashlib
import hmac
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from llamawool.api.app import context
from tests.conftest import API, new_guest
from tests.helpers import FakeClock

from .fairplay import violations_total
from .support import expect_problem, get_farm, ok_json, shear, take_offline

SAVES = f"{API}/farm/saves"
OFFLINE_S = 600.0


async def latest(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    resp = await client.get(f"{SAVES}/latest", headers=headers)
    body = await ok_json(resp)
    assert resp.headers["ETag"] == f'"{body["revision"]}"'
    return body


async def upload(
    client: TestClient, headers: dict[str, str], save: dict[str, Any], if_match: str | None = "base"
) -> Any:
    extra = {}
    if if_match == "base":
        extra["If-Match"] = f'"{save["revision"]}"'
    elif if_match is not None:
        extra["If-Match"] = if_match
    return await client.post(SAVES, json=save, headers={**headers, **extra})


def claim(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The downloaded save with `farm` changed to what the offline client claims."""
    save = copy.deepcopy(base)
    for key, value in changes.items():
        if key in ("balances", "buildings"):
            save["farm"][key].update(value)
        else:
            save["farm"][key] = value
    return save


async def server_state(client: TestClient, guest: dict[str, Any]) -> tuple[Any, ...]:
    """What the client sees and what is stored: a refused upload must change neither."""
    farm = await get_farm(client, guest["headers"])
    stored = await context(client.server.app).store.load_farm(guest["player"]["id"])
    assert stored is not None
    seen = (farm["revision"], farm["balances"], farm["buildings"], farm["upgrades"], farm["lifetime_value"])
    return seen, stored.revision, orjson.dumps(stored.doc, option=orjson.OPT_SORT_KEYS)


async def farm_with_wool(client: TestClient) -> dict[str, Any]:
    guest = await new_guest(client)
    await shear(client, guest["headers"], 20)
    await shear(client, guest["headers"], 20)  # 40 basic, revision 3
    return guest


# ---- history and downloads --------------------------------------------------------------------


async def test_history_is_newest_first_and_every_save_is_signed(frozen: TestClient, settings: Any) -> None:
    guest = await new_guest(frozen)
    await shear(frozen, guest["headers"], 1)
    second = await latest(frozen, guest["headers"])
    await shear(frozen, guest["headers"], 2)
    third = await latest(frozen, guest["headers"])
    assert (second["revision"], third["revision"]) == (2, 3)

    history = await ok_json(await frozen.get(SAVES, headers=guest["headers"]))
    assert [s["revision"] for s in history["saves"]] == [3, 2, 1]
    assert [s["farm_value"] for s in history["saves"]] == [3.0, 1.0, 0.0]
    assert all(set(s) == {"revision", "taken_at", "farm_value"} for s in history["saves"])

    old = await ok_json(await frozen.get(f"{SAVES}/2", headers=guest["headers"]))
    assert old == second
    assert old["format"] == "llamawool-save" and old["version"] == 1
    assert old["player_id"] == guest["player"]["id"]
    assert old["farm"]["balances"]["basic"] == 1.0
    assert set(old["farm"]) == {"balances", "buildings", "upgrades", "soul_shears", "prestige_count"}
    # the README's format: HMAC-SHA256 over the canonical JSON of everything but signature and farm_value
    key = settings.resolved_save_secret()
    for save in (second, third):
        content = {k: v for k, v in save.items() if k not in ("signature", "farm_value")}
        expected = hmac.new(key, orjson.dumps(content, option=orjson.OPT_SORT_KEYS), hashlib.sha256).hexdigest()
        assert save["signature"] == expected

    await expect_problem(await frozen.get(f"{SAVES}/999", headers=guest["headers"]), 404, "NOT_FOUND")
    await expect_problem(await frozen.get(f"{SAVES}/two", headers=guest["headers"]), 422, "VALIDATION_ERROR")
    await expect_problem(await frozen.get(SAVES), 401, "AUTH_REQUIRED")


async def test_latest_of_an_unchanged_farm_is_the_same_save(frozen: TestClient) -> None:
    guest = await farm_with_wool(frozen)
    first = await latest(frozen, guest["headers"])
    again = await latest(frozen, guest["headers"])
    assert first == again
    history = await ok_json(await frozen.get(SAVES, headers=guest["headers"]))
    assert [s["revision"] for s in history["saves"]].count(first["revision"]) == 1


# ---- a genuine offline session is accepted --------------------------------------------------------


async def test_a_genuine_offline_session_is_accepted(frozen: TestClient, clock: FakeClock) -> None:
    guest = await farm_with_wool(frozen)
    pid = guest["player"]["id"]
    rate = (await get_farm(frozen, guest["headers"]))["rates"]["basic"]
    base = await latest(frozen, guest["headers"])
    assert base["farm"]["balances"]["basic"] == 40.0

    # the phone loses its connection; the server sees the farm go offline
    clock.advance(130)
    await take_offline(frozen, pid)
    clock.advance(OFFLINE_S - 130)
    elapsed = clock() - base["taken_at"]
    assert elapsed == OFFLINE_S
    # offline, the client produced at its rate and bought a barn it could afford
    barn_cost = 10.0
    basic = 40.0 + rate * elapsed - barn_cost
    save = claim(base, balances={"basic": basic}, buildings={"barn": 1})

    resp = await upload(frozen, guest["headers"], save)
    body = await ok_json(resp)
    assert body["result"]["accepted"] is True
    assert body["result"]["produced"]["basic"] == pytest.approx(rate * elapsed)
    new_revision = body["farm"]["revision"]
    assert new_revision > base["revision"]
    assert resp.headers["ETag"] == f'"{new_revision}"'
    assert "first_building" in [e.get("key") for e in body["events"] if e["type"] == "achievement_unlocked"]

    farm = await get_farm(frozen, guest["headers"])
    assert farm["revision"] == new_revision
    assert farm["buildings"]["barn"] == 1
    assert farm["balances"]["basic"] == pytest.approx(basic)
    assert farm["online"] is True
    # production counted once: the offline credit the server gave meanwhile is replaced, not added
    assert farm["lifetime_value"] == pytest.approx(40.0 + rate * elapsed)
    stored = await context(frozen.server.app).store.load_farm(pid)
    assert stored is not None and stored.revision == new_revision
    history = await ok_json(await frozen.get(SAVES, headers=guest["headers"]))
    assert history["saves"][0]["revision"] == new_revision
    assert await violations_total(frozen, pid) == 0

    # the accepted save is the new base: uploading the old one again is stale
    await expect_problem(await upload(frozen, guest["headers"], save), 412, "PRECONDITION_FAILED")


async def test_the_plausibility_bound_is_rates_times_elapsed_times_1_1_plus_shearing(
    frozen: TestClient, clock: FakeClock
) -> None:
    guest = await farm_with_wool(frozen)
    farm = await get_farm(frozen, guest["headers"])
    config = await ok_json(await frozen.get(f"{API}/config"))
    base = await latest(frozen, guest["headers"])
    clock.advance(OFFLINE_S)
    shearing = farm["click_power"] * (
        config["shear"]["bucket_capacity"] + config["shear"]["bucket_refill_per_s"] * OFFLINE_S
    )
    most = 40.0 + farm["rates"]["basic"] * OFFLINE_S * 1.1 + shearing

    over = claim(base, balances={"basic": most * 1.001})
    resp = await upload(frozen, guest["headers"], over)
    body = await expect_problem(resp, 422, "IMPLAUSIBLE_SAVE")
    assert [r for r in body["reasons"] if r.startswith("basic:")], body["reasons"]

    under = claim(base, balances={"basic": most * 0.999})
    accepted = await ok_json(await upload(frozen, guest["headers"], under))
    assert accepted["farm"]["balances"]["basic"] == pytest.approx(most * 0.999)


# ---- refusals leave the server state exactly as it was ------------------------------------------


def ten_times_the_wool(base: dict[str, Any], farm: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    shearing = farm["click_power"] * (
        config["shear"]["bucket_capacity"] + config["shear"]["bucket_refill_per_s"] * OFFLINE_S
    )
    plausible = base["farm"]["balances"]["basic"] + farm["rates"]["basic"] * OFFLINE_S * 1.1 + shearing
    return claim(base, balances={"basic": 10 * plausible})


def unaffordable_building(base: dict[str, Any], farm: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return claim(base, buildings={"barn": 100})  # about 8e7 basic for the hundred levels


def forged_signature(base: dict[str, Any], farm: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    save = claim(base, balances={"basic": 41.0})  # a modest, plausible claim...
    sig = save["signature"]
    save["signature"] = ("0" if sig[0] != "0" else "1") + sig[1:]  # ...on a signature the server never issued
    return save


def silver_from_nowhere(base: dict[str, Any], farm: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return claim(base, balances={"silver": 1.0})  # this farm produces no silver


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (ten_times_the_wool, "basic:"),
        (unaffordable_building, "barn"),
        (forged_signature, "signature"),
        (silver_from_nowhere, "silver:"),
    ],
    ids=["10x-wool", "unaffordable-building", "forged-signature", "silver-from-nowhere"],
)
async def test_an_implausible_save_is_refused_and_changes_nothing(
    frozen: TestClient, clock: FakeClock, make: Any, reason: str
) -> None:
    guest = await farm_with_wool(frozen)
    pid = guest["player"]["id"]
    farm = await get_farm(frozen, guest["headers"])
    config = await ok_json(await frozen.get(f"{API}/config"))
    base = await latest(frozen, guest["headers"])
    clock.advance(OFFLINE_S)
    before = await server_state(frozen, guest)
    history_before = await ok_json(await frozen.get(SAVES, headers=guest["headers"]))

    body = await expect_problem(
        await upload(frozen, guest["headers"], make(base, farm, config)), 422, "IMPLAUSIBLE_SAVE"
    )
    assert isinstance(body["reasons"], list) and body["reasons"]
    assert any(reason in r for r in body["reasons"]), body["reasons"]
    assert all(r in body["detail"] for r in body["reasons"])

    assert await server_state(frozen, guest) == before
    assert await ok_json(await frozen.get(SAVES, headers=guest["headers"])) == history_before
    assert await violations_total(frozen, pid) == 1


async def test_every_reason_is_listed(frozen: TestClient, clock: FakeClock) -> None:
    guest = await farm_with_wool(frozen)
    base = await latest(frozen, guest["headers"])
    clock.advance(60)
    save = claim(base, balances={"basic": 1e9, "golden": 5.0}, buildings={"barn": 100, "lab": 1}, soul_shears=3)
    body = await expect_problem(await upload(frozen, guest["headers"], save), 422, "IMPLAUSIBLE_SAVE")
    reasons = " | ".join(body["reasons"])
    for part in ("prestige", "basic:", "golden:", "lab: requirements", "rainbow:"):
        assert part in reasons, reasons


async def test_a_stale_save_gets_412_with_the_servers_copy(frozen: TestClient, clock: FakeClock) -> None:
    guest = await farm_with_wool(frozen)
    base = await latest(frozen, guest["headers"])
    clock.advance(OFFLINE_S)
    await shear(frozen, guest["headers"], 1)  # the tablet played meanwhile
    before = await server_state(frozen, guest)

    resp = await upload(frozen, guest["headers"], claim(base, balances={"basic": 45.0}))
    body = await expect_problem(resp, 412, "PRECONDITION_FAILED")
    current = body["current"]
    assert current["revision"] == before[0][0] > base["revision"]
    assert resp.headers["ETag"] == f'"{current["revision"]}"'
    assert current["farm"]["balances"]["basic"] == pytest.approx(before[0][1]["basic"])
    assert current["player_id"] == guest["player"]["id"] and len(current["signature"]) == 64
    assert await server_state(frozen, guest) == before

    # merging onto the server's copy and retrying is accepted
    retry = claim(current, balances={"basic": current["farm"]["balances"]["basic"]})
    assert (await ok_json(await upload(frozen, guest["headers"], retry)))["result"]["accepted"] is True


async def test_a_base_revision_from_the_future_is_stale(frozen: TestClient) -> None:
    guest = await farm_with_wool(frozen)
    base = await latest(frozen, guest["headers"])
    future = {**base, "revision": base["revision"] + 50}
    body = await expect_problem(await upload(frozen, guest["headers"], future), 412, "PRECONDITION_FAILED")
    assert body["current"]["revision"] == base["revision"]


async def test_if_match_is_required_and_must_name_the_base(frozen: TestClient) -> None:
    guest = await farm_with_wool(frozen)
    base = await latest(frozen, guest["headers"])
    before = await server_state(frozen, guest)
    save = claim(base, balances={"basic": 40.0})
    await expect_problem(await upload(frozen, guest["headers"], save, if_match=None), 428, "PRECONDITION_REQUIRED")
    await expect_problem(await upload(frozen, guest["headers"], save, if_match='W/"3"'), 422, "VALIDATION_ERROR")
    other = f'"{base["revision"] - 1}"'
    await expect_problem(await upload(frozen, guest["headers"], save, if_match=other), 422, "VALIDATION_ERROR")
    await expect_problem(
        await frozen.post(SAVES, json={"revision": 3}, headers={**guest["headers"], "If-Match": '"3"'}),
        422,
        "VALIDATION_ERROR",
    )
    assert await server_state(frozen, guest) == before


async def test_refused_uploads_add_up_to_a_flag(frozen: TestClient, clock: FakeClock) -> None:
    guest = await farm_with_wool(frozen)
    base = await latest(frozen, guest["headers"])
    clock.advance(60)
    greedy = claim(base, balances={"basic": 1e12})
    for _ in range(5):
        await expect_problem(await upload(frozen, guest["headers"], greedy), 422, "IMPLAUSIBLE_SAVE")
    player = await context(frozen.server.app).store.get_player(guest["player"]["id"])
    assert player is not None and player.flagged_at is not None
    assert "implausible_save" in (player.flag_reason or "")
