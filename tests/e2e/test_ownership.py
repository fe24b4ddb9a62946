"""Farm ownership on the real cluster (docs/replicas.md): handover, slow and dead owners, scale-in.

MongoDB-wire server + redis-server + replicas (+ nginx for the scale-in run).
The handover and owner tests talk to one replica's port directly, so which
replica serves what is the test's choice, not the load balancer's.

- Handover: a farm touched over REST on replica A follows its player's socket
  to replica B: the lease names B, ticks reach the socket every second with
  closed-form balances, REST on A is forwarded to B, and B feeds no socket
  through Redis.
- A slow owner (SIGSTOP shorter than the heartbeat TTL) gets its callers a fast
  503 + Retry-After, not a hang; nobody resyncs or takes its farm, and after
  SIGCONT the same Idempotency-Key applies the action once.
- A dead owner (SIGKILL) loses its farms within about the heartbeat TTL, far
  less than the lease TTL, with every acknowledged action present.
- Scale-in: SIGTERM one of three replicas while players act with
  Idempotency-Keys: every acknowledged action is present afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.e2e.cluster import Cluster
from tests.helpers import ServerProcess

pytestmark = pytest.mark.slow

API = "/api/v1"
LEASE_TTL_S = 15.0
HEARTBEAT_TTL_S = 3.0
RPC_TIMEOUT_S = 1.0
ENV = {
    "LLAMAWOOL_GUESTS_PER_IP_PER_HOUR": "100000",
    "LLAMAWOOL_LEASE_TTL_S": str(LEASE_TTL_S),
    "LLAMAWOOL_RPC_TIMEOUT_S": str(RPC_TIMEOUT_S),
    "LLAMAWOOL_HEARTBEAT_S": "0.5",
    "LLAMAWOOL_HEARTBEAT_TTL_S": str(HEARTBEAT_TTL_S),
    "LLAMAWOOL_DRAIN_GRACE_S": "10",
    "LLAMAWOOL_TICK_INTERVAL_S": "1",
    "LLAMAWOOL_LOG_LEVEL": "info",  # `server.started` names each replica's id
}


@asynccontextmanager
async def running(tmp_path: Path, replicas: int) -> AsyncIterator[Cluster]:
    cluster = Cluster(tmp_path, replicas=replicas, env=ENV)
    await asyncio.to_thread(cluster.start)
    try:
        yield cluster
    finally:
        for r in cluster.replicas:  # a paused replica must not outlive the test
            if r.proc is not None and r.proc.poll() is None:
                os.kill(r.proc.pid, signal.SIGCONT)
        await asyncio.to_thread(cluster.stop)


@dataclass
class Player:
    id: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    token: str = ""


async def join(s: aiohttp.ClientSession, url: str) -> Player:
    async with s.post(url + API + "/auth/guest", json={"device_id": f"own-{uuid.uuid4().hex}"}) as r:
        assert r.status in (200, 201), await r.text()
        body = await r.json()
    return Player(body["player"]["id"], {"Authorization": f"Bearer {body['access_token']}"}, body["access_token"])


async def shear(
    s: aiohttp.ClientSession, url: str, p: Player, key: str | None = None, count: int = 1
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {**p.headers, "Idempotency-Key": key or uuid.uuid4().hex}
    async with s.post(url + API + "/farm/shear", json={"count": count}, headers=headers) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


async def metric(s: aiohttp.ClientSession, replica: ServerProcess, name: str, **labels: str) -> float:
    """One sample of a replica's /metrics (0 when absent)."""
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
    async with s.get(replica.url + "/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


async def lease_of(cluster: Cluster, player_id: str) -> str | None:
    client = aioredis.from_url(cluster.redis.url, decode_responses=True)
    try:
        value = await client.get("llamawool:lease:" + player_id)
        return None if value is None else str(value)
    finally:
        await client.aclose()


def replica_ids(cluster: Cluster) -> dict[str, ServerProcess]:
    """Replica id -> process, from the `server.started` lines."""
    out = {}
    for r in cluster.replicas:
        for line in r.logs():
            if line.get("event") == "server.started":
                out[str(line["replica"])] = r
    return out


def events(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [line for r in cluster.replicas for line in r.logs() if line.get("event") == name]


async def eventually(check: Any, within_s: float, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(every_s)


def closed_form(prev: dict[str, Any], rates: dict[str, float], now: float) -> dict[str, float]:
    dt = now - prev["server_time"]
    return {tier: prev["balances"][tier] + rates[tier] * dt for tier in prev["balances"]}


# ---- farms follow their players ---------------------------------------------------------------------------


async def test_a_farm_follows_its_players_socket_to_another_replica(tmp_path: Path) -> None:
    async with running(tmp_path, replicas=2) as cluster, aiohttp.ClientSession() as s:
        a, b = cluster.replicas
        p = await join(s, a.url)
        status, body, _ = await shear(s, a.url, p, count=3)  # a REST call lands on A: A owns the farm
        assert status == 200, body
        ids = {proc.port: rid for rid, proc in replica_ids(cluster).items()}
        assert await lease_of(cluster, p.id) == ids[a.port]

        async with s.ws_connect(b.url.replace("http", "ws") + API + f"/ws?token={p.token}") as ws:
            welcome = await ws.receive_json(timeout=10)
            assert welcome["type"] == "welcome"
            assert welcome["data"]["farm"]["stats"]["shears"] == 3
            assert await lease_of(cluster, p.id) == ids[b.port]  # moved before the welcome
            assert await metric(s, b, "llamawool_handovers_total", direction="in") == 1
            assert await metric(s, a, "llamawool_handovers_total", direction="out") == 1

            ref = welcome["data"]["farm"]
            rates = ref["rates"]
            ticks: list[dict[str, Any]] = []
            while len(ticks) < 4:
                m = await ws.receive_json(timeout=5)
                if m["type"] != "tick":
                    continue
                tick = m["data"]
                ticks.append(tick)
                if tick["revision"] != ref["revision"]:
                    ref, rates = tick, tick.get("rates", rates)
                    continue
                rates = tick.get("rates", rates)
                for tier, value in closed_form(ref, rates, tick["server_time"]).items():
                    assert tick["balances"][tier] == pytest.approx(value, rel=1e-9, abs=1e-9), (tier, tick, ref)
            gaps = [y["server_time"] - x["server_time"] for x, y in itertools.pairwise(ticks)]
            assert all(0.5 <= g <= 1.6 for g in gaps), gaps  # one tick a second, none lost
            print(f"\nhandover: {len(ticks)} ticks on the new owner's socket, gaps {[round(g, 3) for g in gaps]} s")

            status, body, _ = await shear(s, a.url, p)  # REST on A: forwarded to the new owner
            assert status == 200, body
            assert body["farm"]["stats"]["shears"] == 4
            assert await metric(s, a, "llamawool_forwarded_actions_total") == 1
            assert await metric(s, b, "llamawool_remote_watched_sockets") == 0
            assert await lease_of(cluster, p.id) == ids[b.port]  # a one-off request moves nothing


# ---- a slow owner is not a dead owner ----------------------------------------------------------------------


async def test_a_paused_owner_gets_its_callers_a_fast_503_and_keeps_its_farms(tmp_path: Path) -> None:
    async with running(tmp_path, replicas=2) as cluster, aiohttp.ClientSession() as s:
        a, b = cluster.replicas
        p = await join(s, a.url)
        status, body, _ = await shear(s, a.url, p, count=2)
        assert status == 200, body
        ids = {proc.port: rid for rid, proc in replica_ids(cluster).items()}
        resident_before = await metric(s, a, "llamawool_farms_resident")
        assert a.proc is not None
        key = uuid.uuid4().hex
        os.kill(a.proc.pid, signal.SIGSTOP)  # slow, not dead: shorter than the heartbeat TTL
        try:
            started = time.monotonic()
            status, body, headers = await shear(s, b.url, p, key=key)
            waited = time.monotonic() - started
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        print(f"\npaused owner: the caller answered {status} after {waited:.2f} s (rpc timeout {RPC_TIMEOUT_S} s)")
        assert status == 503, body
        assert body["code"] == "UNAVAILABLE" and int(headers["Retry-After"]) >= 1
        assert waited < RPC_TIMEOUT_S + 1.5, waited  # one timeout and one script, no lease polling
        assert await lease_of(cluster, p.id) == ids[a.port]

        # Awake: the retry with the same key is applied once (the paused request may
        # have been applied when A woke up; the key finds it).
        async def retried() -> tuple[int, dict[str, Any], dict[str, str]] | None:
            out = await shear(s, b.url, p, key=key)
            return out if out[0] == 200 else None

        answer = await eventually(retried, within_s=10, every_s=0.5)
        assert answer is not None
        assert answer[1]["farm"]["stats"]["shears"] == 3
        assert await lease_of(cluster, p.id) == ids[a.port]
        assert await metric(s, a, "llamawool_farms_resident") == resident_before
        assert events(cluster, "cluster.resynced") == []
        assert events(cluster, "cluster.took_over") == []
        assert await metric(s, b, "llamawool_rpc_total", op="submit", outcome="timeout") >= 1


async def test_a_killed_owner_loses_its_farms_within_the_heartbeat_ttl(tmp_path: Path) -> None:
    async with running(tmp_path, replicas=2) as cluster, aiohttp.ClientSession() as s:
        a, b = cluster.replicas
        p = await join(s, a.url)
        acknowledged = 0
        for _ in range(5):
            status, body, _ = await shear(s, a.url, p, count=2)
            assert status == 200, body
            acknowledged += body["result"]["sheared"]
        ids = {proc.port: rid for rid, proc in replica_ids(cluster).items()}
        killed = time.monotonic()
        a.kill()

        async def served() -> dict[str, Any] | None:
            async with s.get(b.url + API + "/farm", headers=p.headers) as r:
                return await r.json() if r.status == 200 else None

        farm = await eventually(served, within_s=LEASE_TTL_S + 10, every_s=0.2)
        took = time.monotonic() - killed
        print(f"\nfarm served by another replica {took:.2f} s after SIGKILL (heartbeat TTL {HEARTBEAT_TTL_S} s)")
        assert farm is not None
        assert farm["stats"]["shears"] == acknowledged
        assert took < HEARTBEAT_TTL_S + RPC_TIMEOUT_S + 3.0 < LEASE_TTL_S, took
        assert await lease_of(cluster, p.id) == ids[b.port]
        assert await metric(s, b, "llamawool_lease_acquisitions_total", outcome="taken_over") == 1


# ---- scale-in under play ------------------------------------------------------------------------------------


async def test_scale_in_under_play_loses_no_acknowledged_action(tmp_path: Path) -> None:
    players = 12
    async with running(tmp_path, replicas=3) as cluster, aiohttp.ClientSession() as s:
        url = cluster.url
        ps = [await join(s, url) for _ in range(players)]
        acknowledged = [0] * players
        stop = asyncio.Event()
        errors: list[str] = []

        async def play(i: int) -> None:
            p = ps[i]
            while not stop.is_set():
                key, count = uuid.uuid4().hex, random.randint(1, 3)
                deadline = time.monotonic() + 30
                while True:  # the client retries with the same key until it is answered
                    try:
                        status, body, _ = await shear(s, url, p, key=key, count=count)
                    except (aiohttp.ClientError, TimeoutError):
                        status, body = 0, {}
                    if status == 200:
                        acknowledged[i] += body["result"]["sheared"]
                        break
                    if status not in (0, 502, 503, 504) or time.monotonic() > deadline:
                        errors.append(f"{status} {body}")
                        break
                    await asyncio.sleep(0.2)
                await asyncio.sleep(random.uniform(0.1, 0.3))

        async def socket(i: int) -> None:  # sockets too, so farms are owned where sockets are
            while not stop.is_set():
                try:
                    async with s.ws_connect(url.replace("http", "ws") + API + f"/ws?token={ps[i].token}") as ws:
                        async for _ in ws:
                            if stop.is_set():
                                break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.2)

        tasks = [asyncio.create_task(play(i)) for i in range(players)]
        tasks += [asyncio.create_task(socket(i)) for i in range(0, players, 2)]
        await asyncio.sleep(4)
        leaving = cluster.replicas[1]
        assert await asyncio.to_thread(leaving.terminate, 20) == 0  # drained within its grace
        await asyncio.sleep(4)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

        print(f"\nscale-in: {sum(acknowledged)} shears acknowledged by {players} players; errors {len(errors)}")
        assert not errors, errors[:5]
        assert sum(acknowledged) > players  # they did play
        for i, p in enumerate(ps):
            async with s.get(url + API + "/farm", headers=p.headers) as r:
                assert r.status == 200
                farm = await r.json()
            assert farm["stats"]["shears"] == acknowledged[i], (i, farm["stats"], acknowledged[i])
