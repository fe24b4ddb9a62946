"""The storage port: records and the interface every adapter implements.

Callers (auth, engine, api) depend on `Store` only; `sqlite.py` is the embedded
default and a MongoDB adapter implements the same contract
(`tests/contract/test_store_contract.py` runs on every adapter).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from ..game.events import LiveEvent

if TYPE_CHECKING:
    from .migrations.schema import SchemaStatus


class StoreError(Exception):
    """Base class for storage failures callers can act on."""


class StorageUnavailable(StoreError):
    """The backend cannot be reached or cannot write (disk full, network down).

    Nothing was committed; the API answers 503 with Retry-After.
    """


class DuplicateKey(StoreError):
    """A unique field (email, username, device) is already taken."""

    def __init__(self, field_name: str) -> None:
        super().__init__(f"{field_name} already taken")
        self.field = field_name


@dataclass(slots=True)
class PlayerRecord:
    id: str
    username: str
    created_at: float
    role: str = "player"
    is_guest: bool = True
    email: str | None = None
    password_hash: str | None = None
    device_id: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    # anti-cheat: a flag hides the player from public boards until it decays
    flagged_at: float | None = None
    flag_reason: str | None = None
    last_violation_at: float | None = None
    violations_total: int = 0


class PlayerChanges(TypedDict, total=False):
    """The fields of a player a write changes (`Store.update_player_fields`): only
    these are written, so concurrent writers of other fields lose nothing."""

    username: str
    email: str | None
    password_hash: str | None
    role: str
    is_guest: bool
    settings: dict[str, Any]
    flagged_at: float | None
    flag_reason: str | None
    last_violation_at: float | None


@dataclass(slots=True)
class RefreshTokenRecord:
    token_hash: str
    family_id: str
    player_id: str
    issued_at: float
    expires_at: float
    spent_at: float | None = None
    revoked: bool = False


@dataclass(slots=True)
class SpendResult:
    """Outcome of spending a refresh token: `record` when it was fresh;
    `reused` when it had been spent or revoked already (its family is revoked now);
    `ended` when it was fresh but its family was revoked while it was being rotated
    (no successor is live)."""

    record: RefreshTokenRecord | None
    reused: bool = False
    ended: bool = False


@dataclass(slots=True)
class Revocation:
    """A session (refresh-token family) whose access tokens are refused until `until`
    (when the last of them expires); `at` is when it was revoked."""

    session_id: str
    until: float
    at: float


@dataclass(slots=True)
class StoredFarm:
    player_id: str
    revision: int
    doc: dict[str, Any]
    last_active: float


@dataclass(slots=True)
class Snapshot:
    player_id: str
    revision: int
    taken_at: float
    farm_value: float
    doc: dict[str, Any]


@dataclass(slots=True)
class IdempotencyRecord:
    player_id: str
    key: str
    request_hash: str
    status: int
    body: bytes
    created_at: float


@dataclass(slots=True)
class AuditRecord:
    """One admin action, kept for accountability."""

    at: float
    admin_id: str
    action: str
    target: str | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Erasure:
    """A tombstone: the player erased their account at `erased_at`. It holds the
    opaque player id and nothing else, is kept for as long as any backup made before
    the erasure could be restored, and a restore drops every record of an erased
    player (`portable.restore`), so no backup brings an erased account back."""

    player_id: str
    erased_at: float


@dataclass(slots=True)
class FarmCommit:
    """One farm's change in a group commit.

    `expected_revision` None means "create": it fails if the farm exists.
    The idempotency record and snapshot, when given, commit atomically with it;
    a record whose (player, key) is recorded already fails the commit: the check
    for a replayed Idempotency-Key rides in the commit, no read before it.
    """

    player_id: str
    expected_revision: int | None
    revision: int
    doc: dict[str, Any]
    last_active: float
    idempotency: IdempotencyRecord | None = None
    snapshot: Snapshot | None = None


# One record of a whole-store export, in the canonical order every adapter yields:
# players by id, refresh tokens by hash, farms by player id, snapshots by (player id,
# revision), idempotency records by (player id, key), audit entries by (at, insertion),
# erasures (tombstones) by player id, live events by id.
# Strings sort by code point (= UTF-8 bytes), as both SQLite and MongoDB compare them.
Record = (
    PlayerRecord | RefreshTokenRecord | StoredFarm | Snapshot | IdempotencyRecord | AuditRecord | Erasure | LiveEvent
)


def record_owner(record: Record) -> str | None:
    """The player a record is personal data of (None: an audit entry, a tombstone or a
    live event, which a restore keeps whoever they name)."""
    if isinstance(record, PlayerRecord):
        return record.id
    if isinstance(record, AuditRecord | Erasure | LiveEvent):
        return None
    return record.player_id


def audit_key(record: AuditRecord) -> tuple[Any, ...]:
    """What makes two audit entries the same entry (audit rows have no natural key):
    an import skips as many entries of a key as the target already holds, so
    re-running an interrupted import adds none twice."""
    import orjson

    return (
        record.at,
        record.admin_id,
        record.action,
        record.target,
        orjson.dumps(record.details, option=orjson.OPT_SORT_KEYS),
    )


def retained_revisions(seen: list[tuple[int, float]], now: float, history: int, daily_days: int) -> set[int]:
    """The snapshot retention policy, given a farm's (revision, taken_at) pairs and the
    newest snapshot's time: the newest `history` revisions, plus the first (lowest)
    revision of each UTC day whose snapshots were taken at or after `now - daily_days`
    days. Adapters that cannot say it in their query language call this."""
    keep = {rev for rev, _ in sorted(seen, reverse=True)[:history]}
    firsts: dict[int, int] = {}
    since = now - daily_days * 86400.0
    for rev, at in seen:
        if at >= since:
            day = int(at / 86400)
            firsts[day] = min(rev, firsts.get(day, rev))
    return keep | set(firsts.values())


def plan_snapshot_writes(
    existing: dict[str, dict[int, float]], snapshots: list[Snapshot], history: int, daily_days: int
) -> tuple[list[Snapshot], list[tuple[str, int]]]:
    """Snapshots inserted in order, the retention policy applied after each one, in
    memory: given each farm's stored (revision -> taken_at), what to write (a snapshot
    the policy would drop at once is not written; the last of one revision wins) and
    which stored (farm, revision) to delete. Both stores write exactly this."""
    state = {p: dict(revs) for p, revs in existing.items()}
    latest: dict[tuple[str, int], Snapshot] = {}
    for snap in snapshots:
        revs = state.setdefault(snap.player_id, {})
        revs[snap.revision] = snap.taken_at
        latest[(snap.player_id, snap.revision)] = snap
        if len(revs) > history:  # fewer are all among the newest `history`: all kept
            kept = retained_revisions(list(revs.items()), snap.taken_at, history, daily_days)
            for rev in [r for r in revs if r not in kept]:
                del revs[rev]
    writes = [snap for (p, rev), snap in latest.items() if rev in state[p]]
    deletes = [(p, rev) for p, revs in existing.items() for rev in sorted(set(revs) - set(state[p]))]
    return writes, deletes


class Store(Protocol):
    """Durable storage. Every method is a coroutine and safe to call concurrently."""

    name: str

    async def open(self) -> None:
        """Connect, then check the schema version: upgrade, refuse, or neither, as the
        adapter's `schema` policy says (`migrations/schema.py`)."""

    async def close(self) -> None: ...
    async def schema_status(self) -> SchemaStatus: ...
    async def upgrade_schema(self) -> list[str]:
        """Run the pending schema migrations; the names of those this call ran."""

    async def ping(self) -> None:
        """Raise StorageUnavailable when the backend cannot serve."""

    # players and credentials
    async def create_player(self, player: PlayerRecord) -> PlayerRecord:
        """Insert; with a device_id, return the existing player of that device instead."""

    async def get_player(self, player_id: str) -> PlayerRecord | None: ...
    async def find_player(
        self, *, email: str | None = None, username: str | None = None, device_id: str | None = None
    ) -> PlayerRecord | None: ...
    async def update_player_fields(
        self, player_id: str, changes: PlayerChanges, expect: PlayerChanges | None = None
    ) -> bool:
        """Write only the fields in `changes`, and only while the stored record holds the
        values in `expect` (a compare-and-set: None means unset). Returns whether the
        player exists and matched; DuplicateKey when the email or username is taken."""

    async def record_violation(self, player_id: str, at: float, flag_reason: str | None) -> bool | None:
        """Count one violation in the store itself (`violations_total` + 1, `last_violation_at`);
        with `flag_reason`, flag the player unless flagged already. Returns whether it was
        flagged now; None when there is no such player."""

    async def delete_player(self, player_id: str, at: float | None = None) -> None:
        """Erase the player and everything of theirs (farm, snapshots, tokens, keys) and
        record the tombstone (`Erasure`, erased at `at`, default now; an existing
        tombstone keeps its earlier time) in the same write: the tombstone first, so an
        erase cut short is finished by a restore or by calling again."""

    async def list_erasures(self) -> list[Erasure]:
        """Every tombstone, by player id."""

    async def list_player_tokens(self, player_id: str) -> list[RefreshTokenRecord]:
        """The player's refresh tokens, oldest first (their data export and the admin
        console list sessions from them)."""

    async def list_player_idempotency(self, player_id: str) -> list[IdempotencyRecord]:
        """The player's stored replay answers, by key."""

    async def count_players(self) -> int: ...
    async def usernames(self, player_ids: list[str]) -> dict[str, str]: ...
    async def list_flagged(self) -> list[PlayerRecord]: ...

    # refresh-token families
    async def add_refresh_token(self, record: RefreshTokenRecord) -> None: ...
    async def spend_refresh_token(self, token_hash: str, now: float) -> SpendResult: ...
    async def rotate_refresh_token(
        self, token_hash: str, successor_hash: str, now: float, expires_at: float
    ) -> SpendResult:
        """Spend the token and store its successor in the same family as one step: the
        successor is stored only when the token was fresh and unexpired, and once a
        revocation of the family (`revoke_family`, `revoke_player_tokens`, a replay) has
        returned, no successor of it is live: a rotation that loses that race answers
        `ended` and its successor is revoked."""

    async def revoke_family(self, family_id: str) -> None: ...
    async def revoke_player_tokens(self, player_id: str, issued_after: float) -> list[str]:
        """Revoke every refresh token of the player; returns the families that had a token
        issued after `issued_after` (those whose access tokens may still be alive)."""

    # revoked sessions: access tokens are self-contained, so every replica keeps the list
    async def add_revocations(self, revocations: list[Revocation]) -> None: ...
    async def revocations_since(self, at: float) -> list[Revocation]:
        """Revocations made at or after `at`, oldest first."""

    async def prune_revocations(self, before: float) -> int:
        """Forget revocations whose tokens have all expired (`until` before `before`)."""

    # farms
    async def load_farm(self, player_id: str) -> StoredFarm | None: ...
    async def commit(self, batch: list[FarmCommit]) -> list[bool]:
        """Apply every commit whose expected revision matches, in one transaction.

        Returns, per item, whether it was applied (False: a revision conflict, or its
        idempotency key is recorded already: `get_idempotency` tells which).
        Raises StorageUnavailable when nothing could be written.
        """

    async def touch_farms(self, items: list[tuple[str, float]]) -> None:
        """Record last-activity times (no revision change)."""

    async def add_snapshots(self, snapshots: list[Snapshot]) -> None:
        """Record history; keeps the newest `snapshot_history` per farm."""

    async def list_snapshots(self, player_id: str, limit: int) -> list[Snapshot]: ...
    async def get_snapshot(self, player_id: str, revision: int) -> Snapshot | None: ...
    async def get_idempotency(self, player_id: str, key: str) -> IdempotencyRecord | None: ...
    async def prune_idempotency(self, before: float) -> int:
        """Forget idempotency records created before `before`; returns how many."""

    # admin audit log
    async def add_audit(self, record: AuditRecord) -> None: ...
    # ---- live events (timed production multipliers; every replica reads them all) ----
    async def add_event(self, event: LiveEvent) -> None: ...
    async def list_events(self) -> list[LiveEvent]:
        """Every event ever scheduled, by start then id (an old window still matters to a
        farm that went offline before it)."""
        ...

    async def cancel_event(self, event_id: str, at: float) -> LiveEvent | None:
        """Set `cancelled_at` to `at` if the event is neither cancelled nor ended by `at`;
        the updated event, or None when nothing changed (unknown, cancelled, ended)."""
        ...

    async def list_audit(self, limit: int) -> list[AuditRecord]: ...
    async def list_audit_about(self, player_id: str, limit: int) -> list[AuditRecord]:
        """The newest `limit` entries whose target or actor is the player, newest first."""

    # whole-store export and import (backup, restore, migrate between backends)
    def export_all(self) -> AsyncIterator[Record]:
        """Every record, in the canonical order of `Record` (so two stores holding the same
        data export the same sequence), consistent while writers run: one snapshot where
        the backend offers one, else every record checked against those read before it
        (`export_guard.py`); either way every action acknowledged before the export began
        is in it and no record refers to one the export lacks."""

    async def import_all(self, records: AsyncIterable[Record]) -> dict[str, int]:
        """Write records as they are (upsert by natural key; snapshots bypass retention;
        audit entries already present are not repeated), so re-running an interrupted
        import is safe. Returns the count read per record type name."""
