"""Erased accounts stay erased: tombstones, and restores of backups made before an
erasure, on SQLite and on MongoDB (with and without transactions).

The scenario of every restore test: two players, a backup, one of them erases their
account, then the OLD backup is restored. The account must not come back wherever the
restore finds the tombstone: in the store it restores into, in a newer backup, or in
the live store it replaces. "Not back" is checked the strict way: the restored store's
canonical dump equals the live store's (so nothing else was lost either).
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import sqlite3
from pathlib import Path

import orjson
import pytest

from llamawool.cli import main
from llamawool.store import (
    AuditRecord,
    Erasure,
    FarmCommit,
    IdempotencyRecord,
    PlayerRecord,
    RefreshTokenRecord,
    Snapshot,
    SQLiteStore,
    Store,
)
from llamawool.store.portable import backup, canonical_dump, restore

from .test_backup import T0, farm_doc, open_backend

KINDS = ["sqlite", "mongo", "mongo-standalone"]
GONE, KEPT = "p-alice", "p-bob"


async def add_player(store: Store, player_id: str, name: str) -> None:
    """A player with a device, a farm, two saves, a replay answer, a session and an audit entry."""
    await store.create_player(
        PlayerRecord(
            player_id, name, T0, email=f"{name}@example.com", password_hash="$argon2id$x", device_id=f"d-{name}"
        )
    )
    assert await store.commit([FarmCommit(player_id, None, 1, farm_doc(player_id, 1.0), T0)]) == [True]
    item = FarmCommit(
        player_id,
        1,
        2,
        farm_doc(player_id, 2.0),
        T0 + 10,
        idempotency=IdempotencyRecord(player_id, "k1", "sha", 200, b'{"ok":true}', T0 + 10),
        snapshot=Snapshot(player_id, 2, T0 + 10, 5.0, farm_doc(player_id, 2.0)),
    )
    assert await store.commit([item]) == [True]
    await store.add_snapshots([Snapshot(player_id, 1, T0, 1.0, farm_doc(player_id, 1.0))])
    await store.add_refresh_token(RefreshTokenRecord(f"hash-{name}", f"fam-{name}", player_id, T0, T0 + 100))
    await store.add_audit(AuditRecord(T0 + 20, "p-admin", "player.lookup", player_id, {}))


async def play_then_erase(store: Store, old: Path) -> None:
    """Two players, a backup of both (`old`), then alice erases her account."""
    await add_player(store, GONE, "alice")
    await add_player(store, KEPT, "bob")
    await backup(store, old)
    await store.delete_player(GONE, T0 + 50)


async def assert_erased(store: Store, player_id: str = GONE) -> None:
    assert await store.get_player(player_id) is None
    assert await store.find_player(email="alice@example.com") is None
    assert await store.find_player(device_id="d-alice") is None
    assert await store.load_farm(player_id) is None
    assert await store.list_snapshots(player_id, 10) == []
    assert await store.list_player_tokens(player_id) == []
    assert await store.list_player_idempotency(player_id) == []
    assert player_id in {e.player_id for e in await store.list_erasures()}


async def test_an_erase_records_a_tombstone_that_keeps_the_earliest_time(store: Store) -> None:
    await add_player(store, GONE, "alice")
    await add_player(store, KEPT, "bob")
    await store.delete_player(GONE, T0 + 50)
    await store.delete_player(GONE, T0 + 90)  # again (an erase finished later): the first time stands
    await store.delete_player("never-existed", T0 + 60)
    assert await store.list_erasures() == [Erasure("never-existed", T0 + 60), Erasure(GONE, T0 + 50)]
    await assert_erased(store)
    assert await store.get_player(KEPT) is not None and len(await store.list_snapshots(KEPT, 10)) == 2


async def test_the_export_reads_are_the_players_own(store: Store) -> None:
    await add_player(store, GONE, "alice")
    await add_player(store, KEPT, "bob")
    await store.add_audit(AuditRecord(T0 + 30, GONE, "player.export", GONE, {}))
    await store.add_audit(AuditRecord(T0 + 31, "p-admin", "broadcast", None, {}))
    tokens = await store.list_player_tokens(GONE)
    assert [(t.token_hash, t.family_id) for t in tokens] == [("hash-alice", "fam-alice")]
    assert [(r.key, r.body) for r in await store.list_player_idempotency(GONE)] == [("k1", b'{"ok":true}')]
    about = await store.list_audit_about(GONE, 10)
    assert [(a.action, a.admin_id, a.target) for a in about] == [
        ("player.export", GONE, GONE),
        ("player.lookup", "p-admin", GONE),
    ]
    assert len(await store.list_audit_about(GONE, 1)) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_an_old_backup_restored_into_the_store_that_erased_brings_nothing_back(tmp_path: Path, kind: str) -> None:
    old = tmp_path / "old.gz"
    async with open_backend(kind, tmp_path) as live:
        await play_then_erase(live, old)
        expected = await canonical_dump(live)
        restored = await restore(live, old)  # its own tombstone applies
        await assert_erased(live)
        assert await canonical_dump(live) == expected
        assert restored.left_out == {"player": 1, "farm": 1, "snapshot": 2, "idempotency": 1, "refresh_token": 1}


@pytest.mark.parametrize("kind", KINDS)
async def test_an_old_backup_restored_into_a_new_store_drops_accounts_erased_since(tmp_path: Path, kind: str) -> None:
    """The disaster case: the tombstone comes from the newest backup, or from the live
    store the restore replaces; a store restored once keeps it for the next restore."""
    old, new = tmp_path / "old.gz", tmp_path / "new.gz"
    async with open_backend(kind, tmp_path) as live:
        await play_then_erase(live, old)
        await backup(live, new)
        expected = await canonical_dump(live)
        for source in ([new], [live]):
            async with open_backend(kind, tmp_path) as fresh:
                await restore(fresh, old, erasures_from=source)
                await assert_erased(fresh)
                assert await canonical_dump(fresh) == expected
        async with open_backend(kind, tmp_path) as fresh:
            await restore(fresh, new)  # the newest backup first, then an older one on top
            await restore(fresh, old)
            await assert_erased(fresh)
            assert await canonical_dump(fresh) == expected
        async with open_backend(kind, tmp_path) as fresh:
            # With no tombstone anywhere it can read, a restore cannot know: the account
            # comes back. What docs/disaster-recovery.md tells operators to avoid.
            await restore(fresh, old)
            assert await fresh.get_player(GONE) is not None


async def test_the_backup_carries_its_tombstones(tmp_path: Path) -> None:
    old, new = tmp_path / "old.gz", tmp_path / "new.gz"
    async with open_backend("sqlite", tmp_path) as live:
        await play_then_erase(live, old)
        await backup(live, new)
    with gzip.open(new, "rb") as f:
        lines = [orjson.loads(line) for line in f.read().splitlines()]
    assert lines[0]["version"] >= 2  # erasure lines came with version 2
    assert [line for line in lines if line.get("kind") == "erasure"] == [
        {"kind": "erasure", "player_id": GONE, "erased_at": T0 + 50}
    ]
    assert lines[-1]["counts"]["erasure"] == 1 and "player" in lines[-1]["counts"]


async def test_a_store_that_got_an_erased_account_back_loses_it_at_the_next_restore(tmp_path: Path) -> None:
    """A careless restore (no tombstone at hand) brought alice back; restoring again
    with the newest backup's tombstones erases her from the store in use."""
    old, new = tmp_path / "old.gz", tmp_path / "new.gz"
    async with open_backend("sqlite", tmp_path) as live, open_backend("mongo", tmp_path) as other:
        await play_then_erase(live, old)
        await backup(live, new)
        await restore(other, old)
        assert await other.get_player(GONE) is not None
        await restore(other, old, erasures_from=[new])
        await assert_erased(other)
        assert await canonical_dump(other) == await canonical_dump(live)


