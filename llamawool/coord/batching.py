"""Rate-limit hits share round trips: what arrives while one batch is at the
coordinator goes out together in the next (`Coordinator.hit_many`), the way
the group committer shares a store transaction.

Why not a local token bucket per farm, synced to Redis now and then? It would
save Redis work too, but a player whose requests land on N replicas would get
up to N local allowances between syncs: the limit would weaken with every
replica added. Batching keeps every hit in the one shared sliding window, in
order, so the limit is exactly as strict as one script per hit; what it saves
is round trips (and the connections and event-loop wake-ups they cost), not
Redis commands. The price: under load a request may wait for the batch ahead
of it, at most one more Redis round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .base import LimitHit, LimitResult, Limits


class BatchedHits:
    """`hit(...)` as many callers at once, one `hit_many` round trip per batch in flight."""

    def __init__(self, coord: Limits, clock: Callable[[], float], max_batch: int = 1000) -> None:
        self.coord = coord
        self.clock = clock
        self.max_batch = max_batch
        self._pending: list[tuple[LimitHit, asyncio.Future[LimitResult]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def hit(self, key: str, limit: int, window_s: float) -> LimitResult:
        """Count one hit on the shared window; raises what the coordinator raised
        (CoordinationUnavailable) for every hit of a batch that failed."""
        fut: asyncio.Future[LimitResult] = asyncio.get_running_loop().create_future()
        self._pending.append((LimitHit(key, limit, window_s), fut))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="limit-hits")
        return await fut

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    results = await self.coord.hit_many([hit for hit, _ in batch], self.clock())
                except asyncio.CancelledError:  # shutting down: nobody gets an answer
                    for _, fut in batch + self._pending:
                        fut.cancel()
                    self._pending.clear()
                    raise
                except Exception as exc:  # every caller hears it and decides (local fallback)
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self._flusher = None
