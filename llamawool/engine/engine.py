"""The live engine: resident farms, the one entry point for actions, the tick loop.

Every change to a farm (a player's action, a return from offline, a threshold a
tick detected, going offline) runs through `_change` under the farm's lock:
game rules compute the new state, the group committer makes it durable, and
only then does the resident copy (and its numpy row) move on and the caller
hear back. Passive production needs no writes: it is anchor + rate x dt.

May import `game`, `store` (interfaces), `coord` (interfaces), settings and
observability; never `api`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

import orjson
import structlog

from ..coord import Coordinator, LocalCoordinator
from ..game import Action, Event, FarmState, Outcome, Rules, apply_action
from ..game.saves import ClaimedFarm, apply_save, check_save
from ..observability import Metrics
from ..settings import Settings
from ..store import FarmCommit, IdempotencyRecord, Snapshot, StorageUnavailable, Store
from .boards import BoardFeed
from .cluster import Cluster, OwnerUnreachable, RemoteSink, Rerouted, action_from_wire, action_to_wire
from .commit import GroupCommitter
from .saves import verify as verify_save
from .table import FarmTable
from .views import farm_view, tick_message

log = structlog.get_logger("llamawool.engine")
T = TypeVar("T")
PRUNE_EVERY_S = 3600.0  # how often old idempotency records are forgotten
AUTOSAVE_CHUNK = 100  # snapshots per store write in an autosave (see Engine.autosave)


class Sink(Protocol):
    """A connection that receives a farm's messages without blocking the engine."""

    def send(self, message: str) -> None: ...


class PlayerGone(Exception):
    """The farm's player no longer exists (account deleted)."""


class IdempotencyMismatch(Exception):
    """An Idempotency-Key was reused with a different request."""


class SaveStale(Exception):
    """The upload's base revision is older than the farm's last player change."""

    def __init__(self, current_revision: int) -> None:
        super().__init__(current_revision)
        self.current_revision = current_revision


class SaveRejected(Exception):
    """The upload is implausible; `reasons` says why, item by item."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class FarmConflict(Exception):
    """The stored farm moved on under us (another owner committed); it was reloaded."""


@dataclass(slots=True)
class Reply:
    """An action's answer, as the client sees it (also what an idempotent replay returns)."""

    status: int
    body: bytes
    revision: int
    replayed: bool = False


@dataclass(slots=True)
class IdempotentRequest:
    key: str
    fingerprint: str

    @classmethod
    def of(cls, key: str, action: Action) -> IdempotentRequest:
        digest = hashlib.sha256(repr(action).encode()).hexdigest()
        return cls(key, digest)


@dataclass(eq=False, slots=True)
class Resident:
    player_id: str
    state: FarmState
    row: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sinks: set[Sink] = field(default_factory=set)
    snapshot_revision: int = -1
    ticked_revision: int = -1
    evicted: bool = False
    busy: bool = False  # a settle/offline task is queued for this farm
    ranks: dict[str, int] = field(default_factory=dict)  # last rank told to its connections


