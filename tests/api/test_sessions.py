"""Ending sessions ends their access tokens too (ASVS 5.0 7.4.1), and password changes.

Access tokens are self-contained JWTs; each carries its session (`sid`, the
refresh-token family). Logout, a password change, account deletion and a
replayed refresh token put the session on the store's revocation list, which
every replica holds in memory: the token is refused on the next request, not
when it expires 15 minutes later.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from llamawool.api.app import context
from llamawool.store import StorageUnavailable
from tests import redis_server as redis_fixtures
from tests.conftest import API, MakeClient, new_guest

from .support import bearer, expect_close, expect_problem, ok_json, receive_json

PASSWORD = "correct horse battery"
redis_server = redis_fixtures.redis_server  # the session's redis-server (fails under CI=true when it cannot start)
NEW_PASSWORD = "a different long passphrase"


async def register(client: TestClient, password: str = PASSWORD, **extra: Any) -> dict[str, Any]:
    name = f"u{uuid.uuid4().hex[:10]}"
    body = {"email": f"{name}@example.com", "password": password, "username": name, **extra}
    resp = await client.post(f"{API}/auth/register", json=body)
    answer = await ok_json(resp, 201)
    answer["name"] = name
    return answer


async def login(client: TestClient, name: str, password: str = PASSWORD) -> dict[str, Any]:
    return await ok_json(await client.post(f"{API}/auth/login", json={"login": name, "password": password}))


async def works(client: TestClient, token: str) -> bool:
    resp = await client.get(f"{API}/players/me", headers=bearer(token))
    if resp.status == 401:
        problem = await expect_problem(resp, 401, "INVALID_TOKEN")
        assert "session has ended" in problem["detail"], problem
        return False
    await ok_json(resp)
    return True


def session_of(token: str) -> str:
    sid = jwt.decode(token, options={"verify_signature": False})["sid"]
    assert isinstance(sid, str)
    return sid


# ---- logout ----------------------------------------------------------------------------------------------------


async def test_logout_ends_that_sessions_access_token_and_no_other(client: TestClient) -> None:
    first = await register(client)
    second = await login(client, first["name"])
    assert session_of(first["access_token"]) != session_of(second["access_token"])

    resp = await client.post(f"{API}/auth/logout", json={"refresh_token": first["refresh_token"]})

    assert resp.status == 204
    assert not await works(client, first["access_token"])
    assert await works(client, second["access_token"])


async def test_a_rotated_sessions_older_access_tokens_end_with_it(client: TestClient) -> None:
    guest = await new_guest(client)
    rotated = await ok_json(await client.post(f"{API}/auth/refresh", json={"refresh_token": guest["refresh_token"]}))
    assert session_of(rotated["access_token"]) == session_of(guest["access_token"])

    assert (await client.post(f"{API}/auth/logout", json={"refresh_token": rotated["refresh_token"]})).status == 204

    assert not await works(client, guest["access_token"])
    assert not await works(client, rotated["access_token"])


async def test_logout_with_only_an_access_token_ends_every_access_token(client: TestClient) -> None:
    first = await register(client)
    second = await login(client, first["name"])

    resp = await client.post(f"{API}/auth/logout", json={}, headers=bearer(first["access_token"]))

    assert resp.status == 204
    assert not await works(client, first["access_token"])
    assert not await works(client, second["access_token"])
    relogin = await login(client, first["name"])
    assert await works(client, relogin["access_token"]), "logging in again starts a fresh session"


async def test_a_replayed_refresh_token_ends_the_sessions_access_tokens(client: TestClient) -> None:
    guest = await new_guest(client)
    rotated = await ok_json(await client.post(f"{API}/auth/refresh", json={"refresh_token": guest["refresh_token"]}))
    assert await works(client, rotated["access_token"])

    replay = await client.post(f"{API}/auth/refresh", json={"refresh_token": guest["refresh_token"]})

    await expect_problem(replay, 401, "INVALID_TOKEN")
    assert not await works(client, rotated["access_token"]), "the thief's and the owner's tokens both end"


async def test_an_open_socket_of_an_ended_session_closes_4401(client: TestClient) -> None:
    first = await register(client)
    other = await login(client, first["name"])
    ended = await client.ws_connect(f"{API}/ws", headers=bearer(first["access_token"]))
    kept = await client.ws_connect(f"{API}/ws", headers=bearer(other["access_token"]))
    try:
        for ws in (ended, kept):
            assert (await receive_json(ws))["type"] == "welcome"

        assert (await client.post(f"{API}/auth/logout", json={"refresh_token": first["refresh_token"]})).status == 204

        await expect_close(ended, 4401)
        await kept.send_json({"type": "ping", "id": "still-here"})
        while (msg := await receive_json(kept))["type"] != "pong":
            # the farm's ticks and events (a tier discovered, a rank) may come first
            assert msg["type"] in ("tick", "event"), msg
        again = await client.ws_connect(f"{API}/ws", headers=bearer(first["access_token"]))
        await expect_close(again, 4401)
    finally:
        await ended.close()
        await kept.close()


async def test_deleting_the_account_ends_its_tokens(client: TestClient) -> None:
    me = await register(client)
    resp = await client.delete(f"{API}/players/me", headers=bearer(me["access_token"]))
    assert resp.status == 204
    assert not await works(client, me["access_token"])


# ---- every replica -------------------------------------------------------------------------------------------


async def test_a_revocation_reaches_a_replica_that_shares_the_store(make_client: MakeClient, tmp_path: Path) -> None:
    """Two servers on one database (one in-process coordinator each, so no announcement
    can pass between them): the poll of the store is what carries the revocation."""
    a = await make_client()
    b = await make_client()
    me = await register(a)
    token = me["access_token"]
    assert await works(b, token)

    assert (await a.post(f"{API}/auth/logout", json={"refresh_token": me["refresh_token"]})).status == 204
    assert await works(b, token), "b has not read the revocation list yet (this test drives its poll)"
    await context(b.server.app).auth.sync_revocations()

    assert not await works(b, token)
    late = await make_client()  # a replica that starts afterwards reads the list before serving
    assert not await works(late, token)


async def test_over_redis_the_announcement_reaches_the_other_replica_at_once(
    make_client: MakeClient, redis_server: str
) -> None:
    """Two servers on one database and one Redis: b never polls (an hour apart), so only
    the announcement over Redis can tell it; it refuses the token within moments."""
    uri = redis_server.rsplit("/", 1)[0] + "/9"  # a database of its own (pub/sub is server-wide)
    a = await make_client(redis_uri=uri)
    b = await make_client(redis_uri=uri, revocation_poll_s=3600.0)
    me = await register(a)
    token = me["access_token"]
    assert await works(b, token)

    assert (await a.post(f"{API}/auth/logout", json={"refresh_token": me["refresh_token"]})).status == 204

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while await works(b, token):
        assert loop.time() < deadline, "b still accepts the ended session's token"
        await asyncio.sleep(0.02)


# ---- password change ---------------------------------------------------------------------------------------------


async def test_changing_the_password_needs_the_current_one_and_ends_every_other_session(client: TestClient) -> None:
    me = await register(client)
    other = await login(client, me["name"])

    wrong = await client.post(
        f"{API}/auth/password",
        json={"current_password": "not it at all", "new_password": NEW_PASSWORD},
        headers=bearer(me["access_token"]),
    )
    problem = await expect_problem(wrong, 403, "INVALID_CREDENTIALS")
    assert problem["field"] == "current_password"
    assert await works(client, me["access_token"]), "a wrong current password changes nothing"

    resp = await client.post(
        f"{API}/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(me["access_token"]),
    )

    fresh = await ok_json(resp)
    assert resp.headers["Cache-Control"] == "no-store"
    assert fresh["player"]["id"] == me["player"]["id"]
    assert await works(client, fresh["access_token"])
    for old in (me, other):
        assert not await works(client, old["access_token"])
        refused = await client.post(f"{API}/auth/refresh", json={"refresh_token": old["refresh_token"]})
        await expect_problem(refused, 401, "INVALID_TOKEN")
    old_password = await client.post(f"{API}/auth/login", json={"login": me["name"], "password": PASSWORD})
    await expect_problem(old_password, 401, "INVALID_CREDENTIALS")
    assert await works(client, (await login(client, me["name"], NEW_PASSWORD))["access_token"])


async def test_a_password_change_cut_short_leaves_the_old_password_and_no_session(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storage fails between ending the sessions and writing the new password (what a
    crash there would leave): signed out everywhere, the old password still works."""
    me = await register(client)
    store = context(client.server.app).store

    async def unavailable(*args: Any, **kwargs: Any) -> bool:
        raise StorageUnavailable("disk unplugged")

    monkeypatch.setattr(store, "update_player_fields", unavailable)
    resp = await client.post(
        f"{API}/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers=bearer(me["access_token"]),
    )
    monkeypatch.undo()

    await expect_problem(resp, 503, "UNAVAILABLE")
    assert not await works(client, me["access_token"]), "the sessions ended first"
    assert await works(client, (await login(client, me["name"], PASSWORD))["access_token"])
    refused = await client.post(f"{API}/auth/login", json={"login": me["name"], "password": NEW_PASSWORD})
    await expect_problem(refused, 401, "INVALID_CREDENTIALS")


