"""Replicas added and removed under load, on the real cluster (MongoDB-wire + Redis + nginx).

Scale-out: two replicas hold every socket; a third starts and nginx is told
about it (config rewritten, reloaded). The full replicas close their excess
with 1012 "rebalancing" a step at a time, the clients reconnect as the web
client does (after 0.25 to 1.25 s), and the new replica's share is read from
the replicas' own /metrics until it holds a quarter of the sockets; at the end
every socket is connected again.

Scale-in: three replicas under play, every action over REST or WebSocket
carrying an idempotency key and retried with it until answered; one replica
is SIGTERMed (drained) mid-play. Every acknowledged shear is in the farms
afterwards, exactly once, and every socket is back on the two that remain.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.cluster import Cluster, Pending, answered, ws_action
from tests.helpers import ServerProcess

pytestmark = pytest.mark.slow

API = "/api/v1"
CLOSE_RESTART = 1012
ENV = {
    "LLAMAWOOL_GUESTS_PER_IP_PER_HOUR": "100000",
    "LLAMAWOOL_TICK_INTERVAL_S": "0.5",
    "LLAMAWOOL_LEASE_TTL_S": "3",
    "LLAMAWOOL_RPC_TIMEOUT_S": "1.5",
    "LLAMAWOOL_DRAIN_GRACE_S": "10",
    "LLAMAWOOL_REBALANCE_INTERVAL_S": "1",
    "LLAMAWOOL_REBALANCE_WARMUP_S": "2",
}


@dataclass
class Player:
    token: str
    connected: bool = False
    welcomes: int = 0
    closes: list[tuple[int, str]] = field(default_factory=list)
    ws: aiohttp.ClientWebSocketResponse | None = None
    pending: Pending = field(default_factory=dict)
    sheared: int = 0  # acknowledged shears
    errors: list[str] = field(default_factory=list)
    server_errors: list[int] = field(default_factory=list)  # REST 5xx (retried with the same key)
    unavailable: int = 0  # socket actions answered UNAVAILABLE (nothing applied; retried)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Crowd:
    """Players behind the load balancer, each holding one socket it reconnects like the web client."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http
        self.players: list[Player] = []
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def join(self, n: int) -> list[Player]:
        """n more players, each holding a socket from now on."""
        joined = list(await asyncio.gather(*(self._guest() for _ in range(n))))
        self.players += joined
        self.tasks += [asyncio.create_task(self._hold_socket(p)) for p in joined]
        return joined

    async def _guest(self) -> Player:
        body = {"device_id": f"rebalance-{uuid.uuid4().hex}"}
        for _ in range(50):
            try:
                async with self.http.post(self.url + API + "/auth/guest", json=body) as r:
                    if r.status in (200, 201):
                        return Player((await r.json())["access_token"])
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError("could not join")

    async def _hold_socket(self, p: Player) -> None:
        url = self.url.replace("http", "ws") + API + f"/ws?token={p.token}"
        while not self.stopping.is_set():
            code, reason = 0, ""
            try:
                async with self.http.ws_connect(url, autoclose=True) as ws:
                    p.ws = ws
                    while True:
                        msg = await ws.receive()
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            m = msg.json()
                            if m["type"] == "welcome":
                                p.connected = True
                                p.welcomes += 1
                            elif m["type"] in ("result", "error"):
                                answered(p.pending, m)
                            continue
                        if msg.type == aiohttp.WSMsgType.CLOSE:
                            code, reason = int(msg.data), str(msg.extra or "")
                        break
                    code = code or (ws.close_code or 0)
            except (TimeoutError, aiohttp.ClientError):
                pass
            p.connected = False
            p.ws = None
            p.closes.append((code, reason))
            # As llamawool/web/net.js: soon after a 1012 (restart or rebalancing), spread out.
            await asyncio.sleep(0.25 + random.random() if code == CLOSE_RESTART else random.uniform(0.2, 0.5))

    async def all_on(self, replicas: list[ServerProcess]) -> bool:
        """Every player holds a socket, and these replicas hold them all."""
        connected = all(p.connected for p in self.players)
        return connected and sum(await sockets_on(self.http, replicas)) == len(self.players)

    def rebalanced(self) -> int:
        return sum(1 for p in self.players for code, reason in p.closes if reason.startswith("rebalancing"))

    async def stop(self) -> None:
        self.stopping.set()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def metric(http: aiohttp.ClientSession, replica: ServerProcess, name: str) -> float:
    """One unlabelled sample from the replica's own /metrics."""
    async with http.get(replica.url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics of {replica.url}")


async def sockets_on(http: aiohttp.ClientSession, replicas: list[ServerProcess]) -> list[int]:
    return [int(await metric(http, r, "websocket_connections_active")) for r in replicas]


async def until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll an async check (every 0.25 s) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def crowd_on(tmp_path: Path, replicas: int, players: int) -> AsyncIterator[tuple[Cluster, Crowd]]:
    """A cluster of `replicas` with `players` connected through its nginx; everything stopped after."""
    cluster = Cluster(tmp_path, replicas=replicas, env=ENV)
    await asyncio.to_thread(cluster.start)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            crowd = Crowd(cluster.url, http)
            try:
                await crowd.join(players)
                await until(lambda: crowd.all_on(cluster.replicas), 30, "every socket connected")
                yield cluster, crowd
            finally:
                await crowd.stop()
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_a_replica_added_under_load_takes_its_share_of_sockets(tmp_path: Path) -> None:
    players = 60
    async with crowd_on(tmp_path, 2, players) as (cluster, crowd):
        assert crowd.rebalanced() == 0  # two replicas within their band shed nothing

        started = time.monotonic()
        newcomer = await asyncio.to_thread(cluster.add_replica)
        assert await metric(crowd.http, newcomer, "websocket_connections_active") == 0  # only new sockets reach it

        async def share() -> float:
            counts = await sockets_on(crowd.http, cluster.replicas)
            return counts[-1] / players if counts[-1] >= players / 4 else 0.0

        taken = await until(share, 45, "the new replica to hold a quarter of the sockets")
        took = time.monotonic() - started
        await until(lambda: crowd.all_on(cluster.replicas), 20, "every socket connected again")
        counts = await sockets_on(crowd.http, cluster.replicas)
        closed = [int(await metric(crowd.http, r, "llamawool_rebalance_closed_total")) for r in cluster.replicas]
        refused = [int(await metric(crowd.http, r, "llamawool_rebalance_refused_total")) for r in cluster.replicas]
        farms = [int(await metric(crowd.http, r, "llamawool_farms_resident")) for r in cluster.replicas]
        print(  # the figures the report quotes
            f"\nscale-out: {players} sockets, new replica at {taken:.0%} after {took:.1f}s; "
            f"per replica: sockets {counts}, closed for rebalancing {closed}, refused {refused}, "
            f"farms resident {farms}"
        )
        assert closed[-1] == 0, "the replica below its share shed sockets"
        assert sum(closed) == crowd.rebalanced()
        assert sum(closed) <= players, "more sockets were moved than there are: replicas traded them back"
        codes = {code for p in crowd.players for code, _ in p.closes}
        assert codes <= {CLOSE_RESTART, 0}, f"unexpected close codes {codes}"


# ---- scale-in: drain one of three under play ---------------------------------------------------


async def rest_shear(crowd: Crowd, p: Player) -> None:
    """POST /farm/shear with an Idempotency-Key, retried with the same key until answered."""
    key, count = uuid.uuid4().hex, random.randint(1, 3)
    headers = {**p.headers, "Idempotency-Key": key}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            async with crowd.http.post(crowd.url + API + "/farm/shear", json={"count": count}, headers=headers) as r:
                body = await r.json(content_type=None)
                if r.status == 200:
                    p.sheared += body["result"]["sheared"]
                    return
                if r.status >= 500:
                    p.server_errors.append(r.status)
                if r.status not in (502, 503, 504):
                    p.errors.append(f"REST {r.status} {body}")
                    return
        except (TimeoutError, aiohttp.ClientError):
            pass
        await asyncio.sleep(0.2)
    p.errors.append("REST shear never answered")


async def ws_shear(p: Player) -> None:
    """A shear over the socket with an idempotency key, retried with the same key (on whichever
    socket the player holds by then) until a result or a refusal comes back."""
    data = {"action": "shear", "count": random.randint(1, 3), "idempotency_key": uuid.uuid4().hex}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ws = p.ws
        if ws is None or ws.closed or not p.connected:
            await asyncio.sleep(0.1)
            continue
        try:
            m = await ws_action(ws, p.pending, data, 5)
        except (TimeoutError, aiohttp.ClientError, ConnectionError, RuntimeError):
            continue  # the socket went (drain) before the answer: ask again with the same key
        if m["type"] == "result":
            p.sheared += m["data"]["result"]["sheared"]
            return
        if m["data"].get("code") != "UNAVAILABLE":  # UNAVAILABLE: nothing applied, retry
            p.errors.append(f"WS error {m['data']}")
            return
        p.unavailable += 1
        await asyncio.sleep(0.3)
    p.errors.append("WS shear never answered")


async def play(crowd: Crowd, p: Player, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await (rest_shear(crowd, p) if random.random() < 0.5 else ws_shear(p))
        await asyncio.sleep(random.uniform(0.6, 1.2))  # under the ConfigMap's 60 actions per minute


async def farm_shears(crowd: Crowd, p: Player) -> int:
    for _ in range(50):
        async with crowd.http.get(crowd.url + API + "/farm", headers=p.headers) as r:
            if r.status == 200:
                return int((await r.json())["stats"]["shears"])
        await asyncio.sleep(0.2)
    raise AssertionError("GET /farm kept failing")


async def test_a_replica_drained_under_play_loses_no_action_and_its_sockets_move(tmp_path: Path) -> None:
    players = 30
    async with crowd_on(tmp_path, 3, players) as (cluster, crowd):
        leaving, staying = cluster.replicas[1], [cluster.replicas[0], cluster.replicas[2]]
        assert await metric(crowd.http, leaving, "websocket_connections_active") > 0, "nobody to move"

        stop = asyncio.Event()
        actors = [asyncio.create_task(play(crowd, p, stop)) for p in crowd.players]
        await asyncio.sleep(4)  # play before the drain (a duration of play, not a synchronisation)
        acked_before = sum(p.sheared for p in crowd.players)
        assert await asyncio.to_thread(leaving.terminate, 20) == 0  # drained and exited cleanly
        await asyncio.sleep(4)  # and play on the two that remain
        stop.set()
        await asyncio.gather(*actors)

        await until(lambda: crowd.all_on(staying), 20, "every socket on the two remaining replicas")

        async def two_live() -> bool:  # the drained one counts for no fair share any more
            return [await metric(crowd.http, r, "llamawool_replicas_live") for r in staying] == [2, 2]

        await until(two_live, 5, "the remaining replicas to count two live replicas")
        errors = [e for p in crowd.players for e in p.errors]
        assert not errors, errors[:5]
        acked = sum(p.sheared for p in crowd.players)
        assert acked > acked_before > 0, (acked_before, acked)
        for i, p in enumerate(crowd.players):
            assert await farm_shears(crowd, p) == p.sheared, f"player {i}: an acknowledged shear was lost"
        moved = sum(1 for p in crowd.players if (CLOSE_RESTART, "server restarting: reconnect") in p.closes)
        print(f"\nscale-in: {acked} shears acknowledged, all found; {moved} of {players} sockets moved")
        assert moved > 0
