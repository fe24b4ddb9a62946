"""Backup, restore and migrate, from and to either backend (`llamawool.store.portable`).

"The same data" is checked the strict way: the canonical dump of the target
equals the source's byte for byte (every player, token, farm, snapshot,
idempotency record and audit entry, with every field).
"""

from __future__ import annotations

import asyncio
import gzip
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from llamawool.cli import main
from llamawool.game.events import LiveEvent
from llamawool.store import (
    AuditRecord,
    FarmCommit,
    IdempotencyRecord,
    MongoStore,
    PlayerRecord,
    RefreshTokenRecord,
    Snapshot,
    SQLiteStore,
    Store,
)
from llamawool.store.portable import (
    VERSION,
    BackupError,
    VerifyError,
    backup,
    canonical_dump,
    migrate,
    restore,
)
from tests.conftest import API, MakeClient, new_guest
from tests.mongo_server import scratch_database, shared_server

T0 = 1_800_000_000.0
BACKENDS = ["sqlite", "mongo"]
# MongoDB as production runs it (a replica set: transactions, snapshot sessions), with
# exports read without a snapshot session, and as a standalone mongod (neither).
MONGO_KINDS: dict[str, dict[str, Any]] = {
    "mongo": {},
    "mongo-no-snapshot": {"snapshot_reads": False},
    "mongo-standalone": {"transactions": False, "snapshot_reads": False},
}


