"""The engine's facade: wires the parts and is the one entry point for the API.

An operation on a farm runs where the farm lives (`routing.py`): on this
replica through the change path (`farms.py`) when it owns the farm, else on the
owner, asked over the wire (`wire.py`, `cluster.py`). The resident set
(`residents.py`), the tick with its upkeep (`ticker.py`), sockets
(`connections.py`) and the leaderboard feed (`boards.py`) are the other parts.

May import `game`, `store` (interfaces), `coord` (interfaces), settings and
observability; never `api`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from ..coord import Coordinator, LocalCoordinator
from ..game import Action, FarmState, Rules
from ..game.saves import ClaimedFarm
from ..observability import Metrics
from ..settings import Settings
from ..store import Snapshot, StorageUnavailable, Store
from .boards import BoardFeed
from .cluster import Cluster, ClusterSettings
from .commit import GroupCommitter
from .connections import Connections
from .farms import Farms, IdempotentRequest, Reply
from .handover import Handover
from .live_events import LiveEvents
from .residents import Resident, ResidentSet, Sink
from .routing import Router
from .table import FarmTable
from .ticker import Ticker
from .views import farm_view
from .wire import RESTORE, SEEN, SNAPSHOT, SUBMIT, TOUCH, UPLOAD, SubmitArgs, UploadArgs

log = structlog.get_logger("llamawool.engine")


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
        self._tasks: set[asyncio.Task[Any]] = set()
        self.online_window_s = rules.online_window_s
        self.coord: Coordinator = coord if coord is not None else LocalCoordinator(None)
        self.cluster = Cluster(
            self.coord,
            ClusterSettings(
                settings.lease_ttl_s,
                settings.rpc_timeout_s,
                settings.heartbeat_s,
                settings.heartbeat_ttl_s,
                settings.owner_max_inflight,
                settings.busy_retry_after_s,
            ),
            metrics,
        )
        # Read when the metrics are (scraped on the event loop), not counted on every tick.
        metrics.remote_watched.set_function(self.cluster.watched_sockets)
        self.resident_set = ResidentSet(
            rules, store, self.committer, self.table, metrics, clock, lambda pid: self.spawn(self.cluster.release(pid))
        )
        self.residents: dict[str, Resident] = self.resident_set.by_id
        self.farms = Farms(
            rules,
            store,
            self.committer,
            self.resident_set,
            metrics,
            clock,
            settings.resolved_save_secret(),
            lambda res: self.connections.drop_copy(res),
        )
        self.router = Router(self.resident_set, self.cluster)
        self.handover = Handover(
            rules, store, self.resident_set, self.cluster, clock, lambda res, to: self.connections.drop_copy(res, to)
        )
        self.connections = Connections(
            self.resident_set, self.farms, self.router, self.cluster, self.handover, self.spawn
        )
        self.boards = BoardFeed(
            self.resident_set, rules, clock, metrics, self.coord, store, settings.leaderboard_push_s
        )
        self.ticker = Ticker(
            rules,
            store,
            settings,
            metrics,
            clock,
            self.resident_set,
            self.farms,
            self.boards,
            self.cluster,
            self.spawn,
            self.connections.drop_copy,
            self.connections.rewatch,
        )
        self.tick_listeners = self.ticker.listeners
        self.live_events = LiveEvents(
            rules, store, self.resident_set, self.connections.broadcast, clock, settings.events_poll_s
        )
        self.tick_listeners.append(self.live_events.on_tick)
        self._watch_events: asyncio.Task[None] | None = None
        self._serve()

    @property
    def row_owners(self) -> list[Resident | None]:
        return self.resident_set.row_owners

    # ---- lifecycle --------------------------------------------------------------

    async def start(self, *, tick: bool = True) -> None:
        self.committer.start()
        await self.cluster.beat()  # alive before the first request: peers wait for us, not take over
        self.ticker.last_autosave = self.clock()
        try:
            await self.live_events.reload()  # before the first tick: boundaries apply from the start
        except StorageUnavailable as exc:  # the periodic read applies it once storage answers
            log.warning("live_events.unavailable_at_start", error=str(exc))
        self._watch_events = asyncio.create_task(self.live_events.watch(), name="live-events")
        if tick:
            self.ticker.start()
            self.boards.start()

    async def stop(self) -> None:
        """Stop ticking, write every resident farm's snapshot, flush commits."""
        await self.ticker.stop()
        await self.boards.stop()
        if self._watch_events is not None:
            self._watch_events.cancel()
            await asyncio.gather(self._watch_events, return_exceptions=True)
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
        await self.cluster.end_beat()
        await self.committer.stop()

    def begin_drain(self) -> None:
        """This replica is going away: hand no farm in (its leases are released at stop)."""
        self.cluster.draining = True

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Run `coro` in the background, held until done; `stop` waits for what is left."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- the public entry points: local when we own the farm, else the owner's ---------

    async def submit(self, player_id: str, action: Action, idempotency: IdempotentRequest | None = None) -> Reply:
        """Apply a player's action: the single entry point for REST and WebSocket.

        Raises GameError (nothing changed), StorageUnavailable (nothing changed),
        IdempotencyMismatch.
        """
        # A keyless action (WebSocket) sent to the owner carries a key of its own: when
        # the owner's answer is lost (it died, Redis went away) and this replica then
        # runs the action itself, the key finds the owner's commit instead of applying
        # the action a second time.
        sent = idempotency or IdempotentRequest.routed(action)
        asked: list[str] = []

        def local() -> Awaitable[Reply]:
            return self.farms.submit(player_id, action, sent if idempotency or asked else None)

        reply = await self.router.route(player_id, SUBMIT, SubmitArgs(action, sent), local, asked)
        if asked:
            self.metrics.forwarded_actions.inc()
        return reply

    async def touch(self, player_id: str) -> tuple[FarmState, float]:
        """An authenticated request: the farm is online now. Returns its state."""
        return await self.router.route(player_id, TOUCH, None, lambda: self.farms.touch(player_id))

    async def view(self, player_id: str) -> dict[str, Any]:
        state, now = await self.touch(player_id)
        return farm_view(self.rules, state, now)

    async def current_snapshot(self, player_id: str) -> Snapshot:
        """A snapshot of the farm's current revision (written now if missing)."""
        return await self.router.route(player_id, SNAPSHOT, None, lambda: self.farms.current_snapshot(player_id))

    async def upload_save(self, player_id: str, base_revision: int, signature: str, claimed: ClaimedFarm) -> Reply:
        """Accept a client's offline play if plausible. Raises SaveStale, SaveRejected."""
        return await self.router.route(
            player_id,
            UPLOAD,
            UploadArgs(base_revision, signature, claimed),
            lambda: self.farms.upload_save(player_id, base_revision, signature, claimed),
        )

    async def restore(self, player_id: str, revision: int) -> FarmState:
        """Make an old snapshot the farm again, as a new revision (history is never rewritten)."""
        return await self.router.route(player_id, RESTORE, revision, lambda: self.farms.restore(player_id, revision))

    async def mark_report_seen(self, player_id: str) -> None:
        await self.router.route(player_id, SEEN, None, lambda: self.farms.mark_report_seen(player_id))

    def _serve(self) -> None:
        """What this replica runs when a peer asks the owner of a farm."""
        farms = self.farms

        async def submit(pid: str, _: str, a: SubmitArgs) -> Reply:
            return await farms.submit(pid, a.action, a.idempotency)

        async def upload(pid: str, _: str, a: UploadArgs) -> Reply:
            return await farms.upload_save(pid, a.base_revision, a.signature, a.claimed)

        self.router.serve(SUBMIT, submit)
        self.router.serve(TOUCH, lambda pid, _, __: farms.touch(pid))
        self.router.serve(SNAPSHOT, lambda pid, _, __: farms.current_snapshot(pid))
        self.router.serve(UPLOAD, upload)
        self.router.serve(RESTORE, lambda pid, _, revision: farms.restore(pid, revision))
        self.router.serve(SEEN, lambda pid, _, __: farms.mark_report_seen(pid))
        self.connections.serve()

    # ---- connections ------------------------------------------------------------------

    async def attach(self, player_id: str, sink: Sink) -> tuple[FarmState, float]:
        """A WebSocket joined this farm (see Connections.attach)."""
        return await self.connections.attach(player_id, sink)

    def detach(self, player_id: str, sink: Sink) -> None:
        self.connections.detach(player_id, sink)

    def broadcast(self, message: str) -> int:
        """Send to every socket on this replica (every replica does the same)."""
        return self.connections.broadcast(message)

    def forget(self, player_id: str) -> None:
        """Drop a farm from memory without writing it (its player was erased)."""
        self.resident_set.forget(player_id)

    # ---- the tick --------------------------------------------------------------------

    def tick(self) -> None:
        self.ticker.tick()

    async def autosave(self, force: bool = False) -> None:
        await self.ticker.autosave(force)

    # ---- introspection ------------------------------------------------------------------

    def resident_state(self, player_id: str) -> FarmState | None:
        res = self.residents.get(player_id)
        return res.state if res else None

    def online_count(self) -> int:
        return self.resident_set.online_count()
