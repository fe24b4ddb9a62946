"""Schema migrations on both stores: a database written by release 376f2b0 (the
fixture in tests/fixtures/schema_v1) is upgraded at open and keeps every record;
a database newer than the code is refused, and so is an old one when
MIGRATE_ON_START is off."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llamawool.store import MongoStore, Store
from llamawool.store.migrations import SchemaBehind, SchemaTooNew
from llamawool.store.migrations import mongo as mongo_schema
from llamawool.store.migrations import sqlite as sqlite_schema
from llamawool.store.portable import digest, verify, verify_file

from .mongo_backend import mongo_server  # noqa: F401 - a fixture
from .schema_fixture import BACKENDS, OldDatabase, old_database

LATEST = {"sqlite": sqlite_schema.LATEST, "mongo": mongo_schema.LATEST}


@pytest.fixture(params=BACKENDS)
async def old(request: pytest.FixtureRequest, tmp_path: Path) -> OldDatabase:
    async with old_database(request.param, tmp_path) as db:
        yield db


async def test_the_fixture_is_the_old_release_s_unversioned_database(old: OldDatabase) -> None:
    assert await old.raw_version() == (0, None)
    store = old.store("inspect")
    await store.open()
    try:
        status = await store.schema_status()
    finally:
        await store.close()
    assert (status.version, status.latest) == (0, LATEST[old.backend])
    assert [v for v, _ in status.pending] == list(range(1, LATEST[old.backend] + 1))


async def test_open_upgrades_the_last_release_s_database_and_keeps_every_record(old: OldDatabase) -> None:
    store = old.store()
    await store.open()
    try:
        status = await store.schema_status()
        assert (status.version, status.pending, status.too_new) == (LATEST[old.backend], [], False)
        # every record the old release exported, byte for byte: players, tokens, farms,
        # snapshots, idempotency records, audit entries
        await verify(store, verify_file(old.export), what="release 376f2b0's own export")
        # and what the export leaves out, or what the old rows must still do
        assert [(r.session_id, r.until) for r in await store.revocations_since(0.0)] == [("fam-bob", 1790000900.0)]
        alice = await store.find_player(email="alice@EXAMPLE.org")
        assert alice is not None and alice.id == "p-alice"
        bob = await store.find_player(device_id="device-bob")
        assert bob is not None and bob.settings == {"sound": False}
        assert [p.id for p in await store.list_flagged()] == ["p-carol"]
        idem = await store.get_idempotency("p-carol", "key-5")
        assert idem is not None and idem.body == b'{"ok":true}'
        farm = await store.load_farm("p-alice")
        assert farm is not None and farm.revision == 3 and farm.doc["note"] == "ñandú 🦙"
        assert [s.revision for s in await store.list_snapshots("p-alice", 10)] == [3, 2, 1, 0]
        assert (await store.spend_refresh_token("h-a2", 1790000100.0)).record is not None
        assert (await store.spend_refresh_token("h-b2", 1790000100.0)).reused  # revoked by the old release
    finally:
        await store.close()
    assert await old.raw_version() == (LATEST[old.backend], 0)


async def test_mongo_upgrade_backfills_refresh_families_from_the_old_tokens(tmp_path: Path) -> None:
    async with old_database("mongo", tmp_path) as old:
        assert await old.mongo_docs("refresh_families") == []
        store = old.store()
        await store.open()
        await store.close()
        assert await old.mongo_docs("refresh_families") == [
            {"_id": "fam-alice", "player_id": "p-alice", "revoked": False},
            {"_id": "fam-bob", "player_id": "p-bob", "revoked": True},
            {"_id": "fam-carol", "player_id": "p-carol", "revoked": False},
        ]
        assert "by_player" in await old.mongo_index_names("refresh_families")
        history = (await old.mongo_docs("schema_version"))[0]["history"]
        assert [h["version"] for h in history] == list(range(1, LATEST["mongo"] + 1))


async def test_two_stores_opening_the_old_release_s_database_at_once_both_start(old: OldDatabase) -> None:
    """MongoDB: one takes the lock (test_schema_lock.py forces the interleaving);
    SQLite: the second waits for the first's write transaction, then finds nothing pending."""
    first, second = old.store(), old.store()
    await asyncio.gather(first.open(), second.open())
    try:
        await verify(second, verify_file(old.export), what="release 376f2b0's own export")
    finally:
        await first.close()
        await second.close()
    assert await old.raw_version() == (LATEST[old.backend], 0)


async def test_every_step_can_run_again_without_changing_a_record(old: OldDatabase) -> None:
    """A step cut short by a crash runs again from its start: each must be idempotent."""
    store = old.store()
    await store.open()
    try:
        before = await digest(store)
        if isinstance(store, MongoStore):
            for mstep in mongo_schema.STEPS:
                await mstep.apply(store.db)
            families = await old.mongo_docs("refresh_families")
            assert len(families) == 3 and [f["revoked"] for f in families] == [False, True, False]
        else:
            for sstep in sqlite_schema.STEPS:
                await store._write(sstep.apply)
        assert await digest(store) == before
        assert await store.upgrade_schema() == []  # nothing pending: nothing run
    finally:
        await store.close()


async def test_a_database_newer_than_the_code_is_refused_and_left_alone(old: OldDatabase) -> None:
    latest = LATEST[old.backend]
    await old.set_version(latest + 1, latest + 1)  # a newer release ran a contract step
    store: Store = old.store()
    with pytest.raises(SchemaTooNew) as refused:
        await store.open()
    await store.close()
    message = str(refused.value)
    assert f"schema version {latest + 1}" in message and f"this code knows {latest}" in message
    assert "Nothing was changed" in message
    assert await old.raw_version() == (latest + 1, latest + 1)
    # MIGRATE_ON_START=false refuses it just the same
    store = old.store("refuse")
    with pytest.raises(SchemaTooNew):
        await store.open()
    await store.close()


async def test_a_newer_database_after_expand_steps_only_still_opens(old: OldDatabase) -> None:
    """Rollback during a rolling upgrade: the new release added, removed nothing."""
    latest = LATEST[old.backend]
    first = old.store()
    await first.open()
    await first.close()
    await old.set_version(latest + 1, latest)
    store = old.store()
    await store.open()
    try:
        status = await store.schema_status()
        assert (status.version, status.pending, status.too_new) == (latest + 1, [], False)
        await verify(store, verify_file(old.export), what="release 376f2b0's own export")
    finally:
        await store.close()
    assert await old.raw_version() == (latest + 1, latest)


async def test_with_migrate_on_start_off_an_old_database_is_refused_naming_the_command(old: OldDatabase) -> None:
    store = old.store("refuse")
    with pytest.raises(SchemaBehind) as refused:
        await store.open()
    await store.close()
    assert "python -m llamawool migrate up" in str(refused.value)
    assert "MIGRATE_ON_START" in str(refused.value)
    assert await old.raw_version() == (0, None)
    # after `migrate up` (an "inspect" store upgraded on purpose) it opens
    upgrader = old.store("inspect")
    await upgrader.open()
    ran = await upgrader.upgrade_schema()
    await upgrader.close()
    assert len(ran) == LATEST[old.backend]
    store = old.store("refuse")
    await store.open()
    await store.close()
