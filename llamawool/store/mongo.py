"""Production storage on MongoDB through pymongo's `AsyncMongoClient` (not Motor).

Collections (one database, the URI's default database or `llamawool`):

- `players`: `_id` = player id; `username_key` / `email_key` hold the names
  folded like SQLite's NOCASE (ASCII letters lower-cased) under unique indexes,
  so lookups are exact index matches and need no collation; `device_id` sits in
  the player document under a unique partial index, which makes "create, or
  return the device's player" one atomic insert. Optional fields that carry a
  partial index (`email`, `device_id`, `flagged_at`) are absent, not null, when
  unset.
- `refresh_tokens`: `_id` = token hash; indexes by family and by player.
- `refresh_families`: `_id` = family (session) id, `player_id`, `revoked`: what a
  rotation reads to know its family was revoked (see `rotate_refresh_token`).
- `farms`: `_id` = player id, `revision`, `doc`, `last_active`.
- `snapshots`: unique (player_id, revision).
- `idempotency`: unique (player_id, key).
- `audit_log`: ordered by (at, _id); indexed by target and by actor.
- `erasures`: `_id` = an erased player's id, `erased_at` (tombstones: see
  `delete_player` and `portable.restore`).
- `schema_version`: the schema's version and migration lock (`migrations/mongo.py`);
  `open` creates the collections' indexes through those migrations.

Group commit. When the deployment supports multi-document transactions (a
replica set or a sharded cluster: what production runs) a batch is one
transaction, so every farm's compare-and-set, its idempotency record and its
snapshot commit together or not at all, like SQLite. The transaction first
assumes every farm applies: one bulk write of every compare-and-set, one
insert of the idempotency records (a key recorded already breaks the unique
index: the check rides in the commit), and the commit: two round trips for a
batch of any size, three with keys. Only when a farm moved on or a key was a
replay does it run again, reading the batch's revisions and keys once to
decide farm by farm. On a standalone server
(no transactions) the batch falls back to one compare-and-set update per farm,
in order. Each update is atomic on its own document, and the idempotency record
is written into the farm document by that same update (`idem`) before it is
copied to its collection, so an acknowledged action's replay answer can never
be lost. The trade-offs: the batch is no longer all-or-nothing (a failure in
the middle leaves the first farms committed; they were not acknowledged, the
engine's retry sees a revision conflict and reloads the newer state, and a
client's retry is answered from the idempotency record), a crash between the
farm update and its snapshot loses that history entry (snapshots only shorten
reads and keep history), and it costs one round trip per farm instead of one
per batch.

Every driver failure (unreachable server, timeout, lost primary, write concern
error) is raised as `StorageUnavailable`; a unique index violation as
`DuplicateKey(field)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import structlog
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, DeleteMany, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.monitoring import CommandListener
from pymongo.write_concern import WriteConcern

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
from .export_guard import ExportGuard, answered_revision
from .migrations import SchemaPolicy, SchemaStatus
from .migrations import mongo as schema

T = TypeVar("T")
Doc = dict[str, Any]
_log = structlog.get_logger("llamawool.store")

DEFAULT_DATABASE = "llamawool"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Index key -> the field name DuplicateKey reports (what the caller sent).
_UNIQUE_FIELDS = {"username_key": "username", "email_key": "email", "device_id": "device_id", "_id": "id"}
# Server error codes that mean "this deployment has no transactions".
_NO_TRANSACTIONS = {20, 263}
# A snapshot read older than the history the server keeps.
_SNAPSHOT_TOO_OLD = 239
# The wire version of MongoDB 5.0, the first with snapshot reads outside transactions.
_SNAPSHOT_READS_WIRE_VERSION = 13
IMPORT_CHUNK = 500


class _Retry(Exception):
    """Inside a transaction: what was read changed before the write; run it again."""


class _DecideOneByOne(_Retry):
    """The optimistic group commit met a conflict or a replayed key: run again at once,
    deciding every farm of the batch from a read."""


def fold(name: str) -> str:
    """The case-insensitive key of a username or email: ASCII letters lower-cased,
    exactly what SQLite's NOCASE compares, so both backends accept the same names."""
    return name.translate(_ASCII_LOWER)


def _duplicate(exc: DuplicateKeyError | BulkWriteError) -> DuplicateKey:
    details: Any = exc.details or {}
    if isinstance(exc, BulkWriteError):
        errors = details.get("writeErrors") or [{}]
        details = errors[0]
    pattern = details.get("keyPattern") or {}
    for key in pattern:
        if key in _UNIQUE_FIELDS:
            return DuplicateKey(_UNIQUE_FIELDS[key])
    message = str(details.get("errmsg", exc))
    for key, name in _UNIQUE_FIELDS.items():
        if key in message:
            return DuplicateKey(name)
    return DuplicateKey("id")


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Driver errors -> the port's errors."""
    try:
        yield
    except DuplicateKeyError as exc:
        raise _duplicate(exc) from None
    except BulkWriteError as exc:
        if any(e.get("code") == 11000 for e in (exc.details or {}).get("writeErrors", [])):
            raise _duplicate(exc) from None
        raise StorageUnavailable(f"mongodb: {exc}") from exc
    except PyMongoError as exc:
        raise StorageUnavailable(f"mongodb: {type(exc).__name__}: {exc}") from exc


# ---- documents <-> records ----------------------------------------------------------------


def _player_doc(p: PlayerRecord) -> Doc:
    doc: Doc = {
        "_id": p.id,
        "username": p.username,
        "username_key": fold(p.username),
        "password_hash": p.password_hash,
        "role": p.role,
        "is_guest": p.is_guest,
        "created_at": p.created_at,
        "settings": p.settings,
        "flag_reason": p.flag_reason,
        "last_violation_at": p.last_violation_at,
        "violations_total": p.violations_total,
    }
    if p.email is not None:
        doc["email"] = p.email
        doc["email_key"] = fold(p.email)
    if p.flagged_at is not None:
        doc["flagged_at"] = p.flagged_at
    if p.device_id is not None:
        doc["device_id"] = p.device_id
    return doc


