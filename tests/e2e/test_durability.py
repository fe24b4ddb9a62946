"""Durability of a real server process (ARCHITECTURE.md, "Durability").

kill -9 in the middle of a stream of purchases and shears loses no
acknowledged action and no production; SIGTERM drains and exits 0 in time.
Each test runs `python -m llamawool serve` on a scratch data folder and
restarts it on the same folder.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llamawool.settings import Settings
from llamawool.store import open_store
from tests.helpers import ServerProcess

pytestmark = pytest.mark.slow

API = "/api/v1"
WORKERS = 4
ACKS_BEFORE_KILL = 40
REL = 1e-9


class Api:
    """A player's client: JSON in, (status, JSON) out."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str | None = None) -> None:
        self.http = http
        self.base_url = base_url
        self.token = token

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with self.http.request(method, self.base_url + API + path, json=body, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)

    async def farm(self) -> dict[str, Any]:
        status, body = await self.call("GET", "/farm")
        assert status == 200, body
        return dict(body)


async def new_guest(http: aiohttp.ClientSession, base_url: str) -> tuple[Api, str]:
    api = Api(http, base_url)
    status, body = await api.call("POST", "/auth/guest", {"device_id": f"durability-{uuid.uuid4().hex}"})
    assert status in (200, 201), body
    api.token = body["access_token"]
    return api, body["player"]["id"]


@asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        yield http


@asynccontextmanager
async def server_on(data_dir: Path) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(data_dir)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        server.kill()


@dataclass
class Ledger:
    """What the client saw: acknowledged results, refusals, and requests whose fate is unknown."""

    acked: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: int = 0
    unknown: dict[str, int] = field(default_factory=lambda: {"shear": 0, "barn": 0})
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    def acked_sum(self, kind: str, key: str) -> int:
        return sum(int(body["result"][key]) for k, body in self.acked if k == kind)

    def latest_farm(self) -> dict[str, Any]:
        """The farm as of the acknowledged reply with the highest revision."""
        return dict(max((body["farm"] for _, body in self.acked), key=lambda f: f["revision"]))


async def player(api: Api, ledger: Ledger, worker: int) -> None:
    """Shear and buy barns back to back until the server stops answering."""
    n = worker
    while True:
        kind = "shear" if n % 2 == 0 else "barn"
        n += 1
        path, body = ("/farm/shear", {"count": 20}) if kind == "shear" else ("/farm/buildings/barn/purchase", {})
        try:
            status, reply = await api.call("POST", path, body)
        except (aiohttp.ClientError, TimeoutError):
            ledger.unknown[kind] += 1  # sent, never answered: applied or not, we cannot know
            return
        if status == 200:
            ledger.acked.append((kind, reply))
            if len(ledger.acked) >= ACKS_BEFORE_KILL:
                ledger.enough.set()
        elif status in (409, 429):  # cannot afford yet, or metered: nothing applied
            ledger.refused += 1
        else:
            raise AssertionError(f"{path}: {status} {reply}")


def assert_production_continued(after: dict[str, Any], before: dict[str, Any]) -> None:
    """Lifetime value never shrinks and grows at least at the last rate the client saw
    (rates only rise without a prestige), including while the server was down."""
    elapsed = after["server_time"] - before["server_time"]
    assert elapsed > 0
    floor = before["lifetime_value"] + before["value_per_second"] * elapsed
    assert after["lifetime_value"] >= floor * (1 - REL), (after["lifetime_value"], floor)


