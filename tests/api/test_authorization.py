"""Authorisation: a token reaches its own farm and saves, never another player's.

The farm routes carry no player id: the player is the token's subject and
nothing else. These tests try the ways a client could point a request at
someone else (ids in the query, in headers, in a save body, forged or
altered tokens, the other player's revision numbers) and check that each one
either lands on the caller's own farm or is refused, and that the other farm
is untouched.
"""

from __future__ import annotations

import base64
from typing import Any

import jwt
import orjson
from aiohttp.test_utils import TestClient

from llamawool.api.app import context
from tests.conftest import API, new_guest

from .fairplay import ws_connect, ws_request
from .support import expect_problem, get_farm, ok_json, shear

FARM_READS = [
    "/farm",
    "/farm/production",
    "/farm/buildings",
    "/farm/upgrades",
    "/farm/prestige",
    "/farm/achievements",
    "/farm/saves",
    "/farm/saves/latest",
]


async def two_players(client: TestClient) -> tuple[dict[str, Any], dict[str, Any]]:
    alice, bob = await new_guest(client), await new_guest(client)
    await shear(client, alice["headers"], 3)
    for _ in range(4):  # bob's farm reaches revision 5 and has a save of it
        await shear(client, bob["headers"], 5)
    await ok_json(await client.get(f"{API}/farm/saves/latest", headers=bob["headers"]))
    return alice, bob


async def stored(client: TestClient, player_id: str) -> tuple[int, bytes]:
    farm = await context(client.server.app).store.load_farm(player_id)
    assert farm is not None
    return farm.revision, orjson.dumps(farm.doc, option=orjson.OPT_SORT_KEYS)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def tamper(token: str, **claims: Any) -> str:
    """The same token with its payload changed and the original signature kept."""
    head, payload, sig = token.split(".")
    body = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(claims)
    return f"{head}.{b64(orjson.dumps(body))}.{sig}"


async def test_a_token_only_ever_reaches_its_own_farm(frozen: TestClient) -> None:
    alice, bob = await two_players(frozen)
    a_id, b_id = alice["player"]["id"], bob["player"]["id"]
    bob_before = await stored(frozen, b_id)

    for path in ("/farm", "/farm/production", "/farm/buildings", "/farm/saves/latest"):
        # ids in the query string or in headers are not how a farm is chosen
        resp = await frozen.get(
            f"{API}{path}",
            params={"player_id": b_id, "player": b_id, "id": b_id},
            headers={**alice["headers"], "X-Player-Id": b_id, "X-User-Id": b_id},
        )
        if resp.status == 422:  # a route that validates its query may refuse the unknown fields instead
            continue
        body = await ok_json(resp)
        assert b_id not in orjson.dumps(body).decode(), path
        assert resp.headers["ETag"] == f'"{(await get_farm(frozen, alice["headers"]))["revision"]}"'

    farm = await get_farm(frozen, alice["headers"])
    assert farm["player_id"] == a_id and farm["balances"]["basic"] == 3.0
    assert (await get_farm(frozen, bob["headers"]))["balances"]["basic"] == 20.0

    # writes land on the caller's farm only
    resp = await frozen.post(
        f"{API}/farm/shear",
        params={"player_id": b_id},
        json={"count": 2},
        headers={**alice["headers"], "X-Player-Id": b_id},
    )
    assert (await ok_json(resp))["farm"]["player_id"] == a_id
    await expect_problem(
        await frozen.post(f"{API}/farm/shear", json={"count": 2, "player_id": b_id}, headers=alice["headers"]),
        422,
        "VALIDATION_ERROR",
    )
    assert (await get_farm(frozen, alice["headers"]))["balances"]["basic"] == 5.0
    assert await stored(frozen, b_id) == bob_before


async def test_every_farm_read_answers_with_the_callers_data(frozen: TestClient) -> None:
    alice, bob = await two_players(frozen)
    b_id = bob["player"]["id"]
    for path in FARM_READS:
        body = await ok_json(await frozen.get(f"{API}{path}", headers=alice["headers"]))
        assert b_id not in orjson.dumps(body).decode(), path
    saves = await ok_json(await frozen.get(f"{API}/farm/saves", headers=alice["headers"]))
    assert [s["revision"] for s in saves["saves"]] == [2, 1]  # alice's (latest was read above), none of bob's


async def test_another_players_save_revision_is_404_not_their_data(frozen: TestClient) -> None:
    alice, bob = await two_players(frozen)
    bob_save = await ok_json(await frozen.get(f"{API}/farm/saves/5", headers=bob["headers"]))
    assert bob_save["player_id"] == bob["player"]["id"]

    resp = await frozen.get(f"{API}/farm/saves/5", headers=alice["headers"])
    body = await expect_problem(resp, 404, "NOT_FOUND")
    assert bob["player"]["id"] not in await resp.text()
    assert "farm" not in body
    # a revision number both farms have answers with the caller's own save
    own = await ok_json(await frozen.get(f"{API}/farm/saves/1", headers=alice["headers"]))
    assert own["player_id"] == alice["player"]["id"]
    assert own != await ok_json(await frozen.get(f"{API}/farm/saves/1", headers=bob["headers"]))