@asynccontextmanager
async def open_backend(kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    """An empty, opened store of that kind (a fresh SQLite file or MongoDB database)."""
    name = uuid.uuid4().hex[:10]
    store: Store
    if kind == "sqlite":
        store = SQLiteStore(tmp_path / f"{name}.sqlite3", synchronous="NORMAL", snapshot_history=3)
    else:
        options = MONGO_KINDS[kind]
        store = MongoStore(shared_server().uri, database=f"backup_{name}", snapshot_history=3, **options)
    await store.open()
    try:
        yield store
    finally:
        if isinstance(store, MongoStore):
            await store.client.drop_database(store.db.name)
        await store.close()


def farm_doc(player_id: str, marker: float) -> dict[str, Any]:
    return {
        "v": 1,
        "player_id": player_id,
        "balances": [marker, 0.1, 1e300, 5e-324, -0.0],
        "buildings": {"barn": 3, "shears": 0},
        "achievements": {"first_wool": T0},
        "offline_report": None,
        "stats": {"sheared": 12, "nested": {"deep": [1, 2, {"x": "y"}]}},
        "note": "llama 🦙 wool \u00e9\u4e2d",
        "online": False,
    }


async def populate(store: Store) -> None:
    """Every kind of record, with every optional field both set and unset."""
    admin = PlayerRecord(
        id="a-admin",
        username="Root_Admin",
        created_at=T0,
        role="admin",
        is_guest=False,
        email="Root@Example.com",
        password_hash="$argon2id$v=19$abc",
        device_id="device-admin",
        settings={"sound": False, "volume": 0.25, "tags": ["a", "b"]},
        flagged_at=T0 + 5,
        flag_reason="rate",
        last_violation_at=T0 + 4,
        violations_total=3,
    )
    guest = PlayerRecord(id="B-guest", username="guest_1", created_at=T0 + 1, device_id="device-guest")
    plain = PlayerRecord(id="\u00e9-plain", username="plain", created_at=T0 + 2, email="plain@example.com")
    for p in (admin, guest, plain):
        await store.create_player(p)
    for i, p in enumerate((admin, guest, plain)):
        assert await store.commit([FarmCommit(p.id, None, 1, farm_doc(p.id, float(i)), T0 + i)]) == [True]
        for rev in range(2, 7):
            item = FarmCommit(
                p.id,
                rev - 1,
                rev,
                farm_doc(p.id, rev * 1.5),
                T0 + 10 * rev,
                idempotency=IdempotencyRecord(
                    p.id, f"key-{rev}", f"sha-{rev}", 200, b"\x00\xff{}\n" + bytes([rev]), T0
                ),
                snapshot=Snapshot(p.id, rev, T0 + 10 * rev, rev * 2.5, farm_doc(p.id, rev)),
            )
            assert await store.commit([item]) == [True]
    await store.add_refresh_token(RefreshTokenRecord("tok-fresh", "fam-1", admin.id, T0, T0 + 100))
    await store.add_refresh_token(RefreshTokenRecord("tok-spent", "fam-2", guest.id, T0, T0 + 100))
    await store.spend_refresh_token("tok-spent", T0 + 7)
    await store.add_refresh_token(RefreshTokenRecord("tok-revoked", "fam-3", plain.id, T0, T0 + 100))
    await store.revoke_family("fam-3")
    await store.add_audit(AuditRecord(T0 + 1, admin.id, "flag", guest.id, {"reason": "manual", "n": [1, 2]}))
    await store.add_audit(AuditRecord(T0 + 2, admin.id, "broadcast", None, {}))
    await store.add_audit(AuditRecord(T0 + 2, admin.id, "broadcast", None, {}))  # a true duplicate
    await store.add_event(LiveEvent("ev-weekend", "Double wool 🦙", 2.0, None, T0 + 10, T0 + 7200, None, T0, admin.id))
    await store.add_event(LiveEvent("ev-golden", "Golden hour", 3, ("golden", "silver"), T0, T0 + 3600, None, T0, None))
    assert await store.cancel_event("ev-golden", T0 + 60) is not None


def record_lines(path: Path) -> list[bytes]:
    with gzip.open(path, "rb") as f:
        return f.read().splitlines()[1:-1]


@pytest.mark.parametrize("source_kind", BACKENDS)
@pytest.mark.parametrize("target_kind", BACKENDS)
async def test_backup_then_restore_preserves_every_record_byte_for_byte(
    tmp_path: Path, source_kind: str, target_kind: str
) -> None:
    file = tmp_path / "backup.jsonl.gz"
    async with open_backend(source_kind, tmp_path) as source, open_backend(target_kind, tmp_path) as target:
        await populate(source)
        original = await canonical_dump(source)
        written = await backup(source, file)

        restored = await restore(target, file)

        assert await canonical_dump(target) == original
        assert (
            restored.counts
            == written.counts
            == {
                "player": 3,
                "refresh_token": 3,
                "farm": 3,
                "snapshot": 12,  # per farm the newest 3 and the day's first (retention), restored as they were
                "idempotency": 15,
                "audit": 3,
                "live_event": 2,
            }
        )
        assert await target.list_events() == await source.list_events()
        # The records read back as the same values, whichever backend served them.
        assert await target.get_player("a-admin") == await source.get_player("a-admin")
        assert await target.load_farm("B-guest") == await source.load_farm("B-guest")
        assert await target.list_audit(10) == await source.list_audit(10)
        assert await target.get_idempotency("B-guest", "key-3") == await source.get_idempotency("B-guest", "key-3")
        # A backup of the restored store holds the same record lines as the first one.
        again = tmp_path / "again.jsonl.gz"
        await backup(target, again)
        assert record_lines(again) == record_lines(file) == original.splitlines()
        # Restoring the same file again changes nothing (no duplicated audit entries).
        await restore(target, file)
        assert await canonical_dump(target) == original


async def test_the_file_is_versioned_compressed_json_lines(tmp_path: Path) -> None:
    file = tmp_path / "b.gz"
    async with open_backend("sqlite", tmp_path) as store:
        await populate(store)
        await backup(store, file)
    lines = gzip.decompress(file.read_bytes()).splitlines()
    header, trailer = orjson.loads(lines[0]), orjson.loads(lines[-1])
    assert (header["format"], header["version"], header["source"]) == ("llamawool-backup", VERSION, "sqlite")
    assert trailer["kind"] == "end" and trailer["counts"]["player"] == 3 and len(trailer["sha256"]) == 64
    assert {orjson.loads(line)["kind"] for line in lines[1:-1]} == {
        "player",
        "refresh_token",
        "farm",
        "snapshot",
        "idempotency",
        "audit",
        "live_event",
    }
    assert not list(tmp_path.glob("*.partial"))


def _rewrite(file: Path, change: Any) -> None:
    lines = gzip.decompress(file.read_bytes()).splitlines(keepends=True)
    file.write_bytes(gzip.compress(b"".join(change(lines))))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda ls: [ls[0], *(line.replace(b"guest_1", b"guest_2") for line in ls[1:])], "checksum"),
        (lambda ls: ls[:-5], "truncated"),
        (lambda ls: [ls[0].replace(b'"version":%d' % VERSION, b'"version":99'), *ls[1:]], "newer"),
        (lambda ls: [b'{"hello":1}\n', *ls[1:]], "not a llamawool backup"),
    ],
    ids=["edited", "truncated", "future-version", "foreign"],
)
async def test_restore_refuses_a_damaged_file_and_writes_nothing(tmp_path: Path, damage: Any, message: str) -> None:
    file = tmp_path / "b.gz"
    async with open_backend("sqlite", tmp_path) as store:
        await populate(store)
        await backup(store, file)
    _rewrite(file, damage)
    async with open_backend("sqlite", tmp_path) as target:
        with pytest.raises(BackupError, match=message):
            await restore(target, file)
        assert await canonical_dump(target) == b""


