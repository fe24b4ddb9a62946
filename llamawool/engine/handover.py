"""Farms follow their players: the owner hands a farm to the replica holding its socket.

A farm is owned by whichever replica first needed it, often because a REST call
landed there; its player's socket may sit on another replica, fed through Redis
for as long as the farm stays online. When that socket attaches, the owner hands
the farm over (`give`) if no socket of it is local to the owner (else the farm
stays and the asker watches it remotely: no ping-pong between two sockets) and
the owner is not draining (draining releases every lease anyway).

The owner also pushes a farm when its last local socket closes while sockets on
other replicas still watch it (a player reconnecting lands elsewhere while the
old socket closes): it hands the farm to one of those replicas and tells it.

The owner does it under the farm's lock, so no action is mid-flight: every change
is committed already; it writes what a dropped copy would lose (the history
snapshot if one is due, the last-activity time), moves the lease to the asker in
one compare-and-set, drops its copy without writing (which tells the other
replicas watching the farm to attach again). The asker then loads the farm (one
store read) and attaches its socket locally. Were anything to race, the revision
compare-and-set of every commit still decides (docs/replicas.md "Fencing").
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from ..game import Rules
from ..store import StorageUnavailable, Store
from .cluster import Cluster, RemoteSink
from .residents import Resident, ResidentSet, snapshot_of

log = structlog.get_logger("llamawool.cluster")


class Handover:
    def __init__(
        self,
        rules: Rules,
        store: Store,
        residents: ResidentSet,
        cluster: Cluster,
        clock: Callable[[], float],
        drop_copy: Callable[[Resident, str | None], None],  # (copy, the replica it was pushed to)
    ) -> None:
        self.rules = rules
        self.store = store
        self.residents = residents
        self.cluster = cluster
        self.clock = clock
        self.drop_copy = drop_copy

    async def give(self, player_id: str, to: str) -> bool:
        """A socket on replica `to` attaches: hand it the farm when policy allows; True
        when the lease is `to`'s now (it loads the farm itself)."""
        return await self._hand(player_id, lambda res: to, pushed=False)

    async def push(self, player_id: str) -> bool:
        """The last socket of the farm here closed while sockets on other replicas still
        watch it: hand it to one of them (told so, it loads the farm and its sockets
        stop being fed through Redis)."""

        def watcher(res: Resident) -> str | None:
            replicas = sorted(s.replica for s in res.sinks if isinstance(s, RemoteSink))
            return replicas[0] if replicas else None

        return await self._hand(player_id, watcher, pushed=True)

    async def _hand(self, player_id: str, pick: Callable[[Resident], str | None], *, pushed: bool) -> bool:
        if self.cluster.draining:
            return False  # releasing the leases at stop moves every farm anyway
        res = self.residents.by_id.get(player_id)
        if res is None:
            return False  # not loaded here: the asker's attach loads it under our lease as usual
        async with res.lock:
            to = pick(res)
            if res.evicted or to is None or any(not isinstance(sink, RemoteSink) for sink in res.sinks):
                return False  # a socket of it is here: it stays (no ping-pong)
            started = time.perf_counter()
            try:
                await self._write_what_a_drop_loses(res)
            except StorageUnavailable as exc:
                log.warning("cluster.handover_skipped", player_id=player_id, error=str(exc))
                return False
            if not await self.cluster.hand_over(player_id, to):
                return False
            # The replicas watching it are told it moved (`to` too when pushed: it takes it).
            self.drop_copy(res, to if pushed else None)
        ms = round((time.perf_counter() - started) * 1e3, 1)
        log.info("cluster.handed_over", player_id=player_id, to=to, pushed=pushed, ms=ms)
        return True

    async def _write_what_a_drop_loses(self, res: Resident) -> None:
        """Changes are committed as they happen; what lives only in memory is the history
        snapshot the next autosave would write and the farm's last activity."""
        state = res.state
        if state.revision > res.snapshot_revision:
            await self.store.add_snapshots([snapshot_of(self.rules, state)])
            res.snapshot_revision = state.revision
        if state.online:
            # A socket is attaching: the farm is active now (its new owner must not find
            # its online window run out when it loads it).
            state.last_active = max(state.last_active, self.clock())
            await self.store.touch_farms([(res.player_id, state.last_active)])
