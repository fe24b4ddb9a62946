"""The WebSocket at /api/v1/ws through the real server: auth, welcome, ticks, actions, errors."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import API, MakeClient, engine_of, new_guest
from tests.helpers import FakeClock

from .support import (
    bearer,
    expect_close,
    get_farm,
    ok_json,
    receive_json,
    receive_until,
    run_ticks,
    shear,
    take_offline,
)

WS = f"{API}/ws"


def is_reply(msg_id: object) -> object:
    return lambda m: m["type"] in ("result", "error") and m.get("id") == msg_id


async def connect(client: TestClient, token: str) -> tuple[aiohttp.ClientWebSocketResponse, dict]:  # type: ignore[type-arg]
    ws = await client.ws_connect(WS, headers=bearer(token))
    welcome = await receive_json(ws)
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


# ---- authentication ----------------------------------------------------------------------


async def test_auth_by_header_welcomes_with_player_and_farm(client: TestClient) -> None:
    guest = await new_guest(client)
    ws, welcome = await connect(client, guest["access_token"])
    data = welcome["data"]
    assert data["player"]["id"] == guest["player"]["id"]
    assert data["player"]["username"] == guest["player"]["username"]
    assert data["farm"]["player_id"] == guest["player"]["id"]
    assert data["farm"]["online"] is True
    assert set(data["farm"]["balances"]) >= {"basic", "quantum"}
    assert isinstance(data["farm"]["revision"], int)
    assert isinstance(data["server_time"], float)
    assert data["tick_interval_s"] == 0.05
    assert data["offline_report"] is None
    await ws.close()


async def test_auth_by_query_token(client: TestClient) -> None:
    guest = await new_guest(client)
    async with client.ws_connect(f"{WS}?token={guest['access_token']}") as ws:
        welcome = await receive_json(ws)
        assert welcome["type"] == "welcome"
        assert welcome["data"]["player"]["id"] == guest["player"]["id"]


async def test_auth_by_first_message(client: TestClient) -> None:
    guest = await new_guest(client)
    async with client.ws_connect(WS) as ws:
        await ws.send_json({"type": "auth", "data": {"token": guest["access_token"]}})
        welcome = await receive_json(ws)
        assert welcome["type"] == "welcome"
        assert welcome["data"]["player"]["id"] == guest["player"]["id"]
        await ws.send_json({"type": "ping", "id": "p"})
        assert (await receive_until(ws, "pong"))["id"] == "p"


async def test_no_auth_within_the_timeout_closes_4401(make_client: MakeClient) -> None:
    client = await make_client(ws_auth_timeout_s=0.2)
    async with client.ws_connect(WS) as ws:
        await expect_close(ws, 4401)


async def test_a_first_message_that_is_not_auth_closes_4401(client: TestClient) -> None:
    async with client.ws_connect(WS) as ws:
        await ws.send_json({"type": "ping"})
        await expect_close(ws, 4401)


@pytest.mark.parametrize("how", ["header", "query", "message"])
async def test_a_bad_token_closes_4401(client: TestClient, how: str) -> None:
    guest = await new_guest(client)
    bad = guest["refresh_token"]  # a real credential, but not an access token
    if how == "header":
        ws = await client.ws_connect(WS, headers=bearer(bad))
    elif how == "query":
        ws = await client.ws_connect(f"{WS}?token=forged.token.value")
    else:
        ws = await client.ws_connect(WS)
        await ws.send_json({"type": "auth", "data": {"token": "forged.token.value"}})
    await expect_close(ws, 4401)
    await ws.close()


async def test_deleting_the_account_closes_its_sockets_4401(client: TestClient) -> None:
    guest = await new_guest(client)
    ws, _ = await connect(client, guest["access_token"])
    resp = await client.delete(f"{API}/players/me", headers=guest["headers"])
    assert resp.status == 204
    await expect_close(ws, 4401)
    await ws.close()
    # ...and the same token cannot open a new one
    async with client.ws_connect(WS, headers=guest["headers"]) as again:
        await expect_close(again, 4401)


# ---- ticks ------------------------------------------------------------------------------------


async def test_ticks_arrive_with_balances_and_revision(client: TestClient) -> None:
    guest = await new_guest(client)
    ws, welcome = await connect(client, guest["access_token"])
    first = await receive_until(ws, "tick")
    data = first["data"]
    assert data["revision"] >= welcome["data"]["farm"]["revision"]
    assert set(data["balances"]) == set(welcome["data"]["farm"]["balances"])
    assert data["rates"]["basic"] > 0  # the first tick carries the rates
    second = await receive_until(ws, "tick")
    assert second["data"]["server_time"] > data["server_time"]
    assert second["data"]["balances"]["basic"] >= data["balances"]["basic"]
    if second["data"]["revision"] == data["revision"]:
        assert "rates" not in second["data"]  # rates only when they changed
    await ws.close()


async def test_ticks_carry_the_new_rates_after_a_change(client: TestClient) -> None:
    guest = await new_guest(client)
    ws, _ = await connect(client, guest["access_token"])
    await receive_until(ws, "tick")
    await ws.send_json({"type": "action", "id": "s", "data": {"action": "shear", "count": 10}})
    result = await receive_until(ws, is_reply("s"))
    revision = result["data"]["farm"]["revision"]
    tick = await receive_until(ws, lambda m: m["type"] == "tick" and m["data"]["revision"] >= revision)
    assert tick["data"]["balances"]["basic"] >= 10.0
    assert "rates" in tick["data"]
    await ws.close()


# ---- actions ----------------------------------------------------------------------------------------


async def test_an_action_gets_a_result_with_its_id(client: TestClient) -> None:
    guest = await new_guest(client)
    ws, _ = await connect(client, guest["access_token"])
    await ws.send_json({"type": "action", "id": "a1", "data": {"action": "shear", "count": 5}})
    result = await receive_until(ws, is_reply("a1"))
    assert result["type"] == "result"
    assert result["data"]["result"]["sheared"] == 5
    assert result["data"]["result"]["wool"] == 5.0
    assert result["data"]["farm"]["stats"]["shears"] == 5
    await ws.send_json({"type": "action", "id": 7, "data": {"action": "shear"}})
    result = await receive_until(ws, is_reply(7))
    assert result["data"]["result"]["sheared"] == 1
    await ws.close()
    # the same engine serves REST
    farm = await get_farm(client, guest["headers"])
    assert farm["stats"]["shears"] == 6
    assert farm["revision"] == result["data"]["farm"]["revision"]


async def test_buying_over_the_socket(frozen: TestClient, clock: FakeClock) -> None:
    guest = await new_guest(frozen)
    ws, _ = await connect(frozen, guest["access_token"])  # online from now on: the socket is open
    clock.advance(1000)
    await ws.send_json({"type": "action", "id": "b", "data": {"action": "buy_building", "key": "barn", "quantity": 2}})
    result = await receive_until(ws, is_reply("b"))
    assert result["type"] == "result"
    assert result["data"]["result"]["bought"] == 2
    await ws.send_json({"type": "action", "id": "u", "data": {"action": "buy_upgrade", "key": "sharp_shears"}})
    result = await receive_until(ws, is_reply("u"))
    assert result["type"] == "error"  # 100 - 21.5 < 100
    assert result["data"]["code"] == "INSUFFICIENT_RESOURCES"
    await ws.send_json(
        {"type": "action", "id": "m", "data": {"action": "buy_building", "key": "barn", "quantity": "max"}}
    )
    result = await receive_until(ws, is_reply("m"))
    assert result["data"]["farm"]["buildings"]["barn"] == 6
    await ws.close()


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ({"action": "buy_building", "key": "shears"}, "REQUIREMENT_NOT_MET"),
        ({"action": "buy_building", "key": "barn"}, "INSUFFICIENT_RESOURCES"),
        ({"action": "buy_building", "key": "castle"}, "NOT_FOUND"),
        ({"action": "buy_upgrade", "key": "nope"}, "NOT_FOUND"),
        ({"action": "prestige", "confirm": True}, "REQUIREMENT_NOT_MET"),
        ({"action": "shear", "count": 21}, "VALIDATION_ERROR"),
        ({"action": "shear", "count": 1, "wool": 100}, "VALIDATION_ERROR"),
        ({"action": "set_balance", "basic": 1e12}, "VALIDATION_ERROR"),
        ({}, "VALIDATION_ERROR"),
    ],
)
async def test_refused_actions_answer_an_error_with_the_id(frozen: TestClient, data: dict, code: str) -> None:  # type: ignore[type-arg]
    guest = await new_guest(frozen)
    ws, welcome = await connect(frozen, guest["access_token"])
    await ws.send_json({"type": "action", "id": "e1", "data": data})
    reply = await receive_until(ws, is_reply("e1"))
    assert reply["type"] == "error"
    assert reply["data"]["code"] == code
    assert reply["data"]["message"]
    assert reply["data"]["id"] == "e1"
    await ws.send_json({"type": "ping", "id": "after"})
    assert (await receive_until(ws, "pong"))["id"] == "after"
    await ws.close()
    farm = await get_farm(frozen, guest["headers"])
    assert farm["balances"] == welcome["data"]["farm"]["balances"]
    assert farm["buildings"] == welcome["data"]["farm"]["buildings"]


# ---- protocol errors ---------------------------------------------------------------------------------


async def test_ping_pong(client: TestClient) -> None:
    guest = await new_guest(client)
    ws, _ = await connect(client, guest["access_token"])
    await ws.send_json({"type": "ping", "id": "p1"})
    pong = await receive_until(ws, "pong")
    assert pong["id"] == "p1"
    assert isinstance(pong["data"]["server_time"], float)
    await ws.close()


async def test_protocol_errors_keep_the_connection_working(client: TestClient) -> None:
    guest = await new_guest(client)
    ws, _ = await connect(client, guest["access_token"])

    await ws.send_str(orjson.dumps({"type": "ping", "id": "big", "data": {"pad": "x" * 5000}}).decode())
    err = await receive_until(ws, "error")
    assert err["data"]["code"] == "MESSAGE_TOO_LARGE"
    assert "4096" in err["data"]["message"]

    await ws.send_bytes(b'{"type":"ping"}')
    err = await receive_until(ws, "error")
    assert err["data"]["code"] == "UNSUPPORTED_FRAME"

    await ws.send_str("{this is not json")
    err = await receive_until(ws, "error")
    assert err["data"]["code"] == "INVALID_JSON"

    await ws.send_str("[1, 2, 3]")
    err = await receive_until(ws, "error")
    assert err["data"]["code"] == "VALIDATION_ERROR"

    await ws.send_json({"type": "teleport", "id": "t"})
    err = await receive_until(ws, "error")
    assert err["data"]["code"] == "VALIDATION_ERROR"
    assert err["id"] == "t"
    assert "teleport" in err["data"]["message"]

    await ws.send_json({"type": "ping", "id": "x", "extra": 1})
    err = await receive_until(ws, "error")
    assert err["data"]["code"] == "VALIDATION_ERROR"

    await ws.send_json({"type": "auth", "id": "again", "data": {"token": guest["access_token"]}})
    err = await receive_until(ws, "error")
    assert err["data"]["code"] == "VALIDATION_ERROR"

    # Still alive: an action goes through and the ticks keep coming.
    await ws.send_json({"type": "action", "id": "ok", "data": {"action": "shear", "count": 2}})
    result = await receive_until(ws, is_reply("ok"))
    assert result["type"] == "result"
    assert result["data"]["result"]["sheared"] == 2
    await receive_until(ws, "tick")
    assert not ws.closed
    await ws.close()


async def test_a_huge_frame_closes_1009(client: TestClient) -> None:
    guest = await new_guest(client)
    ws, _ = await connect(client, guest["access_token"])
    await ws.send_str("x" * (4096 * 16 + 1))
    await expect_close(ws, 1009)
    await ws.close()
    # the farm is unharmed and reachable again
    ws, welcome = await connect(client, guest["access_token"])
    assert welcome["data"]["farm"]["player_id"] == guest["player"]["id"]
    await ws.close()


# ---- several connections -------------------------------------------------------------------------------


async def test_two_connections_to_one_farm_both_get_ticks_and_events(client: TestClient) -> None:
    guest = await new_guest(client)
    phone, _ = await connect(client, guest["access_token"])
    tablet, _ = await connect(client, guest["access_token"])
    await receive_until(phone, "tick")
    await receive_until(tablet, "tick")

    await phone.send_json({"type": "action", "id": "a1", "data": {"action": "shear", "count": 5}})
    result = await receive_until(phone, is_reply("a1"))
    revision = result["data"]["farm"]["revision"]

    def first_wool(m: dict) -> bool:  # type: ignore[type-arg]
        return m["type"] == "event" and m["data"].get("key") == "first_wool"

    event = await receive_until(tablet, first_wool)
    assert event["data"]["type"] == "achievement_unlocked"
    tick = await receive_until(tablet, lambda m: m["type"] == "tick" and m["data"]["revision"] >= revision)
    assert tick["data"]["balances"]["basic"] >= 5.0
    # the tablet never gets the phone's reply
    phone_tick = await receive_until(phone, lambda m: m["type"] == "tick" and m["data"]["revision"] >= revision)
    assert phone_tick["data"]["revision"] == tick["data"]["revision"]

    await phone.close()
    # the other connection keeps ticking after one leaves
    await receive_until(tablet, "tick")
    await receive_until(tablet, "tick")
    await tablet.close()


async def test_a_rest_action_reaches_the_socket_as_events(client: TestClient) -> None:
    guest = await new_guest(client)
    ws, _ = await connect(client, guest["access_token"])
    await shear(client, guest["headers"], 3)
    event = await receive_until(ws, lambda m: m["type"] == "event" and m["data"].get("key") == "first_wool")
    assert event["data"]["type"] == "achievement_unlocked"
    await ws.close()


async def test_welcome_has_the_offline_report_exactly_once(frozen: TestClient, clock: FakeClock) -> None:
    guest = await new_guest(frozen)
    pid = guest["player"]["id"]
    await shear(frozen, guest["headers"], 5)
    clock.advance(121)
    await take_offline(frozen, pid)
    clock.advance(3600)

    first, welcome = await connect(frozen, guest["access_token"])
    report = welcome["data"]["offline_report"]
    assert report is not None
    assert report["elapsed_s"] == pytest.approx(3601)
    assert report["credited_s"] == pytest.approx(3601)
    assert report["gains"]["basic"] == pytest.approx(0.1 * 1.02 * 0.5 * 3601)
    assert welcome["data"]["farm"]["stats"]["offline_credits"] == 1

    second, welcome2 = await connect(frozen, guest["access_token"])
    assert welcome2["data"]["offline_report"] is None
    assert welcome2["data"]["farm"]["balances"] == welcome["data"]["farm"]["balances"]
    await first.close()
    await second.close()

    third, welcome3 = await connect(frozen, guest["access_token"])
    assert welcome3["data"]["offline_report"] is None
    assert welcome3["data"]["farm"]["stats"]["offline_credits"] == 1
    await third.close()
    # the last report stays readable
    assert (await ok_json(await frozen.get(f"{API}/farm/offline-report", headers=guest["headers"]))) == report


async def test_a_connected_farm_never_goes_offline(frozen: TestClient, clock: FakeClock) -> None:
    guest = await new_guest(frozen)
    ws, _ = await connect(frozen, guest["access_token"])
    clock.advance(600)  # far past the online window, but a socket is open
    await run_ticks(frozen, 3)
    assert engine_of(frozen).resident_state(guest["player"]["id"]) is not None
    farm = await get_farm(frozen, guest["headers"])
    assert farm["online"] is True
    assert farm["stats"]["offline_credits"] == 0
    assert farm["balances"]["basic"] == pytest.approx(0.1 * 600)  # full speed, not offline efficiency
    await ws.close()


# ---- idempotent WebSocket actions ----------------------------------------------------------------


async def test_a_ws_action_retried_with_the_same_idempotency_key_applies_once(client: TestClient) -> None:
    guest = await new_guest(client)
    ws, _ = await connect(client, guest["access_token"])
    try:
        action = {"action": "shear", "count": 3, "idempotency_key": "tap-0001"}
        await ws.send_json({"type": "action", "id": "a1", "data": action})
        first = await receive_until(ws, is_reply("a1"))
        await ws.send_json({"type": "action", "id": "a2", "data": action})  # a retry after a "lost" reply
        second = await receive_until(ws, is_reply("a2"))
        assert first["type"] == second["type"] == "result"
        assert second["data"] == first["data"]
        farm = await get_farm(client, guest["headers"])
        assert farm["stats"]["shears"] == 3

        other = {"action": "shear", "count": 5, "idempotency_key": "tap-0001"}
        await ws.send_json({"type": "action", "id": "a3", "data": other})
        refused = await receive_until(ws, is_reply("a3"))
        assert refused["type"] == "error" and refused["data"]["code"] == "CONFLICT"

        await ws.send_json({"type": "action", "id": "a4", "data": {"action": "shear", "idempotency_key": ""}})
        bad = await receive_until(ws, is_reply("a4"))
        assert bad["data"]["code"] == "VALIDATION_ERROR" and "idempotency_key" in bad["data"]["message"]
        assert (await get_farm(client, guest["headers"]))["stats"]["shears"] == 3
    finally:
        await ws.close()
