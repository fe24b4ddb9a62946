"""A drain (SIGTERM) answers the action a socket is applying before its 1012.

The interleaving is forced: the engine has committed the action, and the
drain begins before the socket handler has queued its result. The result must
reach the socket ahead of the close frame; when the answer takes longer than
`drain_flush_s`, the socket is closed all the same and the committed action
is found by its idempotency key. (tests/e2e/test_graceful_shutdown.py drains
a real process under load.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from llamawool.api import drain
from llamawool.api.app import context
from tests.conftest import API, MakeClient, engine_of, new_guest

from .support import bearer, receive_json

CLOSE_RESTART = 1012


class PausedAfterCommit:
    """Wraps `engine.submit`: the action commits, then waits for `release` before its
    reply goes back to the socket handler."""

    def __init__(self, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
        self.engine = engine_of(client)
        self.committed = asyncio.Event()
        self.release = asyncio.Event()
        real = self.engine.submit

        async def submit(*args: Any, **kwargs: Any) -> Any:
            reply = await real(*args, **kwargs)
            self.committed.set()
            await self.release.wait()
            return reply

        monkeypatch.setattr(self.engine, "submit", submit)


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Let the drain task take its first step (it marks every socket closing at once)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


async def read_to_close(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[dict[str, Any]], Any]:
    """Every message until the close frame, and the close frame's code."""
    messages = []
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return messages, msg.data
        messages.append(orjson.loads(msg.data))


async def start(client: TestClient) -> tuple[dict[str, Any], aiohttp.ClientWebSocketResponse]:
    guest = await new_guest(client)
    ws = await client.ws_connect(f"{API}/ws", headers=bearer(guest["access_token"]))
    assert (await receive_json(ws))["type"] == "welcome"
    return guest, ws


async def shears_of(client: TestClient, guest: dict[str, Any]) -> int:
    resp = await client.get(f"{API}/farm", headers=bearer(guest["access_token"]))
    assert resp.status == 200, await resp.text()
    return int((await resp.json())["stats"]["shears"])


async def test_the_result_of_a_committed_action_reaches_the_socket_before_1012(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client(tick=False)
    guest, ws = await start(client)
    paused = PausedAfterCommit(client, monkeypatch)
    action = {"type": "action", "id": "a1", "data": {"action": "shear", "idempotency_key": "drain-a1"}}
    await ws.send_str(orjson.dumps(action).decode())
    await paused.committed.wait()

    draining = asyncio.create_task(drain(client.server.app))
    sessions = context(client.server.app).sessions
    await until(lambda: bool(sessions) and all(s.closing for s in sessions), "the drain reached the socket")
    paused.release.set()

    messages, code = await read_to_close(ws)
    await draining
    assert code == CLOSE_RESTART
    results = [m for m in messages if m["type"] == "result"]
    assert [m["id"] for m in results] == ["a1"], messages
    assert results[0]["data"]["farm"]["stats"]["shears"] == await shears_of(client, guest) == 1


async def test_past_the_bound_the_socket_closes_and_the_action_is_found_by_its_key(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await make_client(tick=False, drain_flush_s=0.2)
    guest, ws = await start(client)
    paused = PausedAfterCommit(client, monkeypatch)
    action = {"type": "action", "id": "a1", "data": {"action": "shear", "idempotency_key": "drain-slow"}}
    await ws.send_str(orjson.dumps(action).decode())
    await paused.committed.wait()

    reading = asyncio.create_task(read_to_close(ws))
    await asyncio.wait_for(drain(client.server.app), 5)  # the reply never came: the bound, not a hang
    messages, code = await reading
    assert code == CLOSE_RESTART
    assert [m for m in messages if m["type"] == "result"] == []
    paused.release.set()

    # The client retries with the same key: the committed shear answers, nothing is applied twice.
    monkeypatch.undo()
    resp = await client.post(
        f"{API}/farm/shear",
        json={"count": 1},
        headers={**bearer(guest["access_token"]), "Idempotency-Key": "drain-slow"},
    )
    assert resp.status == 200, await resp.text()
    assert resp.headers.get("Idempotent-Replayed") == "true"
    assert await shears_of(client, guest) == 1
