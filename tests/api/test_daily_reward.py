"""The daily return reward through the real server (SQLite): REST and WebSocket, once per server day,
streaks across day boundaries, idempotent retries, and the anti-cheat action limit."""

from __future__ import annotations

import datetime as dt

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import API, new_guest
from tests.helpers import FakeClock

from .fairplay import ws_connect, ws_request
from .support import expect_problem, get_farm, ok_json

CLAIM = f"{API}/farm/daily-reward/claim"
STATUS = f"{API}/farm/daily-reward"
LIMIT = 60  # the ConfigMap's maxActionsPerMinute


def next_midnight(t: float) -> float:
    d = dt.datetime.fromtimestamp(t, dt.UTC).date() + dt.timedelta(days=1)
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp()


async def test_claim_once_per_server_day_with_a_streak(frozen: TestClient, clock: FakeClock) -> None:
    guest = await new_guest(frozen)
    h = guest["headers"]
    config = await ok_json(await frozen.get(f"{API}/config"))
    per = config["daily_reward"]["seconds_per_streak_day"]
    status = await ok_json(await frozen.get(STATUS, headers=h))
    assert status["claimed_today"] is False and status["streak"] == 1 and status["reward_seconds"] == per

    farm = await get_farm(frozen, h)
    body = await ok_json(await frozen.post(CLAIM, json={}, headers=h))
    rate = farm["rates"]["basic"]
    assert body["result"]["streak"] == 1
    assert body["result"]["reward"]["basic"] == pytest.approx(rate * per)
    assert body["farm"]["balances"]["basic"] == pytest.approx(farm["balances"]["basic"] + rate * per)
    assert next(e for e in body["events"] if e["type"] == "daily_reward")["streak"] == 1

    again = await expect_problem(await frozen.post(CLAIM, json={}, headers=h), 409, "CONFLICT")
    midnight = next_midnight(clock.now)
    assert again["next_claim_at"] == midnight
    assert (await get_farm(frozen, h))["balances"]["basic"] == pytest.approx(body["farm"]["balances"]["basic"])
    status = await ok_json(await frozen.get(STATUS, headers=h))
    assert status["claimed_today"] is True and status["next_claim_at"] == midnight

    clock.now = midnight  # the next server day, to the second
    assert (await ok_json(await frozen.post(CLAIM, json={}, headers=h)))["result"]["streak"] == 2
    clock.now = midnight + 2 * 86_400 + 5  # a day missed
    third = await ok_json(await frozen.post(CLAIM, json={}, headers=h))
    assert third["result"]["streak"] == 1 and third["result"]["reward_seconds"] == per


async def test_a_retry_with_the_same_key_is_the_first_answer(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    h = {**guest["headers"], "Idempotency-Key": "daily-1"}
    first = await frozen.post(CLAIM, json={}, headers=h)
    body = await first.read()
    assert first.status == 200
    retry = await frozen.post(CLAIM, json={}, headers=h)
    assert retry.status == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert await retry.read() == body
    other = {**guest["headers"], "Idempotency-Key": "daily-2"}
    await expect_problem(await frozen.post(CLAIM, json={}, headers=other), 409, "CONFLICT")


async def test_claim_over_the_websocket(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    ws = await ws_connect(frozen, guest["access_token"])
    try:
        message = {"type": "action", "id": "d1", "data": {"action": "claim_daily_reward", "idempotency_key": "d-1"}}
        reply = await ws_request(ws, message)
        assert reply["type"] == "result" and reply["data"]["result"]["streak"] == 1
        assert (await ws_request(ws, message))["data"] == reply["data"]  # replayed, applied once
        refused = await ws_request(ws, {"type": "action", "id": "d2", "data": {"action": "claim_daily_reward"}})
        assert refused["type"] == "error" and refused["data"]["code"] == "CONFLICT"
        assert refused["data"]["next_claim_at"] > 0
    finally:
        await ws.close()
    await expect_problem(await frozen.post(CLAIM, json={}, headers=guest["headers"]), 409, "CONFLICT")


async def test_claims_count_in_the_action_limit(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    h = guest["headers"]
    assert (await frozen.post(CLAIM, json={}, headers=h)).status == 200
    for _ in range(LIMIT - 1):  # refused claims are attempts too
        assert (await frozen.post(CLAIM, json={}, headers=h)).status == 409
    resp = await frozen.post(CLAIM, json={}, headers=h)
    await expect_problem(resp, 429, "RATE_LIMITED")
    await expect_problem(
        await frozen.post(f"{API}/farm/buildings/barn/purchase", json={}, headers=h), 429, "RATE_LIMITED"
    )


async def test_a_body_with_fields_is_refused(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    await expect_problem(
        await frozen.post(CLAIM, json={"streak": 99}, headers=guest["headers"]), 422, "VALIDATION_ERROR"
    )


async def test_a_claim_without_a_body_or_with_a_bad_one(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    h = guest["headers"]
    await expect_problem(
        await frozen.post(CLAIM, data=b"{not json", headers={**h, "Content-Type": "application/json"}),
        400,
        "INVALID_JSON",
    )
    assert (await frozen.post(CLAIM, headers=h)).status == 200  # no body: as {}
    await expect_problem(await frozen.post(CLAIM), 401, "AUTH_REQUIRED")
