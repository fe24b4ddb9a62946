"""The cost budget (docs/scaling.md "Cost budget"), counted by the server itself:
what an action costs the store, on SQLite and on MongoDB, read from /metrics
(`llamawool_store_ops_total{op}`)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from llamawool.api.app import context
from tests.conftest import API, MakeClient, new_guest
from tests.mongo_server import shared_server

from .support import get_farm, ok_json

STORES = ("sqlite", "mongo")


@pytest.fixture(params=STORES)
async def served(request: pytest.FixtureRequest, make_client: MakeClient) -> AsyncIterator[TestClient]:
    """A server (ticking, as in production) on SQLite or on MongoDB (a database of its own)."""
    if request.param == "sqlite":
        yield await make_client()
        return
    uri = f"{shared_server().uri}costs_{uuid.uuid4().hex[:12]}"
    client = await make_client(mongodb_uri=uri)
    try:
        yield client
    finally:
        mongo: Any = context(client.server.app).store  # reads through to the MongoStore
        await mongo.client.drop_database(mongo.db.name)


async def store_ops(client: TestClient) -> dict[str, float]:
    """`llamawool_store_ops_total` by op, from /metrics as an operator sees it."""
    text = await (await client.get("/metrics")).text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "llamawool_store_ops":
            for sample in family.samples:
                if sample.name == "llamawool_store_ops_total":
                    out[sample.labels["op"]] = sample.value
    return out


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
