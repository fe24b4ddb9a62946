"""The contract suite's "mongo" backend: `MongoStore` on the session's MongoDB server
(SecantusDB, or the real one `LLAMAWOOL_TEST_MONGODB_URI` names).

Each test gets its own database (dropped afterwards), so tests stay independent
while sharing one server process.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from llamawool.store import MongoStore, Store
from tests.mongo_server import ExternalMongo, SecantusServer, shared_server, stop_shared_server


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[SecantusServer | ExternalMongo]:
    """The session's server (`shared_server()`), answering pings; stopped at the end of the session."""
    yield shared_server()
    stop_shared_server()


@asynccontextmanager
async def mongo_store(
    tmp_path: Path, history: int, daily_days: int, transactions: bool | None = None
) -> AsyncIterator[Store]:
    server = shared_server()
    database = f"contract_{uuid.uuid4().hex[:12]}"
    store = MongoStore(
        server.uri,
        database=database,
        timeout_s=5.0,
        snapshot_history=history,
        snapshot_daily_days=daily_days,
        transactions=transactions,
    )
    await store.open()
    assert transactions is False or store.transactions, "the test server should run transactions"
    try:
        yield store
    finally:
        try:
            await store.client.drop_database(database)
        finally:
            await store.close()


@asynccontextmanager
async def mongo_no_transactions_store(tmp_path: Path, history: int, daily_days: int) -> AsyncIterator[Store]:
    """The fallback a standalone mongod gets: per-farm compare-and-set, no transactions."""
    async with mongo_store(tmp_path, history, daily_days, transactions=False) as store:
        assert isinstance(store, MongoStore) and not store.transactions
        yield store
