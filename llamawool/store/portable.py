"""Backups and migrations that work from and to any adapter.

The backup format (version 1) is gzip-compressed JSON lines:

    {"format": "llamawool-backup", "version": 1, "created_at": "...", "source": "sqlite"}
    {"kind": "player", "id": "...", "username": "...", ...}        one line per record,
    {"kind": "farm", "player_id": "...", "revision": 7, ...}       in the canonical order
    ...                                                            of `base.Record`
    {"kind": "end", "counts": {"player": 2, ...}, "sha256": "..."}

Record lines are canonical: keys sorted, compact, times and money as JSON
floats, bytes (an idempotency record's body) as base64. Two stores holding the
same data therefore produce the same lines byte for byte whatever their
backend, and the trailer's `sha256` (over every record line and its newline)
is a checksum of the data itself: `restore` and `migrate` recompute it from the
target after writing and fail loudly when it differs. A reader accepts any
version up to its own and refuses newer ones; fields it does not know are
ignored and missing ones take their defaults, so later versions can add fields.

Imports upsert by natural key, so an interrupted restore or migration is
finished by running it again; the target should be empty or hold an earlier
attempt of the same import (anything else makes the final check fail).

Version 2 added `erasure` lines (tombstones of erased accounts, `base.Erasure`).
A restore never brings an erased account back: it gathers the tombstones of the
backup, of the store it restores into, and of every `erasures_from` source (a
newer backup, or the live store), leaves out every record of those players,
writes all the tombstones, and erases any such player the target already held.
Its final check is against what it wrote (the file's records less those left
out, plus the tombstones), so the check still proves nothing else differs.

Version 3 added `live_event` lines (timed production multipliers, docs/events.md):
a restored store keeps the schedule, cancelled and past events included (an old
window still counts for a farm that was offline across it).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import gzip
import hashlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..game.events import LiveEvent
from .base import (
    AuditRecord,
    Erasure,
    IdempotencyRecord,
    PlayerRecord,
    Record,
    RefreshTokenRecord,
    Snapshot,
    Store,
    StoredFarm,
    record_owner,
)

FORMAT = "llamawool-backup"
VERSION = 3  # 2: erasure (tombstone) lines; 3: live_event lines

KINDS: dict[type[Any], str] = {
    PlayerRecord: "player",
    RefreshTokenRecord: "refresh_token",
    StoredFarm: "farm",
    Snapshot: "snapshot",
    IdempotencyRecord: "idempotency",
    AuditRecord: "audit",
    Erasure: "erasure",
    LiveEvent: "live_event",
}
TYPES = {kind: cls for cls, kind in KINDS.items()}
# Fields stored as REAL by SQLite: written as floats whatever the source held, so
# an integer time from one backend and the same time as a float from another agree.
FLOATS = {
    "created_at",
    "flagged_at",
    "last_violation_at",
    "issued_at",
    "expires_at",
    "spent_at",
    "last_active",
    "taken_at",
    "farm_value",
    "at",
    "erased_at",
    "multiplier",
    "starts_at",
    "ends_at",
    "cancelled_at",
}
BYTES = {"body"}


class BackupError(Exception):
    """A backup file is unreadable, truncated, corrupted or from a newer version."""


class VerifyError(Exception):
    """After a restore or migration the target does not hold exactly the source's data."""


def encode(record: Record) -> bytes:
    """The canonical line of one record (no newline)."""
    out: dict[str, Any] = {"kind": KINDS[type(record)]}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name in FLOATS and value is not None:
            value = float(value)
        elif f.name in BYTES:
            value = base64.b64encode(bytes(value)).decode()
        out[f.name] = value
    return orjson.dumps(out, option=orjson.OPT_SORT_KEYS)


def decode(line: bytes) -> Record:
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise BackupError(f"not a record line: {line[:80]!r}") from exc
    return _record(data)


