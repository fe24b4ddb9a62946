"""A socket's outbound messages through the real server: written at once while the
socket keeps up, queued behind a writer of its own while it does not.

A socket is made backlogged for real: its server-side send buffer is shrunk and one
message larger than every buffer between the two ends is sent, so the transport
holds the rest (the precondition is asserted, not assumed). The client reads
nothing until the test has sent what it wants queued.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestClient

from llamawool.api.app import context
from llamawool.api.ws import CLOSE_RESTART, WsSession
from tests.conftest import API, MakeClient, engine_of, new_guest

from .support import bearer, receive_json

BIG = 4 * 2**20  # far more than the shrunk send buffer and the client's unread buffers hold


async def open_socket(client: TestClient) -> tuple[aiohttp.ClientWebSocketResponse, WsSession]:
    """A guest's socket past its welcome, and the server's session of it."""
    guest = await new_guest(client)
    sessions = context(client.server.app).sessions
    before = set(sessions)
    ws = await client.ws_connect(f"{API}/ws", headers=bearer(guest["access_token"]), max_msg_size=0)
    assert (await receive_json(ws))["type"] == "welcome"
    (session,) = set(sessions) - before
    return ws, session


def tick(n: int) -> str:
    return orjson.dumps({"type": "tick", "data": {"n": n}}).decode()


def result(n: int) -> str:
    return orjson.dumps({"type": "result", "id": n, "data": {}}).decode()


def backlog(session: WsSession) -> None:
    """Leave the socket's transport holding data the kernel would not take."""
    transport = session._transport
    assert transport is not None
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    session.send(orjson.dumps({"type": "result", "id": "big", "data": {"pad": "x" * BIG}}).decode())
    assert transport.get_write_buffer_size() > 0, "precondition: the socket is backlogged"


async def read(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[dict[str, Any]]:
    return [await receive_json(ws, timeout=10) for _ in range(n)]


def label(m: dict[str, Any]) -> str:
    return f"t{m['data']['n']}" if m["type"] == "tick" else f"r{m['id']}"


async def test_a_socket_that_keeps_up_gets_every_message_in_order_without_a_writer_task(
    make_client: MakeClient,
) -> None:
    client = await make_client(tick=False)
    ws, session = await open_socket(client)
    tasks = len(asyncio.all_tasks())
    for i in range(300):
        session.send(tick(i) if i % 3 else result(i))
    assert len(asyncio.all_tasks()) == tasks  # written straight to the transport
    got = [label(m) for m in await read(ws, 300)]
    assert got == [f"t{i}" if i % 3 else f"r{i}" for i in range(300)]
    await ws.close()


async def test_a_backlogged_socket_keeps_every_other_message_and_its_newest_ticks_in_order(
    make_client: MakeClient,
) -> None:
    client = await make_client(tick=False, ws_send_queue=8)
    ws, session = await open_socket(client)
    backlog(session)
    session.send(result(0))
    for i in range(50):
        session.send(tick(i))
    session.send(result(1))
    for i in range(50, 100):
        session.send(tick(i))
    session.send(result(2))
    big = await receive_json(ws, timeout=10)
    assert big["id"] == "big"
    # 8 queued at most: the oldest tick went each time one more arrived.
    assert [label(m) for m in await read(ws, 8)] == ["r0", "r1", "t95", "t96", "t97", "t98", "t99", "r2"]
    session.send(result(3))
    assert label(await receive_json(ws)) == "r3"  # and nothing else was queued
    await ws.close()


async def test_a_backlogged_socket_does_not_hold_up_the_tick_of_another(make_client: MakeClient) -> None:
    client = await make_client(tick=False)
    slow, slow_session = await open_socket(client)
    fast, _ = await open_socket(client)
    backlog(slow_session)
    engine_of(client).tick()
    assert (await receive_json(fast))["type"] == "tick"  # while the slow client has read nothing
    assert (await receive_json(slow, timeout=10))["id"] == "big"
    assert (await receive_json(slow))["type"] == "tick"
    await slow.close()
    await fast.close()


async def test_a_session_being_closed_skips_ticks_but_sends_results(make_client: MakeClient) -> None:
    client = await make_client(tick=False)
    ws, session = await open_socket(client)
    session.closing = True
    session.send(tick(1))
    session.send(result(2))
    session.send(tick(3))
    await session.close(CLOSE_RESTART, "restarting")
    msg = await receive_json(ws)
    assert label(msg) == "r2"
    assert (await ws.receive(timeout=3)).type == aiohttp.WSMsgType.CLOSE


async def test_sending_away_a_backlogged_socket_delivers_its_queue_before_the_close(make_client: MakeClient) -> None:
    client = await make_client(tick=False, drain_flush_s=10.0)
    ws, session = await open_socket(client)
    backlog(session)
    # Over aiohttp's write limit (256 KiB): its writer waits for the socket to drain after this
    # one, so the next message is still queued when the drain begins.
    session.send(orjson.dumps({"type": "result", "id": "mid", "data": {"pad": "y" * 2**19}}).decode())
    session.send(result(1))
    leaving = asyncio.ensure_future(session.send_away(CLOSE_RESTART, "restarting"))
    assert (await receive_json(ws, timeout=10))["id"] == "big"
    assert (await receive_json(ws, timeout=10))["id"] == "mid"
    assert label(await receive_json(ws)) == "r1"
    close = await ws.receive(timeout=3)
    assert (close.type, close.data) == (aiohttp.WSMsgType.CLOSE, CLOSE_RESTART)
    await leaving
