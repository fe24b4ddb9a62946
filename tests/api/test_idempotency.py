"""Idempotency-Key: a retry returns the first answer and applies nothing twice."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp.test_utils import TestClient

from tests.conftest import API, new_guest
from tests.helpers import FakeClock

from .support import expect_problem, get_farm, ok_json


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def test_the_same_key_twice_applies_once_and_replays_the_first_answer(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    before = await get_farm(frozen, guest["headers"])
    h = keyed(guest["headers"], "shear-0001")

    first = await frozen.post(f"{API}/farm/shear", json={"count": 5}, headers=h)
    first_raw = await first.read()
    assert first.status == 200
    assert "Idempotent-Replayed" not in first.headers

    second = await frozen.post(f"{API}/farm/shear", json={"count": 5}, headers=h)
    second_raw = await second.read()
    assert second.status == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second_raw == first_raw
    assert second.headers["ETag"] == first.headers["ETag"]

    after = await get_farm(frozen, guest["headers"])
    assert after["balances"]["basic"] == before["balances"]["basic"] + 5.0
    assert after["revision"] == before["revision"] + 1
    assert after["stats"]["shears"] == 5


async def test_a_replay_after_other_changes_still_returns_the_first_answer(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    h = keyed(guest["headers"], "k-first")
    first = await frozen.post(f"{API}/farm/shear", json={"count": 3}, headers=h)
    first_body = await ok_json(first)
    await ok_json(await frozen.post(f"{API}/farm/shear", json={"count": 4}, headers=guest["headers"]))

    replay = await frozen.post(f"{API}/farm/shear", json={"count": 3}, headers=h)
    assert replay.headers["Idempotent-Replayed"] == "true"
    replay_body = await ok_json(replay)
    assert replay_body == first_body
    # The ETag describes the representation returned: the first answer's farm.
    assert replay.headers["ETag"] == f'"{first_body["farm"]["revision"]}"'
    farm = await get_farm(frozen, guest["headers"])
    assert farm["balances"]["basic"] == 7.0


async def test_the_same_key_with_a_different_body_is_409_conflict(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    h = keyed(guest["headers"], "reused-key")
    await ok_json(await frozen.post(f"{API}/farm/shear", json={"count": 5}, headers=h))

    resp = await frozen.post(f"{API}/farm/shear", json={"count": 6}, headers=h)
    body = await expect_problem(resp, 409, "CONFLICT")
    assert "Idempotency-Key" in body["detail"]
    # ...or the same key on another action
    resp = await frozen.post(f"{API}/farm/buildings/barn/purchase", json={"quantity": 1}, headers=h)
    await expect_problem(resp, 409, "CONFLICT")

    farm = await get_farm(frozen, guest["headers"])
    assert farm["balances"]["basic"] == 5.0
    assert farm["buildings"]["barn"] == 0


async def test_concurrent_retries_with_one_key_apply_once(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    before = await get_farm(frozen, guest["headers"])
    h = keyed(guest["headers"], "storm")
    resps = await asyncio.gather(*(frozen.post(f"{API}/farm/shear", json={"count": 2}, headers=h) for _ in range(5)))
    bodies = [await r.read() for r in resps]
    assert [r.status for r in resps] == [200] * 5
    assert len(set(bodies)) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in resps) == 4
    after = await get_farm(frozen, guest["headers"])
    assert after["balances"]["basic"] == 2.0
    assert after["revision"] == before["revision"] + 1


async def test_keys_belong_to_their_player(frozen: TestClient) -> None:
    a = await new_guest(frozen)
    b = await new_guest(frozen)
    ra = await ok_json(await frozen.post(f"{API}/farm/shear", json={"count": 2}, headers=keyed(a["headers"], "k")))
    rb_resp = await frozen.post(f"{API}/farm/shear", json={"count": 2}, headers=keyed(b["headers"], "k"))
    rb = await ok_json(rb_resp)
    assert "Idempotent-Replayed" not in rb_resp.headers
    assert ra["farm"]["player_id"] == a["player"]["id"]
    assert rb["farm"]["player_id"] == b["player"]["id"]
    assert (await get_farm(frozen, b["headers"]))["balances"]["basic"] == 2.0


async def test_a_keyed_purchase_is_not_bought_twice(
    frozen: TestClient, clock: FakeClock, farmer: dict[str, Any]
) -> None:
    clock.advance(1000)  # 100 basic: enough for several barns
    h = keyed(farmer["headers"], "buy-barn-1")
    first = await ok_json(await frozen.post(f"{API}/farm/buildings/barn/purchase", json={"quantity": 2}, headers=h))
    second = await frozen.post(f"{API}/farm/buildings/barn/purchase", json={"quantity": 2}, headers=h)
    assert second.headers["Idempotent-Replayed"] == "true"
    assert orjson.loads(await second.read()) == first
    farm = await get_farm(frozen, farmer["headers"])
    assert farm["buildings"]["barn"] == 2


async def test_a_refused_action_applies_nothing_and_the_key_stays_usable(
    frozen: TestClient, clock: FakeClock, farmer: dict[str, Any]
) -> None:
    h = keyed(farmer["headers"], "early-barn")
    resp = await frozen.post(f"{API}/farm/buildings/barn/purchase", json={"quantity": 1}, headers=h)
    await expect_problem(resp, 409, "INSUFFICIENT_RESOURCES")
    clock.advance(200)
    resp = await frozen.post(f"{API}/farm/buildings/barn/purchase", json={"quantity": 1}, headers=h)
    body = await ok_json(resp)
    assert body["farm"]["buildings"]["barn"] == 1