def _record(data: Any) -> Record:
    cls = TYPES.get(str(data.get("kind"))) if isinstance(data, dict) else None
    if cls is None:
        raise BackupError(f"unknown record kind: {str(data)[:80]}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            values[f.name] = base64.b64decode(value) if f.name in BYTES else value
    try:
        record: Record = cls(**values)
    except (TypeError, ValueError) as exc:
        raise BackupError(f"{cls.__name__}: {exc}") from exc
    return record


@dataclass
class Digest:
    """Counts per kind and a SHA-256 over the canonical lines: what `verify` compares."""

    counts: dict[str, int] = field(default_factory=dict)
    sha256: str = ""
    # a restore's records of erased players, by kind: in the file, not written
    left_out: dict[str, int] = field(default_factory=dict, compare=False)
    _hash: Any = field(default_factory=hashlib.sha256, repr=False, compare=False)

    def add(self, kind: str, line: bytes) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self._hash.update(line)
        self._hash.update(b"\n")

    def finish(self) -> Digest:
        self.sha256 = self._hash.hexdigest()
        return self

    def describe(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "empty"
        out = f"{counts}; sha256 {self.sha256[:16]}"
        if self.left_out:
            out += "; left out as erased: " + ", ".join(f"{k} {v}" for k, v in sorted(self.left_out.items()))
        return out


async def canonical_lines(store: Store) -> AsyncIterator[tuple[str, bytes]]:
    async for record in store.export_all():
        yield KINDS[type(record)], encode(record)


async def canonical_dump(store: Store) -> bytes:
    """Every record line of the store, newline-terminated: equal for equal data."""
    return b"".join([line + b"\n" async for _, line in canonical_lines(store)])


async def digest(store: Store) -> Digest:
    d = Digest()
    async for kind, line in canonical_lines(store):
        d.add(kind, line)
    return d.finish()


async def backup(store: Store, path: Path) -> Digest:
    """Write the whole store to `path` (via a temporary file renamed at the end, so a
    crash never leaves a file that looks complete)."""
    d = Digest()
    tmp = path.with_name(path.name + ".partial")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "source": store.name,
    }
    with gzip.open(tmp, "wb") as out:
        out.write(orjson.dumps(header, option=orjson.OPT_SORT_KEYS) + b"\n")
        async for kind, line in canonical_lines(store):
            d.add(kind, line)
            out.write(line + b"\n")
        d.finish()
        trailer = {"kind": "end", "counts": d.counts, "sha256": d.sha256}
        out.write(orjson.dumps(trailer, option=orjson.OPT_SORT_KEYS) + b"\n")
        out.flush()
        os.fsync(out.fileobj.fileno())  # type: ignore[union-attr]
    tmp.replace(path)
    return d


def read_header(path: Path) -> dict[str, Any]:
    try:
        with gzip.open(path, "rb") as f:
            header: dict[str, Any] = orjson.loads(f.readline())
    except (OSError, EOFError, orjson.JSONDecodeError) as exc:
        raise BackupError(f"{path}: not a llamawool backup: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise BackupError(f"{path}: not a llamawool backup")
    version = header.get("version")
    if not isinstance(version, int) or version < 1:
        raise BackupError(f"{path}: bad version {version!r}")
    if version > VERSION:
        raise BackupError(f"{path}: backup version {version} is newer than this server reads ({VERSION}); upgrade")
    return header


def _lines(path: Path) -> Iterator[tuple[bytes, Any]]:
    """(raw line, parsed) for every line after the header."""
    try:
        with gzip.open(path, "rb") as f:
            f.readline()
            for raw in f:
                line = raw.rstrip(b"\n")
                yield line, orjson.loads(line)
    except (OSError, EOFError, orjson.JSONDecodeError) as exc:
        raise BackupError(f"{path}: unreadable or truncated: {exc}") from exc


def verify_file(path: Path) -> Digest:
    """Read the whole file and check it against its trailer: counts and checksum."""
    read_header(path)
    d = Digest()
    trailer: dict[str, Any] | None = None
    for line, data in _lines(path):
        if trailer is not None:
            raise BackupError(f"{path}: data after the end marker")
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind == "end":
            trailer = data
        elif kind in TYPES:
            d.add(kind, line)
        else:
            raise BackupError(f"{path}: unknown record kind {kind!r}")
    d.finish()
    if trailer is None:
        raise BackupError(f"{path}: truncated (no end marker)")
    if trailer.get("counts") != d.counts or trailer.get("sha256") != d.sha256:
        raise BackupError(f"{path}: checksum mismatch: the file is corrupted")
    return d


async def read_records(path: Path) -> AsyncIterator[Record]:
    for _, data in _lines(path):
        if data.get("kind") == "end":
            return
        yield _record(data)


# Where tombstones come from besides the backup and the target: another backup file
# (the newest one) or another store (the live database a restore replaces).
ErasureSource = Path | Store


async def erasures_of(source: ErasureSource) -> list[Erasure]:
    if isinstance(source, Path):
        verify_file(source)
        return [rec async for rec in read_records(source) if isinstance(rec, Erasure)]
    return await source.list_erasures()


def _merge(*lists: list[Erasure]) -> dict[str, float]:
    """player id -> the earliest erasure time any source records (what the stores keep)."""
    out: dict[str, float] = {}
    for erasures in lists:
        for e in erasures:
            out[e.player_id] = min(float(e.erased_at), out.get(e.player_id, float("inf")))
    return out


async def restore(store: Store, path: Path, *, erasures_from: Sequence[ErasureSource] = ()) -> Digest:
    """Check the file whole, write its records into `store` except those of erased
    players (tombstones of the file, of `store` and of `erasures_from`), write every
    tombstone, erase any such player `store` already held, then check `store` holds
    exactly what was written. Returns that (its `left_out`: what erasure dropped)."""
    verify_file(path)
    target_had = await store.list_erasures()
    in_file = [rec async for rec in read_records(path) if isinstance(rec, Erasure)]
    sources = [in_file, target_had] + [await erasures_of(s) for s in erasures_from]
    erased = _merge(*sources)
    target_held_players = await store.count_players() > 0
    written = Digest()

    async def records() -> AsyncIterator[Record]:
        async for rec in read_records(path):
            kind = KINDS[type(rec)]
            if isinstance(rec, Erasure):
                continue  # all of them, merged, come last (their canonical place)
            if record_owner(rec) in erased:
                written.left_out[kind] = written.left_out.get(kind, 0) + 1
                continue
            written.add(kind, encode(rec))
            yield rec
        for player_id in sorted(erased):
            tombstone = Erasure(player_id, erased[player_id])
            written.add("erasure", encode(tombstone))
            yield tombstone

    await store.import_all(records())
    if target_held_players:  # restored into a store in use: a player it holds but erased elsewhere goes now
        for player_id in sorted(erased):
            if await store.get_player(player_id) is not None:
                await store.delete_player(player_id, erased[player_id])
    await verify(store, written.finish(), what=f"{path} less its erased players")
    return written


async def migrate(source: Store, target: Store) -> Digest:
    """Copy everything from `source` to `target`, then compare the target's counts and
    checksum with what was copied: one export, so a source still being written is
    copied (and checked) as of the moment the export began."""
    expected = Digest()

    async def copied() -> AsyncIterator[Record]:
        async for record in source.export_all():
            expected.add(KINDS[type(record)], encode(record))
            yield record

    await target.import_all(copied())
    await verify(target, expected.finish(), what=f"the source ({source.name})")
    return expected


async def verify(store: Store, expected: Digest, *, what: str) -> None:
    got = await digest(store)
    if got.counts != expected.counts or got.sha256 != expected.sha256:
        raise VerifyError(
            f"the target ({store.name}) does not match {what}: expected {expected.describe()}, "
            f"found {got.describe()} (was the target not empty, or written to meanwhile?)"
        )