async def test_a_cut_gzip_stream_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "b.gz"
    async with open_backend("sqlite", tmp_path) as store:
        await populate(store)
        await backup(store, file)
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    async with open_backend("sqlite", tmp_path) as target:
        with pytest.raises(BackupError):
            await restore(target, file)


@pytest.mark.parametrize(("source_kind", "target_kind"), [("sqlite", "mongo"), ("mongo", "sqlite")])
async def test_migrate_verifies_and_can_be_rerun_after_an_interruption(
    tmp_path: Path, source_kind: str, target_kind: str
) -> None:
    async with open_backend(source_kind, tmp_path) as source, open_backend(target_kind, tmp_path) as target:
        await populate(source)
        original = await canonical_dump(source)

        async def first_records(n: int) -> AsyncIterator[Any]:
            i = 0
            async for record in source.export_all():
                if i == n:
                    return
                i += 1
                yield record

        # The first run dies part-way (after the players, tokens, farms and some snapshots)...
        await target.import_all(first_records(12))
        assert await canonical_dump(target) != original
        # ...and running it again finishes the job, verified.
        digest = await migrate(source, target)
        assert digest.counts["player"] == 3
        assert await canonical_dump(target) == original
        # A third run is harmless too.
        await migrate(source, target)
        assert await canonical_dump(target) == original


async def test_migrate_fails_when_the_target_holds_other_data(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as source, open_backend("mongo", tmp_path) as target:
        await populate(source)
        await target.create_player(PlayerRecord(id="zz-stranger", username="stranger", created_at=T0))
        with pytest.raises(VerifyError, match="does not match"):
            await migrate(source, target)


async def test_a_game_played_on_sqlite_moves_to_mongodb_intact(tmp_path: Path, make_client: MakeClient) -> None:
    """Real farms written by the engine, not hand-made records."""
    client: TestClient = await make_client(tick=False)
    for _ in range(3):
        guest = await new_guest(client)
        for _ in range(3):
            resp = await client.post(f"{API}/farm/shear", json={"count": 5}, headers=guest["headers"])
            assert resp.status == 200, await resp.text()
    await client.close()  # drain: everything committed
    db_file = tmp_path / "data" / "llamawool.sqlite3"  # the settings fixture's data folder
    source = SQLiteStore(db_file)
    await source.open()
    try:
        async with open_backend("mongo", tmp_path) as target:
            await migrate(source, target)
            dump = await canonical_dump(source)
            assert dump.count(b'"kind":"player"') == 3 and dump.count(b'"kind":"farm"') == 3
            assert await canonical_dump(target) == dump
    finally:
        await source.close()


def test_the_command_line_backup_restore_and_migrate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with scratch_database("cli") as mongo_uri:
        sqlite_uri = f"sqlite:///{tmp_path}/source.sqlite3"
        back_uri = f"sqlite:///{tmp_path}/back.sqlite3"
        file = tmp_path / "llamawool.backup.gz"

        async def fill() -> None:
            store = SQLiteStore(tmp_path / "source.sqlite3")
            await store.open()
            await populate(store)
            await store.close()

        async def dump(path: Path) -> bytes:
            store = SQLiteStore(path)
            await store.open()
            try:
                return await canonical_dump(store)
            finally:
                await store.close()

        asyncio.run(fill())
        assert main(["backup", "--out", str(file), "--uri", sqlite_uri]) == 0
        assert "player 3" in capsys.readouterr().out
        assert main(["restore", "--in", str(file), "--uri", mongo_uri]) == 0
        assert "verified" in capsys.readouterr().out
        assert main(["migrate", "--from", mongo_uri, "--to", back_uri]) == 0
        assert main(["migrate", "--from", mongo_uri, "--to", back_uri]) == 0  # re-run: still fine
        assert asyncio.run(dump(tmp_path / "back.sqlite3")) == asyncio.run(dump(tmp_path / "source.sqlite3"))

        file.write_bytes(file.read_bytes()[:100])
        assert main(["restore", "--in", str(file), "--uri", back_uri]) == 1
        assert "llamawool restore:" in capsys.readouterr().err
        assert main(["migrate", "--from", "ftp://x", "--to", back_uri]) == 2
