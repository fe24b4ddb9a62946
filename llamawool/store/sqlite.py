"""Embedded storage on SQLite (stdlib sqlite3, WAL), kept off the event loop.

Writes run on one dedicated thread with one connection, and every write that
arrives while a transaction is being written joins the next one (each in a
savepoint): one transaction and one fsync for many writes, farms' group
commits and account writes alike. Reads run on a small pool of
threads with their own connections (WAL lets them read while a write runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson

from ..game.events import LiveEvent
from .base import (
    AuditRecord,
    DuplicateKey,
    Erasure,
    FarmCommit,
    IdempotencyRecord,
    PlayerChanges,
    PlayerRecord,
    Record,
    RefreshTokenRecord,
    Revocation,
    Snapshot,
    SpendResult,
    StorageUnavailable,
    StoredFarm,
    audit_key,
    plan_snapshot_writes,
)
from .migrations import SchemaPolicy, SchemaStatus
from .migrations import sqlite as schema

T = TypeVar("T")
# a write waiting for the next transaction: the work, its caller's future, that caller's loop
_PendingWrite = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]
EXPORT_PAGE = 1000
MIN_FREE_BYTES = 64 * 1024  # after a failed write, less free space than this keeps /ready at 503
IMPORT_CHUNK = 500
BUSY_TIMEOUT_S = 30  # how long a statement waits for a lock another connection holds

# the fields `update_player_fields` may write (PlayerChanges), each a players column
PLAYER_FIELDS = frozenset(PlayerChanges.__annotations__)
PLAYER_COLUMNS = (
    "id, username, email, password_hash, role, is_guest, created_at, settings, "
    "flagged_at, flag_reason, last_violation_at, violations_total"
)


def _player(row: tuple[Any, ...] | None, device_id: str | None = None) -> PlayerRecord | None:
    if row is None:
        return None
    return PlayerRecord(
        id=row[0],
        username=row[1],
        email=row[2],
        password_hash=row[3],
        role=row[4],
        is_guest=bool(row[5]),
        created_at=row[6],
        settings=orjson.loads(row[7]),
        device_id=device_id,
        flagged_at=row[8],
        flag_reason=row[9],
        last_violation_at=row[10],
        violations_total=row[11],
    )


def _player_columns(changes: PlayerChanges) -> list[tuple[str, Any]]:
    """(column, SQL value) of each field in `changes`, in the players table's terms."""
    out: list[tuple[str, Any]] = []
    for name, value in changes.items():
        if name not in PLAYER_FIELDS:
            raise ValueError(f"not a player field: {name}")
        if name == "is_guest":
            value = int(bool(value))
        elif name == "settings":
            value = orjson.dumps(value).decode()
        out.append((name, value))
    return out


def _insert_token(c: sqlite3.Connection, record: RefreshTokenRecord) -> None:
    c.execute(
        "INSERT INTO refresh_tokens (token_hash, family_id, player_id, issued_at, expires_at, spent_at, revoked) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            record.token_hash,
            record.family_id,
            record.player_id,
            record.issued_at,
            record.expires_at,
            record.spent_at,
            int(record.revoked),
        ),
    )


def _spend(c: sqlite3.Connection, token_hash: str, now: float) -> SpendResult:
    row = c.execute(
        "SELECT token_hash, family_id, player_id, issued_at, expires_at, spent_at, revoked "
        "FROM refresh_tokens WHERE token_hash = ?",
        (token_hash,),
    ).fetchone()
    if row is None:
        return SpendResult(None)
    rec = RefreshTokenRecord(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))
    if rec.spent_at is not None or rec.revoked:
        c.execute("UPDATE refresh_tokens SET revoked = 1 WHERE family_id = ?", (rec.family_id,))
        return SpendResult(rec, reused=True)
    c.execute("UPDATE refresh_tokens SET spent_at = ? WHERE token_hash = ?", (now, token_hash))
    rec.spent_at = now
    return SpendResult(rec)