async def assert_balance_follows_the_closed_form(api: Api) -> None:
    """Two reads of an unchanged revision differ by exactly rate x elapsed server time."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        first = await api.farm()
        second = await api.farm()
        if first["revision"] != second["revision"]:
            continue  # a tick re-anchored it in between (an achievement): read again
        elapsed = second["server_time"] - first["server_time"]
        assert elapsed >= 0
        for tier, rate in first["rates"].items():
            expected = first["balances"][tier] + rate * elapsed
            assert math.isclose(second["balances"][tier], expected, rel_tol=REL, abs_tol=1e-12), tier
        assert first["rates"]["basic"] > 0
        return
    raise AssertionError("the farm kept changing revision between two reads for 10 s")


async def test_kill_9_mid_stream_loses_no_acknowledged_action_and_no_production(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ledger = Ledger()
    async with client() as http:
        async with server_on(data_dir) as server:
            api, _ = await new_guest(http, server.url)
            for _ in range(2):  # a full shear bucket: enough wool for the first barns
                status, body = await api.call("POST", "/farm/shear", {"count": 20})
                assert status == 200, body
            initial = await api.farm()

            workers = [asyncio.create_task(player(api, ledger, i)) for i in range(WORKERS)]
            await asyncio.wait_for(ledger.enough.wait(), timeout=60)
            await asyncio.to_thread(server.kill)  # SIGKILL while the workers' requests are in flight
            await asyncio.wait_for(asyncio.gather(*workers), timeout=30)

        barns = ledger.acked_sum("barn", "bought")
        sheared = ledger.acked_sum("shear", "sheared")
        assert barns >= 1, "the stream never bought a barn: the test proves nothing about purchases"
        assert sum(ledger.unknown.values()) >= 1, "no request was in flight at the kill"

        async with server_on(data_dir) as restarted:
            api.base_url = restarted.url
            after = await api.farm()

            assert after["revision"] >= initial["revision"] + len(ledger.acked)
            assert after["revision"] >= ledger.latest_farm()["revision"]
            barn_before = initial["buildings"]["barn"]
            assert barn_before + barns <= after["buildings"]["barn"] <= barn_before + barns + ledger.unknown["barn"]
            shears_before = initial["stats"]["shears"]
            in_flight = 20 * ledger.unknown["shear"]
            assert shears_before + sheared <= after["stats"]["shears"] <= shears_before + sheared + in_flight
            assert_production_continued(after, ledger.latest_farm())
            await assert_balance_follows_the_closed_form(api)


async def test_sigterm_drains_exits_0_in_time_and_keeps_the_farm(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    grace = Settings().drain_grace_s
    async with client() as http:
        async with server_on(data_dir) as server:
            api, player_id = await new_guest(http, server.url)
            replies = []
            for path, body in (
                ("/farm/shear", {"count": 20}),
                ("/farm/buildings/barn/purchase", {"quantity": 1}),
                ("/farm/shear", {"count": 15}),
                ("/farm/buildings/barn/purchase", {"quantity": 1}),
            ):
                status, reply = await api.call("POST", path, body)
                assert status == 200, reply
                replies.append(reply)
            last = replies[-1]["farm"]

            started = time.monotonic()
            code = await asyncio.to_thread(server.terminate, grace + 5)
            took = time.monotonic() - started

            assert code == 0, server.log_path.read_text()[-2000:]
            assert took < grace
            assert any(line.get("event") == "server.stopped" for line in server.logs())

        # Stopped cleanly: the stored farm is the last acknowledged one, and its snapshot was written.
        store = open_store(Settings(env="test", data_dir=data_dir))
        await store.open()
        try:
            stored = await store.load_farm(player_id)
            snapshots = await store.list_snapshots(player_id, 1)
        finally:
            await store.close()
        assert stored is not None and stored.revision >= last["revision"]
        assert stored.doc["buildings"] == {"barn": 2}
        assert snapshots and snapshots[0].revision == stored.revision

        async with server_on(data_dir) as restarted:
            api.base_url = restarted.url
            after = await api.farm()

            assert after["buildings"]["barn"] == 2
            assert after["stats"]["shears"] == 35
            assert after["stats"]["building_levels_bought"] == 2
            assert after["revision"] >= last["revision"]
            assert_production_continued(after, last)
            await assert_balance_follows_the_closed_form(api)
