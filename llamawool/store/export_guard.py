"""What keeps a whole-store export consistent when its reads are not one snapshot.

SQLite reads an export in one read transaction, and MongoDB 5.0+ on a replica
set in one snapshot session: those exports are the store as it stood at one
moment. Where the server offers no snapshot (a standalone mongod; a server
that accepts snapshot sessions without pinning their reads, as SecantusDB, the
tests' stand-in, does) the export reads collection after collection while the
game writes. It still reads in the canonical order of `base.Record` (players,
refresh tokens, farms, snapshots, idempotency records, audit), and this guard
keeps exactly the records that agree with what was read before them:

- a refresh token or a farm only if its player was exported (one missing was
  created after the players were read);
- a snapshot only if its farm was exported at that revision or a later one;
- an idempotency record only if its farm was exported and reaches the revision
  the record's answer reports (its action committed after the farm was read).

Why nothing acknowledged before the export began is dropped: every read starts
after that moment, and what such an action wrote is never taken back while the
player exists (a player is erased last, after their farm; a farm's revision
only grows; a farm and its idempotency record commit in one transaction, or,
without transactions, the farm first). So its player was exported, its farm
was exported at its revision or later, and its idempotency record is kept. And
why what is kept holds together: each record is checked against the records
its references point to, and those were read before it.

What such an export is not: one instant. A refresh token spent while the
export ran may be in it unspent beside its successor; snapshot retention may
have trimmed a farm's older history meanwhile; a player erased while the
export ran may be in it without their farm (their erasure had not finished
before the export began).
"""

from __future__ import annotations

import orjson

from ..game.events import LiveEvent
from . import base


def answered_revision(record: base.IdempotencyRecord) -> int | None:
    """The farm revision an idempotency record's stored answer reports (the revision
    its action produced), or None when the body says none."""
    try:
        body = orjson.loads(record.body)
    except orjson.JSONDecodeError:
        return None
    farm = body.get("farm") if isinstance(body, dict) else None
    revision = farm.get("revision") if isinstance(farm, dict) else None
    return revision if isinstance(revision, int) and not isinstance(revision, bool) else None


class ExportGuard:
    """Fed an export's records in canonical order; `keep` says which belong in it."""

    def __init__(self) -> None:
        self.players: set[str] = set()
        self.farms: dict[str, int] = {}  # player id -> the exported farm's revision
        self.dropped: dict[str, int] = {}  # record type name -> how many were left out

    def keep(self, record: base.Record) -> bool:
        kept = self._agrees(record)
        if not kept:
            name = type(record).__name__
            self.dropped[name] = self.dropped.get(name, 0) + 1
        return kept

    def _agrees(self, record: base.Record) -> bool:
        if isinstance(record, base.PlayerRecord):
            self.players.add(record.id)
            return True
        if isinstance(record, base.RefreshTokenRecord):
            return record.player_id in self.players
        if isinstance(record, base.StoredFarm):
            if record.player_id not in self.players:
                return False
            self.farms[record.player_id] = record.revision
            return True
        if isinstance(record, base.Snapshot):
            return record.revision <= self.farms.get(record.player_id, -1)
        if isinstance(record, base.IdempotencyRecord):
            reached = self.farms.get(record.player_id)
            if reached is None:
                return False
            answered = answered_revision(record)
            return answered is None or answered <= reached
        if isinstance(record, base.AuditRecord | base.Erasure | LiveEvent):
            return True
        raise TypeError(f"not a store record: {type(record).__name__}")
