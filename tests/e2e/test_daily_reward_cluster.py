"""The daily reward on a real cluster (MongoDB-wire + Redis, two replicas): claims of one
player sent to both replicas at the same moment yield exactly one success.

Each replica is addressed directly (not through nginx), so the two claims really land on
different processes; whichever does not own the farm forwards to the one that does, and the
owner's single change path with the farm's revision check lets only the first through.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.cluster import Cluster

pytestmark = pytest.mark.slow

API = "/api/v1"
PLAYERS = 16
ENV = {"LLAMAWOOL_GUESTS_PER_IP_PER_HOUR": "100000"}


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json(content_type=None)
    return body


async def _claim(s: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with s.post(url + API + "/farm/daily-reward/claim", json={}, headers=headers) as r:
        return r.status, await _json(r)


async def test_claims_at_both_replicas_at_once_succeed_once(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, replicas=2, env=ENV)
    await asyncio.to_thread(cluster.start)
    try:
        a, b = (r.url for r in cluster.replicas)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            players = []
            for i in range(PLAYERS):
                async with s.post(cluster.url + API + "/auth/guest", json={"device_id": f"daily-device-{i:04d}"}) as r:
                    body = await _json(r)
                    assert r.status in (200, 201), body
                headers = {"Authorization": f"Bearer {body['access_token']}"}
                if i % 2:  # half the farms are resident on some replica before the race, half are cold
                    async with s.get(cluster.url + API + "/farm", headers=headers) as r:
                        assert r.status == 200
                players.append(headers)

            results = await asyncio.gather(*(asyncio.gather(_claim(s, a, h), _claim(s, b, h)) for h in players))
            tally: dict[int, int] = {}
            for pair in results:
                for status, _ in pair:
                    tally[status] = tally.get(status, 0) + 1
            print(f"daily reward race, {PLAYERS} players x 2 replicas: statuses {dict(sorted(tally.items()))}")
            for i, pair in enumerate(results):
                statuses = sorted(status for status, _ in pair)
                assert statuses[0] == 200, (i, pair)
                assert statuses[1] in (409, 503), (i, pair)  # refused: already claimed, or lost the farm's CAS
                assert sum(status == 200 for status in statuses) == 1, (i, pair)
                refused = next(body for status, body in pair if status != 200)
                assert refused["code"] in ("CONFLICT", "UNAVAILABLE"), refused

            # Whatever each loser was told, the farm holds exactly one claim, read from either replica.
            for i, h in enumerate(players):
                for url in (a, b):
                    async with s.get(url + API + "/farm", headers=h) as r:
                        farm = await _json(r)
                    assert farm["stats"]["daily_rewards"] == 1, (i, url, farm["stats"])
                # and a third claim, at either replica, is refused
                status, body = await _claim(s, b if i % 2 else a, h)
                assert (status, body["code"]) == (409, "CONFLICT"), (i, body)
    finally:
        await asyncio.to_thread(cluster.stop)
