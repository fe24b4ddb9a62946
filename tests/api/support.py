"""Helpers shared by the API and WebSocket tests (a real in-process server)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestClient

from tests.conftest import API, engine_of

PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}
TRACE_MARKERS = ("Traceback", 'File "', "site-packages", '.py", line')

WS_TIMEOUT = 3.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def expect_problem(resp: aiohttp.ClientResponse, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status and code, and leaks no internals."""
    text = await resp.text()
    assert resp.status == status, f"expected {status} {code}, got {resp.status}: {text}"
    assert resp.content_type == "application/problem+json", resp.content_type
    body: dict[str, Any] = orjson.loads(text)
    assert body.keys() >= PROBLEM_KEYS, body
    assert body["status"] == status
    assert body["code"] == code, body
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["type"].startswith("https://")
    for marker in TRACE_MARKERS:
        assert marker not in text, text
    return body


async def ok_json(resp: aiohttp.ClientResponse, status: int = 200) -> dict[str, Any]:
    text = await resp.text()
    assert resp.status == status, f"expected {status}, got {resp.status}: {text}"
    assert resp.content_type == "application/json", resp.content_type
    body: dict[str, Any] = orjson.loads(text)
    return body


async def get_farm(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    return await ok_json(await client.get(f"{API}/farm", headers=headers))


async def act(
    client: TestClient, path: str, headers: dict[str, str], json: Any = None, status: int = 200
) -> dict[str, Any]:
    """POST an action and return its JSON answer (asserting the status)."""
    resp = await client.post(f"{API}{path}", json=json if json is not None else {}, headers=headers)
    return await ok_json(resp, status)


async def shear(client: TestClient, headers: dict[str, str], count: int) -> dict[str, Any]:
    return await act(client, "/farm/shear", headers, {"count": count})


async def take_offline(client: TestClient, player_id: str, max_ticks: int = 10) -> None:
    """Run the engine's tick by hand until the farm has gone offline and left memory.

    The caller has moved the fake clock past the online window; each tick
    spawns the settle/offline tasks, which are awaited before the next one.
    """
    engine = engine_of(client)
    for _ in range(max_ticks):
        if engine.resident_state(player_id) is None:
            return
        engine.tick()
        await asyncio.gather(*list(engine._tasks))
    raise AssertionError(f"farm {player_id} is still resident after {max_ticks} ticks")


async def run_ticks(client: TestClient, n: int) -> None:
    """Run `n` engine ticks by hand, awaiting the tasks each one spawns."""
    engine = engine_of(client)
    for _ in range(n):
        engine.tick()
        await asyncio.gather(*list(engine._tasks))


async def receive_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = WS_TIMEOUT) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    body: dict[str, Any] = orjson.loads(msg.data)
    return body


async def receive_until(
    ws: aiohttp.ClientWebSocketResponse,
    match: str | Callable[[dict[str, Any]], bool],
    timeout: float = WS_TIMEOUT,
) -> dict[str, Any]:
    """The next message of this type (or matching the predicate), skipping others (ticks)."""
    pred = (lambda m: m["type"] == match) if isinstance(match, str) else match
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"no message matching {match!r} within {timeout}s")
        msg = await receive_json(ws, left)
        if pred(msg):
            return msg


async def expect_close(ws: aiohttp.ClientWebSocketResponse, code: int, timeout: float = WS_TIMEOUT) -> None:
    """The server closes the socket with this code (any messages before it are skipped)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        left = deadline - loop.time()
        assert left > 0, f"socket not closed with {code} within {timeout}s"
        msg = await ws.receive(timeout=left)
        if msg.type == aiohttp.WSMsgType.CLOSE:
            # The code in the server's close frame (aiohttp may later overwrite
            # ws.close_code with 1006 when the server drops TCP during the echo).
            assert msg.data == code, (msg.data, msg.extra)
            return
        if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            assert ws.close_code == code, (ws.close_code, msg)
            return


@contextlib.asynccontextmanager
async def held_online(client: TestClient, token: str) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A WebSocket held open: the farm stays online however far the fake clock moves
    (GAME.md: online while a client holds a socket), so production runs at full speed."""
    ws = await client.ws_connect(f"{API}/ws", headers=bearer(token))
    try:
        welcome = await receive_json(ws)
        assert welcome["type"] == "welcome", welcome
        yield ws
    finally:
        await ws.close()
