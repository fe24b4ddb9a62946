"""Anti-cheat through the real server: the shared action limit (REST and WebSocket),
violations and flags, decay, auth limits per IP and login, trusted proxies, 4408."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from llamawool.api.app import context
from tests.conftest import API, MakeClient, new_guest
from tests.helpers import FakeClock

from .fairplay import PASSWORD, make_admin, push, violations_total, ws_connect, ws_request
from .support import expect_close, expect_problem, ok_json, receive_until, shear

LIMIT = 60  # the ConfigMap's maxActionsPerMinute
THRESHOLD = 5  # suspiciousActivityThreshold
DAY = 86400.0


def buy_barn_ws(msg_id: object) -> dict[str, Any]:
    return {"type": "action", "id": msg_id, "data": {"action": "buy_building", "key": "barn", "quantity": 1}}


async def buy_barn(client: TestClient, headers: dict[str, str]) -> aiohttp.ClientResponse:
    return await client.post(f"{API}/farm/buildings/barn/purchase", json={"quantity": 1}, headers=headers)


async def spend_limit_mixed(client: TestClient, guest: dict[str, Any], ws: aiohttp.ClientWebSocketResponse) -> None:
    """30 purchases over REST and 30 over the WebSocket: applied or refused, each one counts."""
    await shear(client, guest["headers"], 20)  # shears have their own meter: these do not count
    await shear(client, guest["headers"], 20)
    for i in range(LIMIT // 2):
        resp = await buy_barn(client, guest["headers"])
        assert resp.status in (200, 409), await resp.text()  # bought, or not enough wool: both are attempts
        if i == 0:
            assert resp.status == 200
            assert resp.headers["RateLimit-Limit"] == str(LIMIT)
            assert resp.headers["RateLimit-Remaining"] == str(LIMIT - 1)
            assert 0 < int(resp.headers["RateLimit-Reset"]) <= 60
            assert "Retry-After" not in resp.headers
    for i in range(LIMIT // 2):
        reply = await ws_request(ws, buy_barn_ws(f"b{i}"))
        assert reply["type"] == "result" or reply["data"]["code"] == "INSUFFICIENT_RESOURCES", reply


async def test_the_61st_action_over_rest_is_refused_with_429_and_rate_limit_headers(
    frozen: TestClient, clock: FakeClock
) -> None:
    guest = await new_guest(frozen)
    ws = await ws_connect(frozen, guest["access_token"])
    try:
        await spend_limit_mixed(frozen, guest, ws)
        resp = await buy_barn(frozen, guest["headers"])
        body = await expect_problem(resp, 429, "RATE_LIMITED")
        assert resp.headers["Retry-After"] == "60"  # every attempt was at the same instant
        assert body["retry_after"] == 60
        assert resp.headers["RateLimit-Limit"] == str(LIMIT)
        assert resp.headers["RateLimit-Remaining"] == "0"
        assert resp.headers["RateLimit-Reset"] == "60"
        # the WebSocket shares the meter: refused there too, with retry_after
        err = await ws_request(ws, buy_barn_ws("after"))
        assert err["type"] == "error" and err["data"]["code"] == "RATE_LIMITED"
        assert err["data"]["retry_after"] == 60 and err["data"]["id"] == "after"
        # every other kind of action is refused as well, save uploads included
        await expect_problem(
            await frozen.post(f"{API}/farm/upgrades/sharp_shears/purchase", json={}, headers=guest["headers"]),
            429,
            "RATE_LIMITED",
        )
        save = await ok_json(await frozen.get(f"{API}/farm/saves/latest", headers=guest["headers"]))
        upload_headers = {**guest["headers"], "If-Match": f'"{save["revision"]}"'}
        resp = await frozen.post(f"{API}/farm/saves", json=save, headers=upload_headers)
        await expect_problem(resp, 429, "RATE_LIMITED")
        assert resp.headers["Retry-After"] == "60"
        # shears are metered by their own bucket, reads are not metered
        assert (await shear(frozen, guest["headers"], 1))["result"]["requested"] == 1
        assert (await frozen.get(f"{API}/farm", headers=guest["headers"])).status == 200

        clock.advance(59)
        assert (await buy_barn(frozen, guest["headers"])).status == 429
        clock.advance(1)  # the window slid past the burst
        resp = await buy_barn(frozen, guest["headers"])
        assert resp.status in (200, 409), await resp.text()
    finally:
        await ws.close()


async def test_the_61st_action_over_the_websocket_is_refused_with_retry_after(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    ws = await ws_connect(frozen, guest["access_token"])
    try:
        await spend_limit_mixed(frozen, guest, ws)
        farm_before = await ok_json(await frozen.get(f"{API}/farm", headers=guest["headers"]))
        err = await ws_request(ws, buy_barn_ws(61))
        assert err["type"] == "error", err
        assert err["data"]["code"] == "RATE_LIMITED"
        assert err["data"]["retry_after"] == 60
        farm_after = await ok_json(await frozen.get(f"{API}/farm", headers=guest["headers"]))
        assert farm_after["revision"] == farm_before["revision"]  # nothing applied
        resp = await buy_barn(frozen, guest["headers"])
        await expect_problem(resp, 429, "RATE_LIMITED")
        assert resp.headers["Retry-After"] == "60"
        # the socket stays usable
        pong = await ws_request(ws, {"type": "ping", "id": "still-there"})
        assert pong["type"] == "pong"
    finally:
        await ws.close()


async def test_the_limit_is_per_player(frozen: TestClient) -> None:
    greedy, other = await new_guest(frozen), await new_guest(frozen)
    for _ in range(LIMIT):
        assert (await buy_barn(frozen, greedy["headers"])).status == 409
    await expect_problem(await buy_barn(frozen, greedy["headers"]), 429, "RATE_LIMITED")
    resp = await buy_barn(frozen, other["headers"])
    assert resp.status == 409 and resp.content_type == "application/problem+json"
    assert (await resp.json())["code"] == "INSUFFICIENT_RESOURCES"


async def test_the_shear_request_limit_is_a_setting(make_client: MakeClient, clock: FakeClock) -> None:
    client = await make_client(clock=clock, tick=False, shear_requests_per_minute=3)
    guest = await new_guest(client)
    for _ in range(3):
        await shear(client, guest["headers"], 1)
    resp = await client.post(f"{API}/farm/shear", json={"count": 1}, headers=guest["headers"])
    await expect_problem(resp, 429, "RATE_LIMITED")
    assert resp.headers["RateLimit-Limit"] == "3"
    # other actions have their own meter
    assert (await buy_barn(client, guest["headers"])).status == 409


# ---- violations, flags and decay ---------------------------------------------------------------


async def commit_violations(client: TestClient, guest: dict[str, Any], n: int) -> None:
    """Malformed or impossible actions, each a violation (a well-behaved client sends none)."""
    kinds = [
        lambda: client.post(f"{API}/farm/buildings/unicorn_stable/purchase", json={}, headers=guest["headers"]),
        lambda: client.post(f"{API}/farm/buildings/barn/purchase", json={"quantity": 0}, headers=guest["headers"]),
        lambda: client.post(
            f"{API}/farm/shear",
            data=b"{not json",
            headers={**guest["headers"], "Content-Type": "application/json"},
        ),
        lambda: client.post(f"{API}/farm/upgrades/time_travel/purchase", json={}, headers=guest["headers"]),
        lambda: client.post(f"{API}/farm/prestige", json={"confirm": "yes please"}, headers=guest["headers"]),
    ]
    for i in range(n):
        resp = await kinds[i % len(kinds)]()
        assert resp.status in (400, 404, 422), await resp.text()


async def admin_view(client: TestClient, admin: dict[str, Any], player_id: str) -> dict[str, Any]:
    body = await ok_json(await client.get(f"{API}/admin/players/{player_id}", headers=admin["headers"]))
    player: dict[str, Any] = body["player"]
    return player


async def on_public_board(client: TestClient, player_id: str, clock: FakeClock) -> bool:
    clock.advance(5.0)  # past the frozen first-page view
    page = await ok_json(await client.get(f"{API}/leaderboards/lifetime", params={"limit": "100"}))
    return player_id in [e["player_id"] for e in page["entries"]]


async def test_honest_refusals_are_not_violations(frozen: TestClient) -> None:
    guest = await new_guest(frozen)
    refusals = [
        ("/farm/buildings/barn/purchase", {"quantity": 1}, "INSUFFICIENT_RESOURCES"),
        ("/farm/buildings/shears/purchase", {"quantity": 1}, "REQUIREMENT_NOT_MET"),
        ("/farm/prestige", {"confirm": True}, "REQUIREMENT_NOT_MET"),
    ]
    for path, body, code in refusals:
        await expect_problem(await frozen.post(f"{API}{path}", json=body, headers=guest["headers"]), 409, code)
    assert await violations_total(frozen, guest["player"]["id"]) == 0


async def test_five_violations_flag_the_player_who_vanishes_from_the_public_board(
    frozen: TestClient, clock: FakeClock
) -> None:
    admin = await make_admin(frozen)
    cheat, honest = await new_guest(frozen), await new_guest(frozen)
    cheat_id = cheat["player"]["id"]
    await shear(frozen, cheat["headers"], 20)  # the cheat leads the board
    await shear(frozen, honest["headers"], 5)
    await push(frozen)
    assert await on_public_board(frozen, cheat_id, clock)

    await commit_violations(frozen, cheat, THRESHOLD - 1)
    assert await violations_total(frozen, cheat_id) == THRESHOLD - 1
    view = await admin_view(frozen, admin, cheat_id)
    assert view["flagged"] is False and view["violations_total"] == THRESHOLD - 1
    assert await on_public_board(frozen, cheat_id, clock)

    # the fifth comes over the WebSocket: a malformed action
    ws = await ws_connect(frozen, cheat["access_token"])
    try:
        with capture_logs() as logs:
            err = await ws_request(ws, {"type": "action", "id": "bad", "data": {"action": "buy_building"}})
            # the socket handles one message at a time: its pong means the violation is recorded
            assert (await ws_request(ws, {"type": "ping", "id": "sync"}))["type"] == "pong"
        assert err["type"] == "error" and err["data"]["code"] == "VALIDATION_ERROR"
    finally:
        await ws.close()
    flagged = [e for e in logs if e["event"] == "anticheat.flagged"]
    assert len(flagged) == 1 and flagged[0]["player_id"] == cheat_id and flagged[0]["violations"] == THRESHOLD

    view = await admin_view(frozen, admin, cheat_id)
    assert view["flagged"] is True and view["violations_total"] == THRESHOLD
    assert view["flagged_at"] == clock() and "5 violations" in view["flag_reason"]
    metrics = await (await frozen.get("/metrics")).text()
    assert "llamawool_anticheat_flags_total 1.0" in metrics
    assert 'llamawool_anticheat_violations_total{kind="malformed_action"}' in metrics

    # hidden from public views, including the live top, while the cheat still plays on
    await push(frozen)
    assert not await on_public_board(frozen, cheat_id, clock)
    page = await ok_json(await frozen.get(f"{API}/leaderboards/lifetime"))
    assert [e["rank"] for e in page["entries"]] == [1]
    assert page["entries"][0]["player_id"] == honest["player"]["id"]
    top = await engine_top(frozen)
    assert cheat_id not in top
    # ... but their own view still shows their rank
    mine = await ok_json(await frozen.get(f"{API}/leaderboards/lifetime/me", headers=cheat["headers"]))
    assert mine["hidden"] is True and mine["rank"] == 1
    assert [e["player_id"] for e in mine["entries"]][:1] == [cheat_id]
    theirs = await ok_json(await frozen.get(f"{API}/leaderboards/lifetime/me", headers=honest["headers"]))
    assert theirs["hidden"] is False and theirs["rank"] == 1
    assert cheat_id not in [e["player_id"] for e in theirs["entries"]]
    # more violations do not flag twice
    await commit_violations(frozen, cheat, 2)
    assert "llamawool_anticheat_flags_total 1.0" in await (await frozen.get("/metrics")).text()


async def engine_top(client: TestClient) -> list[str]:
    import orjson

    feed = context(client.server.app).engine.boards
    msg = orjson.loads(await feed.top_message("lifetime", feed.clock()))
    return [e["player_id"] for e in msg["data"]["entries"]]


async def test_violations_count_in_a_rolling_hour(frozen: TestClient, clock: FakeClock) -> None:
    guest = await new_guest(frozen)
    admin = await make_admin(frozen)
    await commit_violations(frozen, guest, THRESHOLD - 1)
    clock.advance(3601)
    await commit_violations(frozen, guest, THRESHOLD - 1)
    view = await admin_view(frozen, admin, guest["player"]["id"])
    assert view["violations_total"] == 2 * (THRESHOLD - 1)
    assert view["flagged"] is False
    await commit_violations(frozen, guest, 1)
    assert (await admin_view(frozen, admin, guest["player"]["id"]))["flagged"] is True


async def test_a_flag_decays_after_24h_without_violations(frozen: TestClient, clock: FakeClock) -> None:
    admin = await make_admin(frozen)
    cheat = await new_guest(frozen)
    cheat_id = cheat["player"]["id"]
    await shear(frozen, cheat["headers"], 3)
    await commit_violations(frozen, cheat, THRESHOLD)
    await push(frozen)
    assert (await admin_view(frozen, admin, cheat_id))["flagged"] is True
    assert not await on_public_board(frozen, cheat_id, clock)  # advances 5 s

    sweep = context(frozen.server.app).anticheat.sweep
    clock.advance(DAY / 2)
    await commit_violations(frozen, cheat, 1)  # a new violation restarts the 24 h
    clock.advance(DAY - 1)
    assert await sweep() == 0
    assert (await admin_view(frozen, admin, cheat_id))["flagged"] is True
    clock.advance(1)
    assert await sweep() == 1
    view = await admin_view(frozen, admin, cheat_id)
    assert view["flagged"] is False and view["flagged_at"] is None
    assert view["violations_total"] == THRESHOLD + 1  # the history stays for admins
    await push(frozen)
    assert await on_public_board(frozen, cheat_id, clock)
    mine = await ok_json(await frozen.get(f"{API}/leaderboards/lifetime/me", headers=cheat["headers"]))
    assert mine["hidden"] is False
    assert await sweep() == 0


async def test_an_admin_clears_a_flag(frozen: TestClient, clock: FakeClock) -> None:
    admin = await make_admin(frozen)
    cheat = await new_guest(frozen)
    cheat_id = cheat["player"]["id"]
    await shear(frozen, cheat["headers"], 3)
    await commit_violations(frozen, cheat, THRESHOLD)
    await push(frozen)
    assert not await on_public_board(frozen, cheat_id, clock)

    resp = await frozen.post(f"{API}/admin/players/{cheat_id}/clear-flag", json={}, headers=admin["headers"])
    assert await ok_json(resp) == {"player_id": cheat_id, "cleared": True}
    assert (await admin_view(frozen, admin, cheat_id))["flagged"] is False
    assert await on_public_board(frozen, cheat_id, clock)
    resp = await frozen.post(f"{API}/admin/players/{cheat_id}/clear-flag", json={}, headers=admin["headers"])
    assert (await ok_json(resp))["cleared"] is False


# ---- auth limits: per IP and login ------------------------------------------------------------


async def login(client: TestClient, login_name: str, password: str, **headers: str) -> aiohttp.ClientResponse:
    return await client.post(f"{API}/auth/login", json={"login": login_name, "password": password}, headers=headers)


async def registered(client: TestClient) -> str:
    name = f"u{uuid.uuid4().hex[:10]}"
    resp = await client.post(
        f"{API}/auth/register", json={"email": f"{name}@example.com", "password": PASSWORD, "username": name}
    )
    await ok_json(resp, 201)
    return name


async def test_ten_failed_logins_lock_that_ip_and_login_even_with_the_right_password(
    frozen: TestClient, clock: FakeClock
) -> None:
    name = await registered(frozen)
    other = await registered(frozen)
    for _ in range(10):
        await expect_problem(await login(frozen, name, "wrong password!"), 401, "INVALID_CREDENTIALS")
    resp = await login(frozen, name, PASSWORD)
    body = await expect_problem(resp, 429, "RATE_LIMITED")
    assert int(resp.headers["Retry-After"]) == 900 and body["retry_after"] == 900
    assert resp.headers["RateLimit-Limit"] == "10" and resp.headers["RateLimit-Remaining"] == "0"
    await expect_problem(await login(frozen, name.upper(), PASSWORD), 429, "RATE_LIMITED")  # same login
    # another login from the same address is not locked
    assert (await login(frozen, other, PASSWORD)).status == 200
    clock.advance(900)  # the window has passed
    assert (await login(frozen, name, PASSWORD)).status == 200


async def test_failed_logins_are_counted_per_client_address_behind_a_trusted_proxy(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(clock=clock, tick=False, trusted_proxies=["127.0.0.1/32"])
    name = await registered(client)
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    for _ in range(10):
        await expect_problem(await login(client, name, "wrong password!", **attacker), 401, "INVALID_CREDENTIALS")
    await expect_problem(await login(client, name, PASSWORD, **attacker), 429, "RATE_LIMITED")
    # the owner, elsewhere, still logs in
    assert (await login(client, name, PASSWORD, **{"X-Forwarded-For": "198.51.100.20"})).status == 200


async def guest_status(client: TestClient, **headers: str) -> int:
    resp = await client.post(f"{API}/auth/guest", json={"device_id": f"dev-{uuid.uuid4().hex}"}, headers=headers)
    return resp.status


async def test_guest_creation_is_capped_per_ip(make_client: MakeClient, clock: FakeClock) -> None:
    client = await make_client(clock=clock, tick=False, guests_per_ip_per_hour=3)
    device = f"dev-{uuid.uuid4().hex}"
    first = await client.post(f"{API}/auth/guest", json={"device_id": device})
    assert first.status == 201
    assert [await guest_status(client) for _ in range(2)] == [201, 201]
    resp = await client.post(f"{API}/auth/guest", json={"device_id": f"dev-{uuid.uuid4().hex}"})
    body = await expect_problem(resp, 429, "RATE_LIMITED")
    assert resp.headers["Retry-After"] == "3600" and body["retry_after"] == 3600
    assert resp.headers["RateLimit-Limit"] == "3"
    # a device that already has its player gets it back: no new account, no limit
    again = await client.post(f"{API}/auth/guest", json={"device_id": device})
    assert again.status == 200
    assert (await again.json())["player"]["id"] == (await first.json())["player"]["id"]
    clock.advance(3600)
    assert await guest_status(client) == 201


async def test_x_forwarded_for_is_ignored_from_an_untrusted_peer(make_client: MakeClient, clock: FakeClock) -> None:
    client = await make_client(clock=clock, tick=False, guests_per_ip_per_hour=2)
    statuses = [await guest_status(client, **{"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(3)]
    assert statuses == [201, 201, 429]  # all counted against the peer, whatever the header claims


async def test_x_forwarded_for_is_believed_from_a_trusted_proxy(make_client: MakeClient, clock: FakeClock) -> None:
    client = await make_client(clock=clock, tick=False, guests_per_ip_per_hour=2, trusted_proxies=["127.0.0.1/32"])
    statuses = [await guest_status(client, **{"X-Forwarded-For": f"203.0.113.{i}"}) for i in range(3)]
    assert statuses == [201, 201, 201]  # three clients behind the balancer
    same = {"X-Forwarded-For": "198.51.100.9"}
    assert [await guest_status(client, **same) for _ in range(3)] == [201, 201, 429]
    # a client cannot dodge the limit by prepending addresses: the right-most untrusted one counts
    spoofed = {"X-Forwarded-For": "10.9.9.9, 198.51.100.9"}
    assert await guest_status(client, **spoofed) == 429
    # without the header the proxy itself is the client
    assert [await guest_status(client) for _ in range(3)] == [201, 201, 429]


# ---- a socket that keeps violating -------------------------------------------------------------


async def test_a_websocket_that_keeps_hitting_limits_is_closed_with_4408(
    make_client: MakeClient, clock: FakeClock
) -> None:
    client = await make_client(clock=clock, tick=False, shear_requests_per_minute=2, ws_violations_before_close=4)
    guest = await new_guest(client)
    ws = await ws_connect(client, guest["access_token"])
    for i in range(2):
        ok = await ws_request(ws, {"type": "action", "id": i, "data": {"action": "shear", "count": 1}})
        assert ok["type"] == "result"
    for i in range(3):
        err = await ws_request(ws, {"type": "action", "id": f"x{i}", "data": {"action": "shear", "count": 1}})
        assert err["data"]["code"] == "RATE_LIMITED" and err["data"]["retry_after"] == 60
    await ws.send_json({"type": "action", "id": "last", "data": {"action": "shear", "count": 1}})
    last = await receive_until(ws, lambda m: m.get("id") == "last")
    assert last["data"]["code"] == "RATE_LIMITED"  # the error goes out before the close
    await expect_close(ws, 4408)
    # the player is not banned: a new socket works (and REST too)
    again = await ws_connect(client, guest["access_token"])
    pong = await ws_request(again, {"type": "ping", "id": "p"})
    assert pong["type"] == "pong"
    await again.close()


@pytest.mark.parametrize("spread_s", [0.0, 61.0])
async def test_limit_errors_spread_over_more_than_a_minute_do_not_close_the_socket(
    make_client: MakeClient, clock: FakeClock, spread_s: float
) -> None:
    client = await make_client(clock=clock, tick=False, shear_requests_per_minute=1, ws_violations_before_close=3)
    guest = await new_guest(client)
    ws = await ws_connect(client, guest["access_token"])
    try:
        assert (await ws_request(ws, {"type": "action", "id": 0, "data": {"action": "shear"}}))["type"] == "result"
        for i in range(2):
            err = await ws_request(ws, {"type": "action", "id": i + 1, "data": {"action": "shear"}})
            assert err["data"]["code"] == "RATE_LIMITED"
        clock.advance(spread_s)
        msg = await ws_request(ws, {"type": "action", "id": 9, "data": {"action": "shear"}})
        if spread_s == 0.0:
            assert msg["data"]["code"] == "RATE_LIMITED"
            await expect_close(ws, 4408)
        else:
            assert msg["type"] == "result"  # the minute passed: allowed again, socket open
            assert (await ws_request(ws, {"type": "ping", "id": "p"}))["type"] == "pong"
    finally:
        await ws.close()
