"""MongoDB beyond the shared contract: selection from settings, indexes, and outages.

The outage tests run their own SecantusDB on a data folder, stop it while a
store (or the whole server) is using it, and restart it on the same port: writes
must fail cleanly with StorageUnavailable (503 at the API), and everything must
work again once the server is back, with nothing committed before lost.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent

from llamawool.settings import Settings, load_settings
from llamawool.store import (
    FarmCommit,
    IdempotencyRecord,
    MongoStore,
    PlayerRecord,
    Snapshot,
    SQLiteStore,
    StorageUnavailable,
    Store,
    open_store,
    store_from_uri,
)
from tests.conftest import API, MakeClient, new_guest
from tests.mongo_server import SecantusServer, start_or_skip

from .conftest import BACKENDS, SNAPSHOT_DAILY_DAYS, SNAPSHOT_HISTORY
from .mongo_backend import mongo_server  # noqa: F401 - a fixture

T0 = 1_800_000_000.0


def test_mongodb_uri_selects_the_mongo_adapter(tmp_path: Path) -> None:
    env = {
        "MONGODB_URI": "mongodb://db.example:27017/game",
        "LLAMAWOOL_MONGODB_POOL_SIZE": "7",
        "LLAMAWOOL_MONGODB_TIMEOUT_S": "2.5",
    }
    settings = load_settings({"data_dir": tmp_path}, environ=env)
    store = open_store(settings)
    assert isinstance(store, MongoStore)
    assert (store.uri, store.pool_size, store.timeout_s) == ("mongodb://db.example:27017/game", 7, 2.5)
    assert load_settings(environ={"LLAMAWOOL_MONGODB_URI": "mongodb://x/"}).mongodb_uri == "mongodb://x/"
    assert isinstance(open_store(Settings(data_dir=tmp_path)), SQLiteStore)


def test_store_from_uri(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    sqlite = store_from_uri(f"sqlite:///{tmp_path}/a.sqlite3", s)
    assert isinstance(sqlite, SQLiteStore) and sqlite.path == tmp_path / "a.sqlite3"
    assert isinstance(store_from_uri("mongodb+srv://cluster.example/db", s), MongoStore)
    with pytest.raises(ValueError, match="expected"):
        store_from_uri("postgres://x", s)


@pytest.fixture
async def mongo(mongo_server: SecantusServer) -> AsyncIterator[MongoStore]:  # noqa: F811
    database = f"t_{uuid.uuid4().hex[:12]}"
    store = MongoStore(mongo_server.uri, database=database)
    await store.open()
    yield store
    await store.client.drop_database(database)
    await store.close()


async def test_indexes_are_created_at_open(mongo: MongoStore) -> None:
    players = await mongo.db["players"].index_information()
    assert players["username_unique"]["unique"] and players["email_unique"]["unique"]
    assert players["device_unique"]["unique"]
    assert "flagged" in players
    assert (await mongo.db["snapshots"].index_information())["by_farm_revision"]["unique"]
    assert (await mongo.db["idempotency"].index_information())["by_player_key"]["unique"]
    tokens = await mongo.db["refresh_tokens"].index_information()
    assert {"by_family", "by_player"} <= set(tokens)
    # Opening again (another replica starting) is harmless.
    again = MongoStore(mongo.uri, database=mongo.db.name)
    await again.open()
    await again.close()


async def test_the_test_server_runs_transactions_and_majority_writes(mongo: MongoStore) -> None:
    assert mongo.transactions and mongo.replica_set
    assert mongo.db.write_concern.document.get("w") == "majority"


async def test_an_unreachable_server_is_storage_unavailable_at_open() -> None:
    store = MongoStore(f"mongodb://127.0.0.1:{_closed_port()}/", timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        await store.open()
    assert time.monotonic() - started < 5


def _closed_port() -> int:
    from tests.helpers import free_port

    return free_port()


@pytest.fixture
def stoppable(tmp_path: Path) -> Iterator[SecantusServer]:
    """A server of this test's own, on a data folder, so it can stop and come back."""
    server = start_or_skip(SecantusServer(tmp_path / "mongo-data", log_dir=tmp_path))
    yield server
    server.kill()


