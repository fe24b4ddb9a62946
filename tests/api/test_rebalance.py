"""Rebalancing sockets (llamawool/api/rebalance.py): who sheds, how many, which.

The arithmetic is pinned down on plain numbers; one replica of a real
in-process server then sheds real sockets (1012, reason "rebalancing") against
a peer's report written into its coordinator, as a peer replica would.
The scale-out and scale-in runs on a real cluster are in
tests/e2e/test_rebalance.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from llamawool.api.app import context, drain
from llamawool.api.context import REBALANCER
from llamawool.api.rebalance import REASON, choose_shed, excess, fair_share, room_elsewhere, sockets_to_shed
from llamawool.coord import ReplicaLoad
from llamawool.settings import Settings
from tests.conftest import API, MakeClient, new_guest

from .support import bearer, receive_json

L = ReplicaLoad
S = Settings(env="test", rebalance_tolerance=0.1, rebalance_min_excess=2, rebalance_step=0.25)


def test_fair_share_leaves_out_draining_replicas() -> None:
    assert fair_share({}) is None
    assert fair_share({"a": L(30), "b": L(30), "c": L(0)}) == 20
    assert fair_share({"a": L(30), "b": L(10), "c": L(50, draining=True)}) == 20
    assert fair_share({"a": L(3, draining=True)}) is None


@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        ({"me": L(30), "b": L(30), "c": L(0)}, 3),  # a new replica: excess 10, a quarter rounded up
        ({"me": L(1000), "b": L(1000), "c": L(0)}, 84),  # excess 333.3: 84 this round, not a herd
        ({"me": L(22), "b": L(22), "c": L(16)}, 0),  # within fair share x 1.1
        ({"me": L(3), "b": L(0)}, 0),  # 1.5 above fair share: below the minimum excess
        ({"me": L(4), "b": L(0)}, 1),  # 2 above: the minimum, one socket
        ({"me": L(50)}, 0),  # alone: nowhere to send anyone
        ({"me": L(50), "b": L(0, draining=True)}, 0),  # the only peer is leaving
        ({"me": L(50, draining=True), "b": L(0)}, 0),  # draining sheds everything anyway, not here
        ({"b": L(0), "c": L(40)}, 0),  # our own report is missing: do nothing blind
        ({"me": L(10), "b": L(30), "c": L(0)}, 0),  # below fair share: only the full ones shed
    ],
)
def test_sockets_to_shed(loads: dict[str, ReplicaLoad], expected: int) -> None:
    assert sockets_to_shed("me", loads, S) == expected


def test_room_elsewhere_needs_a_fresh_reachable_peer_below_fair_share_by_the_minimum() -> None:
    now = 1000.0  # reports measured at `now` unless said otherwise; the interval is 3 s

    def room(loads: dict[str, ReplicaLoad]) -> bool:
        return room_elsewhere("me", {r: replace(load, at=load.at or now) for r, load in loads.items()}, S, now)

    assert room({"me": L(30), "b": L(30), "c": L(1)})
    assert not room({"me": L(30), "b": L(29)})  # fair 29.5: b is 0.5 below
    assert not room({"me": L(30), "b": L(1, draining=True)})
    assert not room({"me": L(1), "b": L(30)})  # only this replica has room
    assert not room({"me": L(30), "b": L(30), "c": L(0)})  # c takes no sockets yet: maybe not routed
    assert not room({"me": L(30), "b": L(30), "c": L(1, at=now - 5)})  # c has not reported for 5 s
    assert excess(30, 20.0, S) == 10
    assert excess(22, 20.0, S) == 0  # within the band


def test_a_step_of_zero_never_sheds_and_a_step_of_one_sheds_only_the_excess() -> None:
    loads = {"me": L(30), "b": L(30), "c": L(0)}
    assert sockets_to_shed("me", loads, S.model_copy(update={"rebalance_step": 0.0})) == 0
    assert sockets_to_shed("me", loads, S.model_copy(update={"rebalance_step": 1.0})) == 10


@dataclass(eq=False)
class FakeSession:
    player_id: str | None
    opened_at: float
    closing: bool = False


def test_sockets_relayed_from_elsewhere_go_first_then_the_oldest() -> None:
    """Oldest first: a socket that just came back through the balancer is not the one moved
    again (shedding the newest would bounce the same few players between replicas)."""
    owned = {"p1", "p2", "p3"}
    sessions = [
        FakeSession("p1", 1.0),
        FakeSession("p2", 5.0),
        FakeSession("x1", 2.0),  # its farm lives on another replica
        FakeSession(None, 9.0),  # not authenticated yet: nothing to move
        FakeSession("p3", 4.0, closing=True),  # already closing
        FakeSession("x2", 3.0),
    ]
    chosen = choose_shed(sessions, 3, lambda pid: pid in owned)  # type: ignore[arg-type]
    assert [s.player_id for s in chosen] == ["x1", "x2", "p1"]
    assert choose_shed(sessions, 0, lambda pid: True) == []  # type: ignore[arg-type]


# ---- one real replica against a peer's report ----------------------------------------------------


@dataclass
class Tab:
    ws: aiohttp.ClientWebSocketResponse
    closed: asyncio.Future[tuple[int, str]]


async def _open_tabs(client: TestClient, n: int) -> list[Tab]:
    tabs = []
    for _ in range(n):
        guest = await new_guest(client)
        ws = await client.ws_connect(f"{API}/ws", headers=bearer(guest["access_token"]))
        assert (await receive_json(ws))["type"] == "welcome"
        closed: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        tabs.append(Tab(ws, closed))
        asyncio.get_running_loop().create_task(_read_until_closed(ws, closed))
    return tabs


async def _read_until_closed(ws: aiohttp.ClientWebSocketResponse, closed: asyncio.Future[tuple[int, str]]) -> None:
    """Read (and so answer the server's close frame) until the socket closes; keep the code and reason."""
    while True:
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.CLOSE:
            closed.set_result((msg.data, msg.extra))
            return
        if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
            closed.set_result((ws.close_code or 0, ""))
            return


async def _replica(make_client: MakeClient, **overrides: Any) -> TestClient:
    return await make_client(tick=False, **{"rebalance_warmup_s": 0.0, "rebalance_step": 1.0, **overrides})


def _metric(client: TestClient, name: str) -> float:
    value = context(client.server.app).metrics.registry.get_sample_value(name)
    return float(value or 0.0)


async def test_a_replica_above_its_share_closes_its_newest_sockets_with_1012(make_client: MakeClient) -> None:
    client = await _replica(make_client)
    c = context(client.server.app)
    rebalancer = client.server.app[REBALANCER]
    tabs = await _open_tabs(client, 8)
    now = c.engine.clock()
    await c.coord.report_load("peer", ReplicaLoad(0), now, 60.0)  # a replica just added, empty

    assert await rebalancer.round() == 0  # an excess must show in two rounds in a row
    assert await rebalancer.round() == 4  # fair share 4: the excess, all of it at step 1.0
    closed = [t for t in tabs if t.closed.done()]
    assert len(closed) == 4
    assert all(t.closed.result() == (1012, REASON) for t in closed)
    assert REASON.startswith("rebalancing")  # what clients (docs/client.md) look for
    assert closed == tabs[:4]  # the oldest four (every farm is owned here)
    assert _metric(client, "llamawool_rebalance_closed_total") == 4
    assert _metric(client, "llamawool_rebalance_fair_share") == 4
    assert _metric(client, "llamawool_replicas_live") == 2
    assert len(c.sessions) == 4

    await c.coord.report_load("peer", ReplicaLoad(4), now, 60.0)  # they reconnected there
    assert await rebalancer.round() == 0
    loads = await c.coord.replica_loads(c.engine.clock())
    assert replace(loads[c.coord.replica_id], at=0.0) == ReplicaLoad(4, 8)  # four sockets, eight farms resident
    for t in tabs[:4]:
        await t.ws.close()


async def test_a_full_replica_turns_new_sockets_away_while_a_peer_has_room(make_client: MakeClient) -> None:
    """The load balancer retries a refused upgrade on the next replica: with round robin, a
    socket shed for rebalancing would otherwise come straight back one time in N."""
    client = await _replica(make_client, rebalance_step=0.25)
    c = context(client.server.app)
    rebalancer = client.server.app[REBALANCER]
    await _open_tabs(client, 8)

    async def peer(load: ReplicaLoad) -> None:
        await c.coord.report_load("peer", replace(load, at=c.engine.clock()), c.engine.clock(), 60.0)

    async def refused() -> bool:
        token = (await new_guest(client))["access_token"]
        try:
            ws = await client.ws_connect(f"{API}/ws", headers=bearer(token))
        except aiohttp.WSServerHandshakeError as exc:
            assert (exc.status, exc.headers["Retry-After"]) == (503, "1")
            return True
        assert (await receive_json(ws))["type"] == "welcome"
        await ws.close()
        return False

    await peer(L(0))  # a peer that no socket has reached yet: maybe not behind the balancer
    await rebalancer.round()  # the first count
    assert await rebalancer.round() == 1  # fair share 4, excess 4: a quarter of it
    assert not await refused()  # 8 here again
    await peer(L(1))  # now it holds a socket: the balancer reaches it
    assert await rebalancer.round() == 1  # counted 7 (the lower of 8 and 7): fair share 4, excess 3
    assert [await refused() for _ in range(4)] == [True, True, True, False]  # at most the excess
    assert _metric(client, "llamawool_rebalance_refused_total") == 3

    await peer(L(8))  # the peer filled up
    await rebalancer.round()
    assert not await refused()  # no peer has room: nobody is turned away


async def test_replicas_of_another_pool_are_not_peers(make_client: MakeClient) -> None:
    """Blue-green: the idle colour reports no sockets, and must not drain the live one."""
    client = await _replica(make_client, rebalance_pool="blue")
    c = context(client.server.app)
    tabs = await _open_tabs(client, 6)
    await c.coord.report_load("green-1", ReplicaLoad(0, pool="green"), c.engine.clock(), 60.0)
    rebalancer = client.server.app[REBALANCER]
    assert [await rebalancer.round() for _ in range(3)] == [0, 0, 0]
    assert not any(t.closed.done() for t in tabs)
    await c.coord.report_load("blue-2", ReplicaLoad(0, pool="blue"), c.engine.clock(), 60.0)
    assert await rebalancer.round() == 3  # the control: a peer of its own pool


async def test_nothing_is_shed_while_warming_up_or_draining(make_client: MakeClient) -> None:
    client = await _replica(make_client, rebalance_warmup_s=3600.0)
    c = context(client.server.app)
    tabs = await _open_tabs(client, 6)
    await c.coord.report_load("peer", ReplicaLoad(0), c.engine.clock(), 60.0)
    rebalancer = client.server.app[REBALANCER]
    for _ in range(3):
        assert await rebalancer.round() == 0  # a replica minutes old does not trust the reports yet
    assert not any(t.closed.done() for t in tabs)

    rebalancer.started_at -= 3600.0  # an hour later: it would shed now...
    c.draining = True  # ...but draining has begun (drain() sets this first, then closes everyone)
    assert await rebalancer.round() == 0
    assert not any(t.closed.done() for t in tabs)
    assert (await c.coord.replica_loads(c.engine.clock()))[c.coord.replica_id].draining
    c.draining = False
    assert await rebalancer.round() == 6 - 3  # the control: the same replica, not draining


async def test_drain_tells_the_peers_at_once(make_client: MakeClient) -> None:
    """Before any rebalancing round: the peers must not wait for a TTL to stop counting it."""
    client = await _replica(make_client)
    c = context(client.server.app)
    await _open_tabs(client, 2)
    await drain(client.server.app)
    assert (await c.coord.replica_loads(c.engine.clock()))[c.coord.replica_id].draining