def test_the_command_line_restore_takes_tombstones_from_a_backup_or_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = tmp_path / "old.gz", tmp_path / "new.gz"
    live_path = tmp_path / "live.sqlite3"

    async def setup() -> None:
        live = SQLiteStore(live_path)
        await live.open()
        await play_then_erase(live, old)
        await backup(live, new)
        await live.close()

    async def alice_in(path: Path) -> bool:
        store = SQLiteStore(path)
        await store.open()
        try:
            return await store.get_player(GONE) is not None
        finally:
            await store.close()

    asyncio.run(setup())
    for n, source in enumerate([str(new), f"sqlite:///{live_path}"]):
        target = tmp_path / f"restored-{n}.sqlite3"
        assert main(["restore", "--in", str(old), "--uri", f"sqlite:///{target}", "--erasures-from", source]) == 0
        out = capsys.readouterr().out
        assert "verified" in out and "left out as erased: " in out and "player 1" in out, out
        assert not asyncio.run(alice_in(target))

    # An erasure a lost database took with it, re-applied by id from its log line.
    lost = tmp_path / "rebuilt.sqlite3"
    assert main(["restore", "--in", str(new), "--uri", f"sqlite:///{lost}"]) == 0
    assert main(["admin", "erase-player", "--player", KEPT, "--player", "p-nobody", "--uri", f"sqlite:///{lost}"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"erased {KEPT}",
        "erased p-nobody (not held here: tombstone recorded)",
    ]
    again = tmp_path / "again.sqlite3"
    assert (
        main(["restore", "--in", str(old), "--uri", f"sqlite:///{again}", "--erasures-from", f"sqlite:///{lost}"]) == 0
    )
    assert "left out as erased: " in capsys.readouterr().out

    async def players_in(path: Path) -> list[str]:
        store = SQLiteStore(path)
        await store.open()
        try:
            return [e.player_id for e in await store.list_erasures()] + [
                p for p in (GONE, KEPT) if await store.get_player(p) is not None
            ]
        finally:
            await store.close()

    assert asyncio.run(players_in(again)) == [GONE, KEPT, "p-nobody"]  # three tombstones, no player


def test_a_tombstone_source_is_only_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--erasures-from` an old release's database leaves it as it was (it holds no
    tombstones: that release wrote none); a source that does not exist is an error."""
    old = tmp_path / "old.gz"
    live_path = tmp_path / "live.sqlite3"

    async def setup() -> None:
        live = SQLiteStore(live_path)
        await live.open()
        await play_then_erase(live, old)
        await live.close()

    asyncio.run(setup())
    release = tmp_path / "release.sqlite3"
    shutil.copy(Path(__file__).parent.parent / "fixtures" / "schema_v1" / "llamawool.sqlite3", release)
    before = release.read_bytes()
    target = f"sqlite:///{tmp_path}/t.sqlite3"
    assert main(["restore", "--in", str(old), "--uri", target, "--erasures-from", f"sqlite:///{release}"]) == 0
    assert "left out" not in capsys.readouterr().out  # no tombstone there: alice comes back
    assert release.read_bytes() == before
    with sqlite3.connect(release) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0

    missing = tmp_path / "nope.sqlite3"
    target = f"sqlite:///{tmp_path}/t2.sqlite3"
    assert main(["restore", "--in", str(old), "--uri", target, "--erasures-from", f"sqlite:///{missing}"]) == 2
    assert "no database at" in capsys.readouterr().err and not missing.exists()
    assert main(["restore", "--in", str(old), "--uri", target, "--erasures-from", str(missing)]) == 1
    assert "llamawool restore:" in capsys.readouterr().err
