"""Farm ownership across replicas, deterministically, in one process (docs/replicas.md).

Three engines share one SQLite store and a coordinator network made of
`LocalCoordinator`s that share their leases and heartbeats and carry messages
to each other (`Net`). The network can make a replica deaf (a paused or dead
process hears nothing) and make a lease claim fail (Redis timed out), so each
rule is checked without real time standing in for synchronisation:

- a slow owner (heartbeat current) is answered 503 + Retry-After after one
  timeout, with one lease claim and one takeover check and no polling; a gone
  one (no heartbeat) loses its lease at once and nothing it acknowledged is lost;
- an owner with a full queue answers "busy" at once instead of making callers
  time out;
- after coordination fails for one farm, only that farm is dropped and reloaded;
- a farm follows its player's socket (handover) unless a socket of it is on its
  owner or the owner is draining; an action waiting on the old owner lands on
  the new one; a connection costs one lease claim and one farm load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from llamawool.coord import CoordinationUnavailable, LocalCoordinator
from llamawool.engine import Engine
from llamawool.engine.errors import OwnerBusy
from llamawool.game import Shear
from llamawool.observability import Metrics
from llamawool.settings import Settings, load_rules
from llamawool.store import PlayerRecord, SQLiteStore, Store
from tests.helpers import CollectingSink, FakeClock, logs_go_nowhere  # noqa: F401 (an autouse fixture)

RULES = load_rules()
T0 = 1_800_000_000.0
RPC_TIMEOUT_S = 0.3


class Net:
    """What replicas share through Redis: leases, heartbeats and point-to-point messages."""

    def __init__(self) -> None:
        self.coords: dict[str, PeerCoordinator] = {}
        self.leases: dict[str, str] = {}
        self.beats: dict[str, float] = {}
        self.deaf: set[str] = set()  # replicas that hear nothing (paused or dead)


class PeerCoordinator(LocalCoordinator):
    """A LocalCoordinator that is one replica among others on `net`, logging its lease calls."""

    def __init__(self, net: Net) -> None:
        super().__init__(None)
        self.net = net
        self._leases = net.leases
        self._beats = net.beats
        net.coords[self.replica_id] = self
        self.lease_calls: list[str] = []
        self.failing: set[str] = set()  # farms whose lease calls time out

    def _call(self, name: str, farm_id: str) -> None:
        self.lease_calls.append(name)
        if farm_id in self.failing:
            raise CoordinationUnavailable("redis: timed out")

    async def acquire_lease(self, farm_id: str, ttl_s: float) -> bool:
        self._call("acquire", farm_id)
        return self._leases.setdefault(farm_id, self.replica_id) == self.replica_id

    async def claim_lease(self, farm_id: str, ttl_s: float) -> str:
        self._call("claim", farm_id)
        return await super().claim_lease(farm_id, ttl_s)

    async def take_over_lease(self, farm_id: str, silent: str, ttl_s: float) -> str:
        self._call("take_over", farm_id)
        return await super().take_over_lease(farm_id, silent, ttl_s)

    async def lease_owner(self, farm_id: str) -> str | None:
        self._call("owner", farm_id)
        return self._leases.get(farm_id)

    async def send(self, replica_id: str, message: dict[str, Any]) -> None:
        if replica_id not in self.net.deaf:
            await self.net.coords[replica_id].publish(f"replica:{replica_id}", message)


class MeteredStore:
    """The real store, counting farm loads."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.loads: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def load_farm(self, player_id: str) -> Any:
        self.loads.append(player_id)
        return await self.inner.load_farm(player_id)


