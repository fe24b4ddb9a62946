"""Routing: run an operation where the farm lives.

Any replica serves any request. When this replica owns the farm (or takes its
free lease) the operation runs here; else it goes to the owner as a `wire.Op`
and comes back as the same type. The owner's side is `serve`: it refuses a farm
it does not own (the caller routes again) and runs the operation locally.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .cluster import Cluster
from .errors import FarmConflict, OwnerUnreachable, Rerouted
from .residents import ResidentSet
from .wire import Op

A = TypeVar("A")
R = TypeVar("R")


class _Unknown:
    """The owner is not known yet: ask the coordinator."""


UNKNOWN = _Unknown()


class Router:
    def __init__(self, residents: ResidentSet, cluster: Cluster) -> None:
        self.residents = residents
        self.cluster = cluster

    async def route(
        self,
        player_id: str,
        op: Op[A, R],
        args: A,
        local: Callable[[], Awaitable[R]],
        asked: list[str] | None = None,
    ) -> R:
        """Run `local` when this replica owns the farm (taking a free lease), else
        ask the owner. An owner that does not answer in time is either slow (its
        heartbeat is current: OwnerBusy, 503 + Retry-After, no polling) or gone (its
        lease is taken over at once and the farm is loaded here). A commit refused as
        stale reloads the farm and runs again. `asked` collects the owners the
        request was sent to."""
        known: str | _Unknown | None = UNKNOWN
        for _ in range(4):
            if player_id in self.residents.by_id:
                owner = None
            elif isinstance(known, _Unknown):
                owner = await self.cluster.owner_elsewhere(player_id)
            else:
                owner = known
            known = UNKNOWN
            if owner is None:
                try:
                    return await local()
                except FarmConflict:
                    continue  # our copy was stale or moved: it was dropped; route again
            try:
                if asked is not None:
                    asked.append(owner)
                out = await self.cluster.call(owner, op.name, player_id, op.args_to_wire(args))
                return op.result_from_wire(player_id, out)
            except Rerouted:
                continue
            except OwnerUnreachable:
                known = await self.cluster.owner_silent(player_id, owner)
        raise OwnerUnreachable(player_id)

    def serve(self, op: Op[A, R], run: Callable[[str, str, A], Awaitable[R]], *, owned_only: bool = True) -> None:
        """Answer peers asking for `op`: `run(farm id, asking replica, args)` on this
        replica, which must own the farm unless `owned_only` is False."""

        async def handler(player_id: str, wire_args: dict[str, Any]) -> Any:
            if owned_only:
                await self._owned(player_id)
            try:
                result = await run(player_id, wire_args["_from"], op.args_from_wire(wire_args))
            except FarmConflict:
                # Our copy was dropped while this request waited for it (stale, handed
                # over, lease lost): the caller asks whoever owns the farm now.
                raise Rerouted(player_id) from None
            return op.result_to_wire(result)

        self.cluster.handlers[op.name] = handler

    async def _owned(self, player_id: str) -> None:
        if not self.residents.here(player_id) and await self.cluster.owner_elsewhere(player_id) is not None:
            raise Rerouted(player_id)