async def _until_up(store: MongoStore, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await store.ping()
            return
        except StorageUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("transactions", [True, False], ids=["transactions", "no-transactions"])
async def test_writes_fail_cleanly_while_the_server_is_down_and_work_after_a_restart(
    stoppable: SecantusServer, transactions: bool
) -> None:
    store = MongoStore(stoppable.uri, timeout_s=1.0, transactions=transactions)
    await store.open()
    try:
        p = PlayerRecord(id="p1", username="before", created_at=T0, device_id="dev-1")
        await store.create_player(p)
        assert await store.commit([FarmCommit("p1", None, 1, {"n": 1}, T0)]) == [True]

        stoppable.stop()

        late = PlayerRecord(id="p2", username="during", created_at=T0)
        attempts = [
            store.ping(),
            store.create_player(late),
            store.commit([FarmCommit("p1", 1, 2, {"n": 2}, T0 + 1)]),
            store.load_farm("p1"),
            store.touch_farms([("p1", T0 + 5)]),
        ]
        for attempt in attempts:
            started = time.monotonic()
            with pytest.raises(StorageUnavailable):
                await attempt
            assert time.monotonic() - started < 10, "a write waited far past the timeout"

        stoppable.start()
        await _until_up(store)

        # Everything committed before the outage survived the restart; nothing refused during it was written.
        assert await store.get_player("p1") == p
        assert await store.get_player("p2") is None
        farm = await store.load_farm("p1")
        assert farm is not None and (farm.revision, farm.doc) == (1, {"n": 1})
        # And the same store object writes again, with no reopen.
        assert await store.commit([FarmCommit("p1", 1, 2, {"n": 2}, T0 + 1)]) == [True]
        await store.create_player(late)
        assert await store.count_players() == 2
    finally:
        await store.close()


@pytest.mark.slow
@pytest.mark.parametrize("transactions", [True, False], ids=["transactions", "no-transactions"])
async def test_a_killed_server_keeps_acknowledged_commits(tmp_path: Path, transactions: bool) -> None:
    # The store asks for journaled writes (j=true). SecantusDB 0.7 honours that on plain
    # writes but not on commitTransaction, so a transaction's durability across kill -9
    # needs --sync-on-commit there (real mongod journals a majority commit by default).
    extra = ("--sync-on-commit",) if transactions else ()
    stoppable = start_or_skip(SecantusServer(tmp_path / "mongo-data", log_dir=tmp_path, extra=extra))
    store = MongoStore(stoppable.uri, timeout_s=1.0, transactions=transactions)
    await store.open()
    try:
        assert await store.commit([FarmCommit(f"f{i}", None, 1, {"i": i}, T0) for i in range(20)]) == [True] * 20
        stoppable.kill()
        stoppable.start()
        await _until_up(store)
        farms = [await store.load_farm(f"f{i}") for i in range(20)]
        assert [f.doc["i"] if f else None for f in farms] == list(range(20))
    finally:
        await store.close()
        stoppable.kill()


@pytest.mark.slow
async def test_the_server_answers_503_and_recovers_when_mongodb_comes_back(
    stoppable: SecantusServer, make_client: MakeClient
) -> None:
    client = await make_client(mongodb_uri=stoppable.uri, mongodb_timeout_s=1.0)
    assert (await client.get("/ready")).status == 200
    guest = await new_guest(client)
    shear = {"json": {"count": 1}, "headers": guest["headers"]}
    assert (await client.post(f"{API}/farm/shear", **shear)).status == 200

    stoppable.stop()

    ready = await client.get("/ready")
    assert ready.status == 503 and "storage" in (await ready.json())["checks"]
    refused = await client.post(f"{API}/farm/shear", **shear)
    assert refused.status == 503, await refused.text()
    assert "Retry-After" in refused.headers

    stoppable.start()
    deadline = time.monotonic() + 30
    while (await client.get("/ready")).status != 200:
        assert time.monotonic() < deadline, "/ready never recovered"
        await asyncio.sleep(0.2)
    again = await client.post(f"{API}/farm/shear", **shear)
    assert again.status == 200, await again.text()


# ---- beyond the shared contract, checked on every backend against the SQLite reference ----------------


@pytest.fixture(params=sorted(BACKENDS))
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with BACKENDS[request.param](tmp_path, SNAPSHOT_HISTORY, SNAPSHOT_DAILY_DAYS) as s:
        yield s


async def test_a_batch_may_touch_one_farm_several_times_in_order(any_store: Store) -> None:
    batch = [
        FarmCommit("f", None, 1, {"n": 1}, T0),
        FarmCommit("f", 1, 2, {"n": 2}, T0 + 1, idempotency=IdempotencyRecord("f", "k2", "h", 200, b"2", T0)),
        FarmCommit("f", 1, 3, {"n": -1}, T0 + 2, idempotency=IdempotencyRecord("f", "k3", "h", 200, b"3", T0)),
        FarmCommit("f", None, 1, {"n": -1}, T0 + 3),
        FarmCommit("f", 2, 3, {"n": 3}, T0 + 4),
    ]

    assert await any_store.commit(batch) == [True, True, False, False, True]

    farm = await any_store.load_farm("f")
    assert farm is not None and (farm.revision, farm.doc, farm.last_active) == (3, {"n": 3}, T0 + 4)
    assert await any_store.get_idempotency("f", "k2") is not None
    assert await any_store.get_idempotency("f", "k3") is None


async def test_retention_of_a_batch_of_snapshots_matches_sqlite(any_store: Store, tmp_path: Path) -> None:
    hour = 3600.0
    # Out of order, several per day, across more days than the daily window, in one call.
    order = [9, 2, 14, 1, 7, 3, 12, 5, 11, 4, 13, 6, 8, 10]
    snaps = [Snapshot("p", r, T0 + r * 7 * hour, float(r), {"r": r}) for r in order]
    await any_store.add_snapshots(snaps)
    await any_store.add_snapshots([Snapshot("p", 15, T0 + 15 * 7 * hour, 15.0, {"r": 15})])
    async with BACKENDS["sqlite"](tmp_path / "ref", SNAPSHOT_HISTORY, SNAPSHOT_DAILY_DAYS) as reference:
        await reference.add_snapshots(snaps)
        await reference.add_snapshots([Snapshot("p", 15, T0 + 15 * 7 * hour, 15.0, {"r": 15})])
        expected = await reference.list_snapshots("p", 100)

    assert await any_store.list_snapshots("p", 100) == expected


async def test_concurrent_registrations_of_one_device_make_one_player(any_store: Store) -> None:
    made = await asyncio.gather(
        *(any_store.create_player(PlayerRecord(f"id{i}", f"name{i}", T0, device_id="dev-race")) for i in range(6))
    )

    assert len({p.id for p in made}) == 1
    assert await any_store.count_players() == 1


async def test_without_transactions_the_idempotency_record_commits_inside_the_farm(
    mongo_server: SecantusServer,  # noqa: F811
) -> None:
    store = MongoStore(mongo_server.uri, database=f"t_{uuid.uuid4().hex[:12]}", transactions=False)
    await store.open()
    try:
        assert not store.transactions
        await store.commit([FarmCommit("f", None, 1, {"n": 1}, T0)])
        record = IdempotencyRecord("f", "k", "h", 201, b'{"ok":true}', T0)
        assert await store.commit([FarmCommit("f", 1, 2, {"n": 2}, T0, idempotency=record)]) == [True]
        # As if the process died between the farm's update and the copy to the collection:
        await store.db["idempotency"].delete_many({})

        assert await store.get_idempotency("f", "k") == record
        assert await store.get_idempotency("f", "other") is None
        farm = await store.load_farm("f")
        assert farm is not None and farm.doc == {"n": 2}
        # A retry of that action is a replay still: found in the farm's own copy of the record.
        assert await store.commit([FarmCommit("f", 2, 3, {"n": 3}, T0, idempotency=record)]) == [False]
        farm = await store.load_farm("f")
        assert farm is not None and farm.doc == {"n": 2}
    finally:
        await store.client.drop_database(store.db.name)
        await store.close()


class _Commands(CommandListener):
    """Counts the commands a client sends, by name: its round trips to the server."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()

    def started(self, event: CommandStartedEvent) -> None:
        self.sent[event.command_name] += 1

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


async def test_a_group_commit_is_a_few_round_trips_whatever_its_size(
    mongo_server: SecantusServer,  # noqa: F811
) -> None:
    commands = _Commands()
    store = MongoStore(mongo_server.uri, database=f"t_{uuid.uuid4().hex[:12]}", listeners=[commands])
    await store.open()
    try:
        assert store.transactions
        await store.commit([FarmCommit(f"f{i}", None, 1, {"n": 1}, T0) for i in range(50)])
        commands.sent.clear()

        assert await store.commit([FarmCommit(f"f{i}", 1, 2, {"n": 2}, T0) for i in range(50)]) == [True] * 50
        assert commands.sent == {"update": 1, "commitTransaction": 1}  # no read before the writes
        commands.sent.clear()

        keyed = [
            FarmCommit(f"f{i}", 2, 3, {"n": 3}, T0, idempotency=IdempotencyRecord(f"f{i}", "k", "h", 200, b"", T0))
            for i in range(50)
        ]
        assert await store.commit(keyed) == [True] * 50
        assert commands.sent == {"update": 1, "insert": 1, "commitTransaction": 1}
        commands.sent.clear()

        # One replayed key among fresh ones: decided farm by farm, the others still apply.
        retry = [
            FarmCommit("f0", 3, 4, {"n": 4}, T0, idempotency=IdempotencyRecord("f0", "k", "h", 200, b"", T0)),
            FarmCommit("f1", 3, 4, {"n": 4}, T0, idempotency=IdempotencyRecord("f1", "k2", "h", 200, b"", T0)),
        ]
        assert await store.commit(retry) == [False, True]
        f0, f1 = await store.load_farm("f0"), await store.load_farm("f1")
        assert f0 is not None and f0.revision == 3 and f1 is not None and f1.revision == 4
    finally:
        await store.client.drop_database(store.db.name)
        await store.close()
