"""SQLite's schema steps, versioned by `PRAGMA user_version`.

Every pending step runs in one `BEGIN IMMEDIATE` transaction with the version
bump (SQLite's DDL is transactional): a failed upgrade leaves the database as
it was, and a second process opening the same file waits for the write lock,
then finds nothing pending. `min_code` sits in the one-row table `schema_meta`.

Append steps; never edit a shipped one (a database already past it would not
run it again).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import structlog

from .schema import Migration, SchemaPolicy, SchemaStatus, admit, check_steps, min_code_after, status_of

Step = Migration[Callable[[sqlite3.Connection], None]]

# The tables and indexes of release 376f2b0, verbatim: on a database that release
# wrote, every statement is a no-op.
RELEASE_376F2B0 = """
CREATE TABLE IF NOT EXISTS players (
    id TEXT PRIMARY KEY,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    email TEXT UNIQUE COLLATE NOCASE,
    password_hash TEXT,
    role TEXT NOT NULL DEFAULT 'player',
    is_guest INTEGER NOT NULL,
    created_at REAL NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}',
    flagged_at REAL,
    flag_reason TEXT,
    last_violation_at REAL,
    violations_total INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS players_flagged ON players(flagged_at) WHERE flagged_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    admin_id TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    details TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    player_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_by_player ON devices(player_id);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id TEXT NOT NULL,
    player_id TEXT NOT NULL,
    issued_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    spent_at REAL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS refresh_by_family ON refresh_tokens(family_id);
CREATE INDEX IF NOT EXISTS refresh_by_player ON refresh_tokens(player_id);
CREATE TABLE IF NOT EXISTS farms (
    player_id TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    doc BLOB NOT NULL,
    last_active REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    player_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    taken_at REAL NOT NULL,
    farm_value REAL NOT NULL,
    doc BLOB NOT NULL,
    PRIMARY KEY (player_id, revision)
);
CREATE TABLE IF NOT EXISTS idempotency (
    player_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (player_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency(created_at);
CREATE TABLE IF NOT EXISTS revocations (
    session_id TEXT PRIMARY KEY,
    until REAL NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS revocations_by_time ON revocations(at);
"""


def _run_script(script: str) -> Callable[[sqlite3.Connection], None]:
    """Statement by statement (`executescript` would commit the upgrade's transaction)."""

    def run(conn: sqlite3.Connection) -> None:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)

    return run


ERASURES = """
CREATE TABLE IF NOT EXISTS erasures (
    player_id TEXT PRIMARY KEY,
    erased_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_target ON audit_log(target);
CREATE INDEX IF NOT EXISTS audit_by_actor ON audit_log(admin_id);
"""

LIVE_EVENTS = """
CREATE TABLE IF NOT EXISTS live_events (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    multiplier REAL NOT NULL,
    tiers TEXT,
    starts_at REAL NOT NULL,
    ends_at REAL NOT NULL,
    cancelled_at REAL,
    created_at REAL NOT NULL,
    created_by TEXT
);
CREATE INDEX IF NOT EXISTS live_events_by_start ON live_events(starts_at, id);
"""

STEPS: list[Step] = [
    Migration(1, "the tables and indexes of release 376f2b0", _run_script(RELEASE_376F2B0)),
    Migration(2, "erasures (tombstones of erased accounts); audit entries by target and actor", _run_script(ERASURES)),
    Migration(3, "live_events: timed production multipliers", _run_script(LIVE_EVENTS)),
]
check_steps(STEPS)
LATEST = len(STEPS)
_log = structlog.get_logger("llamawool.store.migrations")

_META = "CREATE TABLE IF NOT EXISTS schema_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"


def read_status(conn: sqlite3.Connection, store: str = "sqlite", steps: list[Step] = STEPS) -> SchemaStatus:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_meta'").fetchone()
    row = conn.execute("SELECT value FROM schema_meta WHERE key = 'min_code'").fetchone() if has_meta else None
    # No record of it on a database newer than this code: assume the worst.
    min_code = int(row[0]) if row else (version if version > len(steps) else 0)
    return status_of(store, steps, version, min_code)


def upgrade(conn: sqlite3.Connection, store: str = "sqlite", steps: list[Step] = STEPS) -> list[Step]:
    """Run every pending step; the steps run, none when up to date. `conn` in autocommit mode."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        status = read_status(conn, store, steps)
        admit(status, "apply")  # re-read under the write lock: another process may have upgraded
        ran = [s for s in steps if s.version > status.version]
        if ran:
            conn.execute(_META)
            for step in ran:
                _log.info("schema.migrating", store=store, version=step.version, step=step.name)
                step.apply(conn)
                conn.execute(f"PRAGMA user_version = {int(step.version)}")
            min_code = min_code_after(steps, ran[-1].version, status.min_code)
            conn.execute("INSERT OR REPLACE INTO schema_meta (key, value) VALUES ('min_code', ?)", (min_code,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return ran


def prepare(conn: sqlite3.Connection, policy: SchemaPolicy, store: str = "sqlite") -> list[Step]:
    """What `SQLiteStore.open` runs: refuse, upgrade, or leave alone (see `admit`)."""
    if admit(read_status(conn, store), policy):
        return upgrade(conn, store)
    return []