async def test_uploading_another_players_save_never_touches_their_farm(frozen: TestClient) -> None:
    alice, bob = await two_players(frozen)
    a_id, b_id = alice["player"]["id"], bob["player"]["id"]
    bob_save = await ok_json(await frozen.get(f"{API}/farm/saves/latest", headers=bob["headers"]))
    bob_before = await stored(frozen, b_id)
    alice_before = await stored(frozen, a_id)

    # bob's genuine save (revision 5, his signature) uploaded with alice's token
    resp = await frozen.post(f"{API}/farm/saves", json=bob_save, headers={**alice["headers"], "If-Match": '"5"'})
    body = await expect_problem(resp, 412, "PRECONDITION_FAILED")
    assert body["current"]["player_id"] == a_id  # the server's copy is alice's, not bob's
    assert b_id not in await resp.text()

    # at a revision the caller's farm is at too, bob's signature does not match the caller's save
    carol = await new_guest(frozen)
    c_id = carol["player"]["id"]
    assert (await get_farm(frozen, carol["headers"]))["revision"] == 1
    carol_before = await stored(frozen, c_id)
    bob_first = await ok_json(await frozen.get(f"{API}/farm/saves/1", headers=bob["headers"]))
    resp = await frozen.post(f"{API}/farm/saves", json=bob_first, headers={**carol["headers"], "If-Match": '"1"'})
    body = await expect_problem(resp, 422, "IMPLAUSIBLE_SAVE")
    assert [r for r in body["reasons"] if r.startswith("signature")], body["reasons"]
    assert b_id not in await resp.text()

    assert await stored(frozen, b_id) == bob_before
    assert await stored(frozen, a_id) == alice_before
    assert await stored(frozen, c_id) == carol_before


async def test_altered_or_forged_tokens_are_refused(frozen: TestClient) -> None:
    alice, bob = await two_players(frozen)
    b_id = bob["player"]["id"]
    bob_before = await stored(frozen, b_id)
    candidates = {
        "subject swapped, signature kept": tamper(alice["access_token"], sub=b_id),
        "signed with another key": jwt.encode(
            {"sub": b_id, "role": "player", "typ": "access", "exp": 4_000_000_000}, "guess", algorithm="HS256"
        ),
        "unsigned (alg none)": ".".join(
            [
                b64(b'{"alg":"none","typ":"JWT"}'),
                b64(orjson.dumps({"sub": b_id, "role": "player", "typ": "access", "exp": 4_000_000_000})),
                "",
            ]
        ),
        "a refresh token as access token": alice["refresh_token"],
    }
    for what, token in candidates.items():
        headers = {"Authorization": f"Bearer {token}"}
        resp = await frozen.get(f"{API}/farm", headers=headers)
        assert resp.status == 401, (what, resp.status)
        resp = await frozen.post(f"{API}/farm/shear", json={"count": 1}, headers=headers)
        assert resp.status == 401, (what, resp.status)
        resp = await frozen.get(f"{API}/farm/saves/5", headers=headers)
        assert resp.status == 401, (what, resp.status)
        assert b_id not in await resp.text()
    assert await stored(frozen, b_id) == bob_before


async def test_a_websocket_acts_on_its_own_farm_only(frozen: TestClient) -> None:
    alice, bob = await two_players(frozen)
    b_id = bob["player"]["id"]
    bob_before = await stored(frozen, b_id)
    ws = await ws_connect(frozen, alice["access_token"])
    try:
        reply = await ws_request(
            ws, {"type": "action", "id": 1, "data": {"action": "shear", "count": 1, "player_id": b_id}}
        )
        assert reply["type"] == "error" and reply["data"]["code"] == "VALIDATION_ERROR"  # unknown field
        reply = await ws_request(ws, {"type": "action", "id": 2, "data": {"action": "shear", "count": 1}})
        assert reply["type"] == "result" and reply["data"]["farm"]["player_id"] == alice["player"]["id"]
        # a second auth message cannot switch the socket to another player
        reply = await ws_request(ws, {"type": "auth", "id": 3, "data": {"token": bob["access_token"]}})
        assert reply["type"] == "error"
        reply = await ws_request(ws, {"type": "action", "id": 4, "data": {"action": "shear", "count": 1}})
        assert reply["data"]["farm"]["player_id"] == alice["player"]["id"]
    finally:
        await ws.close()
    assert await stored(frozen, b_id) == bob_before
