"""Live events through the real server (SQLite, in-process, a fake clock and manual
ticks): schedule, list, cancel, audit, `/config`, the WebSocket `event` messages and
exact production across the boundaries."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from llamawool.api.app import context
from llamawool.engine import Engine
from tests.conftest import API, MakeClient, new_guest
from tests.helpers import FakeClock

from .fairplay import make_admin, ws_connect
from .support import expect_problem, get_farm, ok_json, receive_until


def live(phase: str) -> Any:
    return lambda m: m["type"] == "event" and m["data"].get("kind") == "live_event" and m["data"]["phase"] == phase


async def schedule(client: TestClient, admin: dict[str, Any], status: int = 201, **body: Any) -> dict[str, Any]:
    resp = await client.post(f"{API}/admin/events", json=body, headers=admin["headers"])
    return await ok_json(resp, status)


@pytest.fixture
async def world(make_client: MakeClient, clock: FakeClock) -> tuple[TestClient, dict[str, Any]]:
    client = await make_client(clock=clock, tick=False)
    return client, await make_admin(client)


@dataclass
class Table:
    """A server with manual ticks, an admin, and a player with an open socket."""

    client: TestClient
    admin: dict[str, Any]
    engine: Engine
    player: dict[str, Any]
    ws: aiohttp.ClientWebSocketResponse


@pytest.fixture
async def table(world: tuple[TestClient, dict[str, Any]]) -> AsyncIterator[Table]:
    client, admin = world
    player = await new_guest(client)
    ws = await ws_connect(client, player["access_token"])
    yield Table(client, admin, context(client.server.app).engine, player, ws)
    await ws.close()


async def test_double_wool_runs_exactly_from_start_to_end_and_clients_hear_of_it(
    table: Table, clock: FakeClock
) -> None:
    client, admin, engine, player, ws = table.client, table.admin, table.engine, table.player, table.ws
    t0 = clock.now
    ev = (
        await schedule(
            client, admin, name="Double wool weekend", multiplier=2.0, tiers=None, starts_at=t0 + 10, ends_at=t0 + 110
        )
    )["event"]
    assert ev["status"] == "scheduled" and ev["tiers"] is None and ev["multiplier"] == 2.0
    assert (await receive_until(ws, live("scheduled")))["data"]["event"]["id"] == ev["id"]
    config = await ok_json(await client.get(f"{API}/config"))
    assert [e["id"] for e in config["events"]] == [ev["id"]]

    clock.advance(10.4)  # the tick observes the start 0.4 s late; the boundary is still at t0 + 10
    engine.tick()
    started = await receive_until(ws, live("started"))
    assert started["data"]["event"]["status"] == "running"
    row = engine.residents[player["player"]["id"]].row
    assert engine.table.anchor_time[row] == t0 + 10
    farm = await get_farm(client, player["headers"])
    # the clock reads 1.8e9 s: time itself rounds at 2e-7 s
    assert math.isclose(farm["balances"]["basic"], 0.1 * 10 + 0.2 * 0.4, rel_tol=1e-9, abs_tol=1e-6)
    # first_wool (lifetime >= 1, reached at t0 + 10) unlocks at this tick: +2 % from t0 + 10.4 on
    assert math.isclose(farm["rates"]["basic"], 0.2 * 1.02)

    clock.advance(100.0)  # past the end at t0 + 110
    engine.tick()
    await receive_until(ws, live("ended"))
    farm = await get_farm(client, player["headers"])
    want = 0.1 * 10 + 0.2 * 0.4 + 0.204 * 99.6 + 0.102 * 0.4
    assert math.isclose(farm["balances"]["basic"], want, rel_tol=1e-9, abs_tol=1e-6)
    assert math.isclose(farm["rates"]["basic"], 0.102)
    listed = await ok_json(await client.get(f"{API}/admin/events?include_past=true", headers=admin["headers"]))
    assert [e["status"] for e in listed["events"]] == ["ended"]
    assert (await ok_json(await client.get(f"{API}/admin/events", headers=admin["headers"])))["events"] == []


async def test_cancel_a_running_event_ends_it_at_the_cancel_time_and_a_future_one_never_applies(
    table: Table, clock: FakeClock
) -> None:
    client, admin, engine, player, ws = table.client, table.admin, table.engine, table.player, table.ws
    t0 = clock.now
    running = (
        await schedule(client, admin, name="now", multiplier=3.0, tiers=["basic"], starts_at=t0, ends_at=t0 + 1000)
    )["event"]
    future = (await schedule(client, admin, name="later", multiplier=5.0, starts_at=t0 + 50, ends_at=t0 + 60))["event"]
    assert running["status"] == "running"
    clock.advance(20.0)
    engine.tick()
    resp = await client.delete(f"{API}/admin/events/{running['id']}", headers=admin["headers"])
    cancelled = (await ok_json(resp))["event"]
    assert (
        cancelled["status"] == "cancelled" and cancelled["ends_at"] == t0 + 20 and cancelled["cancelled_at"] == t0 + 20
    )
    assert (await receive_until(ws, live("cancelled")))["data"]["event"]["id"] == running["id"]
    await ok_json(await client.delete(f"{API}/admin/events/{future['id']}", headers=admin["headers"]))
    await expect_problem(
        await client.delete(f"{API}/admin/events/{future['id']}", headers=admin["headers"]), 409, "CONFLICT"
    )
    await expect_problem(await client.delete(f"{API}/admin/events/nope", headers=admin["headers"]), 404, "NOT_FOUND")
    clock.advance(80.0)
    engine.tick()
    farm = await get_farm(client, player["headers"])
    # 20 s at 3 × 0.1, then 80 s at 0.1 × 1.02 (first_wool unlocked at the tick at t0 + 20);
    # the cancelled future window adds nothing
    assert math.isclose(farm["balances"]["basic"], 0.3 * 20 + 0.102 * 80, rel_tol=1e-9, abs_tol=1e-6)
    audit = await ok_json(await client.get(f"{API}/admin/audit", headers=admin["headers"]))
    actions = [(e["action"], e["target"]) for e in audit["entries"]]
    assert ("event.schedule", running["id"]) in actions and ("event.cancel", running["id"]) in actions
    assert ("event.cancel", future["id"]) in actions


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"multiplier": 1.0}, "multiplier"),
        ({"multiplier": 11.0}, "multiplier"),
        ({"multiplier": "2"}, "multiplier"),
        ({"tiers": ["gold"]}, "tiers"),
        ({"tiers": []}, "tiers"),
        ({"name": ""}, "name"),
        ({"starts_at": -3600.0}, "starts_at"),
        ({"ends_at": 0.0}, "ends_at"),
        ({"ends_at": 40 * 86400.0}, "ends_at"),
    ],
)
async def test_bad_events_are_refused_naming_the_field(
    world: tuple[TestClient, dict[str, Any]], clock: FakeClock, patch: dict[str, Any], field: str
) -> None:
    client, admin = world
    body: dict[str, Any] = {"name": "x", "multiplier": 2.0, "starts_at": 100.0, "ends_at": 200.0} | patch
    for key in ("starts_at", "ends_at"):
        body[key] = clock.now + body[key]
    resp = await client.post(f"{API}/admin/events", json=body, headers=admin["headers"])
    problem = await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert field in {e["field"] for e in problem["errors"]}, problem
    assert (await ok_json(await client.get(f"{API}/admin/events", headers=admin["headers"])))["events"] == []


async def test_players_cannot_schedule_or_list_events(world: tuple[TestClient, dict[str, Any]]) -> None:
    client, _ = world
    player = await new_guest(client)
    body = {"name": "x", "multiplier": 2.0, "starts_at": 1e10, "ends_at": 1e10 + 1}
    await expect_problem(
        await client.post(f"{API}/admin/events", json=body, headers=player["headers"]), 403, "FORBIDDEN"
    )
    await expect_problem(await client.get(f"{API}/admin/events", headers=player["headers"]), 403, "FORBIDDEN")