def _settle(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in items:
        if fut.done():  # its caller was cancelled; the write itself stands
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _duplicate(exc: sqlite3.IntegrityError) -> DuplicateKey:
    msg = str(exc)
    for name in ("email", "username", "device_id"):
        if name in msg:
            return DuplicateKey(name)
    return DuplicateKey("id")


class SQLiteStore:
    name = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        snapshot_history: int = 50,
        snapshot_daily_days: int = 30,
        schema: SchemaPolicy = "apply",
    ) -> None:
        """`schema`: what `open` does with pending migrations (`migrations.schema.admit`)."""
        self.path = path
        self.schema = schema
        self.synchronous = synchronous
        self.retention = (snapshot_history, snapshot_daily_days)
        self.snapshot_history = snapshot_history
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(2, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._write_conn: sqlite3.Connection | None = None
        # writes waiting for the next transaction (see _write)
        self._pending: list[_PendingWrite] = []
        self._pending_lock = threading.Lock()
        self._flushing = False
        # why the last write transaction failed (a full disk, an I/O error); None once one commits
        self._write_failure: str | None = None
        self._checkpoint_owed = False  # set by a failed write; cleared by a complete TRUNCATE checkpoint
        self._next_checkpoint = 0.0

    # ---- plumbing ---------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a write transaction; answer once that transaction is durable.

        Group commit: writes that arrive while a transaction is being written
        wait for the next one and share it (one fsync for all), each inside a
        savepoint, so one write's failure rolls back that write alone.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._pending_lock:
            self._pending.append((fn, fut, loop))
            start = not self._flushing
            self._flushing = True
        if start:
            self._writer.submit(self._flush)
        try:
            return cast(T, await fut)
        except sqlite3.IntegrityError as exc:
            raise _duplicate(exc) from None
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"sqlite: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            raise StorageUnavailable(f"sqlite: {exc}") from exc

    def _flush(self) -> None:
        """On the writer thread: commit what is pending, batch after batch, until none is."""
        while True:
            with self._pending_lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._flushing = False
                    return
            outcomes = self._transaction([fn for fn, _, _ in batch])
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
            for (_, fut, loop), (ok, value) in zip(batch, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((fut, ok, value))
            for loop, items in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                    loop.call_soon_threadsafe(_settle, items)

    def _transaction(self, fns: list[Callable[[sqlite3.Connection], Any]]) -> list[tuple[bool, Any]]:
        conn = self._write_conn
        if conn is None:
            return [(False, sqlite3.OperationalError("store is not open"))] * len(fns)
        outcomes: list[tuple[bool, Any]] = []
        if self._checkpoint_owed and time.monotonic() >= self._next_checkpoint:
            # A write failed (a full disk?). The WAL only shrinks at a checkpoint, which SQLite
            # runs after a commit once the WAL holds 1000 pages: on a nearly full disk the WAL
            # takes all the space freed and that never comes, so writes would fail for good.
            # Copy the WAL into the database and truncate it (retried at most once a second).
            self._next_checkpoint = time.monotonic() + 1.0
            with contextlib.suppress(sqlite3.Error):  # still no room: the next write tries again
                # Without waiting: TRUNCATE waits for every reader to leave its snapshot, and a
                # backup holds one for as long as it runs; the write must not stall behind it.
                conn.execute("PRAGMA busy_timeout = 0")
                try:
                    busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                    self._checkpoint_owed = busy != 0
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        try:
            conn.execute("BEGIN IMMEDIATE")
            if len(fns) == 1:
                outcomes.append((True, fns[0](conn)))
            else:
                for fn in fns:
                    conn.execute("SAVEPOINT one_write")
                    try:
                        outcomes.append((True, fn(conn)))
                    except Exception as exc:
                        conn.execute("ROLLBACK TO one_write")
                        outcomes.append((False, exc))
                    conn.execute("RELEASE one_write")
            conn.execute("COMMIT")
            failed = next((v for ok, v in outcomes if not ok and isinstance(v, sqlite3.OperationalError)), None)
            self._write_failure = str(failed) if failed is not None else None
            self._checkpoint_owed = self._checkpoint_owed or failed is not None
            return outcomes
        except Exception as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                self._write_failure = str(exc)
                self._checkpoint_owed = True
            return [(False, exc)] * len(fns)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            return fn(self._reader())

        try:
            return await asyncio.get_running_loop().run_in_executor(self._readers, run)
        except sqlite3.DatabaseError as exc:
            raise StorageUnavailable(f"sqlite: {exc}") from exc

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def setup() -> None:
            self._write_conn = self._connect()
            schema.prepare(self._write_conn, self.schema)

        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, setup)
        except sqlite3.DatabaseError as exc:
            raise StorageUnavailable(f"sqlite: cannot open {self.path}: {exc}") from exc

    async def schema_status(self) -> SchemaStatus:
        return await self._read(schema.read_status)

    async def upgrade_schema(self) -> list[str]:
        def run() -> list[str]:
            if self._write_conn is None:
                raise StorageUnavailable("sqlite: store is not open")
            return [step.name for step in schema.upgrade(self._write_conn)]

        return await asyncio.get_running_loop().run_in_executor(self._writer, run)

    async def close(self) -> None:
        def close_writer() -> None:
            if self._write_conn is not None:
                self._write_conn.close()
                self._write_conn = None

        await asyncio.get_running_loop().run_in_executor(self._writer, close_writer)
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())
        if self._write_failure is None:
            return
        # Writes failed last time (a full disk answers reads but not writes): ready
        # again only once there is room and a write commits.
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            free = 0
        if free < MIN_FREE_BYTES:
            raise StorageUnavailable(f"sqlite: writes failing ({self._write_failure}); {free} bytes free")

        def probe(c: sqlite3.Connection) -> None:  # rewrites one page: a real write through the WAL
            c.execute("UPDATE farms SET last_active = last_active WHERE rowid = (SELECT MIN(rowid) FROM farms)")

        await self._write(probe)

    # ---- players ---------------------------------------------------------------------

    async def create_player(self, player: PlayerRecord) -> PlayerRecord:
        def run(c: sqlite3.Connection) -> PlayerRecord:
            if player.device_id is not None:
                row = c.execute("SELECT player_id FROM devices WHERE device_id = ?", (player.device_id,)).fetchone()
                if row is not None:
                    existing = c.execute(f"SELECT {PLAYER_COLUMNS} FROM players WHERE id = ?", (row[0],)).fetchone()
                    found = _player(existing, player.device_id)
                    if found is not None:
                        return found
            c.execute(
                f"INSERT INTO players ({PLAYER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    player.id,
                    player.username,
                    player.email,
                    player.password_hash,
                    player.role,
                    int(player.is_guest),
                    player.created_at,
                    orjson.dumps(player.settings).decode(),
                    player.flagged_at,
                    player.flag_reason,
                    player.last_violation_at,
                    player.violations_total,
                ),
            )
            if player.device_id is not None:
                c.execute("INSERT INTO devices (device_id, player_id) VALUES (?, ?)", (player.device_id, player.id))
            return player

        return await self._write(run)

    async def get_player(self, player_id: str) -> PlayerRecord | None:
        def run(c: sqlite3.Connection) -> PlayerRecord | None:
            row = c.execute(f"SELECT {PLAYER_COLUMNS} FROM players WHERE id = ?", (player_id,)).fetchone()
            dev = c.execute("SELECT device_id FROM devices WHERE player_id = ? LIMIT 1", (player_id,)).fetchone()
            return _player(row, dev[0] if dev else None)

        return await self._read(run)

    async def find_player(
        self, *, email: str | None = None, username: str | None = None, device_id: str | None = None
    ) -> PlayerRecord | None:
        def run(c: sqlite3.Connection) -> PlayerRecord | None:
            if device_id is not None:
                row = c.execute(
                    f"SELECT {PLAYER_COLUMNS} FROM players WHERE id = "
                    "(SELECT player_id FROM devices WHERE device_id = ?)",
                    (device_id,),
                ).fetchone()
                return _player(row, device_id)
            if email is not None:
                row = c.execute(f"SELECT {PLAYER_COLUMNS} FROM players WHERE email = ?", (email,)).fetchone()
            elif username is not None:
                row = c.execute(f"SELECT {PLAYER_COLUMNS} FROM players WHERE username = ?", (username,)).fetchone()
            else:
                return None
            if row is None:
                return None
            # The same record get_player returns, device included.
            dev = c.execute("SELECT device_id FROM devices WHERE player_id = ? LIMIT 1", (row[0],)).fetchone()
            return _player(row, dev[0] if dev else None)

        return await self._read(run)

    async def update_player_fields(
        self, player_id: str, changes: PlayerChanges, expect: PlayerChanges | None = None
    ) -> bool:
        if not changes:
            raise ValueError("no fields to change")
        sets = [(f"{col} = ?", value) for col, value in _player_columns(changes)]
        checks = [(f"{col} IS ?", value) for col, value in _player_columns(expect or {})]
        sql = f"UPDATE players SET {', '.join(s for s, _ in sets)} WHERE id = ?"
        sql += "".join(f" AND {c}" for c, _ in checks)
        params = [v for _, v in sets] + [player_id] + [v for _, v in checks]
        return await self._write(lambda c: c.execute(sql, params).rowcount == 1)

    async def record_violation(self, player_id: str, at: float, flag_reason: str | None) -> bool | None:
        def run(c: sqlite3.Connection) -> bool | None:
            counted = c.execute(
                "UPDATE players SET violations_total = violations_total + 1, last_violation_at = ? WHERE id = ?",
                (at, player_id),
            ).rowcount
            if counted != 1:
                return None
            if flag_reason is None:
                return False
            flagged = c.execute(
                "UPDATE players SET flagged_at = ?, flag_reason = ? WHERE id = ? AND flagged_at IS NULL",
                (at, flag_reason, player_id),
            ).rowcount
            return flagged == 1

        return await self._write(run)

    async def delete_player(self, player_id: str, at: float | None = None) -> None:
        erased_at = time.time() if at is None else at

        def run(c: sqlite3.Connection) -> None:
            _record_erasure(c, Erasure(player_id, erased_at))
            for table, column in (
                ("players", "id"),
                ("devices", "player_id"),
                ("refresh_tokens", "player_id"),
                ("farms", "player_id"),
                ("snapshots", "player_id"),
                ("idempotency", "player_id"),
            ):
                c.execute(f"DELETE FROM {table} WHERE {column} = ?", (player_id,))

        await self._write(run)

    async def list_erasures(self) -> list[Erasure]:
        def run(c: sqlite3.Connection) -> list[Erasure]:
            if c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'erasures'").fetchone() is None:
                return []  # a database older than the step that added them (opened to inspect): none recorded
            rows = c.execute("SELECT player_id, erased_at FROM erasures ORDER BY player_id").fetchall()
            return [Erasure(r[0], r[1]) for r in rows]

        return await self._read(run)

    async def list_player_tokens(self, player_id: str) -> list[RefreshTokenRecord]:
        def run(c: sqlite3.Connection) -> list[RefreshTokenRecord]:
            rows = c.execute(
                "SELECT token_hash, family_id, player_id, issued_at, expires_at, spent_at, revoked "
                "FROM refresh_tokens WHERE player_id = ? ORDER BY issued_at, token_hash",
                (player_id,),
            ).fetchall()
            return [RefreshTokenRecord(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]

        return await self._read(run)

    async def list_player_idempotency(self, player_id: str) -> list[IdempotencyRecord]:
        def run(c: sqlite3.Connection) -> list[IdempotencyRecord]:
            rows = c.execute(
                "SELECT key, request_hash, status, body, created_at FROM idempotency WHERE player_id = ? ORDER BY key",
                (player_id,),
            ).fetchall()
            return [IdempotencyRecord(player_id, r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows]

        return await self._read(run)

    async def count_players(self) -> int:
        return await self._read(lambda c: int(c.execute("SELECT COUNT(*) FROM players").fetchone()[0]))

    async def usernames(self, player_ids: list[str]) -> dict[str, str]:
        if not player_ids:
            return {}

        def run(c: sqlite3.Connection) -> dict[str, str]:
            marks = ", ".join("?" * len(player_ids))
            rows = c.execute(f"SELECT id, username FROM players WHERE id IN ({marks})", player_ids)
            return {r[0]: r[1] for r in rows}

        return await self._read(run)

    async def list_flagged(self) -> list[PlayerRecord]:
        def run(c: sqlite3.Connection) -> list[PlayerRecord]:
            rows = c.execute(f"SELECT {PLAYER_COLUMNS} FROM players WHERE flagged_at IS NOT NULL").fetchall()
            return [p for r in rows if (p := _player(r)) is not None]

        return await self._read(run)

    # ---- refresh tokens ------------------------------------------------------------------

    async def add_refresh_token(self, record: RefreshTokenRecord) -> None:
        await self._write(lambda c: _insert_token(c, record))

    async def spend_refresh_token(self, token_hash: str, now: float) -> SpendResult:
        return await self._write(lambda c: _spend(c, token_hash, now))

    async def rotate_refresh_token(
        self, token_hash: str, successor_hash: str, now: float, expires_at: float
    ) -> SpendResult:
        """One transaction: revocations are transactions too, so one either precedes this
        (the token is revoked: `reused`) or follows it (and revokes the successor)."""

        def run(c: sqlite3.Connection) -> SpendResult:
            spent = _spend(c, token_hash, now)
            rec = spent.record
            if rec is not None and not spent.reused and rec.expires_at > now:
                _insert_token(c, RefreshTokenRecord(successor_hash, rec.family_id, rec.player_id, now, expires_at))
            return spent

        return await self._write(run)

    async def revoke_family(self, family_id: str) -> None:
        await self._write(
            lambda c: c.execute("UPDATE refresh_tokens SET revoked = 1 WHERE family_id = ?", (family_id,))
        )

    async def revoke_player_tokens(self, player_id: str, issued_after: float) -> list[str]:
        def run(c: sqlite3.Connection) -> list[str]:
            rows = c.execute(
                "SELECT DISTINCT family_id FROM refresh_tokens WHERE player_id = ? AND issued_at > ? "
                "ORDER BY family_id",
                (player_id, issued_after),
            ).fetchall()
            c.execute("UPDATE refresh_tokens SET revoked = 1 WHERE player_id = ?", (player_id,))
            return [r[0] for r in rows]

        return await self._write(run)

    async def add_revocations(self, revocations: list[Revocation]) -> None:
        if not revocations:
            return
        await self._write(
            lambda c: c.executemany(
                "INSERT OR REPLACE INTO revocations (session_id, until, at) VALUES (?, ?, ?)",
                [(r.session_id, r.until, r.at) for r in revocations],
            )
        )

    async def revocations_since(self, at: float) -> list[Revocation]:
        def run(c: sqlite3.Connection) -> list[Revocation]:
            rows = c.execute(
                "SELECT session_id, until, at FROM revocations WHERE at >= ? ORDER BY at, session_id", (at,)
            ).fetchall()
            return [Revocation(*row) for row in rows]

        return await self._read(run)

    async def prune_revocations(self, before: float) -> int:
        return await self._write(lambda c: c.execute("DELETE FROM revocations WHERE until < ?", (before,)).rowcount)

    # ---- farms -------------------------------------------------------------------------------

    async def load_farm(self, player_id: str) -> StoredFarm | None:
        def run(c: sqlite3.Connection) -> StoredFarm | None:
            row = c.execute("SELECT revision, doc, last_active FROM farms WHERE player_id = ?", (player_id,)).fetchone()
            if row is None:
                return None
            return StoredFarm(player_id, row[0], orjson.loads(row[1]), row[2])

        return await self._read(run)

    async def commit(self, batch: list[FarmCommit]) -> list[bool]:
        keep = self.retention

        def run(c: sqlite3.Connection) -> list[bool]:
            applied = []
            for item in batch:
                idem = item.idempotency
                if (
                    idem is not None
                    and c.execute(
                        "SELECT 1 FROM idempotency WHERE player_id = ? AND key = ?", (idem.player_id, idem.key)
                    ).fetchone()
                ):
                    applied.append(False)  # a replay: the key's first commit stands
                    continue
                doc = orjson.dumps(item.doc)
                if item.expected_revision is None:
                    cur = c.execute(
                        "INSERT OR IGNORE INTO farms (player_id, revision, doc, last_active) VALUES (?, ?, ?, ?)",
                        (item.player_id, item.revision, doc, item.last_active),
                    )
                else:
                    cur = c.execute(
                        "UPDATE farms SET revision = ?, doc = ?, last_active = ? WHERE player_id = ? AND revision = ?",
                        (item.revision, doc, item.last_active, item.player_id, item.expected_revision),
                    )
                ok = cur.rowcount == 1
                applied.append(ok)
                if not ok:
                    continue
                if idem is not None:
                    c.execute(
                        "INSERT INTO idempotency (player_id, key, request_hash, status, body, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (idem.player_id, idem.key, idem.request_hash, idem.status, idem.body, idem.created_at),
                    )
            snaps = [item.snapshot for item, ok in zip(batch, applied, strict=True) if ok and item.snapshot]
            _insert_snapshots(c, snaps, keep)
            return applied

        return await self._write(run)

    async def touch_farms(self, items: list[tuple[str, float]]) -> None:
        if not items:
            return

        def run(c: sqlite3.Connection) -> None:
            c.executemany(
                "UPDATE farms SET last_active = MAX(last_active, ?) WHERE player_id = ?",
                [(t, pid) for pid, t in items],
            )

        await self._write(run)

    async def add_snapshots(self, snapshots: list[Snapshot]) -> None:
        if not snapshots:
            return
        keep = self.retention

        def run(c: sqlite3.Connection) -> None:
            _insert_snapshots(c, snapshots, keep)

        await self._write(run)

    async def list_snapshots(self, player_id: str, limit: int) -> list[Snapshot]:
        def run(c: sqlite3.Connection) -> list[Snapshot]:
            rows = c.execute(
                "SELECT revision, taken_at, farm_value, doc FROM snapshots WHERE player_id = ? "
                "ORDER BY revision DESC LIMIT ?",
                (player_id, limit),
            ).fetchall()
            return [Snapshot(player_id, r[0], r[1], r[2], orjson.loads(r[3])) for r in rows]

        return await self._read(run)

    async def get_snapshot(self, player_id: str, revision: int) -> Snapshot | None:
        def run(c: sqlite3.Connection) -> Snapshot | None:
            r = c.execute(
                "SELECT revision, taken_at, farm_value, doc FROM snapshots WHERE player_id = ? AND revision = ?",
                (player_id, revision),
            ).fetchone()
            return Snapshot(player_id, r[0], r[1], r[2], orjson.loads(r[3])) if r else None

        return await self._read(run)

    async def get_idempotency(self, player_id: str, key: str) -> IdempotencyRecord | None:
        def run(c: sqlite3.Connection) -> IdempotencyRecord | None:
            r = c.execute(
                "SELECT request_hash, status, body, created_at FROM idempotency WHERE player_id = ? AND key = ?",
                (player_id, key),
            ).fetchone()
            return IdempotencyRecord(player_id, key, r[0], r[1], bytes(r[2]), r[3]) if r else None

        return await self._read(run)

    async def prune_idempotency(self, before: float) -> int:
        return await self._write(
            lambda c: c.execute("DELETE FROM idempotency WHERE created_at < ?", (before,)).rowcount
        )

    async def add_audit(self, record: AuditRecord) -> None:
        await self._write(
            lambda c: c.execute(
                "INSERT INTO audit_log (at, admin_id, action, target, details) VALUES (?, ?, ?, ?, ?)",
                (record.at, record.admin_id, record.action, record.target, orjson.dumps(record.details).decode()),
            )
        )

    # ---- live events ---------------------------------------------------------------------------

    async def add_event(self, event: LiveEvent) -> None:
        await self._write(lambda c: _write_event(c, event, "INSERT"))

    async def list_events(self) -> list[LiveEvent]:
        def run(c: sqlite3.Connection) -> list[LiveEvent]:
            rows = c.execute(f"SELECT {_EVENT_COLUMNS} FROM live_events ORDER BY starts_at, id").fetchall()
            return [_event(r) for r in rows]

        return await self._read(run)

    async def cancel_event(self, event_id: str, at: float) -> LiveEvent | None:
        def run(c: sqlite3.Connection) -> LiveEvent | None:
            row = c.execute(
                f"UPDATE live_events SET cancelled_at = ? WHERE id = ? AND cancelled_at IS NULL AND ends_at > ?"
                f" RETURNING {_EVENT_COLUMNS}",
                (at, event_id, at),
            ).fetchone()
            return _event(row) if row is not None else None

        return await self._write(run)

    async def list_audit(self, limit: int) -> list[AuditRecord]:
        def run(c: sqlite3.Connection) -> list[AuditRecord]:
            rows = c.execute(
                "SELECT at, admin_id, action, target, details FROM audit_log ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
            return [AuditRecord(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in rows]

        return await self._read(run)

    async def list_audit_about(self, player_id: str, limit: int) -> list[AuditRecord]:
        def run(c: sqlite3.Connection) -> list[AuditRecord]:
            rows = c.execute(
                "SELECT at, admin_id, action, target, details FROM audit_log WHERE id IN "
                "(SELECT id FROM audit_log WHERE target = ? UNION SELECT id FROM audit_log WHERE admin_id = ?) "
                "ORDER BY at DESC, id DESC LIMIT ?",
                (player_id, player_id, limit),
            ).fetchall()
            return [AuditRecord(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in rows]

        return await self._read(run)

    # ---- whole-store export / import (backup, restore, migrate) -------------------------------

    async def export_all(self) -> AsyncIterator[Record]:
        """Every record in the canonical order of `base.Record`, as of one moment.

        Every page is read in one read transaction on a connection of its own (on a
        thread of its own, so it is never used by two at once): writes that commit
        while the export runs (WAL lets them) are not in it, and a backup taken during
        play is the store as it stood when the export began, every reference intact.
        Keyset pages stream a large store in bounded memory. While the export holds its
        snapshot the WAL cannot be reset, so it grows by the writes made meanwhile."""
        thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-export")
        snapshot = _ExportSnapshot(self._connect, thread)
        try:
            # BEGIN is deferred: the snapshot is taken by the first read, here, before
            # anything is yielded; every later page reads that same snapshot.
            await snapshot.run(lambda c: c.execute("BEGIN").execute("SELECT 1 FROM players LIMIT 1").fetchall())
            async for record in self._export_records(snapshot):
                yield record
        finally:
            # on the export's thread, so after any page still running (a cancelled export)
            await asyncio.get_running_loop().run_in_executor(thread, snapshot.end)
            thread.shutdown(wait=False)

    async def _export_records(self, snapshot: _ExportSnapshot) -> AsyncIterator[Record]:
        players = (
            f"SELECT {', '.join('p.' + c.strip() for c in PLAYER_COLUMNS.split(','))}, "
            "(SELECT device_id FROM devices d WHERE d.player_id = p.id LIMIT 1) "
            "FROM players p WHERE p.id > ? ORDER BY p.id LIMIT ?"
        )
        async for row in self._pages(snapshot, players, lambda r: (r[0],), ("",)):
            player = _player(row[:12], row[12])
            if player is not None:
                yield player
        tokens = (
            "SELECT token_hash, family_id, player_id, issued_at, expires_at, spent_at, revoked "
            "FROM refresh_tokens WHERE token_hash > ? ORDER BY token_hash LIMIT ?"
        )
        async for r in self._pages(snapshot, tokens, lambda r: (r[0],), ("",)):
            yield RefreshTokenRecord(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]))
        farms = "SELECT player_id, revision, doc, last_active FROM farms WHERE player_id > ? ORDER BY player_id LIMIT ?"
        async for r in self._pages(snapshot, farms, lambda r: (r[0],), ("",)):
            yield StoredFarm(r[0], r[1], orjson.loads(r[2]), r[3])
        snaps = (
            "SELECT player_id, revision, taken_at, farm_value, doc FROM snapshots "
            "WHERE (player_id, revision) > (?, ?) ORDER BY player_id, revision LIMIT ?"
        )
        async for r in self._pages(snapshot, snaps, lambda r: (r[0], r[1]), ("", -(2**63))):
            yield Snapshot(r[0], r[1], r[2], r[3], orjson.loads(r[4]))
        idem = (
            "SELECT player_id, key, request_hash, status, body, created_at FROM idempotency "
            "WHERE (player_id, key) > (?, ?) ORDER BY player_id, key LIMIT ?"
        )
        async for r in self._pages(snapshot, idem, lambda r: (r[0], r[1]), ("", "")):
            yield IdempotencyRecord(r[0], r[1], r[2], r[3], bytes(r[4]), r[5])
        audit = (
            "SELECT at, id, admin_id, action, target, details FROM audit_log "
            "WHERE (at, id) > (?, ?) ORDER BY at, id LIMIT ?"
        )
        async for r in self._pages(snapshot, audit, lambda r: (r[0], r[1]), (float("-inf"), -1)):
            yield AuditRecord(r[0], r[2], r[3], r[4], orjson.loads(r[5]))
        erasures = "SELECT player_id, erased_at FROM erasures WHERE player_id > ? ORDER BY player_id LIMIT ?"
        async for r in self._pages(snapshot, erasures, lambda r: (r[0],), ("",)):
            yield Erasure(r[0], r[1])
        events = f"SELECT {_EVENT_COLUMNS} FROM live_events WHERE id > ? ORDER BY id LIMIT ?"
        async for r in self._pages(snapshot, events, lambda r: (r[0],), ("",)):
            yield _event(r)

    @staticmethod
    async def _pages(
        snapshot: _ExportSnapshot,
        sql: str,
        after: Callable[[tuple[Any, ...]], tuple[Any, ...]],
        start: tuple[Any, ...],
    ) -> AsyncIterator[tuple[Any, ...]]:
        cursor = start
        while True:
            params = (*cursor, EXPORT_PAGE)

            def page(c: sqlite3.Connection, params: tuple[Any, ...] = params) -> list[tuple[Any, ...]]:
                return c.execute(sql, params).fetchall()

            rows = await snapshot.run(page)
            for row in rows:
                yield row
            if len(rows) < EXPORT_PAGE:
                return
            cursor = after(rows[-1])

    async def import_all(self, records: AsyncIterable[Record]) -> dict[str, int]:
        """Upsert every record by its natural key (safe to re-run), one transaction per
        chunk; snapshots bypass retention; audit entries already present are skipped."""

        def existing_audit(c: sqlite3.Connection) -> dict[tuple[Any, ...], int]:
            have: dict[tuple[Any, ...], int] = {}
            for r in c.execute("SELECT at, admin_id, action, target, details FROM audit_log"):
                k = audit_key(AuditRecord(r[0], r[1], r[2], r[3], orjson.loads(r[4])))
                have[k] = have.get(k, 0) + 1
            return have

        have = await self._read(existing_audit)
        counts: dict[str, int] = {}
        chunk: list[Record] = []

        async def flush() -> None:
            batch = list(chunk)
            chunk.clear()
            await self._write(lambda c: _import_rows(c, batch, have))

        async for rec in records:
            counts[type(rec).__name__] = counts.get(type(rec).__name__, 0) + 1
            chunk.append(rec)
            if len(chunk) >= IMPORT_CHUNK:
                await flush()
        if chunk:
            await flush()
        return counts


class _ExportSnapshot:
    """An export's own connection and read transaction, used on the export's one thread."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], thread: ThreadPoolExecutor) -> None:
        self._connect = connect
        self._thread = thread
        self._conn: sqlite3.Connection | None = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def work() -> T:
            if self._conn is None:
                self._conn = self._connect()
            return fn(self._conn)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, work)
        except sqlite3.DatabaseError as exc:
            raise StorageUnavailable(f"sqlite: {exc}") from exc

    def end(self) -> None:
        """End the read transaction (it wrote nothing) and close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            conn.close()


def _import_rows(c: sqlite3.Connection, batch: list[Record], have: dict[tuple[Any, ...], int]) -> None:
    for rec in batch:
        if isinstance(rec, PlayerRecord):
            # ON CONFLICT(id) only: a clash on email or username must fail, not replace another player.
            c.execute(
                f"INSERT INTO players ({PLAYER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET username = excluded.username, email = excluded.email, "
                "password_hash = excluded.password_hash, role = excluded.role, is_guest = excluded.is_guest, "
                "created_at = excluded.created_at, settings = excluded.settings, flagged_at = excluded.flagged_at, "
                "flag_reason = excluded.flag_reason, last_violation_at = excluded.last_violation_at, "
                "violations_total = excluded.violations_total",
                (
                    rec.id,
                    rec.username,
                    rec.email,
                    rec.password_hash,
                    rec.role,
                    int(rec.is_guest),
                    rec.created_at,
                    orjson.dumps(rec.settings).decode(),
                    rec.flagged_at,
                    rec.flag_reason,
                    rec.last_violation_at,
                    rec.violations_total,
                ),
            )
            if rec.device_id is not None:
                c.execute(
                    "INSERT INTO devices (device_id, player_id) VALUES (?, ?) "
                    "ON CONFLICT(device_id) DO UPDATE SET player_id = excluded.player_id",
                    (rec.device_id, rec.id),
                )
        elif isinstance(rec, RefreshTokenRecord):
            c.execute(
                "INSERT OR REPLACE INTO refresh_tokens "
                "(token_hash, family_id, player_id, issued_at, expires_at, spent_at, revoked) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.token_hash,
                    rec.family_id,
                    rec.player_id,
                    rec.issued_at,
                    rec.expires_at,
                    rec.spent_at,
                    int(rec.revoked),
                ),
            )
        elif isinstance(rec, StoredFarm):
            c.execute(
                "INSERT OR REPLACE INTO farms (player_id, revision, doc, last_active) VALUES (?, ?, ?, ?)",
                (rec.player_id, rec.revision, orjson.dumps(rec.doc), rec.last_active),
            )
        elif isinstance(rec, Snapshot):
            c.execute(
                "INSERT OR REPLACE INTO snapshots (player_id, revision, taken_at, farm_value, doc) "
                "VALUES (?, ?, ?, ?, ?)",
                (rec.player_id, rec.revision, rec.taken_at, rec.farm_value, orjson.dumps(rec.doc)),
            )
        elif isinstance(rec, IdempotencyRecord):
            c.execute(
                "INSERT OR REPLACE INTO idempotency (player_id, key, request_hash, status, body, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (rec.player_id, rec.key, rec.request_hash, rec.status, rec.body, rec.created_at),
            )
        elif isinstance(rec, AuditRecord):
            k = audit_key(rec)
            if have.get(k, 0) > 0:
                have[k] -= 1
                continue
            c.execute(
                "INSERT INTO audit_log (at, admin_id, action, target, details) VALUES (?, ?, ?, ?, ?)",
                (rec.at, rec.admin_id, rec.action, rec.target, orjson.dumps(rec.details).decode()),
            )
        elif isinstance(rec, Erasure):
            _record_erasure(c, rec)
        elif isinstance(rec, LiveEvent):
            _write_event(c, rec, "INSERT OR REPLACE")
        else:
            raise TypeError(f"not a store record: {type(rec).__name__}")


def _record_erasure(c: sqlite3.Connection, erasure: Erasure) -> None:
    """Insert the tombstone; one already there keeps the earlier time (so applying
    tombstones from several sources gives the same table whatever the order)."""
    c.execute(
        "INSERT INTO erasures (player_id, erased_at) VALUES (?, ?) "
        "ON CONFLICT(player_id) DO UPDATE SET erased_at = MIN(erased_at, excluded.erased_at)",
        (erasure.player_id, erasure.erased_at),
    )


def _insert_snapshots(c: sqlite3.Connection, snaps: list[Snapshot], keep: tuple[int, int]) -> None:
    """Insert in order with the retention policy applied after each one
    (`base.plan_snapshot_writes`, as the MongoDB store does): one read of each
    farm's (revision, time) pairs, the policy in memory, then exact writes and
    deletes."""
    if not snaps:
        return
    existing = {
        p: dict(c.execute("SELECT revision, taken_at FROM snapshots WHERE player_id = ?", (p,)).fetchall())
        for p in dict.fromkeys(snap.player_id for snap in snaps)
    }
    writes, deletes = plan_snapshot_writes(existing, snaps, *keep)
    c.executemany(
        "INSERT OR REPLACE INTO snapshots (player_id, revision, taken_at, farm_value, doc) VALUES (?, ?, ?, ?, ?)",
        [(s.player_id, s.revision, s.taken_at, s.farm_value, orjson.dumps(s.doc)) for s in writes],
    )
    c.executemany("DELETE FROM snapshots WHERE player_id = ? AND revision = ?", deletes)


_EVENT_COLUMNS = "id, name, multiplier, tiers, starts_at, ends_at, cancelled_at, created_at, created_by"


def _event(r: Any) -> LiveEvent:
    tiers = tuple(orjson.loads(r[3])) if r[3] is not None else None
    return LiveEvent(r[0], r[1], r[2], tiers, r[4], r[5], r[6], r[7], r[8])


def _write_event(c: sqlite3.Connection, event: LiveEvent, verb: str) -> None:
    tiers = orjson.dumps(list(event.tiers)).decode() if event.tiers is not None else None
    c.execute(
        f"{verb} INTO live_events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.id,
            event.name,
            event.multiplier,
            tiers,
            event.starts_at,
            event.ends_at,
            event.cancelled_at,
            event.created_at,
            event.created_by,
        ),
    )