class Replica:
    def __init__(self, engine: Engine, coord: PeerCoordinator, store: MeteredStore) -> None:
        self.engine = engine
        self.coord = coord
        self.store = store
        self.id = coord.replica_id

    def count(self, name: str, **labels: str) -> float:
        return self.engine.metrics.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def cluster(tmp_path: Path, n: int = 2, **overrides: Any) -> AsyncIterator[tuple[Net, list[Replica]]]:
    net = Net()
    store = SQLiteStore(tmp_path / "farms.sqlite3", synchronous="NORMAL")
    await store.open()
    for pid in ("p1", "p2", "p3"):
        await store.create_player(PlayerRecord(id=pid, username=f"u_{pid}", created_at=T0))
    fields: dict[str, Any] = {"lease_ttl_s": 60.0, "rpc_timeout_s": RPC_TIMEOUT_S, **overrides}
    settings = Settings(env="test", data_dir=tmp_path, sqlite_synchronous="NORMAL", **fields)
    clock = FakeClock(T0)
    replicas = []
    async with AsyncExitStack() as stack:
        for _ in range(n):
            coord = PeerCoordinator(net)
            metered = MeteredStore(store)
            engine = Engine(RULES, metered, settings, Metrics(), clock=clock, coord=coord)
            await engine.start(tick=False)
            stack.push_async_callback(engine.stop)
            replicas.append(Replica(engine, coord, metered))
        try:
            yield net, replicas
        finally:
            net.deaf.clear()
    await store.close()


async def until(cond: Callable[[], bool], within_s: float = 5.0) -> None:
    """Let the event loop run until `cond` holds (messages between replicas are tasks)."""
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


def shears(reply_body: bytes) -> int:
    return int(orjson.loads(reply_body)["farm"]["stats"]["shears"])


# ---- a slow owner is not a dead owner --------------------------------------------------------------------