def _player_fields(changes: PlayerChanges) -> tuple[Doc, list[str]]:
    """The document fields to set, and those to remove, for these player fields: the
    name keys follow their names, and a field with a partial index is absent when unset."""
    sets: Doc = {}
    unset: list[str] = []
    for name, value in changes.items():
        if name == "username":
            sets.update(username=value, username_key=fold(str(value)))
        elif name == "email":
            if value is None:
                unset += ["email", "email_key"]
            else:
                sets.update(email=value, email_key=fold(str(value)))
        elif name == "flagged_at" and value is None:
            unset.append("flagged_at")
        elif name in PlayerChanges.__annotations__:
            sets[name] = value
        else:
            raise ValueError(f"not a player field: {name}")
    return sets, unset


def _player(d: Doc | None) -> PlayerRecord | None:
    if d is None:
        return None
    return PlayerRecord(
        id=d["_id"],
        username=d["username"],
        created_at=d["created_at"],
        role=d["role"],
        is_guest=d["is_guest"],
        email=d.get("email"),
        password_hash=d.get("password_hash"),
        device_id=d.get("device_id"),
        settings=d.get("settings") or {},
        flagged_at=d.get("flagged_at"),
        flag_reason=d.get("flag_reason"),
        last_violation_at=d.get("last_violation_at"),
        violations_total=d.get("violations_total", 0),
    )


def _token_doc(r: RefreshTokenRecord) -> Doc:
    return {
        "_id": r.token_hash,
        "family_id": r.family_id,
        "player_id": r.player_id,
        "issued_at": r.issued_at,
        "expires_at": r.expires_at,
        "spent_at": r.spent_at,
        "revoked": r.revoked,
    }


def _token(d: Doc) -> RefreshTokenRecord:
    return RefreshTokenRecord(
        d["_id"], d["family_id"], d["player_id"], d["issued_at"], d["expires_at"], d.get("spent_at"), d["revoked"]
    )


def _snapshot_doc(s: Snapshot) -> Doc:
    return {
        "player_id": s.player_id,
        "revision": s.revision,
        "taken_at": s.taken_at,
        "farm_value": s.farm_value,
        "doc": s.doc,
    }


def _snapshot(d: Doc) -> Snapshot:
    return Snapshot(d["player_id"], d["revision"], d["taken_at"], d["farm_value"], d["doc"])


def _idem_doc(r: IdempotencyRecord) -> Doc:
    return {
        "player_id": r.player_id,
        "key": r.key,
        "request_hash": r.request_hash,
        "status": r.status,
        "body": r.body,
        "created_at": r.created_at,
    }


def _idem(d: Doc) -> IdempotencyRecord:
    return IdempotencyRecord(
        d["player_id"], d["key"], d["request_hash"], d["status"], bytes(d["body"]), d["created_at"]
    )


def _audit_doc(r: AuditRecord) -> Doc:
    return {"at": r.at, "admin_id": r.admin_id, "action": r.action, "target": r.target, "details": r.details}


def _audit(d: Doc) -> AuditRecord:
    return AuditRecord(d["at"], d["admin_id"], d["action"], d.get("target"), d.get("details") or {})


def _erasure_op(erasure: Erasure) -> UpdateOne:
    """Upsert the tombstone; one already there keeps the earlier time."""
    return UpdateOne({"_id": erasure.player_id}, {"$min": {"erased_at": erasure.erased_at}}, upsert=True)


async def _backoff(attempt: int) -> None:
    """Jittered exponential backoff for transaction retries: replicas that
    conflicted must not retry in lockstep."""
    await asyncio.sleep(random.uniform(0.0, min(0.25, 0.004 * 2**attempt)))  # noqa: S311 - jitter, not crypto


