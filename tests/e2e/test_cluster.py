"""Three replicas on MongoDB + Redis behind nginx, with replicas killed mid-play.

50 simulated players act through the load balancer (REST with Idempotency-Key
retries, and WebSocket), each with two sockets spread over the replicas. One
replica is killed with SIGKILL and another SIGTERMed mid-run; both restart.
At the end every acknowledged action is in the final state exactly once, the
balances follow the closed form from the last acknowledged state, every socket
reconnected, and every socket of a farm receives ticks whichever replica owns it.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.cluster import Cluster, answered, ws_action

pytestmark = pytest.mark.slow

PLAYERS = 50
PLAY_SECONDS = 24.0
API = "/api/v1"


@dataclass
class Socket:
    connected: bool = False
    welcomes: int = 0
    ticks_after_mark: int = 0
    closes: list[int] = field(default_factory=list)


@dataclass
class Player:
    token: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    sheared: int = 0  # acknowledged shears (result.sheared)
    barns: int = 0  # acknowledged barn levels
    uncertain_shears: int = 0  # WS shear requests whose result never came (socket died)
    last_farm: dict[str, Any] | None = None
    sockets: list[Socket] = field(default_factory=list)
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    ws: list[aiohttp.ClientWebSocketResponse | None] = field(default_factory=list)

    def saw(self, farm: dict[str, Any]) -> None:
        if self.last_farm is None or farm["revision"] >= self.last_farm["revision"]:
            self.last_farm = farm


class Sim:
    def __init__(self, url: str) -> None:
        self.url = url
        self.players = [Player() for _ in range(PLAYERS)]
        self.stop_play = asyncio.Event()
        self.stop_sockets = asyncio.Event()
        self.mark = False
        self.errors: list[str] = []

    async def post(
        self, s: aiohttp.ClientSession, p: Player, path: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """POST with an Idempotency-Key, retried through failures until it is answered."""
        key = uuid.uuid4().hex
        deadline = time.monotonic() + 60
        while True:
            try:
                async with s.post(self.url + API + path, json=body, headers={**p.headers, "Idempotency-Key": key}) as r:
                    if r.status in (502, 503, 504):
                        raise aiohttp.ClientError(f"{r.status}")
                    return r.status, await r.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def join(self, s: aiohttp.ClientSession, i: int) -> None:
        p = self.players[i]
        for _ in range(50):
            try:
                async with s.post(self.url + API + "/auth/guest", json={"device_id": f"cluster-device-{i:04d}"}) as r:
                    if r.status in (200, 201):
                        body = await r.json()
                        p.token = body["access_token"]
                        p.headers = {"Authorization": f"Bearer {p.token}"}
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError("could not join")

    async def socket_loop(self, s: aiohttp.ClientSession, p: Player, k: int) -> None:
        sock = p.sockets[k]
        while not self.stop_sockets.is_set():
            try:
                async with s.ws_connect(self.url.replace("http", "ws") + API + f"/ws?token={p.token}") as ws:
                    p.ws[k] = ws
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        m = msg.json()
                        if m["type"] == "welcome":
                            sock.connected = True
                            sock.welcomes += 1
                            p.saw(m["data"]["farm"])
                        elif m["type"] == "tick":
                            if self.mark:
                                sock.ticks_after_mark += 1
                        elif m["type"] in ("result", "error"):
                            answered(p.pending, m)
                        if self.stop_sockets.is_set():
                            break
                    sock.closes.append(ws.close_code or 0)
            except (TimeoutError, aiohttp.ClientError):
                pass
            sock.connected = False
            p.ws[k] = None
            await asyncio.sleep(random.uniform(0.1, 0.4))

    async def ws_shear(self, p: Player, count: int) -> None:
        ws = next((w for w in p.ws if w is not None and not w.closed), None)
        if ws is None:
            return
        try:
            m = await ws_action(ws, p.pending, {"action": "shear", "count": count}, 5)
        except (aiohttp.ClientError, ConnectionError, TimeoutError, RuntimeError):
            p.uncertain_shears += count
            return
        if m["type"] == "result":
            p.sheared += m["data"]["result"]["sheared"]
            p.saw(m["data"]["farm"])
        elif m["data"]["code"] == "UNAVAILABLE":
            # unless the server says `not_applied`, the shear may have landed (protocol.md)
            if m["data"].get("outcome") != "not_applied":
                p.uncertain_shears += count
        else:
            self.errors.append(f"ws error {m['data']}")

    async def play(self, s: aiohttp.ClientSession, p: Player) -> None:
        while not self.stop_play.is_set():
            roll = random.random()
            if roll < 0.45:
                status, body = await self.post(s, p, "/farm/shear", {"count": random.randint(1, 5)})
                if status == 200:
                    p.sheared += body["result"]["sheared"]
                    p.saw(body["farm"])
                else:
                    self.errors.append(f"shear {status} {body}")
            elif roll < 0.7:
                status, body = await self.post(s, p, "/farm/buildings/barn/purchase", {"quantity": 1})
                if status == 200:
                    p.barns += body["result"]["bought"]
                    p.saw(body["farm"])
                elif body.get("code") != "INSUFFICIENT_RESOURCES":
                    self.errors.append(f"barn {status} {body}")
            else:
                await self.ws_shear(p, random.randint(1, 5))
            await asyncio.sleep(random.uniform(0.3, 0.9))


async def get_farm(s: aiohttp.ClientSession, url: str, p: Player) -> dict[str, Any]:
    for _ in range(50):
        async with s.get(url + API + "/farm", headers=p.headers) as r:
            if r.status == 200:
                body: dict[str, Any] = await r.json()
                return body
        await asyncio.sleep(0.2)
    raise AssertionError("GET /farm kept failing")


async def test_three_replicas_lose_nothing_while_replicas_die(tmp_path: Path) -> None:
    env = {
        "LLAMAWOOL_GUESTS_PER_IP_PER_HOUR": "100000",
        "LLAMAWOOL_LEASE_TTL_S": "3",
        "LLAMAWOOL_RPC_TIMEOUT_S": "1.5",
        "LLAMAWOOL_DRAIN_GRACE_S": "10",
        "LLAMAWOOL_TICK_INTERVAL_S": "0.5",
    }
    cluster = Cluster(tmp_path, replicas=3, env=env)
    await asyncio.to_thread(cluster.start)
    try:
        sim = Sim(cluster.url)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as s:
            await asyncio.gather(*(sim.join(s, i) for i in range(PLAYERS)))
            for p in sim.players:
                p.sockets = [Socket(), Socket()]
                p.ws = [None, None]
            sockets = [asyncio.create_task(sim.socket_loop(s, p, k)) for p in sim.players for k in range(2)]
            players = [asyncio.create_task(sim.play(s, p)) for p in sim.players]

            victim_kill, victim_term = cluster.replicas[0], cluster.replicas[1]
            await asyncio.sleep(PLAY_SECONDS * 0.3)
            victim_kill.kill()
            await asyncio.sleep(PLAY_SECONDS * 0.15)
            assert await asyncio.to_thread(victim_term.terminate, 20) == 0
            await asyncio.sleep(PLAY_SECONDS * 0.15)
            await asyncio.to_thread(victim_kill.start, 30)
            await asyncio.to_thread(victim_term.start, 30)
            await asyncio.sleep(PLAY_SECONDS * 0.4)
            sim.stop_play.set()
            await asyncio.gather(*players)

            # Every socket reconnects and then hears ticks, whichever replica owns its farm.
            sim.mark = True
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                if all(sock.connected and sock.ticks_after_mark >= 3 for p in sim.players for sock in p.sockets):
                    break
                await asyncio.sleep(0.25)
            silent = [
                (i, k, sock)
                for i, p in enumerate(sim.players)
                for k, sock in enumerate(p.sockets)
                if not (sock.connected and sock.ticks_after_mark >= 3)
            ]
            assert not silent, f"sockets without ticks: {silent[:5]}"
            assert any(sock.welcomes > 1 for p in sim.players for sock in p.sockets), "no socket ever reconnected"

            assert not sim.errors, sim.errors[:5]
            closed_form_checked = 0
            for i, p in enumerate(sim.players):
                farm = await get_farm(s, cluster.url, p)
                assert farm["buildings"]["barn"] == p.barns, (i, farm["buildings"], p.barns)
                assert p.sheared <= farm["stats"]["shears"] <= p.sheared + p.uncertain_shears, (
                    i,
                    farm["stats"],
                    p.sheared,
                    p.uncertain_shears,
                )
                last = p.last_farm
                assert last is not None
                if last["revision"] == farm["revision"]:
                    dt = farm["server_time"] - last["server_time"]
                    for tier, value in farm["balances"].items():
                        expected = last["balances"][tier] + last["rates"][tier] * dt
                        assert value == pytest.approx(expected, rel=1e-9, abs=1e-9), (i, tier)
                    closed_form_checked += 1
            assert closed_form_checked >= PLAYERS // 2, closed_form_checked
            sim.stop_sockets.set()
            for t in sockets:
                t.cancel()
            await asyncio.gather(*sockets, return_exceptions=True)
    finally:
        await asyncio.to_thread(cluster.stop)
