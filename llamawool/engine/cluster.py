"""Farm ownership across replicas (docs/replicas.md has the sequence diagrams).

A farm's live state has one owner: the replica holding its lease in the
coordinator. Any replica serves any request: when it does not own the farm,
it asks the owner over the coordinator's point-to-point channel (a small RPC)
or, when the lease has lapsed, takes the lease and loads the farm itself.
Sockets on a replica that does not own their farm are "remote watchers": the
owner forwards that farm's ticks and events to the watcher's replica, which
hands them to its sockets. Each replica keeps a heartbeat, so an owner that
does not answer is told slow (wait, 503) from gone (take its lease now) in one
round trip. Correctness never rests on the lease: every commit
compares-and-sets the revision, so a stale owner is refused and reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from ..coord import Bus, CoordinationUnavailable, Leases
from ..observability import Metrics
from .errors import OwnerBusy, OwnerUnreachable, Rerouted
from .residents import Sink
from .wire import error_from_wire, error_to_wire

log = structlog.get_logger("llamawool.cluster")


class ClusterCoord(Leases, Bus, Protocol):
    """The part of the coordinator a cluster member uses: leases and messages."""


class RemoteSink:
    """A sink standing for the sockets another replica holds for one farm."""

    def __init__(self, cluster: Cluster, replica: str, farm_id: str) -> None:
        self.cluster = cluster
        self.replica = replica
        self.farm_id = farm_id

    def send(self, message: str) -> None:
        self.cluster.forward(self.replica, self.farm_id, message)

    def __hash__(self) -> int:
        return hash((self.replica, self.farm_id))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteSink) and (other.replica, other.farm_id) == (self.replica, self.farm_id)


Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]  # (farm id, wire args with "_from") -> wire result


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """The timings of ownership (`Settings` fields of the same names)."""

    lease_ttl_s: float
    rpc_timeout_s: float
    heartbeat_s: float = 1.0
    heartbeat_ttl_s: float = 5.0
    owner_max_inflight: int = 256
    busy_retry_after_s: float = 1.0


# Operations an owner never sheds when busy: cheap, and refusing them would leave
# state behind (a detach refused keeps forwarding to a socket that is gone).
_NEVER_SHED = frozenset({"detach"})


class Cluster:
    """This replica among its peers: the leases it holds, its heartbeat, requests to and
    from farm owners (`handlers`, by operation name, are the owner's side), and the ticks
    and events forwarded to sockets watching farms owned elsewhere."""

    def __init__(self, coord: ClusterCoord, settings: ClusterSettings, metrics: Metrics) -> None:
        self.coord = coord
        self.me = coord.replica_id
        self.settings = settings
        self.lease_ttl_s = settings.lease_ttl_s
        self.rpc_timeout_s = settings.rpc_timeout_s
        self.metrics = metrics
        self.handlers: dict[str, Handler] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._outbox: dict[str, list[tuple[str, str]]] = {}
        self._flush_scheduled = False
        self.watched: dict[str, set[Sink]] = {}  # farm -> local sockets of a farm owned elsewhere
        self._last_heard: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_renew = 0.0
        self._last_beat = 0.0
        self.serving = 0  # requests from peers being served now
        self.draining = False  # no handovers in: this replica is going away
        self.on_moved: Callable[[str], None] = lambda farm_id: None  # a farm we watch moved owner
        # Farms this replica loaded or kept without a confirmed lease (coordination failed
        # while claiming them, or their lease lapsed unrenewed and was taken again): once
        # coordination works again, and every replica has had a lease TTL to renew and drop
        # what it lost, the engine drops exactly these copies (`resync_due`). Nothing else
        # is suspect: a late reply or one failed call says nothing about the other farms.
        self.unleased: set[str] = set()
        self._resync_at: float | None = None
        self._outage = False  # renewals failed or found lapsed leases: Redis was away (or restarted)
        coord.subscribe(self._on_message)

    @property
    def channel(self) -> str:
        return f"replica:{self.me}"

    # ---- ownership ---------------------------------------------------------------

    async def owner_elsewhere(self, farm_id: str) -> str | None:
        """None when this replica owns the farm (taking a free lease), else the owner:
        one round trip."""
        try:
            holder = await self.coord.claim_lease(farm_id, self.lease_ttl_s)
        except CoordinationUnavailable:
            # No coordination: serve locally; the revision check keeps data safe.
            self._served_unleased(farm_id)
            return None
        mine = holder == self.me
        self.metrics.lease_acquisitions.labels(outcome="taken" if mine else "held_elsewhere").inc()
        if mine:
            self._gained(farm_id)
        return None if mine else holder

    async def owner_silent(self, farm_id: str, owner: str) -> str | None:
        """The owner did not answer in time. One script tells slow from gone: its heartbeat
        is current (alive, slow: raise OwnerBusy, the client retries after a moment; nobody
        polls) or absent (gone: its lease is ours at once, no waiting for the TTL). Returns
        the holder to ask now (None: this replica). Taking over early is safe because
        every commit compares-and-sets the revision (docs/replicas.md "Fencing")."""
        try:
            holder = await self.coord.take_over_lease(farm_id, owner, self.lease_ttl_s)
        except CoordinationUnavailable:
            self._served_unleased(farm_id)
            return None
        if holder == self.me:
            self._gained(farm_id)
            self.metrics.lease_acquisitions.labels(outcome="taken_over").inc()
            log.warning("cluster.took_over", farm_id=farm_id, owner=owner)
            return None
        if holder == owner:
            raise OwnerBusy(owner, self.settings.busy_retry_after_s)
        return holder

    async def hand_over(self, farm_id: str, to: str) -> bool:
        """Move our lease of the farm to replica `to` (the caller holds the farm's lock)."""
        try:
            moved = await self.coord.hand_over_lease(farm_id, to, self.lease_ttl_s)
        except CoordinationUnavailable:
            return False
        if moved:
            self.metrics.handovers.labels(direction="out").inc()
        return moved

    def handed_in(self, farm_id: str) -> None:
        """The farm's owner handed it to us (its lease is ours)."""
        self.metrics.handovers.labels(direction="in").inc()
        self._gained(farm_id)

    def renew_due(self) -> bool:
        return time.monotonic() - self._last_renew >= self.lease_ttl_s / 3

    async def renew(self, farm_ids: list[str]) -> list[str]:
        """Renew our leases (every third of their TTL); return the farms we lost."""
        self._last_renew = time.monotonic()
        try:
            renewal = await self.coord.renew_leases(farm_ids, self.lease_ttl_s)
        except CoordinationUnavailable:
            self._outage = True
            return []
        # A lease that lapsed before we renewed it was free for a while: another replica
        # may have served the farm meanwhile, so our copy is as suspect as an unleased one.
        lapsed = [f for f in renewal.retaken if f not in self.unleased]  # we thought them leased
        self.unleased.update(renewal.retaken)
        self._outage = bool(lapsed) or (self._outage and bool(self.unleased))
        if self.unleased and self._resync_at is None:
            self._resync_at = time.monotonic() + self.lease_ttl_s
        return renewal.lost

    def _gained(self, farm_id: str) -> None:
        """A lease became ours. While a resync after an outage is pending (our renewals
        failed, or found leases lapsed: Redis was away or restarted and lost every lease
        and heartbeat), another replica may still serve this farm from a copy it kept
        without a lease until its next renewal tells it so: what we load now may be
        overtaken, so it is reloaded with the rest. One timed-out call is no outage."""
        if self._outage and self.unleased:
            self.unleased.add(farm_id)

    def _served_unleased(self, farm_id: str) -> None:
        self.metrics.lease_acquisitions.labels(outcome="unavailable").inc()
        self.unleased.add(farm_id)
        self._resync_at = None  # coordination is failing now: count from when it works again

    def resync_due(self) -> list[str]:
        """The farms to drop and reload: those served without a lease, once a lease TTL has
        passed since renewals worked again; [] until then."""
        if self._resync_at is None or time.monotonic() < self._resync_at:
            return []
        farms, self.unleased = sorted(self.unleased), set()
        self._resync_at = None
        self._outage = False
        return farms

    async def release(self, farm_id: str) -> None:
        with contextlib.suppress(CoordinationUnavailable):
            await self.coord.release_lease(farm_id)

    def beat_due(self) -> bool:
        return time.monotonic() - self._last_beat >= self.settings.heartbeat_s

    async def beat(self) -> None:
        """This replica is alive: peers that find it slow wait instead of taking its farms."""
        self._last_beat = time.monotonic()
        with contextlib.suppress(CoordinationUnavailable):
            await self.coord.beat(self.settings.heartbeat_ttl_s)

    async def end_beat(self) -> None:
        with contextlib.suppress(CoordinationUnavailable):
            await self.coord.end_beat()

    # ---- request / reply ------------------------------------------------------------

    async def call(self, owner: str, op: str, farm_id: str, args: dict[str, Any]) -> Any:
        rid = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        started = time.perf_counter()
        outcome = "timeout"
        try:
            await self.coord.send(
                owner, {"k": "req", "id": rid, "from": self.me, "op": op, "farm": farm_id, "args": args}
            )
            async with asyncio.timeout(self.rpc_timeout_s):
                reply = await fut
            outcome = "ok"
            if "error" in reply:
                error = error_from_wire(reply["error"])
                outcome = {OwnerBusy: "busy", Rerouted: "rerouted"}.get(type(error), "error")
                raise error
            return reply.get("ok")
        except TimeoutError:
            raise OwnerUnreachable(owner) from None
        except CoordinationUnavailable:
            outcome = "error"
            raise OwnerUnreachable(owner) from None
        finally:
            self._pending.pop(rid, None)
            self.metrics.rpc.labels(op=op, outcome=outcome).inc()
            self.metrics.coordination_duration.labels(operation="rpc").observe(time.perf_counter() - started)

    def _on_message(self, channel: str, message: dict[str, Any]) -> None:
        if channel != self.channel:
            return
        kind = message.get("k")
        if kind == "rep":
            fut = self._pending.get(message.get("id", ""))
            if fut is not None and not fut.done():
                fut.set_result(message)
        elif kind == "req":
            self._spawn(self._serve(message))
        elif kind == "fwd":
            for farm_id, text in message.get("m", []):
                self._last_heard[farm_id] = time.monotonic()
                for sink in list(self.watched.get(farm_id, ())):
                    sink.send(text)
        elif kind == "moved":
            farm_id = str(message.get("farm", ""))
            if message.get("to") == self.me:
                self.handed_in(farm_id)
            if farm_id in self.watched:
                self.on_moved(farm_id)

    async def _serve(self, req: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"k": "rep", "id": req["id"]}
        op = req.get("op", "")
        handler = self.handlers.get(op)
        shed = self.serving >= self.settings.owner_max_inflight and op not in _NEVER_SHED
        self.serving += 1
        try:
            if handler is None:
                raise ValueError(f"unknown op {op!r}")
            if shed:
                # Answer at once rather than queue: a caller that times out waiting presumes
                # us slow and its client waits longer for the same 503.
                raise OwnerBusy(self.me, self.settings.busy_retry_after_s)
            reply["ok"] = await handler(req["farm"], {**req.get("args", {}), "_from": req["from"]})
        except Exception as exc:  # every failure goes back to the caller, typed
            reply["error"] = error_to_wire(exc)
        finally:
            self.serving -= 1
        with contextlib.suppress(CoordinationUnavailable):
            await self.coord.send(req["from"], reply)

    def tell_moved(self, replica: str, farm_id: str, pushed_to: str | None = None) -> None:
        """Replica `replica` watches a farm that just moved: it attaches again at once
        (`pushed_to`: the replica the farm was handed to, which now holds its lease)."""
        self._spawn(self._send_quietly(replica, {"k": "moved", "farm": farm_id, "to": pushed_to}))

    async def _send_quietly(self, replica: str, message: dict[str, Any]) -> None:
        with contextlib.suppress(CoordinationUnavailable):
            await self.coord.send(replica, message)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- forwarding ticks and events to watchers --------------------------------------

    def forward(self, replica: str, farm_id: str, message: str) -> None:
        self._outbox.setdefault(replica, []).append((farm_id, message))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(lambda: self._spawn(self._flush()))

    async def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        for replica, items in outbox.items():
            with contextlib.suppress(CoordinationUnavailable):
                await self.coord.send(replica, {"k": "fwd", "m": items})

    def heard(self, farm_id: str) -> None:
        self._last_heard[farm_id] = time.monotonic()

    def unwatch(self, farm_id: str, sink: Sink) -> int:
        """`sink` no longer watches the farm from here; how many sockets still do."""
        watchers = self.watched.get(farm_id)
        if watchers is None:
            return 0
        watchers.discard(sink)
        if not watchers:
            del self.watched[farm_id]
        return len(watchers)

    def watched_sockets(self) -> int:
        return sum(len(sinks) for sinks in self.watched.values())

    def silent_farms(self, silence_s: float) -> list[str]:
        now = time.monotonic()
        return [f for f in self.watched if now - self._last_heard.get(f, 0.0) > silence_s]
