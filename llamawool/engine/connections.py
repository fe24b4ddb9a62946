"""Sockets and their farms: attach, detach, broadcast, and watchers of farms owned elsewhere.

A socket on the farm's owner is a sink of its resident; a socket on another
replica is a "watcher": the owner forwards that farm's ticks and events to the
watcher's replica (`cluster.RemoteSink`). When our copy of a farm is dropped or
its owner goes silent, the sockets stay and attach again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from .cluster import Cluster, RemoteSink
from .farms import Farms
from .handover import Handover
from .residents import Resident, ResidentSet, Sink
from .routing import Router
from .wire import ATTACH, DETACH, AttachArgs, Touched

log = structlog.get_logger("llamawool.engine")


class Connections:
    def __init__(
        self,
        residents: ResidentSet,
        farms: Farms,
        router: Router,
        cluster: Cluster,
        handover: Handover,
        spawn: Callable[[Awaitable[Any]], None],
    ) -> None:
        self.residents = residents
        self.farms = farms
        self.router = router
        self.cluster = cluster
        self.handover = handover
        self.spawn = spawn

    def serve(self) -> None:
        """Answer peers whose sockets watch farms this replica owns (handing the farm
        over to them when its player's sockets are all there: `handover.py`)."""

        async def attach(pid: str, sender: str, args: AttachArgs) -> Touched | None:
            if args.take and await self.handover.give(pid, sender):
                return None
            return await self.farms.attach(pid, RemoteSink(self.cluster, sender, pid))

        async def detach(pid: str, sender: str, _: None) -> None:
            self.farms.detach(pid, RemoteSink(self.cluster, sender, pid))

        self.router.serve(ATTACH, attach)
        self.router.serve(DETACH, detach, owned_only=False)
        self.cluster.on_moved = lambda pid: self.spawn(self.rewatch(pid))

    async def attach(self, player_id: str, sink: Sink) -> Touched:
        """A WebSocket joined this farm: online now, its ticks and events flow to `sink`
        (from this replica when it owns the farm, else forwarded by the owner). A farm
        owned elsewhere with no socket there is handed to this replica: one lease
        claim, one RPC and one store read."""
        here: Touched | None = None

        async def local() -> Touched:
            nonlocal here
            self.cluster.unwatch(player_id, sink)
            here = await self.farms.attach(player_id, sink)
            return here

        out = await self.router.route(player_id, ATTACH, AttachArgs(take=True), local)
        if here is not None:
            return here
        if out is None:  # handed over: the lease is ours, the farm loads here
            self.cluster.handed_in(player_id)
            state = await local()
            if self.cluster.watched.get(player_id):
                self.spawn(self.rewatch(player_id))  # our other sockets of it become local too
            return state
        self.cluster.watched.setdefault(player_id, set()).add(sink)
        self.cluster.heard(player_id)
        return out

    def detach(self, player_id: str, sink: Sink) -> None:
        if sink in self.cluster.watched.get(player_id, ()):
            if not self.cluster.unwatch(player_id, sink):
                self.spawn(self._detach_remote(player_id))
            return
        self.farms.detach(player_id, sink)
        res = self.residents.by_id.get(player_id)
        if res is not None and res.sinks and not any(not isinstance(s, RemoteSink) for s in res.sinks):
            self.spawn(self.handover.push(player_id))  # only other replicas' sockets watch it now

    async def _detach_remote(self, player_id: str) -> None:
        with contextlib.suppress(Exception):
            owner = await self.cluster.coord.lease_owner(player_id)
            if owner and owner != self.cluster.me:
                await self.cluster.call(owner, DETACH.name, player_id, DETACH.args_to_wire(None))

    def broadcast(self, message: str) -> int:
        """Send to every socket on this replica (every replica does the same)."""
        n = 0
        sink_sets = [res.sinks for res in self.residents.all()] + list(self.cluster.watched.values())
        for sinks in sink_sets:
            for sink in sinks:
                if not isinstance(sink, RemoteSink):
                    sink.send(message)
                    n += 1
        return n

    def drop_copy(self, res: Resident, pushed_to: str | None = None) -> None:
        """Drop our copy of a farm without writing it (it is stale, or owned elsewhere now).
        Its sockets stay with the farm: they become watchers and attach again, to the
        new owner or to the copy this replica reloads; replicas whose sockets watched
        it are told to do the same now rather than after a silence."""
        local = [s for s in res.sinks if not isinstance(s, RemoteSink)]
        watching = {s.replica for s in res.sinks if isinstance(s, RemoteSink)}
        res.sinks.clear()
        # Keep the lease: a release landing after this replica took it again to reload
        # would leave a copy here without a lease while another replica takes the farm.
        # (A lease we lost is not ours to release; one nobody uses lapses by itself.)
        self.residents.evict(res, release=False)
        if local:
            self.cluster.watched.setdefault(res.player_id, set()).update(local)
            self.spawn(self.rewatch(res.player_id))
        for replica in watching:
            self.cluster.tell_moved(replica, res.player_id, pushed_to)

    async def rewatch(self, player_id: str) -> None:
        """Our sockets of a farm owned elsewhere heard nothing for a while: the
        owner may be gone. Attach again: to the new owner, or take the farm."""
        self.cluster.heard(player_id)
        for sink in list(self.cluster.watched.get(player_id, ())):
            try:
                await self.attach(player_id, sink)
            except Exception as exc:  # keep the socket; the next silence check retries
                log.warning("cluster.rewatch_failed", player_id=player_id, error=str(exc))
                return
