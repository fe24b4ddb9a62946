"""The tick and the engine's upkeep: one vectorised pass over every resident farm.

Each tick settles farms that crossed a threshold, takes farms whose online
window ran out offline, sends every connected farm its tick, renews this
replica's leases (dropping copies whose lease was lost) and, every autosave
interval, writes history snapshots and last-activity times.

The sending is spread over the second: a farm's table row fixes its phase
(row % `tick_slices`), and each phase's ticks are computed and written at its
own instant, `tick_interval_s / tick_slices` after the previous phase's. Every
farm still gets exactly one tick per interval, evenly spaced (its row, and so
its phase, stays while it is resident), carrying its balances in closed form
at that instant; no socket waits behind every other socket's tick. The
upkeep (the threshold checks over every row, offline, leases, autosave) runs
once per interval, with phase 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import structlog

from ..game import Rules
from ..observability import Metrics
from ..settings import Settings
from ..store import StorageUnavailable, Store
from .boards import BoardFeed
from .cluster import Cluster
from .errors import FarmConflict
from .farms import Farms
from .residents import Resident, ResidentSet, snapshot_of
from .views import tick_message, tick_messages

log = structlog.get_logger("llamawool.engine")
PRUNE_EVERY_S = 3600.0  # how often old idempotency records are forgotten
AUTOSAVE_CHUNK = 100  # snapshots per store write in an autosave (see Ticker.autosave)


class Ticker:
    def __init__(
        self,
        rules: Rules,
        store: Store,
        settings: Settings,
        metrics: Metrics,
        clock: Callable[[], float],
        residents: ResidentSet,
        farms: Farms,
        boards: BoardFeed,
        cluster: Cluster,
        spawn: Callable[[Awaitable[Any]], None],
        drop_copy: Callable[[Resident], None],
        rewatch: Callable[[str], Awaitable[None]],
    ) -> None:
        self.rules = rules
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.residents = residents
        self.table = residents.table
        self.farms = farms
        self.boards = boards
        self.cluster = cluster
        self.spawn = spawn
        self.drop_copy = drop_copy
        self.rewatch = rewatch
        self.online_window_s = rules.online_window_s
        self.autosave_s = rules.config.production.autoSaveInterval / 1000.0
        self.last_autosave = 0.0
        self._last_prune = 0.0
        self.listeners: list[Callable[[float], None]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="engine-tick")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        interval = self.settings.tick_interval_s
        phases = self.settings.tick_slices
        step = interval / phases
        loop = asyncio.get_running_loop()
        next_at = loop.time() + step
        phase = 0
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > interval:
                self.metrics.tick_overruns.inc()
                next_at = loop.time()  # skip missed ticks instead of bursting
            next_at += step
            try:
                self.run_phase(phase, phases)
            except Exception:
                log.exception("engine.tick_failed")
            phase = (phase + 1) % phases

    def run_phase(self, phase: int, phases: int) -> None:
        """One phase of the tick: its farms' ticks, and with phase 0 the upkeep."""
        started = time.perf_counter()
        now = self.clock()
        if phase == 0:
            self.upkeep(now)
        self.send_ticks(now, phase, phases)
        self.metrics.tick_duration.observe(time.perf_counter() - started)

    def tick(self) -> None:
        """The whole tick at one instant: the upkeep and every connected farm's tick
        (the loop spreads the ticks over the interval instead: `run_phase`)."""
        self.run_phase(0, 1)

    def send_ticks(self, now: float, phase: int = 0, phases: int = 1) -> None:
        """The ticks of one phase's connected farms at `now`: balances vectorised over
        their rows, payloads written together (`tick_messages`), each handed to all of
        its farm's connections. A farm whose rates changed since its last tick gets
        them in this one (`tick_message`)."""
        if self.table.cross_boundaries(now):  # a live event started or ended
            self.residents.resend_rates()
        rows, balances = self.table.connected_balances(now, phase, phases)
        if not rows.size:
            return
        # A row with a connection is always resident (evicting a farm frees its row's connections).
        farms = cast("list[Resident]", list(map(self.residents.row_owners.__getitem__, rows.tolist())))
        revisions = [res.state.revision for res in farms]
        rules = self.rules
        keys = rules.tier_keys
        messages = tick_messages(now, revisions, balances, keys)
        for i, (res, msg, revision) in enumerate(zip(farms, messages, revisions, strict=True)):
            if res.ticked_revision != revision:
                res.ticked_revision = revision
                msg = tick_message(rules, res.state, now, keys, balances[i].tolist(), True)
            for sink in res.sinks:
                sink.send(msg)

    def upkeep(self, now: float) -> None:
        """Once per interval: vectorised threshold checks over every resident farm (Python
        only for the few rows that need an event), leases, heartbeat and autosave."""
        settle_rows, offline_rows = self.table.check(now, self.online_window_s)
        owners = self.residents.row_owners
        # Offline first: a farm whose window ran out must anchor when it went
        # offline (unlocking what it reached by then), not be settled at `now`.
        for row in offline_rows.tolist():
            res = owners[row]
            if res is not None and not res.busy:
                res.busy = True
                self.spawn(self._go_offline(res))
        for row in settle_rows.tolist():
            res = owners[row]
            if res is not None and not res.busy:
                res.busy = True
                self.spawn(self._settle(res))
        self.metrics.players_online.set(self.residents.online_count())
        if now - self.last_autosave >= self.autosave_s:
            self.last_autosave = now
            self.spawn(self.autosave())
        if self.cluster.beat_due():
            self.spawn(self.cluster.beat())
        if self.residents.by_id and self.cluster.renew_due():
            self.spawn(self._renew_leases())
        for player_id in self.cluster.silent_farms(3 * self.settings.tick_interval_s + 2.0):
            self.spawn(self.rewatch(player_id))
        for listener in self.listeners:
            listener(now)

    async def _renew_leases(self) -> None:
        lost = await self.cluster.renew(list(self.residents.by_id))
        for player_id in lost:
            res = self.residents.by_id.get(player_id)
            if res is None:
                continue
            # Another replica owns it now (our renewals failed for a while): hand
            # our sockets over as watchers and drop our copy without writing.
            log.warning("cluster.lease_lost", player_id=player_id, sockets=len(res.sinks))
            self.drop_copy(res)
        unleased = self.cluster.resync_due()
        if unleased:
            await self._resync(unleased)

    async def _resync(self, farm_ids: list[str]) -> None:
        """Coordination is back after failing, and every replica has renewed its leases
        since. The copies this replica loaded or kept without a lease may be older than
        what another replica committed meanwhile (reads would show them until our next
        write is refused): drop exactly those without writing (every change is committed
        already); their sockets attach again and load the newest revision under a lease.
        Every other farm keeps its copy and its sockets keep their ticks."""
        dropped = 0
        for player_id in farm_ids:
            res = self.residents.by_id.get(player_id)
            if res is None:
                continue
            async with res.lock:
                if not res.evicted:
                    self.drop_copy(res)
                    dropped += 1
        log.warning("cluster.resynced", farms=dropped, unleased=len(farm_ids))

    async def _settle(self, res: Resident) -> None:
        try:
            async with res.lock:
                if res.evicted:
                    return
                now = self.clock()
                outcome = self.rules.settle(res.state, now)
                if outcome.events or outcome.state.discovered != res.state.discovered:
                    await self.farms.commit(res, outcome)
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
                await self.farms.commit(res, outcome, snapshot=True)
                await self.boards.push_state(res.state, at)
                self.residents.evict(res)
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
        for res in list(self.residents.by_id.values()):
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
                snaps = [snapshot_of(self.rules, res.state) for res in chunk]
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
