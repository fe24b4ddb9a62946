"""The authorisation matrix: every route in the table × every kind of credential.

The rows are generated from `ROUTES` (the same table that registers the
aiohttp routes and writes the OpenAPI document), so a route added tomorrow is
in the matrix the moment it exists. The columns are:

    none        no Authorization header
    expired     a correctly signed access token past its `exp`
    bad_sig     a real access token re-signed with another key
    refresh     the player's opaque refresh token presented as a Bearer token
    own         the player's own access token
    other       another player's access token (must never reach the first player's data)
    admin       an admin's access token

Expected: player routes answer 401 (problem+json, WWW-Authenticate) to the
first four and something other than 401/403/5xx to a real token; admin routes
the same, except that players get 403; public routes answer valid calls with
anything but 401/403/5xx (a public route that looks at a presented token may
refuse a bad one with 401 INVALID_TOKEN, never accept it). The WebSocket's
upgrade is public and the socket authenticates itself: bad credentials close
it with 4401, good ones get a `welcome` for the token's own player.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient

from llamawool.api.app import context
from llamawool.api.http import API_PREFIX, ROUTES, Route
from llamawool.api.routes_meta import OPS_ROUTES
from llamawool.auth import JWT_ALGORITHM
from tests.conftest import MakeClient, new_guest

from .support import MATRIX

CREDENTIALS = ("none", "expired", "bad_sig", "refresh", "own", "other", "admin")
INVALID = ("none", "expired", "bad_sig", "refresh")
PASSWORD = "correct horse battery"

# Routes anyone may call. A new public route must be added here on purpose:
# an `access="public"` typed by mistake fails this file instead of shipping.
REVIEWED_PUBLIC = {
    ("POST", "/auth/guest"),
    ("POST", "/auth/register"),
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
    ("POST", "/auth/logout"),
    ("GET", "/leaderboards/{board}"),
    ("GET", "/leaderboards/{board}/periods"),
    ("GET", "/config"),
    ("GET", "/ws"),
}
# Public routes that read a presented token (register upgrades the caller's
# guest, logout revokes the caller's sessions): a bad token is refused there.
READS_OPTIONAL_TOKEN = {("POST", "/auth/register"), ("POST", "/auth/logout")}


@dataclass
class Who:
    """A player on the server under test, with every credential the matrix needs."""

    id: str
    access: str
    refresh: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


async def guest(client: TestClient) -> Who:
    body = await new_guest(client)
    return Who(body["player"]["id"], body["access_token"], body["refresh_token"])


async def admin(client: TestClient) -> Who:
    """A guest given the admin role in the store; its next access token carries the role."""
    who = await guest(client)
    c = context(client.server.app)
    player = await c.store.get_player(who.id)
    assert player is not None
    player.role = "admin"
    await c.store.update_player_fields(player.id, {"role": "admin"})
    who.access = c.auth.access_token(player)
    return who


def expired_token(client: TestClient, player_id: str) -> str:
    secret = context(client.server.app).settings.resolved_jwt_secret()
    past = int(time.time()) - 3600
    claims = {"sub": player_id, "role": "player", "typ": "access", "iat": past - 900, "exp": past}
    return jwt.encode(claims, secret, algorithm=JWT_ALGORITHM)


def resigned(token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    return jwt.encode(claims, "not-the-server-secret-" + "x" * 32, algorithm=JWT_ALGORITHM)


def credential(client: TestClient, kind: str, me: Who, other: Who, boss: Who) -> dict[str, str]:
    token = {
        "none": None,
        "expired": expired_token(client, me.id),
        "bad_sig": resigned(me.access),
        "refresh": me.refresh,
        "own": me.access,
        "other": other.access,
        "admin": boss.access,
    }[kind]
    return {"Authorization": f"Bearer {token}"} if token else {}


async def sample_call(client: TestClient, r: Route, me: Who) -> tuple[str, dict[str, Any] | None, dict[str, str]]:
    """A valid request for the route (path, JSON body, extra headers). Routes not
    listed get placeholder path values and an empty body: the authorisation
    answer comes before the body is read, so a new route is still covered."""
    c = context(client.server.app)
    values = {
        "player": me.id,
        "key": "barn",
        "board": "lifetime",
        "revision": "latest",
    }
    if "/upgrades/" in r.path:
        values["key"] = next(iter(c.rules.upgrades))
    path = r.path
    for name, value in values.items():
        path = path.replace("{" + name + "}", value)
    path = path.replace("{", "x").replace("}", "x")  # any parameter nobody has named yet
    extra: dict[str, str] = {}
    name = f"u{uuid.uuid4().hex[:12]}"
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/auth/guest"): {"device_id": f"dev-{uuid.uuid4().hex}"},
        ("POST", "/auth/register"): {"email": f"{name}@example.com", "password": PASSWORD, "username": name},
        ("POST", "/auth/refresh"): {"refresh_token": me.refresh},
        ("POST", "/auth/logout"): {"refresh_token": me.refresh},
        ("POST", "/admin/players/{player}/restore"): {"revision": 1},
        ("POST", "/admin/broadcast"): {"message": "matrix"},
        ("POST", "/farm/buildings/{key}/purchase"): {"quantity": 1},
        ("POST", "/farm/shear"): {"count": 1},
        ("POST", "/farm/prestige"): {"confirm": True},
        ("PATCH", "/players/me"): {"settings": {"sound": True}},
    }
    body = bodies.get((r.method, r.path), {} if r.body is not None else None)
    if (r.method, r.path) == ("POST", "/auth/login"):
        resp = await client.post(
            f"{API_PREFIX}/auth/register",
            json={"email": f"{name}@example.com", "password": PASSWORD, "username": name},
        )
        assert resp.status == 201, await resp.text()
        body = {"login": name, "password": PASSWORD}
    if (r.method, r.path) == ("POST", "/farm/saves"):
        resp = await client.get(f"{API_PREFIX}/farm/saves/latest", headers=me.headers)
        body = await resp.json()
        extra["If-Match"] = f'"{body["revision"]}"'
    return path, body, extra


def assert_problem_401(status: int, text: str, headers: Any, where: str) -> None:
    assert status == 401, f"{where}: expected 401, got {status}: {text[:300]}"
    problem = orjson.loads(text)
    assert problem["status"] == 401 and problem["code"] in ("AUTH_REQUIRED", "INVALID_TOKEN"), (where, problem)
    assert headers.get("WWW-Authenticate", "").startswith("Bearer"), where


def route_id(r: Route) -> str:
    return f"{r.method} {r.path}"


@pytest.mark.parametrize("r", ROUTES, ids=route_id)
async def test_every_route_against_every_credential(make_client: MakeClient, r: Route) -> None:
    client = await make_client(guests_per_ip_per_hour=10_000, registrations_per_ip_per_hour=10_000)
    if r.path == "/ws":
        await _websocket_row(client)
        return
    outcomes: dict[str, int] = {}
    for kind in CREDENTIALS:
        # Fresh players for every cell: a cell may log out, rotate or erase its player.
        me, other, boss = await guest(client), await guest(client), await admin(client)
        path, body, extra = await sample_call(client, r, me)
        headers = {**credential(client, kind, me, other, boss), **extra}
        resp = await client.request(r.method, API_PREFIX + path, json=body, headers=headers)
        text = await resp.text()
        status = outcomes[kind] = resp.status
        MATRIX.cells[(r.access, kind, status)] += 1
        MATRIX.routes.add(route_id(r))
        where = f"{route_id(r)} with {kind}"
        assert status < 500, f"{where}: {status} {text[:300]}"
        if r.access == "public":
            if kind in INVALID[1:] and (r.method, r.path) in READS_OPTIONAL_TOKEN:
                assert_problem_401(status, text, resp.headers, where)
                assert orjson.loads(text)["code"] == "INVALID_TOKEN", where
            else:
                assert status not in (401, 403), f"{where}: a valid public call answered {status}: {text[:300]}"
            continue
        if kind in INVALID:
            assert_problem_401(status, text, resp.headers, where)
        elif r.access == "admin" and kind in ("own", "other"):
            assert status == 403, f"{where}: a player reached an admin route ({status}): {text[:300]}"
            assert orjson.loads(text)["code"] == "FORBIDDEN"
        else:
            assert status not in (401, 403), f"{where}: {status} {text[:300]}"
            # authenticated answers are never kept by a shared cache
            assert "no-store" in resp.headers.get("Cache-Control", ""), (where, resp.headers.get("Cache-Control"))
        if kind == "other" and r.access == "player":
            # the route carries no player id: another token reaches only its own player
            assert me.id not in text, f"{where}: the answer names the first player: {text[:300]}"
    # The row as a whole: the credential decided the outcome, not the route's luck.
    if r.access != "public":
        assert {outcomes[k] for k in INVALID} == {401}, outcomes


async def _websocket_row(client: TestClient) -> None:
    ws_path = f"{API_PREFIX}/ws"
    for kind in CREDENTIALS:
        me, other, boss = await guest(client), await guest(client), await admin(client)
        headers = credential(client, kind, me, other, boss)
        if kind == "none":
            ws = await client.ws_connect(ws_path)
            await ws.send_str('{"type":"ping"}')  # not an auth message: closed at once
        else:
            ws = await client.ws_connect(ws_path, headers=headers)
        msg = await ws.receive(timeout=5)
        MATRIX.cells[("ws", kind, int(msg.data) if msg.type == aiohttp.WSMsgType.CLOSE else 101)] += 1
        MATRIX.routes.add("GET /ws")
        if kind in INVALID:
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4401, (kind, msg)
        else:
            assert msg.type == aiohttp.WSMsgType.TEXT, (kind, msg)
            welcome = orjson.loads(msg.data)
            assert welcome["type"] == "welcome"
            expected = {"own": me.id, "other": other.id, "admin": boss.id}[kind]
            assert welcome["data"]["player"]["id"] == expected, kind
            if kind == "other":
                assert me.id not in msg.data
        await ws.close()


def test_public_routes_are_the_reviewed_ones() -> None:
    public = {(r.method, r.path) for r in ROUTES if r.access == "public"}
    assert public == REVIEWED_PUBLIC, (
        "public routes changed: review who may call them and update REVIEWED_PUBLIC "
        f"(new: {sorted(public - REVIEWED_PUBLIC)}, gone: {sorted(REVIEWED_PUBLIC - public)})"
    )


def test_every_route_has_an_access_level_and_admin_routes_live_under_admin() -> None:
    for r in ROUTES:
        assert r.access in ("public", "player", "admin"), route_id(r)
        assert (r.access == "admin") == r.path.startswith("/admin/"), route_id(r)


async def test_operations_routes_need_no_token_and_ignore_a_bad_one(client: TestClient) -> None:
    """/health, /ready, /metrics and the OpenAPI document live outside the table."""
    paths = [path for path, _ in OPS_ROUTES] + [f"{API_PREFIX}/openapi.json"]
    for path in paths:
        for headers in ({}, {"Authorization": "Bearer forged.token.value"}):
            resp = await client.get(path, headers=headers)
            assert resp.status == 200, (path, resp.status)
