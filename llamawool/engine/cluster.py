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
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import structlog

from ..coord import CoordinationUnavailable, Coordinator
from ..game import Action, BuyBuilding, BuyUpgrade, GameError, Prestige, Shear
from ..game import errors as game_errors
from ..store import StorageUnavailable

if TYPE_CHECKING:
    from .engine import Engine, Sink

log = structlog.get_logger("llamawool.cluster")

_ACTIONS: dict[str, type[Any]] = {c.__name__: c for c in (Shear, BuyBuilding, BuyUpgrade, Prestige)}
_GAME_ERRORS: dict[str, type[GameError]] = {
    cls.code: cls
    for cls in (
        game_errors.InsufficientResources,
        game_errors.RequirementNotMet,
        game_errors.UnknownItem,
        game_errors.ActionConflict,
        game_errors.InvalidAction,
    )
}


class OwnerUnreachable(Exception):
    """The lease holder did not answer in time."""


class Rerouted(Exception):
    """The asked replica does not own the farm (any more): route again."""


class RemoteError(Exception):
    """The owner raised an error that has no local type; carried by name."""

    def __init__(self, kind: str, detail: str, extra: dict[str, Any]) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.extra = extra


def action_to_wire(action: Action) -> dict[str, Any]:
    return {"t": type(action).__name__, **asdict(action)}


def action_from_wire(d: dict[str, Any]) -> Action:
    cls = _ACTIONS[d.pop("t")]
    action: Action = cls(**d)
    return action


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, GameError):
        return {"kind": "game", "code": exc.code, "detail": exc.detail, "extra": exc.extra}
    extra: dict[str, Any] = {}
    for name in ("reasons", "current_revision", "key"):
        if hasattr(exc, name):
            extra[name] = getattr(exc, name)
    return {"kind": type(exc).__name__, "detail": str(exc), "extra": extra}


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


Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]


class Cluster:
    def __init__(self, engine: Engine, coord: Coordinator, lease_ttl_s: float, rpc_timeout_s: float) -> None:
        self.engine = engine
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
            raise self._error(reply["error"])
        return reply.get("ok")

    def _error(self, e: dict[str, Any]) -> BaseException:
        from .engine import IdempotencyMismatch, PlayerGone, SaveRejected, SaveStale

        kind = e["kind"]
        extra = e.get("extra") or {}
        if kind == "game":
            cls = _GAME_ERRORS.get(e["code"], GameError)
            return cls(e["detail"], **extra)
        if kind == "StorageUnavailable":
            return StorageUnavailable(e["detail"])
        if kind == "SaveStale":
            return SaveStale(int(extra.get("current_revision", 0)))
        if kind == "SaveRejected":
            return SaveRejected(list(extra.get("reasons", [])))
        if kind == "PlayerGone":
            return PlayerGone(e["detail"])
        if kind == "IdempotencyMismatch":
            return IdempotencyMismatch(e["detail"])
        if kind == "KeyError":
            return KeyError(e["detail"])
        if kind == "Rerouted":
            return Rerouted(e["detail"])
        return RemoteError(kind, e["detail"], extra)

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
