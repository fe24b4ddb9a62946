"""Group commit: many farms' changes in one storage transaction.

Callers await `commit(...)`; a single task drains whatever has queued since the
last transaction and commits it at once, so under load one fsync serves many
actions and an idle server commits each action immediately.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from ..observability import Metrics
from ..store import FarmCommit, StorageUnavailable, Store

log = structlog.get_logger("llamawool.commit")


class GroupCommitter:
    def __init__(self, store: Store, metrics: Metrics, max_batch: int) -> None:
        self.store = store
        self.metrics = metrics
        self.max_batch = max_batch
        self._queue: list[tuple[FarmCommit, asyncio.Future[bool]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def commit(self, item: FarmCommit) -> bool:
        """Durably apply `item`; False when its expected revision no longer matches."""
        if self._task is None:
            raise StorageUnavailable("committer is not running")
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            try:
                await self._commit_batch(batch)
            except Exception:  # never let the committer die: every later commit would hang
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StorageUnavailable("storage error"))

    async def _commit_batch(self, batch: list[tuple[FarmCommit, asyncio.Future[bool]]]) -> None:
        started = time.perf_counter()
        try:
            applied = await self.store.commit([item for item, _ in batch])
        except StorageUnavailable as exc:
            self._fail(batch, StorageUnavailable(str(exc)))
            log.warning("store.commit_failed", error=str(exc), farms=len(batch))
            return
        except Exception as exc:  # a bug in an adapter must not kill the committer
            self._fail(batch, StorageUnavailable(f"storage error: {type(exc).__name__}"))
            log.exception("store.commit_crashed", farms=len(batch))
            return
        self.metrics.commit_batch.observe(len(batch))
        self.metrics.commit_duration.observe(time.perf_counter() - started)
        for (_, fut), ok in zip(batch, applied, strict=True):
            if not fut.done():
                fut.set_result(ok)

    def _fail(self, batch: list[tuple[FarmCommit, asyncio.Future[bool]]], exc: StorageUnavailable) -> None:
        self.metrics.store_errors.inc()
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)