class Engine:
    def __init__(
        self,
        rules: Rules,
        store: Store,
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        coord: Coordinator | None = None,
    ) -> None:
        self.rules = rules
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.table = FarmTable(rules)
        self.committer = GroupCommitter(store, metrics, settings.commit_max_batch)
        self.residents: dict[str, Resident] = {}
        self.row_owners: list[Resident | None] = []
        self._loading: dict[str, asyncio.Future[Resident]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tick_task: asyncio.Task[None] | None = None
        self._last_autosave = 0.0
        self._last_prune = 0.0
        self.online_window_s = rules.online_window_s
        self.autosave_s = rules.config.production.autoSaveInterval / 1000.0
        self.tick_listeners: list[Callable[[float], None]] = []
        self.coord: Coordinator = coord if coord is not None else LocalCoordinator(None)
        self.boards = BoardFeed(self, self.coord, store, settings.leaderboard_push_s)
        self.cluster = Cluster(self, self.coord, settings.lease_ttl_s, settings.rpc_timeout_s)
        self.save_key = settings.resolved_save_secret()
        self._register_handlers()

    # ---- lifecycle --------------------------------------------------------------

    async def start(self, *, tick: bool = True) -> None:
        self.committer.start()
        self._last_autosave = self.clock()
        if tick:
            self._tick_task = asyncio.create_task(self._tick_loop(), name="engine-tick")
            self.boards.start()

    async def stop(self) -> None:
        """Stop ticking, write every resident farm's snapshot, flush commits."""
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
            self._tick_task = None
        await self.boards.stop()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        try:
            await self.boards.push()
        except Exception as exc:  # boards are rebuilt by the next push; never block shutdown on them
            log.warning("engine.final_push_failed", error=str(exc))
        try:
            await self.autosave(force=True)
        except StorageUnavailable as exc:
            log.error("engine.final_save_failed", error=str(exc))
        for player_id in list(self.residents):
            await self.cluster.release(player_id)
        await self.committer.stop()

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run `coro` in the background, held until done; `stop` waits for what is left."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- residency -------------------------------------------------------------------

    async def _resident(self, player_id: str) -> Resident:
        res = self.residents.get(player_id)
        if res is not None:
            return res
        pending = self._loading.get(player_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Resident] = asyncio.get_running_loop().create_future()
        self._loading[player_id] = fut
        try:
            res = await self._load(player_id)
            fut.set_result(res)
            return res
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._loading[player_id]

    async def _load(self, player_id: str) -> Resident:
        now = self.clock()
        stored = await self.store.load_farm(player_id)
        if stored is None:
            if await self.store.get_player(player_id) is None:
                raise PlayerGone(player_id)
            state = self.rules.new_farm(player_id, now)
            state.revision = 1
            ok = await self.committer.commit(
                FarmCommit(player_id, None, 1, state.to_doc(), now, snapshot=self._snapshot(state))
            )
            if not ok:  # created concurrently elsewhere: take theirs
                stored = await self.store.load_farm(player_id)
                if stored is None:
                    raise FarmConflict(player_id)
        if stored is not None:
            state = FarmState.from_doc(stored.doc, stored.revision)
            state.last_active = max(state.last_active, stored.last_active)
            if state.online and state.last_active + self.online_window_s <= now:
                # It was online when this process (or another) stopped; it went
                # offline when its online window ran out, and is credited on return.
                state = self.rules.go_offline(state, state.last_active + self.online_window_s).state
        res = Resident(player_id, state, -1, snapshot_revision=state.revision)
        res.row = self.table.add(state)
        if res.row >= len(self.row_owners):
            self.row_owners.extend([None] * (self.table.capacity - len(self.row_owners)))
        self.row_owners[res.row] = res
        self.residents[player_id] = res
        self._gauge()
        return res

    def _evict(self, res: Resident, *, release: bool = True) -> None:
        if res.evicted:  # e.g. forgotten while a commit was in flight: its row is freed already
            return
        res.evicted = True
        self.residents.pop(res.player_id, None)
        self.table.remove(res.row)
        self.row_owners[res.row] = None
        self._gauge()
        if release:
            self.spawn(self.cluster.release(res.player_id))

    def _gauge(self) -> None:
        self.metrics.farms_resident.set(len(self.residents))

    async def _locked(self, player_id: str) -> Resident:
        """The resident farm with its lock held (reloading if it was evicted meanwhile)."""
        while True:
            res = await self._resident(player_id)
            await res.lock.acquire()
            if not res.evicted:
                return res
            res.lock.release()

    def forget(self, player_id: str) -> None:
        """Drop a farm from memory without writing it (its player was erased)."""
        res = self.residents.get(player_id)
        if res is not None:
            for sink in list(res.sinks):
                res.sinks.discard(sink)
            self._evict(res)

    # ---- the one path of change -----------------------------------------------------------

    def _snapshot(self, state: FarmState) -> Snapshot:
        return Snapshot(
            state.player_id,
            state.revision,
            state.anchor_time,
            self.rules.value_of(state.balances),
            state.to_doc(),
        )

    async def _commit(
        self,
        res: Resident,
        outcome: Outcome,
        *,
        idempotency: IdempotencyRecord | None = None,
        snapshot: bool = False,
    ) -> FarmState:
        """Make `outcome.state` durable as the next revision, then adopt it."""
        new = outcome.state
        new.revision = res.state.revision + 1
        commit = FarmCommit(
            res.player_id,
            res.state.revision,
            new.revision,
            new.to_doc(),
            new.last_active,
            idempotency=idempotency,
            snapshot=self._snapshot(new) if snapshot else None,
        )
        ok = await self.committer.commit(commit)
        if not ok:
            # Someone else committed a newer revision: our copy is stale.
            self._drop_copy(res)
            raise FarmConflict(res.player_id)
        if snapshot:
            res.snapshot_revision = new.revision
        res.state = new
        if not res.evicted:
            self.table.sync(res.row, new)
        self._publish(res, outcome.events)
        return new

    async def _come_online(self, res: Resident, now: float) -> None:
        state = res.state
        events: list[Event] = []
        if state.online and not res.sinks and state.last_active + self.online_window_s <= now:
            # Its online window ran out before a tick noticed: it went offline then.
            lapsed = self.rules.go_offline(state, state.last_active + self.online_window_s)
            state, events = lapsed.state, lapsed.events
        if state.online:
            res.state.last_active = max(res.state.last_active, now)
            self.table.last_active[res.row] = res.state.last_active
        else:
            outcome = self.rules.come_online(state, now)
            outcome.state.last_active = now
            outcome.events[:0] = events
            await self._commit(res, outcome)
            report = outcome.result["report"]
            self.metrics.offline_credits.inc()
            self.metrics.offline_credited_seconds.inc(report["credited_s"])
            log.info(
                "farm.offline_credited",
                player_id=res.player_id,
                elapsed_s=report["elapsed_s"],
                credited_s=report["credited_s"],
                value=report["value_gained"],
            )

    async def _touch_local(self, player_id: str) -> tuple[FarmState, float]:
        """An authenticated request: the farm is online now. Returns its state."""
        res = await self._locked(player_id)
        try:
            now = self.clock()
            await self._come_online(res, now)
            return res.state, now
        finally:
            res.lock.release()

    async def _submit_local(
        self,
        player_id: str,
        action: Action,
        idempotency: IdempotentRequest | None = None,
    ) -> Reply:
        name = type(action).__name__.lower()
        res = await self._locked(player_id)
        try:
            if idempotency is not None:
                prior = await self.store.get_idempotency(player_id, idempotency.key)
                if prior is not None:
                    if prior.request_hash != idempotency.fingerprint:
                        raise IdempotencyMismatch(idempotency.key)
                    # The ETag must describe the replayed body's farm, not today's.
                    first = orjson.loads(prior.body).get("farm", {}).get("revision", res.state.revision)
                    return Reply(prior.status, prior.body, first, replayed=True)
            now = self.clock()
            await self._come_online(res, now)
            try:
                outcome = apply_action(self.rules, res.state, action, now)
            except Exception:
                self.metrics.actions.labels(action=name, outcome="refused").inc()
                raise
            outcome.state.last_active = now
            revision = res.state.revision + 1
            outcome.state.revision = revision
            outcome.state.content_revision = revision
            body = orjson.dumps(
                {"result": outcome.result, "events": outcome.events, "farm": farm_view(self.rules, outcome.state, now)}
            )
            record = None
            if idempotency is not None:
                record = IdempotencyRecord(player_id, idempotency.key, idempotency.fingerprint, 200, body, now)
            await self._commit(res, outcome, idempotency=record)
            self.metrics.actions.labels(action=name, outcome="applied").inc()
            return Reply(200, body, revision)
        finally:
            res.lock.release()

    # ---- saves and restores ------------------------------------------------------------

    async def _current_snapshot_local(self, player_id: str) -> Snapshot:
        res = await self._locked(player_id)
        try:
            await self._come_online(res, self.clock())
            snap = await self.store.get_snapshot(player_id, res.state.revision)
            if snap is None:
                snap = self._snapshot(res.state)
                await self.store.add_snapshots([snap])
                res.snapshot_revision = max(res.snapshot_revision, res.state.revision)
            return snap
        finally:
            res.lock.release()

    async def _upload_save_local(
        self, player_id: str, base_revision: int, signature: str, claimed: ClaimedFarm
    ) -> Reply:
        res = await self._locked(player_id)
        try:
            now = self.clock()
            state = res.state
            if state.content_revision > base_revision or base_revision > state.revision:
                raise SaveStale(state.revision)
            base_snap = await self.store.get_snapshot(player_id, base_revision)
            if base_snap is None:
                raise SaveStale(state.revision)
            if not verify_save(self.rules, self.save_key, base_snap, signature):
                raise SaveRejected(["signature: the base save does not match the server's save of that revision"])
            base = FarmState.from_doc(base_snap.doc, base_revision)
            check = check_save(self.rules, base, claimed, now)
            if not check.plausible:
                raise SaveRejected(check.reasons)
            outcome = apply_save(self.rules, base, state, claimed, check, now)
            revision = state.revision + 1
            outcome.state.revision = revision
            outcome.state.content_revision = revision
            outcome.state.report_unseen = False
            body = orjson.dumps(
                {"result": outcome.result, "events": outcome.events, "farm": farm_view(self.rules, outcome.state, now)}
            )
            await self._commit(res, outcome, snapshot=True)
            return Reply(200, body, revision)
        finally:
            res.lock.release()

    async def _restore_local(self, player_id: str, revision: int) -> FarmState:
        res = await self._locked(player_id)
        try:
            snap = await self.store.get_snapshot(player_id, revision)
            if snap is None:
                raise KeyError(revision)
            now = self.clock()
            old = FarmState.from_doc(snap.doc, revision)
            s = res.state.clone()
            # Restore what the player owns; keep lifetime totals, achievements and stats monotone.
            s.balances = list(old.balances)
            s.buildings = dict(old.buildings)
            s.upgrades = list(old.upgrades)
            s.soul_shears = old.soul_shears
            s.prestige_count = old.prestige_count
            s.run_produced = list(old.run_produced)
            s.anchor_time = now
            s.online = True
            s.last_active = now
            s.content_revision = s.revision + 1
            await self._commit(res, Outcome(s), snapshot=True)
            return res.state
        finally:
            res.lock.release()

    async def view(self, player_id: str) -> dict[str, Any]:
        state, now = await self.touch(player_id)
        return farm_view(self.rules, state, now)

    # ---- the public entry points: local when we own the farm, else the owner's ---------

    async def _routed(
        self,
        player_id: str,
        local: Callable[[], Awaitable[T]],
        op: str,
        args: dict[str, Any],
        asked: list[str] | None = None,
    ) -> Any:
        """Run `local` when this replica owns the farm (taking a free lease), else
        ask the owner; when the owner is unreachable, wait for its lease to lapse
        and take over. A commit refused as stale reloads the farm and runs again.
        `asked` collects the owners the request was sent to."""
        for _ in range(4):
            owner = None if player_id in self.residents else await self.cluster.owner_elsewhere(player_id)
            if owner is None:
                try:
                    return await local()
                except FarmConflict:
                    continue  # our copy was stale: it was dropped; load the newest and retry
            try:
                if asked is not None:
                    asked.append(owner)
                return await self.cluster.call(owner, op, player_id, args)
            except Rerouted:
                continue
            except OwnerUnreachable:
                await self.cluster.wait_for_lapse(player_id, owner)
        raise OwnerUnreachable(player_id)

    async def submit(self, player_id: str, action: Action, idempotency: IdempotentRequest | None = None) -> Reply:
        """Apply a player's action: the single entry point for REST and WebSocket.

        Raises GameError (nothing changed), StorageUnavailable (nothing changed),
        IdempotencyMismatch.
        """
        # A keyless action (WebSocket) sent to the owner carries a key of its own: when
        # the owner's answer is lost (it died, Redis went away) and this replica then
        # runs the action itself, the key finds the owner's commit instead of applying
        # the action a second time.
        sent = idempotency or IdempotentRequest.of(f"routed:{uuid.uuid4().hex}", action)
        asked: list[str] = []
        args = {"action": action_to_wire(action), "idem": [sent.key, sent.fingerprint]}

        def local() -> Awaitable[Reply]:
            return self._submit_local(player_id, action, sent if idempotency or asked else None)

        out = await self._routed(player_id, local, "submit", args, asked)
        return (
            out
            if isinstance(out, Reply)
            else Reply(out["status"], out["body"].encode(), out["revision"], out["replayed"])
        )

    async def touch(self, player_id: str) -> tuple[FarmState, float]:
        """An authenticated request: the farm is online now. Returns its state."""
        out = await self._routed(player_id, lambda: self._touch_local(player_id), "touch", {})
        return out if isinstance(out, tuple) else (FarmState.from_doc(out["doc"], out["revision"]), out["now"])

    async def current_snapshot(self, player_id: str) -> Snapshot:
        """A snapshot of the farm's current revision (written now if missing)."""
        out = await self._routed(player_id, lambda: self._current_snapshot_local(player_id), "snapshot", {})
        if isinstance(out, Snapshot):
            return out
        return Snapshot(player_id, out["revision"], out["taken_at"], out["farm_value"], out["doc"])

    async def upload_save(self, player_id: str, base_revision: int, signature: str, claimed: ClaimedFarm) -> Reply:
        """Accept a client's offline play if plausible. Raises SaveStale, SaveRejected."""
        args = {"base": base_revision, "signature": signature, "claimed": asdict(claimed)}
        out = await self._routed(
            player_id, lambda: self._upload_save_local(player_id, base_revision, signature, claimed), "upload", args
        )
        return out if isinstance(out, Reply) else Reply(out["status"], out["body"].encode(), out["revision"])

    async def restore(self, player_id: str, revision: int) -> FarmState:
        """Make an old snapshot the farm again, as a new revision (history is never rewritten)."""
        out = await self._routed(
            player_id, lambda: self._restore_local(player_id, revision), "restore", {"revision": revision}
        )
        return out if isinstance(out, FarmState) else FarmState.from_doc(out["doc"], out["revision"])

    async def mark_report_seen(self, player_id: str) -> None:
        await self._routed(player_id, lambda: self._mark_report_seen_local(player_id), "seen", {})

    async def attach(self, player_id: str, sink: Sink) -> tuple[FarmState, float]:
        """A WebSocket joined this farm: online now, its ticks and events flow to `sink`
        (from this replica when it owns the farm, else forwarded by the owner)."""

        async def local() -> tuple[FarmState, float]:
            self.cluster.watched.get(player_id, set()).discard(sink)
            return await self._attach_local(player_id, sink)

        out = await self._routed(player_id, local, "attach", {})
        if isinstance(out, tuple):
            return out
        self.cluster.watched.setdefault(player_id, set()).add(sink)
        self.cluster.heard(player_id)
        return FarmState.from_doc(out["doc"], out["revision"]), out["now"]

    def detach(self, player_id: str, sink: Sink) -> None:
        watchers = self.cluster.watched.get(player_id)
        if watchers is not None and sink in watchers:
            watchers.discard(sink)
            if not watchers:
                del self.cluster.watched[player_id]
                self.spawn(self._detach_remote(player_id))
            return
        self._detach_local(player_id, sink)

    async def _detach_remote(self, player_id: str) -> None:
        with contextlib.suppress(Exception):
            owner = await self.coord.lease_owner(player_id)
            if owner and owner != self.cluster.me:
                await self.cluster.call(owner, "detach", player_id, {})

    # ---- what the owner does when another replica asks ---------------------------------

    def _register_handlers(self) -> None:
        async def owned(player_id: str) -> None:
            if player_id not in self.residents and await self.cluster.owner_elsewhere(player_id) is not None:
                raise Rerouted(player_id)

        async def submit(pid: str, a: dict[str, Any]) -> dict[str, Any]:
            await owned(pid)
            idem = IdempotentRequest(a["idem"][0], a["idem"][1]) if a.get("idem") else None
            r = await self._submit_local(pid, action_from_wire(dict(a["action"])), idem)
            return {"status": r.status, "body": r.body.decode(), "revision": r.revision, "replayed": r.replayed}

        async def touch(pid: str, a: dict[str, Any]) -> dict[str, Any]:
            await owned(pid)
            state, now = await self._touch_local(pid)
            return {"doc": state.to_doc(), "revision": state.revision, "now": now}

        async def attach(pid: str, a: dict[str, Any]) -> dict[str, Any]:
            await owned(pid)
            state, now = await self._attach_local(pid, RemoteSink(self.cluster, a["_from"], pid))
            return {"doc": state.to_doc(), "revision": state.revision, "now": now}

        async def detach(pid: str, a: dict[str, Any]) -> None:
            self._detach_local(pid, RemoteSink(self.cluster, a["_from"], pid))

        async def snapshot(pid: str, a: dict[str, Any]) -> dict[str, Any]:
            await owned(pid)
            snap = await self._current_snapshot_local(pid)
            return {
                "revision": snap.revision,
                "taken_at": snap.taken_at,
                "farm_value": snap.farm_value,
                "doc": snap.doc,
            }

        async def upload(pid: str, a: dict[str, Any]) -> dict[str, Any]:
            await owned(pid)
            r = await self._upload_save_local(pid, a["base"], a["signature"], ClaimedFarm(**a["claimed"]))
            return {"status": r.status, "body": r.body.decode(), "revision": r.revision}

        async def restore(pid: str, a: dict[str, Any]) -> dict[str, Any]:
            await owned(pid)
            state = await self._restore_local(pid, a["revision"])
            return {"doc": state.to_doc(), "revision": state.revision}

        async def seen(pid: str, a: dict[str, Any]) -> None:
            await owned(pid)
            await self._mark_report_seen_local(pid)

        self.cluster.handlers.update(
            submit=submit,
            touch=touch,
            attach=attach,
            detach=detach,
            snapshot=snapshot,
            upload=upload,
            restore=restore,
            seen=seen,
        )

    async def _mark_report_seen_local(self, player_id: str) -> None:
        res = await self._locked(player_id)
        try:
            if res.state.report_unseen:
                s = res.state.clone()
                s.report_unseen = False
                await self._commit(res, Outcome(s))
        finally:
            res.lock.release()

    # ---- connections --------------------------------------------------------------------

    async def _attach_local(self, player_id: str, sink: Sink) -> tuple[FarmState, float]:
        res = await self._locked(player_id)
        try:
            now = self.clock()
            await self._come_online(res, now)
            res.sinks.add(sink)
            self.table.connections[res.row] = len(res.sinks)
            return res.state, now
        finally:
            res.lock.release()

    def _detach_local(self, player_id: str, sink: Sink) -> None:
        res = self.residents.get(player_id)
        if res is None or sink not in res.sinks:
            return
        res.sinks.discard(sink)
        self.table.connections[res.row] = len(res.sinks)
        # The online window counts from the moment the last socket closed.
        now = self.clock()
        res.state.last_active = max(res.state.last_active, now)
        self.table.last_active[res.row] = res.state.last_active

    def _publish(self, res: Resident, events: list[Event]) -> None:
        if not res.sinks:
            return
        for event in events:
            msg = orjson.dumps({"type": "event", "data": event}).decode()
            for sink in res.sinks:
                sink.send(msg)

    def broadcast(self, message: str) -> int:
        """Send to every socket on this replica (every replica does the same)."""
        n = 0
        sink_sets = [res.sinks for res in self.residents.values()] + list(self.cluster.watched.values())
        for sinks in sink_sets:
            for sink in sinks:
                if not isinstance(sink, RemoteSink):
                    sink.send(message)
                    n += 1
        return n

    # ---- the tick ----------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        interval = self.settings.tick_interval_s
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > interval:
                self.metrics.tick_overruns.inc()
                next_at = loop.time()  # skip missed ticks instead of bursting
            next_at += interval
            try:
                self.tick()
            except Exception:
                log.exception("engine.tick_failed")

    def tick(self) -> None:
        """One tick: vectorised over every resident farm; Python only for the few
        rows that need an event and for handing payloads to connections."""
        started = time.perf_counter()
        now = self.clock()
        result = self.table.tick(now, self.online_window_s)
        owners = self.row_owners
        # Offline first: a farm whose window ran out must anchor when it went
        # offline (unlocking what it reached by then), not be settled at `now`.
        for row in result.offline_rows.tolist():
            res = owners[row]
            if res is not None and not res.busy:
                res.busy = True
                self.spawn(self._go_offline(res))
        for row in result.settle_rows.tolist():
            res = owners[row]
            if res is not None and not res.busy:
                res.busy = True
                self.spawn(self._settle(res))
        if result.connected_rows.size:
            balances = result.balances.tolist()
            keys = self.rules.tier_keys
            for row, bal in zip(result.connected_rows.tolist(), balances, strict=True):
                res = owners[row]
                if res is None:
                    continue
                with_rates = res.ticked_revision != res.state.revision
                res.ticked_revision = res.state.revision
                msg = tick_message(self.rules, res.state, now, keys, bal, with_rates)
                for sink in res.sinks:
                    sink.send(msg)
        n = self.table.size
        self.metrics.players_online.set(int(self.table.online[:n].sum()))
        if now - self._last_autosave >= self.autosave_s:
            self._last_autosave = now
            self.spawn(self.autosave())
        if self.residents and self.cluster.renew_due():
            self.spawn(self._renew_leases())
        for player_id in self.cluster.silent_farms(3 * self.settings.tick_interval_s + 2.0):
            self.spawn(self._rewatch(player_id))
        for listener in self.tick_listeners:
            listener(now)
        self.metrics.tick_duration.observe(time.perf_counter() - started)

    async def _renew_leases(self) -> None:
        lost = await self.cluster.renew(list(self.residents))
        for player_id in lost:
            res = self.residents.get(player_id)
            if res is None:
                continue
            # Another replica owns it now (our renewals failed for a while): hand
            # our sockets over as watchers and drop our copy without writing.
            log.warning("cluster.lease_lost", player_id=player_id, sockets=len(res.sinks))
            self._drop_copy(res)
        if self.cluster.resync_due():
            await self._resync()

    async def _resync(self) -> None:
        """Coordination is back after an outage, and every replica has renewed its leases
        since. Copies this replica loaded or kept without a lease may be older than what
        another replica committed meanwhile (reads would show them until our next write
        is refused): drop them all without writing (every change is committed already);
        the next request or socket loads the newest revision under a lease."""
        dropped = 0
        for res in list(self.residents.values()):
            async with res.lock:
                if not res.evicted:
                    self._drop_copy(res)
                    dropped += 1
        log.warning("cluster.resynced", farms=dropped)

    def _drop_copy(self, res: Resident) -> None:
        """Drop our copy of a farm without writing it (it is stale, or owned elsewhere now).
        Its sockets stay with the farm: they become watchers and attach again, to the
        new owner or to the copy this replica reloads."""
        local = [s for s in res.sinks if not isinstance(s, RemoteSink)]
        res.sinks.clear()
        # Keep the lease: a release landing after this replica took it again to reload
        # would leave a copy here without a lease while another replica takes the farm.
        # (A lease we lost is not ours to release; one nobody uses lapses by itself.)
        self._evict(res, release=False)
        if local:
            self.cluster.watched.setdefault(res.player_id, set()).update(local)
            self.spawn(self._rewatch(res.player_id))

    async def _rewatch(self, player_id: str) -> None:
        """Our sockets of a farm owned elsewhere heard nothing for a while: the
        owner may be gone. Attach again: to the new owner, or take the farm."""
        self.cluster.heard(player_id)
        for sink in list(self.cluster.watched.get(player_id, ())):
            try:
                await self.attach(player_id, sink)
            except Exception as exc:  # keep the socket; the next silence check retries
                log.warning("cluster.rewatch_failed", player_id=player_id, error=str(exc))
                return

    async def _settle(self, res: Resident) -> None:
        try:
            async with res.lock:
                if res.evicted:
                    return
                now = self.clock()
                outcome = self.rules.settle(res.state, now)
                if outcome.events or outcome.state.discovered != res.state.discovered:
                    await self._commit(res, outcome)
                else:
                    self.table.sync(res.row, res.state)
        except (StorageUnavailable, FarmConflict) as exc:
            log.warning("engine.settle_failed", player_id=res.player_id, error=str(exc))
        finally:
            res.busy = False

    async def _go_offline(self, res: Resident) -> None:
        try:
            async with res.lock:
                if res.evicted or res.sinks:
                    return
                at = res.state.last_active + self.online_window_s
                if not res.state.online or at > self.clock():
                    return
                outcome = self.rules.go_offline(res.state, at)
                await self._commit(res, outcome, snapshot=True)
                await self.boards.push_state(res.state, at)
                self._evict(res)
                log.info("farm.offline", player_id=res.player_id, at=at)
        except (StorageUnavailable, FarmConflict) as exc:
            log.warning("engine.offline_failed", player_id=res.player_id, error=str(exc))
        finally:
            res.busy = False

    async def autosave(self, force: bool = False) -> None:
        """History snapshots of changed farms and the last-activity times of online ones.

        Written in chunks of AUTOSAVE_CHUNK farms, one store write each, so that the
        actions committing meanwhile share the writer with the autosave instead of
        queueing behind one transaction of every resident farm (thousands of
        snapshots: a p99 spike every interval). A farm counts as saved only once its
        chunk is written; after a failure (a full disk) its snapshot is written by
        the next autosave."""
        now = self.clock()
        touched = []
        changed = []
        for res in list(self.residents.values()):
            if res.sinks:
                res.state.last_active = now
            if res.state.online:
                touched.append((res.player_id, res.state.last_active))
            if res.state.revision > res.snapshot_revision:
                changed.append(res)
        written = 0
        try:
            for start in range(0, len(changed), AUTOSAVE_CHUNK):
                chunk = changed[start : start + AUTOSAVE_CHUNK]
                snaps = [self._snapshot(res.state) for res in chunk]
                await self.store.add_snapshots(snaps)
                for res, snap in zip(chunk, snaps, strict=True):
                    res.snapshot_revision = max(res.snapshot_revision, snap.revision)
                written += len(chunk)
            for start in range(0, len(touched), AUTOSAVE_CHUNK * 4):
                await self.store.touch_farms(touched[start : start + AUTOSAVE_CHUNK * 4])
            if now - self._last_prune >= PRUNE_EVERY_S:
                self._last_prune = now
                await self.store.prune_idempotency(now - self.settings.idempotency_ttl_s)
        except StorageUnavailable as exc:
            self.metrics.store_errors.inc()
            log.warning("engine.autosave_failed", error=str(exc), farms=len(changed) - written)
            if force:
                raise

    # ---- introspection ------------------------------------------------------------------

    def resident_state(self, player_id: str) -> FarmState | None:
        res = self.residents.get(player_id)
        return res.state if res else None

    def online_count(self) -> int:
        n = self.table.size
        return int(self.table.online[:n].sum())
