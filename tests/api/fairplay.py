"""Helpers for the fair-play tests (leaderboards, anti-cheat, saves, admin, authorisation)."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from llamawool.api.app import context
from tests.conftest import API, engine_of

from .support import bearer, ok_json, receive_json, receive_until

WS = f"{API}/ws"
PASSWORD = "correct horse battery"


async def make_admin(client: TestClient, username: str | None = None) -> dict[str, Any]:
    """Register an account, give it the admin role in the store, and log in (the JWT carries the role)."""
    name = username or f"ops{uuid.uuid4().hex[:8]}"
    resp = await client.post(
        f"{API}/auth/register", json={"email": f"{name}@example.com", "password": PASSWORD, "username": name}
    )
    await ok_json(resp, 201)
    store = context(client.server.app).store
    player = await store.find_player(username=name)
    assert player is not None
    await store.update_player_fields(player.id, {"role": "admin"})
    body = await ok_json(await client.post(f"{API}/auth/login", json={"login": name, "password": PASSWORD}))
    assert body["player"]["role"] == "admin"
    body["headers"] = bearer(body["access_token"])
    return body


async def ws_connect(client: TestClient, token: str) -> aiohttp.ClientWebSocketResponse:
    ws = await client.ws_connect(WS, headers=bearer(token))
    welcome = await receive_json(ws)
    assert welcome["type"] == "welcome", welcome
    return ws


def reply_to(msg_id: object) -> Any:
    return lambda m: m["type"] in ("result", "error", "pong") and m.get("id") == msg_id


async def ws_request(ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> dict[str, Any]:
    """Send one message with an id and return the reply carrying that id."""
    await ws.send_json(message)
    return await receive_until(ws, reply_to(message["id"]))


async def push(client: TestClient) -> None:
    """One leaderboard batch, now (the tests run without the background feed)."""
    await engine_of(client).boards.push()


async def violations_total(client: TestClient, player_id: str) -> int:
    player = await context(client.server.app).store.get_player(player_id)
    assert player is not None
    return player.violations_total
