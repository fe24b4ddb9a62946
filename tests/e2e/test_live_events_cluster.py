"""A live event on two replicas (MongoDB + Redis): scheduled through one replica, it
starts and ends on both within one tick of its own server times, and the ticks each
replica computes from its numpy rows follow the piecewise closed form exactly.

Each replica holds one player's socket (connected to it directly), so each farm is
resident on, and ticked by, its own replica.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.cluster import Cluster

pytestmark = pytest.mark.slow

API = "/api/v1"
TICK_S = 0.25
ADMIN_PASSWORD = "events-admin-password-123"  # a test account
ENV = {"LLAMAWOOL_GUESTS_PER_IP_PER_HOUR": "100000", "LLAMAWOOL_TICK_INTERVAL_S": str(TICK_S)}


async def read_socket(ws: aiohttp.ClientWebSocketResponse, seen: list[tuple[float, dict[str, Any]]]) -> None:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            seen.append((time.time(), msg.json()))


def live(seen: list[tuple[float, dict[str, Any]]], phase: str) -> list[tuple[float, dict[str, Any]]]:
    return [
        (at, m)
        for at, m in seen
        if m["type"] == "event" and m["data"].get("kind") == "live_event" and m["data"]["phase"] == phase
    ]


async def test_an_event_starts_and_ends_on_every_replica_within_a_tick(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, replicas=2, env=ENV)
    await asyncio.to_thread(cluster.start)
    try:
        await asyncio.to_thread(cluster.create_admin, "events_ops", "ops@events.example", ADMIN_PASSWORD)
        urls = [r.url for r in cluster.replicas]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
            async with s.post(
                urls[0] + API + "/auth/login", json={"login": "events_ops", "password": ADMIN_PASSWORD}
            ) as r:
                assert r.status == 200, await r.text()
                admin = {"Authorization": f"Bearer {(await r.json())['access_token']}"}
            sockets, seen, readers, created = [], [], [], []
            for i, url in enumerate(urls):
                async with s.post(url + API + "/auth/guest", json={"device_id": f"events-dev-{i}"}) as r:
                    token = (await r.json())["access_token"]
                ws = await s.ws_connect(
                    url.replace("http", "ws") + API + "/ws", headers={"Authorization": f"Bearer {token}"}
                )
                welcome = await ws.receive_json()
                assert welcome["type"] == "welcome"
                created.append(welcome["data"]["farm"]["created_at"])
                log: list[tuple[float, dict[str, Any]]] = []
                sockets.append(ws)
                seen.append(log)
                readers.append(asyncio.create_task(read_socket(ws, log)))

            t0 = time.time() + 2.0
            t1 = t0 + 3.0
            body = {"name": "Double wool", "multiplier": 2.0, "tiers": ["basic"], "starts_at": t0, "ends_at": t1}
            async with s.post(urls[0] + API + "/admin/events", json=body, headers=admin) as r:
                assert r.status == 201, await r.text()
                event = (await r.json())["event"]
            # the other replica hears of it over the bus, well before its periodic read (5 s)
            deadline = time.monotonic() + 1.0
            while True:
                async with s.get(urls[1] + API + "/config") as r:
                    listed = [e["id"] for e in (await r.json())["events"]]
                if event["id"] in listed or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert event["id"] in listed
            await asyncio.sleep(t1 - time.time() + 3 * TICK_S + 0.5)

            for i, log in enumerate(seen):
                assert [m["data"]["event"]["id"] for _, m in live(log, "scheduled")] == [event["id"]], i
                for phase, at in (("started", t0), ("ended", t1)):
                    got = live(log, phase)
                    assert len(got) == 1, (i, phase, got)
                    # within one tick (plus the time the message takes to arrive) of the event's own time
                    assert at <= got[0][0] <= at + TICK_S + 0.2, (i, phase, got[0][0] - at)
                # the ticks come from the replica's rows: re-anchored at t0 and t1 exactly
                ticks = [m["data"] for _, m in log if m["type"] == "tick"]
                assert len(ticks) > 10
                for tick in ticks:
                    now = tick["server_time"]
                    extra = max(0.0, min(now, t1) - t0)  # the doubled seconds so far
                    want = 0.1 * (now - created[i] + extra)
                    assert math.isclose(tick["balances"]["basic"], want, rel_tol=1e-9, abs_tol=1e-6), (i, tick)
                # the first tick of each farm after t0 (whichever phase it has) carries the new rates
                during = [t for t in ticks if t0 < t["server_time"] < t1 and "rates" in t]
                assert during and during[0]["rates"]["basic"] == 0.2, during[:1]
            for ws in sockets:
                await ws.close()
            for task in readers:
                await task
    finally:
        await asyncio.to_thread(cluster.stop)
