"""Farm ownership across replicas (docs/replicas.md has the sequence diagrams).

A farm's live state has one owner: the replica holding its lease in the
coordinator. Any replica serves any request: when it does not own the farm,
it asks the owner over the coordinator's point-to-point channel (a small RPC)
or, when the lease has lapsed, takes the lease and loads the farm itself.
Sockets on a replica that does not own their farm are "remote watchers": the
owner forwards that farm's ticks and events to the watcher's replica, which
hands them to its sockets. Correctness never rests on the lease: every commit
compares-and-sets the revision, so a stale owner is refused and reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import structlog

from ..coord import Bus, CoordinationUnavailable, Leases
from .errors import OwnerUnreachable
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


class Cluster:
    """This replica among its peers: the leases it holds, requests to and from farm
    owners (`handlers`, by operation name, are the owner's side), and the ticks and
    events forwarded to sockets watching farms owned elsewhere."""

    def __init__(self, coord: ClusterCoord, lease_ttl_s: float, rpc_timeout_s: float) -> None:
        self.coord = coord
        self.me = coord.replica_id
        self.lease_ttl_s = lease_ttl_s
        self.rpc_timeout_s = rpc_timeout_s
        self.handlers: dict[str, Handler] = {}
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._outbox: dict[str, list[tuple[str, str]]] = {}
        self._flush_scheduled = False
        self.watched: dict[str, set[Sink]] = {}  # farm -> local sockets of a farm owned elsewhere
        self._last_heard: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_renew = 0.0
        # Coordination failed: farms were served here without a lease. Once it is back
        # (and every replica has had a lease TTL to renew and drop what it lost), the
        # engine drops its copies and reloads them (`resync_due`).
        self._unsure = False
        self._resync_at: float | None = None
        coord.subscribe(self._on_message)

    @property
    def channel(self) -> str:
        return f"replica:{self.me}"

    # ---- ownership ---------------------------------------------------------------

    async def owner_elsewhere(self, farm_id: str) -> str | None:
        """None when this replica owns the farm (taking a free lease), else the owner."""
        try:
            if await self.coord.acquire_lease(farm_id, self.lease_ttl_s):
                return None
            owner = await self.coord.lease_owner(farm_id)
        except CoordinationUnavailable:
            # No coordination: serve locally; the revision check keeps data safe.
            self._coordination_failed()
            return None
        return None if owner in (None, self.me) else owner

    async def wait_for_lapse(self, farm_id: str, owner: str) -> None:
        """The owner did not answer: a dead owner's lease lapses within its TTL and
        we take it. When it is still renewed (the owner is alive but slow) or
        someone else took it, return and let the caller route again."""
        deadline = time.monotonic() + self.lease_ttl_s + self.rpc_timeout_s
        while time.monotonic() < deadline:
            try:
                if await self.coord.acquire_lease(farm_id, self.lease_ttl_s):
                    return
                if await self.coord.lease_owner(farm_id) not in (owner, None):
                    return  # a new owner: ask it
            except CoordinationUnavailable:
                self._coordination_failed()
                return
            await asyncio.sleep(min(0.5, self.lease_ttl_s / 10))
        log.warning("cluster.owner_slow", farm_id=farm_id, owner=owner)

    def renew_due(self) -> bool:
        return time.monotonic() - self._last_renew >= self.lease_ttl_s / 3

    async def renew(self, farm_ids: list[str]) -> list[str]:
        """Renew our leases (every third of their TTL); return the farms we lost."""
        self._last_renew = time.monotonic()
        try:
            lost = await self.coord.renew_leases(farm_ids, self.lease_ttl_s)
        except CoordinationUnavailable:
            self._coordination_failed()
            return []
        if self._unsure and self._resync_at is None:
            self._resync_at = time.monotonic() + self.lease_ttl_s
        return lost

    def _coordination_failed(self) -> None:
        self._unsure = True
        self._resync_at = None

    def resync_due(self) -> bool:
        """True once, a lease TTL after renewals work again following a coordination failure."""
        if self._resync_at is None or time.monotonic() < self._resync_at:
            return False
        self._unsure = False
        self._resync_at = None
        return True

    async def release(self, farm_id: str) -> None:
        with contextlib.suppress(CoordinationUnavailable):
            await self.coord.release_lease(farm_id)

    # ---- request / reply ------------------------------------------------------------

    async def call(self, owner: str, op: str, farm_id: str, args: dict[str, Any]) -> Any:
        rid = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self.coord.send(
                owner, {"k": "req", "id": rid, "from": self.me, "op": op, "farm": farm_id, "args": args}
            )
            async with asyncio.timeout(self.rpc_timeout_s):
                reply = await fut
        except (TimeoutError, CoordinationUnavailable):
            raise OwnerUnreachable(owner) from None
        finally:
            self._pending.pop(rid, None)
        if "error" in reply:
            raise error_from_wire(reply["error"])
        return reply.get("ok")

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

    async def _serve(self, req: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"k": "rep", "id": req["id"]}
        handler = self.handlers.get(req.get("op", ""))
        try:
            if handler is None:
                raise ValueError(f"unknown op {req.get('op')!r}")
            reply["ok"] = await handler(req["farm"], {**req.get("args", {}), "_from": req["from"]})
        except Exception as exc:  # every failure goes back to the caller, typed
            reply["error"] = error_to_wire(exc)
        with contextlib.suppress(CoordinationUnavailable):
            await self.coord.send(req["from"], reply)

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

    def silent_farms(self, silence_s: float) -> list[str]:
        now = time.monotonic()
        return [f for f in self.watched if now - self._last_heard.get(f, 0.0) > silence_s]
