"""The app's keep-alive through the real server (a short `ws_heartbeat_s`): a client
that answers pings stays connected, one that does not is dropped, and a client's
own pings are answered."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from llamawool.api.app import context
from tests.conftest import API, MakeClient, new_guest

from .support import bearer, receive_json

HEARTBEAT_S = 0.2


async def connect(client: TestClient, autoping: bool) -> aiohttp.ClientWebSocketResponse:
    guest = await new_guest(client)
    ws = await client.ws_connect(f"{API}/ws", headers=bearer(guest["access_token"]), autoping=autoping)
    assert (await receive_json(ws))["type"] == "welcome"
    return ws


async def test_a_client_that_answers_pings_stays_connected(make_client: MakeClient) -> None:
    client = await make_client(tick=False, ws_heartbeat_s=HEARTBEAT_S)
    ws = await connect(client, autoping=True)  # aiohttp's client answers pings by itself
    with pytest.raises(TimeoutError):  # many heartbeats: pinged and answered, nothing else
        async with asyncio.timeout(10 * HEARTBEAT_S):
            await ws.receive()
    await ws.send_json({"type": "ping", "id": "p"})
    assert (await receive_json(ws))["type"] == "pong"
    await ws.close()


async def test_a_client_that_does_not_answer_pings_is_dropped(make_client: MakeClient) -> None:
    client = await make_client(tick=False, ws_heartbeat_s=HEARTBEAT_S)
    ws = await connect(client, autoping=False)
    msg = await ws.receive(timeout=10 * HEARTBEAT_S)
    assert msg.type == aiohttp.WSMsgType.PING  # silent for a heartbeat: pinged
    msg = await ws.receive(timeout=10 * HEARTBEAT_S)  # the ping is left unanswered
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR), msg
    sessions = context(client.server.app).sessions
    for _ in range(100):  # the handler ends once it sees the connection lost
        if not sessions:
            break
        await ws.receive(timeout=HEARTBEAT_S)
    assert not sessions


async def test_a_clients_ping_is_answered_with_its_payload(make_client: MakeClient) -> None:
    client = await make_client(tick=False)
    ws = await connect(client, autoping=False)
    await ws.ping(b"are you there")
    msg = await ws.receive(timeout=3)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"are you there")
    await ws.close()
