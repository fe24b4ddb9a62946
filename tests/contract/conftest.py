"""The storage contract runs on every adapter: one `store` fixture per backend.

To add a backend, add one factory to `BACKENDS`: an async context manager that
takes a scratch folder and the snapshot retention (the newest `history`
snapshots per farm, plus the first snapshot of each UTC day for `daily_days`
days), yields an opened, empty store and closes it afterwards. Every test in
`test_store_contract.py` then runs on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest

from llamawool.store import SQLiteStore, Store

from .mongo_backend import mongo_no_transactions_store, mongo_server, mongo_store  # noqa: F401 - a fixture

# Small enough that a test can overflow them with a handful of snapshots.
SNAPSHOT_HISTORY = 5
SNAPSHOT_DAILY_DAYS = 2

StoreFactory = Callable[[Path, int, int], AbstractAsyncContextManager[Store]]


@asynccontextmanager
async def sqlite_store(tmp_path: Path, history: int, daily_days: int) -> AsyncIterator[Store]:
    store = SQLiteStore(
        tmp_path / "contract.sqlite3", synchronous="NORMAL", snapshot_history=history, snapshot_daily_days=daily_days
    )
    await store.open()
    try:
        yield store
    finally:
        await store.close()


BACKENDS: dict[str, StoreFactory] = {
    "sqlite": sqlite_store,
    "mongo": mongo_store,
    "mongo-no-txn": mongo_no_transactions_store,
}


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    factory = BACKENDS[request.param]
    async with factory(tmp_path, SNAPSHOT_HISTORY, SNAPSHOT_DAILY_DAYS) as s:
        yield s