async def test_a_slow_owner_answers_busy_after_one_timeout_and_nobody_polls_its_lease(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (net, (a, b)):
        await a.engine.touch("p1")
        net.deaf.add(a.id)  # paused: hears nothing, but its heartbeat is current
        b.coord.lease_calls.clear()
        started = time.monotonic()
        with pytest.raises(OwnerBusy) as busy:
            await b.engine.submit("p1", Shear(1))
        elapsed = time.monotonic() - started
        assert elapsed < RPC_TIMEOUT_S + 1.0, elapsed  # one timeout, then an answer
        assert busy.value.retry_after_s == 1
        assert b.coord.lease_calls == ["claim", "take_over"]  # one round trip tells slow from gone
        assert net.leases["p1"] == a.id  # the owner keeps its farm
        assert "p1" not in b.engine.residents and "p1" in a.engine.residents
        assert b.count("llamawool_rpc_total", op="submit", outcome="timeout") == 1

        net.deaf.clear()  # it wakes up: the same request works, forwarded
        reply = await b.engine.submit("p1", Shear(1))
        assert reply.status == 200 and shears(reply.body) >= 1
        assert b.count("llamawool_forwarded_actions_total") == 1
        assert "p1" in a.engine.residents  # nothing was dropped


async def test_a_gone_owner_loses_its_farm_at_once_with_every_acknowledged_action(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (net, (a, b)):
        first = await a.engine.submit("p1", Shear(3))
        assert first.status == 200
        net.deaf.add(a.id)
        del net.beats[a.id]  # killed: no heartbeat any more (its lease still has 60 s to run)
        started = time.monotonic()
        reply = await b.engine.submit("p1", Shear(2))
        assert time.monotonic() - started < RPC_TIMEOUT_S + 1.0  # not the lease TTL
        assert shears(reply.body) == shears(first.body) + 2
        assert net.leases["p1"] == b.id
        assert b.count("llamawool_lease_acquisitions_total", outcome="taken_over") == 1


async def test_an_owner_with_a_full_queue_answers_busy_at_once(tmp_path: Path) -> None:
    async with cluster(tmp_path, owner_max_inflight=1) as (_, (a, b)):
        await a.engine.touch("p1")
        await a.engine.touch("p2")
        held = a.engine.residents["p1"].lock
        await held.acquire()  # an action on p1 is mid-flight on the owner
        waiting = asyncio.ensure_future(b.engine.submit("p1", Shear(1)))
        await until(lambda: a.engine.cluster.serving == 1)
        started = time.monotonic()
        with pytest.raises(OwnerBusy):
            await b.engine.submit("p2", Shear(1))
        assert time.monotonic() - started < RPC_TIMEOUT_S / 2  # answered, not timed out
        assert b.count("llamawool_rpc_total", op="submit", outcome="busy") == 1
        held.release()
        assert (await waiting).status == 200


async def test_only_farms_served_without_a_lease_are_dropped_when_coordination_returns(tmp_path: Path) -> None:
    async with cluster(tmp_path, n=1, lease_ttl_s=0.05) as (_, (a,)):
        sink = CollectingSink()
        await a.engine.attach("p1", sink)  # leased normally
        a.coord.failing.add("p2")  # one Redis call times out: p2 is served without a lease
        await a.engine.touch("p2")
        a.coord.failing.clear()
        await a.engine.ticker._renew_leases()  # coordination works again
        await a.engine.touch("p3")  # a farm loaded meanwhile, under a lease
        await asyncio.sleep(0.06)  # a lease TTL passes: every replica has renewed since
        await a.engine.ticker._renew_leases()
        assert "p2" not in a.engine.residents  # dropped, reloads under a lease when next used
        assert "p1" in a.engine.residents and "p3" in a.engine.residents  # untouched
        assert sink in a.engine.residents["p1"].sinks  # its socket keeps its ticks
        a.engine.tick()
        assert sink.ticks()


async def test_after_redis_lost_every_lease_farms_gained_before_the_resync_reload_too(tmp_path: Path) -> None:
    """Redis restarted empty: our leases lapsed (another replica may have served those
    farms), and a farm we claim now may still be served by a replica that kept a copy
    without a lease until its next renewal: both reload; nothing else does."""
    async with cluster(tmp_path, n=1, lease_ttl_s=0.05) as (net, (a,)):
        await a.engine.touch("p1")
        net.leases.clear()  # Redis restarted with nothing
        await a.engine.ticker._renew_leases()  # p1's lease had lapsed: taken again
        await a.engine.touch("p2")
        await asyncio.sleep(0.06)
        await a.engine.ticker._renew_leases()
        assert "p1" not in a.engine.residents and "p2" not in a.engine.residents
        await a.engine.touch("p3")  # after the resync: nothing pending
        await a.engine.ticker._renew_leases()
        assert "p3" in a.engine.residents


# ---- farms follow their players --------------------------------------------------------------------------


async def test_a_socket_on_another_replica_takes_the_farm_over(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (net, (a, b)):
        acted = await a.engine.submit("p1", Shear(2))  # a REST call landed on a
        a.store.loads.clear()
        b.coord.lease_calls.clear()
        sink = CollectingSink()
        state, _ = await b.engine.attach("p1", sink)
        assert state.stats.shears == shears(acted.body)
        assert net.leases["p1"] == b.id
        assert "p1" not in a.engine.residents
        assert sink in b.engine.residents["p1"].sinks and not b.engine.cluster.watched
        assert a.count("llamawool_handovers_total", direction="out") == 1
        assert b.count("llamawool_handovers_total", direction="in") == 1
        # the connection cost one lease claim and one farm load on b, no other read
        assert b.coord.lease_calls == ["claim"] and b.store.loads == ["p1"] and a.store.loads == []
        snap = await a.store.get_snapshot("p1", state.revision)
        assert snap is not None  # a's history snapshot was written before it let go
        b.engine.tick()
        assert sink.ticks()

        # REST on a is forwarded to the new owner; a one-off request moves nothing
        reply = await a.engine.submit("p1", Shear(1))
        assert shears(reply.body) == state.stats.shears + 1
        assert b.engine.residents["p1"].state.stats.shears == state.stats.shears + 1
        assert "p1" not in a.engine.residents and net.leases["p1"] == b.id


async def test_when_the_owners_last_socket_closes_the_farm_goes_to_a_watching_replica(tmp_path: Path) -> None:
    """A player reconnecting lands on another replica while the old socket closes: the
    farm follows a socket that is left instead of being relayed to it for good; the
    other watching replicas are told and watch the new owner."""
    async with cluster(tmp_path, n=3) as (net, (a, b, c)):
        on_a, on_b, on_c = CollectingSink(), CollectingSink(), CollectingSink()
        await a.engine.attach("p1", on_a)
        await b.engine.attach("p1", on_b)  # a socket on a: b and c watch
        await c.engine.attach("p1", on_c)
        assert net.leases["p1"] == a.id
        a.engine.detach("p1", on_a)
        new, other = sorted((b, c), key=lambda r: r.id)  # the first watching replica takes it
        mine, theirs = (on_b, on_c) if new is b else (on_c, on_b)
        await until(lambda: "p1" in new.engine.residents and mine in new.engine.residents["p1"].sinks)
        assert net.leases["p1"] == new.id and "p1" not in a.engine.residents
        assert not new.engine.cluster.watched
        assert a.count("llamawool_handovers_total", direction="out") == 1
        assert new.count("llamawool_handovers_total", direction="in") == 1
        await until(lambda: any(getattr(s, "replica", None) == other.id for s in new.engine.residents["p1"].sinks))
        new.engine.tick()
        assert mine.ticks()
        await until(lambda: bool(theirs.ticks()))


async def test_a_farm_with_a_socket_on_its_owner_stays_and_is_watched(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (net, (a, b)):
        await a.engine.attach("p1", CollectingSink())
        sink = CollectingSink()
        await b.engine.attach("p1", sink)
        assert net.leases["p1"] == a.id  # no ping-pong between two sockets
        assert sink in b.engine.cluster.watched["p1"]
        a.engine.tick()
        await until(lambda: bool(sink.ticks()))
        b.engine.tick()
        assert b.count("llamawool_remote_watched_sockets") == 1


async def test_a_draining_owner_hands_nothing_over(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (net, (a, b)):
        await a.engine.touch("p1")
        a.engine.begin_drain()
        await b.engine.attach("p1", CollectingSink())
        assert net.leases["p1"] == a.id
        assert a.count("llamawool_handovers_total", direction="out") == 0


async def test_an_action_waiting_on_the_old_owner_lands_on_the_new_one(tmp_path: Path) -> None:
    """The handover and an action both wait for the farm's lock on the old owner; the
    handover goes first. The action must not reload the farm on the old owner (which
    no longer holds its lease) but be sent to the new one."""
    async with cluster(tmp_path) as (net, (a, b)):
        await a.engine.touch("p1")
        lock = a.engine.residents["p1"].lock
        await lock.acquire()
        attaching = asyncio.ensure_future(b.engine.attach("p1", CollectingSink()))
        await until(lambda: len(lock._waiters or ()) == 1)
        acting = asyncio.ensure_future(a.engine.submit("p1", Shear(4)))
        await until(lambda: len(lock._waiters or ()) == 2)
        lock.release()
        await attaching
        reply = await acting
        assert reply.status == 200
        assert net.leases["p1"] == b.id
        assert "p1" not in a.engine.residents  # not reloaded where it no longer belongs
        assert b.engine.residents["p1"].state.stats.shears == shears(reply.body)
        stored = await a.store.load_farm("p1")
        assert stored is not None and stored.revision == b.engine.residents["p1"].state.revision


async def test_a_connection_to_a_free_farm_costs_one_lease_claim_and_one_load(tmp_path: Path) -> None:
    async with cluster(tmp_path, n=1) as (_, (a,)):
        a.coord.lease_calls.clear()
        await a.engine.attach("p1", CollectingSink())
        assert a.coord.lease_calls == ["claim"]
        assert a.store.loads == ["p1"]
