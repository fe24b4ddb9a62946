"""The cost budget (docs/scaling.md "Cost budget"), counted by the server itself:
what an action costs the store, on SQLite and on MongoDB, read from /metrics
(`llamawool_store_ops_total{op}`)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from llamawool.api import create_app
from llamawool.api.app import context
from llamawool.coord.redis import RedisCoordinator
from llamawool.settings import Settings
from tests.conftest import API, MakeClient, engine_of, new_guest
from tests.helpers import FakeClock
from tests.mongo_server import shared_server
from tests.redis_server import redis_server  # noqa: F401 - a fixture

from .support import get_farm, held_online, ok_json

STORES = ("sqlite", "mongo")


@pytest.fixture(params=STORES)
async def served(
    request: pytest.FixtureRequest, make_client: MakeClient, clock: FakeClock
) -> AsyncIterator[TestClient]:
    """A server on SQLite or on MongoDB (a database of its own), on the test's clock."""
    if request.param == "sqlite":
        yield await make_client(clock=clock, tick=False)
        return
    uri = f"{shared_server().uri}costs_{uuid.uuid4().hex[:12]}"
    client = await make_client(clock=clock, tick=False, mongodb_uri=uri)
    try:
        yield client
    finally:
        mongo: Any = context(client.server.app).store  # reads through to the MongoStore
        await mongo.client.drop_database(mongo.db.name)


async def counted(client: TestClient, metric: str, label: str) -> dict[str, float]:
    """A counter's samples by one label, from /metrics as an operator sees it."""
    text = await (await client.get("/metrics")).text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric:
                out[sample.labels[label]] = sample.value
    return out


async def store_ops(client: TestClient) -> dict[str, float]:
    return await counted(client, "llamawool_store_ops_total", "op")


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {op: n - before.get(op, 0.0) for op, n in after.items() if n != before.get(op, 0.0)}


async def players_online(client: TestClient, n: int) -> list[dict[str, str]]:
    """`n` guests whose farms are resident (each has been read once)."""
    headers = []
    for _ in range(n):
        guest = await new_guest(client)
        await get_farm(client, guest["headers"])
        headers.append(guest["headers"])
    return headers


async def test_an_action_without_a_key_costs_at_most_one_store_round_trip(served: TestClient) -> None:
    players = await players_online(served, 4)
    before = await store_ops(served)

    shears = [served.post(f"{API}/farm/shear", json={"count": 1}, headers=h) for h in players for _ in range(3)]
    for resp in await asyncio.gather(*shears):
        await ok_json(resp)

    cost = spent(before, await store_ops(served))
    cost.pop("ping", None)  # a readiness probe, not the actions' cost
    assert set(cost) <= {"commit", "touch_farms", "add_snapshots"}, cost  # no read before a commit
    assert sum(cost.values()) <= 12, cost  # twelve actions: at most one round trip each


def keyed(headers: dict[str, str], key: str) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


def forget_replies(client: TestClient) -> None:
    """As a replica that did not commit the keys sees them (or this one after a restart)."""
    for res in engine_of(client).residents.values():
        res.replies.clear()


async def test_a_keyed_action_reads_nothing_before_its_commit_and_its_retry_nothing(served: TestClient) -> None:
    players = await players_online(served, 4)
    before = await store_ops(served)

    firsts = await asyncio.gather(
        *(served.post(f"{API}/farm/shear", json={"count": 2}, headers=keyed(h, f"k{i}")) for i, h in enumerate(players))
    )
    bodies = [await ok_json(r) for r in firsts]
    cost = spent(before, await store_ops(served))
    assert set(cost) == {"commit"} and cost["commit"] <= 4, cost  # the key's check rides in the commit

    before = await store_ops(served)
    retries = await asyncio.gather(
        *(served.post(f"{API}/farm/shear", json={"count": 2}, headers=keyed(h, f"k{i}")) for i, h in enumerate(players))
    )
    assert [r.headers["Idempotent-Replayed"] for r in retries] == ["true"] * 4
    assert [await ok_json(r) for r in retries] == bodies
    assert spent(before, await store_ops(served)) == {}  # answered from memory


async def first_then_forgotten_retry(
    client: TestClient, path: str, body: dict[str, Any], headers: dict[str, str]
) -> dict[str, float]:
    """Send a keyed action, forget what this replica remembers of its key, send it again:
    the retry is a replay of the first answer; returns what the retry cost the store."""
    first = await ok_json(await client.post(f"{API}{path}", json=body, headers=headers))
    forget_replies(client)
    before = await store_ops(client)
    again = await client.post(f"{API}{path}", json=body, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true" and await ok_json(again) == first
    return spent(before, await store_ops(client))


async def test_a_retry_this_replica_does_not_remember_is_found_by_its_commit(served: TestClient) -> None:
    guest = await new_guest(served)

    cost = await first_then_forgotten_retry(served, "/farm/shear", {"count": 3}, keyed(guest["headers"], "shear-1"))

    assert cost == {"commit": 1, "get_idempotency": 1}  # the commit is refused for its key, the answer read
    farm = await get_farm(served, guest["headers"])
    assert farm["revision"] == 2 and farm["balances"]["basic"] == 3.0  # created, then sheared once


async def test_a_retry_the_rules_would_refuse_now_gets_the_first_answer(served: TestClient) -> None:
    guest = await new_guest(served)
    await ok_json(await served.post(f"{API}/farm/shear", json={"count": 10}, headers=guest["headers"]))

    # The barn takes all the wool: bought again it would be refused, but this is a retry.
    purchase = "/farm/buildings/barn/purchase"
    cost = await first_then_forgotten_retry(served, purchase, {"quantity": 1}, keyed(guest["headers"], "buy-1"))

    assert cost == {"get_idempotency": 1}  # nothing written
    assert (await get_farm(served, guest["headers"]))["buildings"]["barn"] == 1


async def test_a_board_push_costs_redis_one_round_trip_per_board_not_one_per_farm(
    aiohttp_client: Any,
    settings: Settings,
    clock: FakeClock,
    redis_server: str,  # noqa: F811 - the fixture
) -> None:
    coord = RedisCoordinator(redis_server, prefix=f"costs-{uuid.uuid4().hex[:10]}:")
    client: TestClient = await aiohttp_client(create_app(settings, clock=clock, tick=False, coord=coord))
    feed = engine_of(client).boards
    async with contextlib.AsyncExitStack() as sockets:
        for _ in range(5):
            guest = await new_guest(client)
            await sockets.enter_async_context(held_online(client, guest["access_token"]))
        await feed.push()  # the first push sends every score

        async def cost_of_a_push() -> tuple[dict[str, float], dict[str, float]]:
            trips = await counted(client, "llamawool_redis_round_trips_total", "purpose")
            commands = await counted(client, "llamawool_redis_commands_total", "purpose")
            await feed.push()
            trips = spent(trips, await counted(client, "llamawool_redis_round_trips_total", "purpose"))
            return trips, spent(commands, await counted(client, "llamawool_redis_commands_total", "purpose"))

        # Nothing moved: no score goes out again; every farm's four ranks in four round trips.
        trips, commands = await cost_of_a_push()
        assert trips == {"boards": 4, "presence": 2} and commands["boards"] == 4 * 5
        # Wool grew: the lifetime, weekly and prestige (its tiebreak is the lifetime) scores
        # of the five farms, one round trip each board; the rate board is left alone.
        clock.advance(2.0)
        trips, commands = await cost_of_a_push()
        assert trips == {"boards": 3 + 4, "presence": 2} and commands["boards"] == 3 * 5 + 4 * 5
