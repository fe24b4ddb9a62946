"""Accounts under races, on SQLite and on MongoDB (issue 12, items 1, 2 and 5).

Each interleaving test stops one request between two of its steps (a pause
injected into the store read that sits between them), runs the other request
whole in the gap, then lets the first one finish; none relies on timing. The
pause is in `get_player`, which the code before these fixes called between the
steps that raced: a refresh's spend and its successor's insert, a violation's
read of the player and its write-back. Where the fixed code no longer reads the
player there, the pause is never reached and the request simply runs whole.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from llamawool.api.app import context
from llamawool.store import Store
from tests.conftest import API, new_guest

from .support import bearer, expect_problem, ok_json

PASSWORD = "correct horse battery"
NEW_PASSWORD = "a different long passphrase"


@pytest.fixture
def client(client_on_each_store: TestClient) -> TestClient:
    return client_on_each_store


class Pause:
    """Stop the next call of `obj.method` whose first argument is `key`, once it has
    returned, until `finish` (by default: `get_player` of the store)."""

    def __init__(self, obj: Any, method: str = "get_player") -> None:
        self.obj = obj
        self.method = method
        self.key: Any = None
        self.reached = asyncio.Event()
        self.go_on = asyncio.Event()
        self._inner = getattr(obj, method)

    async def _paused(self, *args: Any, **kwargs: Any) -> Any:
        out = await self._inner(*args, **kwargs)
        if self.key is not None and (list(args[:1]) or list(kwargs.values())[:1]) == [self.key]:
            self.key = None  # once
            self.reached.set()
            await self.go_on.wait()
        return out

    async def start(self, key: Any, work: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run `work` until it reaches the pause (or ends without reaching it)."""
        self.key = key
        setattr(self.obj, self.method, self._paused)
        task = asyncio.ensure_future(work)
        reached = asyncio.ensure_future(self.reached.wait())
        await asyncio.wait([task, reached], return_when=asyncio.FIRST_COMPLETED)
        reached.cancel()
        self.key = None
        return task

    async def finish(self, task: asyncio.Task[Any]) -> Any:
        self.go_on.set()
        try:
            return await task
        finally:
            setattr(self.obj, self.method, self._inner)


def store_of(client: TestClient) -> Store:
    return context(client.server.app).store


async def register(client: TestClient, **extra: Any) -> dict[str, Any]:
    name = f"u{uuid.uuid4().hex[:10]}"
    body = {"email": f"{name}@example.com", "password": PASSWORD, "username": name, **extra}
    answer = await ok_json(await client.post(f"{API}/auth/register", json=body), 201)
    answer["name"] = name
    return answer


async def refresh(client: TestClient, token: str) -> Any:
    return await client.post(f"{API}/auth/refresh", json={"refresh_token": token})


async def session_ended(client: TestClient, answer: dict[str, Any]) -> bool:
    """Neither the pair's refresh token nor its access token works any more."""
    again = await refresh(client, answer["refresh_token"])
    me = await client.get(f"{API}/players/me", headers=bearer(answer["access_token"]))
    if again.status == 200 or me.status == 200:
        return False
    await expect_problem(again, 401, "INVALID_TOKEN")
    await expect_problem(me, 401, "INVALID_TOKEN")
    return True


# ---- 1. a refresh racing the end of its session ----------------------------------------------------------------

Ending = Callable[[TestClient, dict[str, Any]], Awaitable[Any]]


async def _logout(c: TestClient, me: dict[str, Any]) -> None:
    assert (await c.post(f"{API}/auth/logout", json={"refresh_token": me["refresh_token"]})).status == 204


async def _logout_everywhere(c: TestClient, me: dict[str, Any]) -> None:
    resp = await c.post(f"{API}/auth/logout", json={}, headers=bearer(me["access_token"]))
    assert resp.status == 204


async def _change_password(c: TestClient, me: dict[str, Any]) -> None:
    body = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    await ok_json(await c.post(f"{API}/auth/password", json=body, headers=bearer(me["access_token"])))


async def _delete(c: TestClient, me: dict[str, Any]) -> None:
    assert (await c.delete(f"{API}/players/me", headers=bearer(me["access_token"]))).status == 204


async def _replay(c: TestClient, me: dict[str, Any]) -> None:
    await expect_problem(await refresh(c, me["refresh_token"]), 401, "INVALID_TOKEN")