async def test_a_guest_has_no_password_to_change(client: TestClient) -> None:
    guest = await new_guest(client)
    resp = await client.post(
        f"{API}/auth/password",
        json={"current_password": "anything", "new_password": NEW_PASSWORD},
        headers=guest["headers"],
    )
    await expect_problem(resp, 409, "CONFLICT")


async def test_the_new_password_follows_the_policy(make_client: MakeClient) -> None:
    client = await make_client(password_blocklist=True)
    me = await register(client)
    for new, why in (
        ("short", "at least 8 characters"),
        ("Password123", "most common passwords"),
        (me["name"].upper(), "username or email"),
        (PASSWORD, "is the current one"),
    ):
        resp = await client.post(
            f"{API}/auth/password",
            json={"current_password": PASSWORD, "new_password": new},
            headers=bearer(me["access_token"]),
        )
        problem = await expect_problem(resp, 422, "VALIDATION_ERROR")
        assert problem["errors"][0]["field"] == "new_password", problem
        assert why in problem["detail"] or why in str(problem["errors"]), problem
    assert await works(client, me["access_token"]), "refused changes end nothing"


# ---- the registration policy -------------------------------------------------------------------------------------


async def test_registration_refuses_common_passwords_and_the_accounts_own_name(make_client: MakeClient) -> None:
    client = await make_client(password_blocklist=True)
    for password, why in (
        ("password123", "most common passwords"),
        ("QWERTYUIOP", "most common passwords"),
        ("my_username_x", "username or email"),
    ):
        body = {"email": "someone@example.com", "password": password, "username": "my_username_x"}
        resp = await client.post(f"{API}/auth/register", json=body)
        problem = await expect_problem(resp, 422, "VALIDATION_ERROR")
        [error] = problem["errors"]
        assert (error["field"], error["type"]) == ("password", "weak_password")
        assert why in error["message"] and why in problem["detail"], problem
    await register(client, password="llamas shear on tuesdays")


async def test_the_blocklist_is_on_in_production_and_off_in_development(make_client: MakeClient) -> None:
    from llamawool.settings import Settings

    assert Settings(env="staging", jwt_secret="x" * 32, clients_connect_directly=True).blocks_weak_passwords()
    assert not Settings(env="development").blocks_weak_passwords()
    assert Settings(env="development", password_blocklist=True).blocks_weak_passwords()
    dev = await make_client(password_blocklist=None)
    await register(dev, password="password123")  # the test env: off unless asked for


async def test_a_longer_minimum_length_is_a_setting(make_client: MakeClient) -> None:
    client = await make_client(password_min_length=15)
    name = f"u{uuid.uuid4().hex[:10]}"
    body = {"email": f"{name}@example.com", "password": "fourteen chars", "username": name}
    problem = await expect_problem(await client.post(f"{API}/auth/register", json=body), 422, "VALIDATION_ERROR")
    assert "at least 15 characters" in problem["detail"]
    await register(client, password="fifteen chars!!")