class MongoStore:
    name = "mongodb"

    def __init__(
        self,
        uri: str,
        *,
        database: str | None = None,
        pool_size: int = 50,
        timeout_s: float = 5.0,
        select_timeout_s: float | None = None,
        snapshot_history: int = 50,
        snapshot_daily_days: int = 30,
        transactions: bool | None = None,
        snapshot_reads: bool | None = None,
        schema: SchemaPolicy = "apply",
        listeners: Sequence[CommandListener] = (),
    ) -> None:
        """`transactions` None detects support at open; False forces the per-farm fallback.
        `snapshot_reads` likewise for exports read in one snapshot session (False: read
        without one, kept consistent by `ExportGuard` alone). `listeners` hear every
        command sent (a test or a benchmark counts round trips).

        `select_timeout_s` (default `timeout_s`) is how long an operation waits for a
        reachable primary: when the server is down, that is how soon a request fails.

        `schema`: what `open` does with pending migrations (`migrations.schema.admit`)."""
        self.uri = uri
        self.schema = schema
        self.database_name = database
        self.pool_size = pool_size
        self.timeout_s = timeout_s
        self.select_timeout_s = timeout_s if select_timeout_s is None else select_timeout_s
        self.retention = (snapshot_history, snapshot_daily_days)
        self._want_transactions = transactions
        self._listeners = list(listeners)
        self.transactions = False
        self._want_snapshot_reads = snapshot_reads
        self.snapshot_reads = False
        self.replica_set = False
        self._wc = WriteConcern(w=1, j=True)
        self._client: AsyncMongoClient[Doc] | None = None
        self._db: AsyncDatabase[Doc] | None = None

    # ---- plumbing ---------------------------------------------------------------------

    @property
    def db(self) -> AsyncDatabase[Doc]:
        if self._db is None:
            raise StorageUnavailable("mongodb: store is not open")
        return self._db

    @property
    def client(self) -> AsyncMongoClient[Doc]:
        if self._client is None:
            raise StorageUnavailable("mongodb: store is not open")
        return self._client

    def _c(self, name: str) -> AsyncCollection[Doc]:
        return self.db[name]

    async def open(self) -> None:
        ms = max(1, int(self.timeout_s * 1000))
        try:
            client: AsyncMongoClient[Doc] = AsyncMongoClient(
                self.uri,
                maxPoolSize=self.pool_size,
                serverSelectionTimeoutMS=max(1, int(self.select_timeout_s * 1000)),
                connectTimeoutMS=ms,
                socketTimeoutMS=ms,
                retryWrites=True,
                retryReads=True,
                appname="llamawool",
                tz_aware=False,
                event_listeners=self._listeners,
            )
        except (ConfigurationError, ValueError) as exc:
            raise StorageUnavailable(f"mongodb: bad MONGODB_URI: {exc}") from exc
        self._client = client
        try:
            with _errors():
                hello: Doc = await self._hello(client)
                # A replica set (setName) or mongos (msg isdbgrid) runs multi-document
                # transactions and can acknowledge a write on a majority.
                self.replica_set = bool(hello.get("setName")) or hello.get("msg") == "isdbgrid"
                sessions = hello.get("logicalSessionTimeoutMinutes") is not None
                supported = self.replica_set and sessions
                want = self._want_transactions
                self.transactions = supported if want is None else (want and supported)
                snapshots = supported and hello.get("maxWireVersion", 0) >= _SNAPSHOT_READS_WIRE_VERSION
                self.snapshot_reads = snapshots and self._want_snapshot_reads is not False
                name = self.database_name or client.get_default_database(DEFAULT_DATABASE).name
                # Acknowledged means durable: journaled (j) and, on a replica set, on a majority,
                # so neither a kill -9 of mongod nor a failover can take back an acknowledged action.
                w: int | str = "majority" if self.replica_set else 1
                self._wc = WriteConcern(w, wtimeout=ms, j=True)
                self._db = client.get_database(name, write_concern=self._wc)
                await schema.prepare(self._db, self.schema)
        except BaseException:
            await client.close()
            self._client = None
            self._db = None
            raise

    async def _hello(self, client: AsyncMongoClient[Doc]) -> Doc:
        """The first contact: a server that is still starting gets `timeout_s`, however
        short the per-operation server selection is."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                hello: Doc = await client.admin.command("hello")
                return hello
            except ServerSelectionTimeoutError:
                if time.monotonic() >= deadline:
                    raise

    async def schema_status(self) -> SchemaStatus:
        with _errors():
            return await schema.read_status(self.db)

    async def upgrade_schema(self) -> list[str]:
        with _errors():
            return [step.name for step in await schema.upgrade(self.db)]

    async def close(self) -> None:
        client, self._client, self._db = self._client, None, None
        if client is not None:
            with contextlib.suppress(PyMongoError):
                await client.close()

    async def ping(self) -> None:
        with _errors():
            await self.client.admin.command("ping")

    async def _transaction(self, fn: Callable[[AsyncClientSession | None], Awaitable[T]]) -> T:
        """Run `fn` in one transaction, retried on transient errors until the timeout.

        Without transaction support `fn` runs once with no session (each write
        atomic on its own)."""
        if not self.transactions:
            return await fn(None)
        deadline = time.monotonic() + self.timeout_s
        attempt = 0
        async with self.client.start_session() as session:
            while True:
                attempt += 1
                try:
                    await session.start_transaction(write_concern=self._wc)
                    out = await fn(session)
                    await self._commit_transaction(session, deadline)
                    return out
                except _Retry as exc:
                    if session.in_transaction:
                        with contextlib.suppress(PyMongoError):
                            await session.abort_transaction()
                    if time.monotonic() >= deadline:
                        raise StorageUnavailable(f"mongodb: {exc}, still after {self.timeout_s}s") from exc
                    if not isinstance(exc, _DecideOneByOne):  # nobody to fall out of step with
                        await _backoff(attempt)
                except PyMongoError as exc:
                    if session.in_transaction:
                        with contextlib.suppress(PyMongoError):
                            await session.abort_transaction()
                    if isinstance(exc, OperationFailure) and exc.code in _NO_TRANSACTIONS:
                        # The deployment changed under us (or lied in hello): fall back for good.
                        self.transactions = False
                        return await fn(None)
                    # No reachable server after a whole server selection: fail now (503)
                    # rather than wait again; other transient errors are retried.
                    if (
                        exc.has_error_label("TransientTransactionError")
                        and not isinstance(exc, ServerSelectionTimeoutError)
                        and time.monotonic() < deadline
                    ):
                        await _backoff(attempt)
                        continue
                    raise

    @staticmethod
    async def _commit_transaction(session: AsyncClientSession, deadline: float) -> None:
        while True:
            try:
                await session.commit_transaction()
                return
            except PyMongoError as exc:
                if (
                    exc.has_error_label("UnknownTransactionCommitResult")
                    and not isinstance(exc, ServerSelectionTimeoutError)
                    and time.monotonic() < deadline
                ):
                    continue
                raise

    # ---- players --------------------------------------------------------------------------

    async def create_player(self, player: PlayerRecord) -> PlayerRecord:
        players = self._c("players")
        with _errors():
            if player.device_id is not None:
                found = _player(await players.find_one({"device_id": player.device_id}))
                if found is not None:
                    return found
            doc = _player_doc(player)
            try:
                await players.insert_one(doc)
            except DuplicateKeyError as exc:
                dup = _duplicate(exc)
                if dup.field == "id" and await players.find_one({"_id": player.id}) == doc:
                    return player  # this very insert, run twice by the driver's retry (see _insert_token)
                if dup.field == "device_id" and player.device_id is not None:
                    # Another request registered this device a moment ago: theirs wins.
                    found = _player(await players.find_one({"device_id": player.device_id}))
                    if found is not None:
                        return found
                raise dup from None
        return player

    async def get_player(self, player_id: str) -> PlayerRecord | None:
        with _errors():
            return _player(await self._c("players").find_one({"_id": player_id}))

    async def find_player(
        self, *, email: str | None = None, username: str | None = None, device_id: str | None = None
    ) -> PlayerRecord | None:
        if device_id is not None:
            query: Doc = {"device_id": device_id}
        elif email is not None:
            query = {"email_key": fold(email)}
        elif username is not None:
            query = {"username_key": fold(username)}
        else:
            return None
        with _errors():
            return _player(await self._c("players").find_one(query))

    async def update_player_fields(
        self, player_id: str, changes: PlayerChanges, expect: PlayerChanges | None = None
    ) -> bool:
        if not changes:
            raise ValueError("no fields to change")
        sets, unset = _player_fields(changes)
        update: Doc = {}
        if sets:
            update["$set"] = sets
        if unset:
            update["$unset"] = dict.fromkeys(unset, "")
        query: Doc = {"_id": player_id}
        wanted, absent = _player_fields(expect or {})
        query.update(wanted)
        query.update(dict.fromkeys(absent, None))  # matches an absent field (and a null one)
        with _errors():
            result = await self._c("players").update_one(query, update)
        return bool(result.matched_count == 1)

    async def record_violation(self, player_id: str, at: float, flag_reason: str | None) -> bool | None:
        players = self._c("players")
        with _errors():
            counted = await players.update_one(
                {"_id": player_id}, {"$inc": {"violations_total": 1}, "$set": {"last_violation_at": at}}
            )
            if counted.matched_count != 1:
                return None
            if flag_reason is None:
                return False
            flagged = await players.update_one(
                {"_id": player_id, "flagged_at": {"$exists": False}},
                {"$set": {"flagged_at": at, "flag_reason": flag_reason}},
            )
        return bool(flagged.matched_count == 1)

    async def delete_player(self, player_id: str, at: float | None = None) -> None:
        erased_at = time.time() if at is None else at

        async def run(s: AsyncClientSession | None) -> None:
            # first: without transactions, an erase cut short still leaves its tombstone
            await self._c("erasures").bulk_write([_erasure_op(Erasure(player_id, erased_at))], session=s)
            for name, key in (
                ("refresh_families", "player_id"),
                ("refresh_tokens", "player_id"),
                ("snapshots", "player_id"),
                ("idempotency", "player_id"),
                ("farms", "_id"),
                ("players", "_id"),  # last: an interrupted erase is finished by calling again
            ):
                await self._c(name).delete_many({key: player_id}, session=s)

        with _errors():
            await self._transaction(run)

    async def list_erasures(self) -> list[Erasure]:
        with _errors():
            cursor = self._c("erasures").find().sort("_id", ASCENDING)
            return [Erasure(d["_id"], d["erased_at"]) async for d in cursor]

    async def list_player_tokens(self, player_id: str) -> list[RefreshTokenRecord]:
        with _errors():
            cursor = (
                self._c("refresh_tokens")
                .find({"player_id": player_id})
                .sort([("issued_at", ASCENDING), ("_id", ASCENDING)])
            )
            return [_token(d) async for d in cursor]

    async def list_player_idempotency(self, player_id: str) -> list[IdempotencyRecord]:
        """The collection's records, and the one riding in the farm document while a
        fallback commit has not copied it yet (what `get_idempotency` answers from)."""
        with _errors():
            found = {d["key"]: _idem(d) async for d in self._c("idempotency").find({"player_id": player_id})}
            farm = await self._c("farms").find_one({"_id": player_id}, {"idem": 1, "revision": 1})
        if farm is not None and isinstance(farm.get("idem"), dict):
            riding = _idem(farm["idem"])
            if answered_revision(riding) == farm["revision"]:
                found.setdefault(riding.key, riding)
        return [found[k] for k in sorted(found)]

    async def count_players(self) -> int:
        with _errors():
            return await self._c("players").count_documents({})

    async def usernames(self, player_ids: list[str]) -> dict[str, str]:
        if not player_ids:
            return {}
        with _errors():
            cursor = self._c("players").find({"_id": {"$in": player_ids}}, {"username": 1})
            return {d["_id"]: d["username"] async for d in cursor}

    async def list_flagged(self) -> list[PlayerRecord]:
        with _errors():
            cursor = self._c("players").find({"flagged_at": {"$exists": True}})
            return [p async for d in cursor if (p := _player(d)) is not None]

    # ---- refresh tokens -----------------------------------------------------------------------

    async def add_refresh_token(self, record: RefreshTokenRecord) -> None:
        with _errors():
            # The family record first (never un-revoking one), then its token.
            await self._c("refresh_families").update_one(
                {"_id": record.family_id},
                {"$setOnInsert": {"player_id": record.player_id, "revoked": False}},
                upsert=True,
            )
            await self._insert_token(_token_doc(record))

    async def _insert_token(self, doc: Doc) -> None:
        """Insert, idempotently: the driver retries a write whose reply it lost, and a
        retry that reaches the server while the first attempt is still running (a reply
        slower than the socket timeout, under load) runs the insert again, so the first
        attempt's own document answers DuplicateKey. A token hash is 256 random bits:
        the same document under its `_id` can only be this write, applied already."""
        tokens = self._c("refresh_tokens")
        try:
            await tokens.insert_one(doc)
        except DuplicateKeyError:
            if await tokens.find_one({"_id": doc["_id"]}) != doc:
                raise

    async def spend_refresh_token(self, token_hash: str, now: float) -> SpendResult:
        with _errors():
            return await self._spend(token_hash, now)

    async def _spend(self, token_hash: str, now: float) -> SpendResult:
        tokens = self._c("refresh_tokens")
        # One atomic conditional update: of any number of concurrent spends, one wins.
        fresh = await tokens.find_one_and_update(
            {"_id": token_hash, "spent_at": None, "revoked": False}, {"$set": {"spent_at": now}}
        )
        if fresh is not None:
            rec = _token(fresh)
            rec.spent_at = now
            return SpendResult(rec)
        seen = await tokens.find_one({"_id": token_hash})
        if seen is None:
            return SpendResult(None)
        await self._revoke_families([seen["family_id"]], seen["player_id"])
        return SpendResult(_token(seen), reused=True)

    async def rotate_refresh_token(
        self, token_hash: str, successor_hash: str, now: float, expires_at: float
    ) -> SpendResult:
        """Spend, insert the successor, then read the family record. A revocation writes
        the family record first and the family's tokens after; each single-document
        write is atomic, so either this read sees the revocation (the successor is
        revoked here) or the revocation's token update comes after the successor's
        insert and revokes it there. No transaction needed, on a replica set or not."""
        with _errors():
            spent = await self._spend(token_hash, now)
            rec = spent.record
            if rec is None or spent.reused or rec.expires_at <= now:
                return spent
            successor = RefreshTokenRecord(successor_hash, rec.family_id, rec.player_id, now, expires_at)
            await self._insert_token(_token_doc(successor))
            family = await self._c("refresh_families").find_one({"_id": rec.family_id})
            if family is None or not family.get("revoked"):
                return spent  # no record: a family from before family records, not revoked
            await self._c("refresh_tokens").update_one({"_id": successor_hash}, {"$set": {"revoked": True}})
            return SpendResult(rec, ended=True)

    async def _revoke_families(self, family_ids: list[str], player_id: str) -> None:
        """Mark the families revoked (the record rotations read), then every token of
        theirs: in this order (see `rotate_refresh_token`)."""
        if not family_ids:
            return
        await self._c("refresh_families").bulk_write(
            [
                UpdateOne(
                    {"_id": f}, {"$set": {"revoked": True}, "$setOnInsert": {"player_id": player_id}}, upsert=True
                )
                for f in family_ids
            ],
            ordered=False,
        )
        await self._c("refresh_tokens").update_many({"family_id": {"$in": family_ids}}, {"$set": {"revoked": True}})

    async def revoke_family(self, family_id: str) -> None:
        with _errors():
            seen = await self._c("refresh_tokens").find_one({"family_id": family_id}, {"player_id": 1})
            await self._revoke_families([family_id], seen["player_id"] if seen else "")

    async def revoke_player_tokens(self, player_id: str, issued_after: float) -> list[str]:
        with _errors():
            tokens = self._c("refresh_tokens")
            live = await tokens.distinct("family_id", {"player_id": player_id, "issued_at": {"$gt": issued_after}})
            families = set(await tokens.distinct("family_id", {"player_id": player_id}))
            # a family whose first token is still being inserted has its record already
            families |= set(await self._c("refresh_families").distinct("_id", {"player_id": player_id}))
            await self._revoke_families(sorted(families), player_id)
        return sorted(live)

    async def add_revocations(self, revocations: list[Revocation]) -> None:
        if not revocations:
            return
        with _errors():
            await self._c("revocations").bulk_write(
                [
                    ReplaceOne({"_id": r.session_id}, {"_id": r.session_id, "until": r.until, "at": r.at}, upsert=True)
                    for r in revocations
                ],
                ordered=False,
            )

    async def revocations_since(self, at: float) -> list[Revocation]:
        with _errors():
            cursor = self._c("revocations").find({"at": {"$gte": at}}).sort([("at", ASCENDING), ("_id", ASCENDING)])
            return [Revocation(d["_id"], d["until"], d["at"]) async for d in cursor]

    async def prune_revocations(self, before: float) -> int:
        with _errors():
            r = await self._c("revocations").delete_many({"until": {"$lt": before}})
        return int(r.deleted_count)

    # ---- farms ---------------------------------------------------------------------------------

    async def load_farm(self, player_id: str) -> StoredFarm | None:
        with _errors():
            d = await self._c("farms").find_one({"_id": player_id}, {"revision": 1, "doc": 1, "last_active": 1})
        if d is None:
            return None
        return StoredFarm(player_id, d["revision"], d["doc"], d["last_active"])

    async def commit(self, batch: list[FarmCommit]) -> list[bool]:
        """In a transaction, first optimistically: every farm's compare-and-set in one bulk
        write and the keys inserted, with no read (two or three round trips with the
        commit); only when a farm moved on or a key was recorded already is the
        transaction run again deciding farm by farm from one read of the batch."""
        if not batch:
            return []
        optimistic = True

        async def run(s: AsyncClientSession | None) -> list[bool]:
            nonlocal optimistic
            if s is not None and optimistic:
                optimistic = False
                if await self._commit_all(batch, s):
                    return [True] * len(batch)
                raise _DecideOneByOne("a farm of the batch moved on, or a key was recorded already")
            taken = await self._recorded_keys(batch, s)
            if s is None:
                applied = [await self._cas_one(item, taken) for item in batch]
            else:
                applied = await self._cas_batch(batch, taken, s)
            done = [item for item, ok in zip(batch, applied, strict=True) if ok]
            records = [item.idempotency for item in done if item.idempotency is not None]
            if records:
                ops = [ReplaceOne({"player_id": r.player_id, "key": r.key}, _idem_doc(r), upsert=True) for r in records]
                await self._c("idempotency").bulk_write(ops, ordered=True, session=s)
            await self._write_snapshots([item.snapshot for item in done if item.snapshot is not None], s)
            return applied

        with _errors():
            return await self._transaction(run)

    @staticmethod
    def _farm_fields(item: FarmCommit) -> Doc:
        return {"revision": item.revision, "doc": item.doc, "last_active": item.last_active}

    async def _commit_all(self, batch: list[FarmCommit], s: AsyncClientSession) -> bool:
        """Inside a transaction, assuming every item applies: True when all did (the
        caller commits), False at the first sign one did not (the caller aborts)."""
        ops: list[UpdateOne] = []
        creates: list[int] = []
        for item in batch:
            if item.expected_revision is None:
                creates.append(len(ops))
                ops.append(UpdateOne({"_id": item.player_id}, {"$setOnInsert": self._farm_fields(item)}, upsert=True))
            else:
                cas = {"_id": item.player_id, "revision": item.expected_revision}
                ops.append(UpdateOne(cas, {"$set": self._farm_fields(item)}))
        r = await self._c("farms").bulk_write(ops, ordered=True, session=s)
        if sorted(r.upserted_ids or {}) != creates or r.matched_count != len(ops) - len(creates):
            return False
        records = [_idem_doc(item.idempotency) for item in batch if item.idempotency is not None]
        if records:
            try:
                await self._c("idempotency").insert_many(records, ordered=True, session=s)
            except BulkWriteError as exc:
                if all(e.get("code") == 11000 for e in (exc.details or {}).get("writeErrors", [])):
                    return False  # a replayed key: its first commit stands
                raise
        await self._write_snapshots([item.snapshot for item in batch if item.snapshot is not None], s)
        return True

    async def _recorded_keys(self, batch: list[FarmCommit], s: AsyncClientSession | None) -> set[tuple[str, str]]:
        """The batch's idempotency keys that are recorded already (one read, and only
        when the batch carries keys): those commits are replays and are not applied."""
        wanted = [{"player_id": i.idempotency.player_id, "key": i.idempotency.key} for i in batch if i.idempotency]
        if not wanted:
            return set()
        cursor = self._c("idempotency").find({"$or": wanted}, {"_id": 0, "player_id": 1, "key": 1}, session=s)
        return {(d["player_id"], d["key"]) async for d in cursor}

    @staticmethod
    def _replay(item: FarmCommit, taken: set[tuple[str, str]]) -> bool:
        """Whether `item` carries a key recorded already (by an earlier commit or item)."""
        if item.idempotency is None:
            return False
        key = (item.idempotency.player_id, item.idempotency.key)
        return key in taken

    async def _cas_batch(
        self, batch: list[FarmCommit], taken: set[tuple[str, str]], s: AsyncClientSession
    ) -> list[bool]:
        """Inside a transaction: read the batch's revisions once, decide every
        compare-and-set in order, write them in one ordered bulk write, and check the
        writes matched what was read (else the transaction is retried). A commit whose
        idempotency key is `taken` (or taken by an earlier item) is not applied."""
        farms = self._c("farms")
        ids = list({item.player_id for item in batch})
        cursor = farms.find({"_id": {"$in": ids}}, {"revision": 1}, session=s)
        current: dict[str, int] = {d["_id"]: d["revision"] async for d in cursor}
        applied: list[bool] = []
        ops: list[UpdateOne] = []
        creates: list[int] = []
        for item in batch:
            if self._replay(item, taken):
                ok = False
            elif item.expected_revision is None:
                ok = item.player_id not in current
                if ok:
                    creates.append(len(ops))
                    create = {"$setOnInsert": self._farm_fields(item)}
                    ops.append(UpdateOne({"_id": item.player_id}, create, upsert=True))
            else:
                ok = current.get(item.player_id) == item.expected_revision
                if ok:
                    cas = {"_id": item.player_id, "revision": item.expected_revision}
                    ops.append(UpdateOne(cas, {"$set": self._farm_fields(item)}))
            if ok:
                current[item.player_id] = item.revision
                if item.idempotency is not None:
                    taken.add((item.idempotency.player_id, item.idempotency.key))
            applied.append(ok)
        if ops:
            r = await farms.bulk_write(ops, ordered=True, session=s)
            if sorted(r.upserted_ids or {}) != creates or r.matched_count != len(ops) - len(creates):
                raise _Retry("a farm changed between the read and the write")
        return applied

    async def _cas_one(self, item: FarmCommit, taken: set[tuple[str, str]]) -> bool:
        """Without a transaction: one atomic compare-and-set update of the farm document,
        carrying the idempotency record with it (`idem`). A key `taken` already, or the
        key of the farm's last commit (its copy to the collection may not be written
        yet), is a replay: not applied."""
        if self._replay(item, taken):
            return False
        farms = self._c("farms")
        fields = self._farm_fields(item)
        if item.idempotency is not None:
            fields["idem"] = _idem_doc(item.idempotency)
        if item.expected_revision is None:
            try:
                r = await farms.update_one({"_id": item.player_id}, {"$setOnInsert": fields}, upsert=True)
            except DuplicateKeyError:  # a concurrent create won
                return False
            ok = r.upserted_id is not None
        else:
            cas: Doc = {"_id": item.player_id, "revision": item.expected_revision}
            if item.idempotency is not None:
                cas["idem.key"] = {"$ne": item.idempotency.key}
            ok = (await farms.update_one(cas, {"$set": fields})).matched_count == 1
        if ok and item.idempotency is not None:
            taken.add((item.idempotency.player_id, item.idempotency.key))
        return ok

    async def touch_farms(self, items: list[tuple[str, float]]) -> None:
        if not items:
            return
        ops = [UpdateOne({"_id": pid}, {"$max": {"last_active": t}}) for pid, t in items]
        with _errors():
            await self._c("farms").bulk_write(ops, ordered=False)

    async def add_snapshots(self, snapshots: list[Snapshot]) -> None:
        with _errors():
            await self._write_snapshots(snapshots, None)

    async def _write_snapshots(self, snapshots: list[Snapshot], s: AsyncClientSession | None) -> None:
        """Insert in order, applying the retention policy after each one exactly as
        SQLite does (`base.plan_snapshot_writes`), computed in memory from one read:
        snapshots that would be pruned at once are not written at all.

        Only revisions this call read or wrote are deleted, so two writers pruning the
        same farm at once cannot delete each other's new snapshot (at worst a farm
        briefly keeps more history than the policy, trimmed by its next snapshot)."""
        if not snapshots:
            return
        snaps = self._c("snapshots")
        players = list({snap.player_id for snap in snapshots})
        fields = {"_id": 0, "player_id": 1, "revision": 1, "taken_at": 1}
        existing: dict[str, dict[int, float]] = {p: {} for p in players}
        async for d in snaps.find({"player_id": {"$in": players}}, fields, session=s):
            existing[d["player_id"]][d["revision"]] = d["taken_at"]
        writes, deletes = plan_snapshot_writes(existing, snapshots, *self.retention)
        if writes:
            await snaps.bulk_write(
                [
                    ReplaceOne({"player_id": w.player_id, "revision": w.revision}, _snapshot_doc(w), upsert=True)
                    for w in writes
                ],
                ordered=True,
                session=s,
            )
        gone: dict[str, list[int]] = {}
        for p, rev in deletes:
            gone.setdefault(p, []).append(rev)
        if gone:
            await snaps.bulk_write(
                [DeleteMany({"player_id": p, "revision": {"$in": revs}}) for p, revs in gone.items()],
                ordered=True,
                session=s,
            )

    async def list_snapshots(self, player_id: str, limit: int) -> list[Snapshot]:
        if limit <= 0:
            return []
        with _errors():
            cursor = self._c("snapshots").find({"player_id": player_id}).sort("revision", DESCENDING).limit(limit)
            return [_snapshot(d) async for d in cursor]

    async def get_snapshot(self, player_id: str, revision: int) -> Snapshot | None:
        with _errors():
            d = await self._c("snapshots").find_one({"player_id": player_id, "revision": revision})
        return _snapshot(d) if d else None

    async def get_idempotency(self, player_id: str, key: str) -> IdempotencyRecord | None:
        with _errors():
            d = await self._c("idempotency").find_one({"player_id": player_id, "key": key})
            if d is None:
                # A fallback commit's record, should its copy to the collection have been cut short.
                farm = await self._c("farms").find_one({"_id": player_id, "idem.key": key}, {"idem": 1})
                d = farm["idem"] if farm else None
        return _idem(d) if d else None

    async def prune_idempotency(self, before: float) -> int:
        with _errors():
            r = await self._c("idempotency").delete_many({"created_at": {"$lt": before}})
        return int(r.deleted_count)

    # ---- audit -------------------------------------------------------------------------------------

    async def add_audit(self, record: AuditRecord) -> None:
        with _errors():
            await self._c("audit_log").insert_one(_audit_doc(record))

    # ---- live events -------------------------------------------------------------------------------------

    async def add_event(self, event: LiveEvent) -> None:
        with _errors():
            await self._c("live_events").insert_one(_event_doc(event))

    async def list_events(self) -> list[LiveEvent]:
        with _errors():
            cursor = self._c("live_events").find().sort([("starts_at", ASCENDING), ("_id", ASCENDING)])
            return [_event(d) async for d in cursor]

    async def cancel_event(self, event_id: str, at: float) -> LiveEvent | None:
        with _errors():
            d = await self._c("live_events").find_one_and_update(
                {"_id": event_id, "cancelled_at": None, "ends_at": {"$gt": at}},
                {"$set": {"cancelled_at": at}},
                return_document=ReturnDocument.AFTER,
            )
        return _event(d) if d is not None else None

    async def list_audit(self, limit: int) -> list[AuditRecord]:
        if limit <= 0:
            return []
        with _errors():
            cursor = self._c("audit_log").find().sort([("at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
            return [_audit(d) async for d in cursor]

    async def list_audit_about(self, player_id: str, limit: int) -> list[AuditRecord]:
        if limit <= 0:
            return []
        with _errors():
            query = {"$or": [{"target": player_id}, {"admin_id": player_id}]}
            cursor = self._c("audit_log").find(query).sort([("at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
            return [_audit(d) async for d in cursor]

    # ---- whole-store export / import (backup, restore, migrate) ---------------------------------------

    async def export_all(self) -> AsyncIterator[Record]:
        """Every record, in the canonical order `base.Record` documents, consistent while
        the game writes: read in one snapshot session where the server offers one
        (MongoDB 5.0+ on a replica set: the store at one moment), and in every case
        through `ExportGuard`, which keeps only records that agree with those read
        before them, so an export whose reads were not one snapshot holds every action
        acknowledged before it began, every reference intact (`export_guard.py`)."""
        guard = ExportGuard()
        with _errors():
            try:
                async with contextlib.AsyncExitStack() as stack:
                    session = None
                    if self.snapshot_reads:
                        session = await stack.enter_async_context(self.client.start_session(snapshot=True))
                    async for record in self._export_records(session):
                        if guard.keep(record):
                            yield record
                if guard.dropped:  # written while the export ran, after what they refer to was read
                    _log.info("export.left_out_later_writes", snapshot_session=session is not None, **guard.dropped)
            except OperationFailure as exc:
                if exc.code == _SNAPSHOT_TOO_OLD:
                    raise StorageUnavailable(
                        "mongodb: the export outlived the snapshot history the server keeps "
                        "(minSnapshotHistoryWindowInSeconds, 300 s by default): raise it for backups"
                    ) from exc
                raise

    async def _export_records(self, s: AsyncClientSession | None) -> AsyncIterator[Record]:
        async for d in self._c("players").find(session=s).sort("_id", ASCENDING):
            p = _player(d)
            if p is not None:
                yield p
        async for d in self._c("refresh_tokens").find(session=s).sort("_id", ASCENDING):
            yield _token(d)
        # A fallback commit's record rides in its farm (`idem`) until it is copied to its
        # collection, and `get_idempotency` answers from there: exported too when the
        # farm's last commit carried it and the collection lacks it (a copy cut short, or
        # not made yet while the export ran), so a restore keeps that replay answer.
        embedded: dict[tuple[str, str], IdempotencyRecord] = {}
        async for d in self._c("farms").find(session=s).sort("_id", ASCENDING):
            if isinstance(d.get("idem"), dict):
                rec = _idem(d["idem"])
                if answered_revision(rec) == d["revision"]:
                    embedded[(rec.player_id, rec.key)] = rec
            yield StoredFarm(d["_id"], d["revision"], d["doc"], d["last_active"])
        cursor = self._c("snapshots").find(session=s).sort([("player_id", ASCENDING), ("revision", ASCENDING)])
        async for d in cursor:
            yield _snapshot(d)
        riding = sorted(embedded.items(), reverse=True)  # by (player id, key), smallest last
        cursor = self._c("idempotency").find(session=s).sort([("player_id", ASCENDING), ("key", ASCENDING)])
        async for d in cursor:
            rec = _idem(d)
            while riding and riding[-1][0] < (rec.player_id, rec.key):
                yield riding.pop()[1]
            if riding and riding[-1][0] == (rec.player_id, rec.key):
                riding.pop()  # copied: the collection's record stands
            yield rec
        while riding:
            yield riding.pop()[1]
        async for d in self._c("audit_log").find(session=s).sort([("at", ASCENDING), ("_id", ASCENDING)]):
            yield _audit(d)
        async for d in self._c("erasures").find(session=s).sort("_id", ASCENDING):
            yield Erasure(d["_id"], d["erased_at"])
        async for d in self._c("live_events").find(session=s).sort("_id", ASCENDING):
            yield _event(d)

    async def import_all(self, records: AsyncIterable[Record]) -> dict[str, int]:
        """Upsert every record by its natural key (safe to re-run); snapshots bypass
        retention; audit entries already present (same content) are not added twice."""
        counts: dict[str, int] = {}
        have: dict[tuple[Any, ...], int] = {}
        with _errors():
            async for d in self._c("audit_log").find():
                k = audit_key(_audit(d))
                have[k] = have.get(k, 0) + 1
        pending: dict[str, list[Any]] = {}

        async def flush() -> None:
            for name, ops in pending.items():
                if ops:
                    with _errors():
                        if name == "audit_log":
                            await self._c(name).insert_many(ops, ordered=True)
                        else:
                            await self._c(name).bulk_write(ops, ordered=True)
            pending.clear()

        size = 0
        async for rec in records:
            name, op = self._import_op(rec, have)
            counts[type(rec).__name__] = counts.get(type(rec).__name__, 0) + 1
            if op is None:
                continue
            pending.setdefault(name, []).append(op)
            size += 1
            if size >= IMPORT_CHUNK:
                await flush()
                size = 0
        await flush()
        return counts

    @staticmethod
    def _import_op(rec: Record, have: dict[tuple[Any, ...], int]) -> tuple[str, Any]:
        if isinstance(rec, PlayerRecord):
            return "players", ReplaceOne({"_id": rec.id}, _player_doc(rec), upsert=True)
        if isinstance(rec, RefreshTokenRecord):
            return "refresh_tokens", ReplaceOne({"_id": rec.token_hash}, _token_doc(rec), upsert=True)
        if isinstance(rec, StoredFarm):
            doc = {"_id": rec.player_id, "revision": rec.revision, "doc": rec.doc, "last_active": rec.last_active}
            return "farms", ReplaceOne({"_id": rec.player_id}, doc, upsert=True)
        if isinstance(rec, Snapshot):
            key = {"player_id": rec.player_id, "revision": rec.revision}
            return "snapshots", ReplaceOne(key, _snapshot_doc(rec), upsert=True)
        if isinstance(rec, IdempotencyRecord):
            key = {"player_id": rec.player_id, "key": rec.key}
            return "idempotency", ReplaceOne(key, _idem_doc(rec), upsert=True)
        if isinstance(rec, AuditRecord):
            k = audit_key(rec)
            if have.get(k, 0) > 0:
                have[k] -= 1
                return "audit_log", None
            return "audit_log", _audit_doc(rec)
        if isinstance(rec, Erasure):
            return "erasures", _erasure_op(rec)
        if isinstance(rec, LiveEvent):
            return "live_events", ReplaceOne({"_id": rec.id}, _event_doc(rec), upsert=True)
        raise TypeError(f"not a store record: {type(rec).__name__}")


def _event(d: dict[str, Any]) -> LiveEvent:
    tiers = tuple(d["tiers"]) if d.get("tiers") is not None else None
    return LiveEvent(
        d["_id"],
        d["name"],
        d["multiplier"],
        tiers,
        d["starts_at"],
        d["ends_at"],
        d.get("cancelled_at"),
        d.get("created_at", 0.0),
        d.get("created_by"),
    )


def _event_doc(event: LiveEvent) -> dict[str, Any]:
    return {
        "_id": event.id,
        "name": event.name,
        "multiplier": event.multiplier,
        "tiers": list(event.tiers) if event.tiers is not None else None,
        "starts_at": event.starts_at,
        "ends_at": event.ends_at,
        "cancelled_at": event.cancelled_at,
        "created_at": event.created_at,
        "created_by": event.created_by,
    }