ENDINGS: dict[str, Ending] = {
    "logout": _logout,
    "logout_everywhere": _logout_everywhere,
    "password_change": _change_password,
    "account_deletion": _delete,
    "replayed_token": _replay,
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
async def test_a_session_ended_while_its_token_is_being_refreshed_stays_ended(client: TestClient, ending: str) -> None:
    me = await register(client)
    pause = Pause(store_of(client))
    rotation = await pause.start(me["player"]["id"], refresh(client, me["refresh_token"]))

    await ENDINGS[ending](client, me)  # answered while the refresh is stopped mid-way
    resp = await pause.finish(rotation)

    if resp.status == 200:
        assert await session_ended(client, await resp.json()), "the refresh's successor outlived the " + ending
    else:
        await expect_problem(resp, 401, "INVALID_TOKEN")


@pytest.mark.parametrize("ending", ["logout", "logout_everywhere", "password_change"])
async def test_refreshes_racing_the_end_of_their_session_over_http(client: TestClient, ending: str) -> None:
    """No pause this time: the refresh and the ending sent together, round after round."""
    for _ in range(8):
        me = await register(client)
        resp, _ = await asyncio.gather(refresh(client, me["refresh_token"]), ENDINGS[ending](client, me))
        if resp.status == 200:
            assert await session_ended(client, await resp.json())
        else:
            await expect_problem(resp, 401, "INVALID_TOKEN")


async def test_a_login_that_checked_the_old_password_gets_no_session_past_a_change(client: TestClient) -> None:
    """The login has verified the old password and not yet started its session when the
    password change ends every session and writes the new password."""
    me = await register(client)
    stored = await store_of(client).get_player(me["player"]["id"])
    assert stored is not None
    pause = Pause(context(client.server.app).auth, "verify_password")
    login = await pause.start(
        stored.password_hash, client.post(f"{API}/auth/login", json={"login": me["name"], "password": PASSWORD})
    )
    await _change_password(client, me)
    resp = await pause.finish(login)

    if resp.status == 200:
        assert await session_ended(client, await resp.json()), "a session of the old password outlived the change"
    else:
        await expect_problem(resp, 401, "INVALID_CREDENTIALS")


async def test_a_device_sign_in_racing_the_guests_upgrade_gets_no_session_past_it(client: TestClient) -> None:
    """`POST /auth/guest` has found the device's player, still a guest, and not yet
    started its session when the guest registers (which ends every device session)."""
    device = f"dev-{uuid.uuid4().hex}"
    guest = await new_guest(client, device)
    pause = Pause(store_of(client), "find_player")
    signing_in = await pause.start(device, client.post(f"{API}/auth/guest", json={"device_id": device}))
    name = f"u{uuid.uuid4().hex[:10]}"
    body = {"email": f"{name}@example.com", "password": PASSWORD, "username": name}
    await ok_json(await client.post(f"{API}/auth/register", json=body, headers=guest["headers"]), 201)
    resp = await pause.finish(signing_in)

    if resp.status == 200:
        assert await session_ended(client, await resp.json()), "a device-id session outlived the upgrade"
    else:
        await expect_problem(resp, 401, "INVALID_CREDENTIALS")


# ---- 2. player records: no write undoes another ------------------------------------------------------------------


async def _violation_paused_after_its_read(client: TestClient, player_id: str) -> tuple[Pause, asyncio.Task[Any]]:
    pause = Pause(store_of(client))
    task = await pause.start(player_id, context(client.server.app).anticheat.violation(player_id, "test"))
    return pause, task


async def test_a_violation_does_not_put_back_the_password_a_change_replaced(client: TestClient) -> None:
    me = await register(client)
    pause, violation = await _violation_paused_after_its_read(client, me["player"]["id"])

    await _change_password(client, me)
    await pause.finish(violation)

    login = await client.post(f"{API}/auth/login", json={"login": me["name"], "password": NEW_PASSWORD})
    await ok_json(login)
    player = await store_of(client).get_player(me["player"]["id"])
    assert player is not None and player.violations_total == 1


async def test_a_password_change_does_not_undo_a_violation_counted_meanwhile(client: TestClient) -> None:
    me = await register(client)
    auth = context(client.server.app).auth
    hashed, go_on = asyncio.Event(), asyncio.Event()
    hash_password = auth.hash_password

    async def paused_hash(password: str) -> str:  # the change: read, verify, hash ... write
        out = await hash_password(password)
        if password == NEW_PASSWORD:
            hashed.set()
            await go_on.wait()
        return out

    auth.hash_password = paused_hash  # type: ignore[method-assign]
    change = asyncio.ensure_future(_change_password(client, me))
    await hashed.wait()
    await context(client.server.app).anticheat.violation(me["player"]["id"], "test")
    go_on.set()
    await change

    player = await store_of(client).get_player(me["player"]["id"])
    assert player is not None and player.violations_total == 1


async def test_a_violation_does_not_erase_a_flag_set_meanwhile(client: TestClient) -> None:
    guest = await new_guest(client)
    pid = guest["player"]["id"]
    anticheat = context(client.server.app).anticheat
    for _ in range(anticheat.threshold - 2):
        await anticheat.violation(pid, "test")
    pause, below = await _violation_paused_after_its_read(client, pid)  # one short of the threshold

    assert await anticheat.violation(pid, "test"), "this one reaches the threshold"
    await pause.finish(below)

    player = await store_of(client).get_player(pid)
    assert player is not None and player.flagged_at is not None, "the flag stands"
    assert player.violations_total == anticheat.threshold


async def test_a_cleared_flag_keeps_the_violations_counted_meanwhile(client: TestClient) -> None:
    guest = await new_guest(client)
    pid = guest["player"]["id"]
    anticheat = context(client.server.app).anticheat
    for _ in range(anticheat.threshold):
        await anticheat.violation(pid, "test")
    pause = Pause(store_of(client))
    clearing = await pause.start(pid, anticheat.clear_flag(pid))  # what the admin's clear-flag runs

    await anticheat.violation(pid, "test")
    assert await pause.finish(clearing)

    player = await store_of(client).get_player(pid)
    assert player is not None and player.violations_total == anticheat.threshold + 1


async def test_the_flag_decay_keeps_a_flag_whose_player_offended_again_meanwhile(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep judged the flag old enough to decay; a violation comes before it clears."""
    guest = await new_guest(client)
    pid = guest["player"]["id"]
    anticheat = context(client.server.app).anticheat
    for _ in range(anticheat.threshold):
        await anticheat.violation(pid, "test")
    later = anticheat.clock() + 2 * anticheat.settings.flag_decay_s
    monkeypatch.setattr(anticheat, "clock", lambda: later)
    pause = Pause(store_of(client))
    sweeping = await pause.start(pid, anticheat.sweep())

    await anticheat.violation(pid, "test")
    assert await pause.finish(sweeping) == 0

    player = await store_of(client).get_player(pid)
    assert player is not None and player.flagged_at is not None, "offended again: the flag stays"


async def test_an_upgraded_guest_does_not_turn_back_into_a_guest(client: TestClient) -> None:
    guest = await new_guest(client)
    pid = guest["player"]["id"]
    pause, violation = await _violation_paused_after_its_read(client, pid)

    name = f"u{uuid.uuid4().hex[:10]}"
    body = {"email": f"{name}@example.com", "password": PASSWORD, "username": name}
    await ok_json(await client.post(f"{API}/auth/register", json=body, headers=guest["headers"]), 201)
    await pause.finish(violation)

    player = await store_of(client).get_player(pid)
    assert player is not None and not player.is_guest and player.username == name
    await ok_json(await client.post(f"{API}/auth/login", json={"login": name, "password": PASSWORD}))


async def test_two_upgrades_of_one_guest_racing_make_one_account(client: TestClient) -> None:
    guest = await new_guest(client)
    names = [f"u{uuid.uuid4().hex[:10]}" for _ in range(2)]
    answers = await asyncio.gather(
        *(
            client.post(
                f"{API}/auth/register",
                json={"email": f"{n}@example.com", "password": PASSWORD, "username": n},
                headers=guest["headers"],
            )
            for n in names
        )
    )
    statuses = sorted(a.status for a in answers)
    assert statuses[0] == 201 and statuses[1] in (401, 409), statuses
    player = await store_of(client).get_player(guest["player"]["id"])
    assert player is not None and player.username in names and not player.is_guest


# ---- 5. upgrading a guest ends its device-id sessions -------------------------------------------------------------


async def test_upgrading_a_guest_ends_every_device_session_and_answers_a_fresh_pair(client: TestClient) -> None:
    device = f"dev-{uuid.uuid4().hex}"
    first = await new_guest(client, device)
    second = await new_guest(client, device)  # the same device, another session
    name = f"u{uuid.uuid4().hex[:10]}"
    body = {"email": f"{name}@example.com", "password": PASSWORD, "username": name}

    fresh = await ok_json(await client.post(f"{API}/auth/register", json=body, headers=first["headers"]), 201)

    assert fresh["player"]["id"] == first["player"]["id"] and not fresh["player"]["is_guest"]
    for old in (first, second):
        assert await session_ended(client, old)
    assert not await session_ended(client, fresh)
    again = await client.post(f"{API}/auth/guest", json={"device_id": device})
    await expect_problem(again, 401, "INVALID_CREDENTIALS")


# ---- issue 13: an insert the MongoDB driver ran twice ------------------------------------------------------------


async def test_a_guest_whose_inserts_the_driver_ran_twice_is_created_not_500(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pymongo retries a write whose reply it lost (retryWrites); when the retry reaches
    the server while the first attempt is still running (a reply slower than the socket
    timeout, under load) the server runs the insert a second time and the first
    attempt's own document answers DuplicateKey. Here every insert runs twice."""
    from pymongo.asynchronous.collection import AsyncCollection

    if not hasattr(store_of(client), "client"):
        pytest.skip("SQLite: one writer, no driver retries")
    insert_one = AsyncCollection.insert_one

    async def twice(self: Any, document: Any, *args: Any, **kwargs: Any) -> Any:
        await insert_one(self, dict(document), *args, **kwargs)
        return await insert_one(self, document, *args, **kwargs)

    monkeypatch.setattr(AsyncCollection, "insert_one", twice)
    guest = await ok_json(await client.post(f"{API}/auth/guest", json={"device_id": f"dev-{uuid.uuid4().hex}"}), 201)
    rotated = await ok_json(await refresh(client, guest["refresh_token"]))
    me = await ok_json(await client.get(f"{API}/players/me", headers=bearer(rotated["access_token"])))
    assert me["id"] == guest["player"]["id"]
