"""Support and a player's sessions through the real server, on SQLite and on
MongoDB: the admin lists them (never a token or its hash), ends one or all of
them (the refresh fails, the socket closes 4401), and every call is audited."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from llamawool.api.app import context
from tests.conftest import API

from .fairplay import make_admin, ws_connect
from .support import bearer, expect_close, expect_problem, ok_json

PASSWORD = "player password"


async def register(client: TestClient, name: str) -> dict[str, Any]:
    body = await ok_json(
        await client.post(
            f"{API}/auth/register", json={"email": f"{name}@example.com", "password": PASSWORD, "username": name}
        ),
        201,
    )
    return body


async def sign_in(client: TestClient, name: str) -> dict[str, Any]:
    return await ok_json(await client.post(f"{API}/auth/login", json={"login": name, "password": PASSWORD}))


async def refresh(client: TestClient, refresh_token: str) -> Any:
    return await client.post(f"{API}/auth/refresh", json={"refresh_token": refresh_token})


async def sessions_of(client: TestClient, admin: dict[str, Any], who: str) -> list[dict[str, Any]]:
    body = await ok_json(await client.get(f"{API}/admin/players/{who}/sessions", headers=admin["headers"]))
    return list(body["sessions"])


async def test_sessions_are_listed_newest_first_without_any_token(client_on_each_store: TestClient) -> None:
    client = client_on_each_store
    admin = await make_admin(client)
    first = await register(client, "lou")
    second = await sign_in(client, "lou")
    rotated = await ok_json(await refresh(client, second["refresh_token"]))
    assert (await client.post(f"{API}/auth/logout", json={"refresh_token": first["refresh_token"]})).status == 204

    resp = await client.get(f"{API}/admin/players/lou/sessions", headers=admin["headers"])
    text = await resp.text()
    sessions = (await ok_json(resp))["sessions"]
    assert [(s["status"], s["refreshes"]) for s in sessions] == [("active", 1), ("ended", 0)]
    assert sessions[0]["started_at"] <= sessions[0]["last_refreshed_at"] < sessions[0]["expires_at"]
    assert set(sessions[0]) == {"id", "started_at", "last_refreshed_at", "expires_at", "refreshes", "status"}
    # nothing a session could be resumed or checked with
    tokens = await context(client.server.app).store.list_player_tokens(first["player"]["id"])
    assert len(tokens) == 3
    for secret in [t.token_hash for t in tokens] + [first["refresh_token"], rotated["refresh_token"]]:
        assert secret not in text

    # the look-up shows the same sessions
    looked_up = await ok_json(await client.get(f"{API}/admin/players/lou", headers=admin["headers"]))
    assert looked_up["sessions"] == sessions


async def test_ending_every_session_refuses_the_refresh_and_closes_the_socket(client_on_each_store: TestClient) -> None:
    client = client_on_each_store
    admin = await make_admin(client)
    player = await register(client, "max")
    other = await sign_in(client, "max")
    ws = await ws_connect(client, player["access_token"])

    resp = await client.post(f"{API}/admin/players/max/sessions/end", json={}, headers=admin["headers"])
    ended = await ok_json(resp)
    assert sorted(ended["ended"]) == sorted(s["id"] for s in await sessions_of(client, admin, "max"))
    assert len(ended["ended"]) == 2

    await expect_close(ws, 4401)
    for tokens in (player, other):
        await expect_problem(await refresh(client, tokens["refresh_token"]), 401, "INVALID_TOKEN")
        resp = await client.get(f"{API}/players/me", headers=bearer(tokens["access_token"]))
        await expect_problem(resp, 401, "INVALID_TOKEN")
    assert {s["status"] for s in await sessions_of(client, admin, "max")} == {"ended"}

    audit = await ok_json(await client.get(f"{API}/admin/audit", headers=admin["headers"]))
    changes = [e for e in audit["entries"] if e["action"] == "player.end_sessions"]
    assert [e["details"]["status"] for e in changes] == ["completed", "pending"]
    assert changes[0]["target"] == player["player"]["id"] and sorted(changes[0]["details"]["ended"]) == sorted(
        ended["ended"]
    )


async def test_ending_one_session_leaves_the_others(client_on_each_store: TestClient) -> None:
    client = client_on_each_store
    admin = await make_admin(client)
    kept = await register(client, "nia")
    gone = await sign_in(client, "nia")
    sessions = await sessions_of(client, admin, "nia")
    target = sessions[0]["id"]  # the newest: `gone`

    resp = await client.post(
        f"{API}/admin/players/nia/sessions/end", json={"session_id": target}, headers=admin["headers"]
    )
    assert (await ok_json(resp))["ended"] == [target]
    await expect_problem(await refresh(client, gone["refresh_token"]), 401, "INVALID_TOKEN")
    await ok_json(await refresh(client, kept["refresh_token"]))
    assert [s["status"] for s in await sessions_of(client, admin, "nia")] == ["ended", "active"]


async def test_bad_session_requests_are_named_4xx(client_on_each_store: TestClient) -> None:
    client = client_on_each_store
    admin = await make_admin(client)
    await register(client, "ozzy")
    someone_else = await register(client, "pia")
    their_session = (await sessions_of(client, admin, "pia"))[0]["id"]
    end = f"{API}/admin/players/ozzy/sessions/end"
    # another player's session is not this player's to end
    await expect_problem(
        await client.post(end, json={"session_id": their_session}, headers=admin["headers"]), 404, "NOT_FOUND"
    )
    await ok_json(await refresh(client, someone_else["refresh_token"]))
    await expect_problem(
        await client.post(end, json={"session_id": 7}, headers=admin["headers"]), 422, "VALIDATION_ERROR"
    )
    await expect_problem(await client.post(end, json={"all": True}, headers=admin["headers"]), 422, "VALIDATION_ERROR")
    await expect_problem(
        await client.get(f"{API}/admin/players/nobody/sessions", headers=admin["headers"]), 404, "NOT_FOUND"
    )
