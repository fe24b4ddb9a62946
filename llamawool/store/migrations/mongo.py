"""MongoDB's schema steps, versioned by one document in `schema_version`.

`{_id: "llamawool", version, min_code, lock: {owner, until}, history: [...]}`.
Several replicas start at once in production, so an upgrade takes the lock in
that document with a compare-and-set (an update that matches only while nobody
holds an unexpired lock), and each step's version bump is another
compare-and-set on (version, lock owner): a replica that finds the lock taken
waits for the holder to finish, then sees nothing pending. The lock is a lease
(`LEASE_S`, renewed while its holder runs), so a replica killed mid-upgrade
does not block the others for longer than that; the next holder runs the
cut-short step again, which is why every step is idempotent.

Append steps; never edit a shipped one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from pymongo import ASCENDING, IndexModel, ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from .schema import (
    Migration,
    SchemaError,
    SchemaPolicy,
    SchemaStatus,
    admit,
    check_steps,
    min_code_after,
    status_of,
)

Doc = dict[str, Any]
Step = Migration[Callable[[AsyncDatabase[Doc]], Awaitable[None]]]
COLLECTION = "schema_version"
DOC_ID = "llamawool"
LEASE_S = 30.0  # how long a lock outlives its holder's last sign of life (renewed every third)
POLL_S = 0.25  # how often a waiting replica looks again
WAIT_S = 600.0  # how long a replica waits for another's migration before it gives up (and restarts)
BACKFILL_CHUNK = 500
_log = structlog.get_logger("llamawool.store.migrations")


async def _release_376f2b0(db: AsyncDatabase[Doc]) -> None:
    """The collections' indexes as release 376f2b0 created them (same names and
    options, so creating them again on its database is a no-op)."""
    string = {"$type": "string"}
    await db["players"].create_indexes(
        [
            IndexModel([("username_key", ASCENDING)], unique=True, name="username_unique"),
            IndexModel(
                [("email_key", ASCENDING)],
                unique=True,
                partialFilterExpression={"email_key": string},
                name="email_unique",
            ),
            IndexModel(
                [("device_id", ASCENDING)],
                unique=True,
                partialFilterExpression={"device_id": string},
                name="device_unique",
            ),
            IndexModel(
                [("flagged_at", ASCENDING)], partialFilterExpression={"flagged_at": {"$exists": True}}, name="flagged"
            ),
        ]
    )
    await db["refresh_tokens"].create_indexes(
        [
            IndexModel([("family_id", ASCENDING)], name="by_family"),
            IndexModel([("player_id", ASCENDING)], name="by_player"),
        ]
    )
    await db["snapshots"].create_indexes(
        [IndexModel([("player_id", ASCENDING), ("revision", ASCENDING)], unique=True, name="by_farm_revision")]
    )
    await db["idempotency"].create_indexes(
        [
            IndexModel([("player_id", ASCENDING), ("key", ASCENDING)], unique=True, name="by_player_key"),
            IndexModel([("created_at", ASCENDING)], name="by_age"),
        ]
    )
    await db["audit_log"].create_indexes([IndexModel([("at", ASCENDING), ("_id", ASCENDING)], name="by_time")])
    await db["revocations"].create_indexes(
        [IndexModel([("at", ASCENDING)], name="by_time"), IndexModel([("until", ASCENDING)], name="by_expiry")]
    )


async def _refresh_families(db: AsyncDatabase[Doc]) -> None:
    """A record per refresh-token family (what `MongoStore.rotate_refresh_token` reads),
    backfilled from the tokens. Release 376f2b0 revoked only whole families, so a family
    with a revoked token is revoked. Never un-revokes: a family the running code revoked
    meanwhile stays revoked, and running this again changes nothing."""
    families = db["refresh_families"]
    await families.create_indexes([IndexModel([("player_id", ASCENDING)], name="by_player")])
    ops: list[UpdateOne] = []
    async for t in db["refresh_tokens"].find({}, {"family_id": 1, "player_id": 1, "revoked": 1}):
        on_insert: Doc = {"player_id": t["player_id"]}
        update: Doc = {"$setOnInsert": on_insert}
        if t.get("revoked"):
            update["$set"] = {"revoked": True}
        else:
            on_insert["revoked"] = False
        ops.append(UpdateOne({"_id": t["family_id"]}, update, upsert=True))
        if len(ops) >= BACKFILL_CHUNK:
            await families.bulk_write(ops, ordered=True)
            ops = []
    if ops:
        await families.bulk_write(ops, ordered=True)


async def _erasures(db: AsyncDatabase[Doc]) -> None:
    """`erasures` (`_id` = the erased player's id, `erased_at`) needs no index of its
    own; the audit log gains indexes by target and by actor for players' data exports."""
    await db["audit_log"].create_indexes(
        [IndexModel([("target", ASCENDING)], name="by_target"), IndexModel([("admin_id", ASCENDING)], name="by_actor")]
    )


async def _live_events(db: AsyncDatabase[Doc]) -> None:
    """The timed production multipliers, read whole by every replica in start order."""
    await db["live_events"].create_indexes(
        [IndexModel([("starts_at", ASCENDING), ("_id", ASCENDING)], name="by_start")]
    )


STEPS: list[Step] = [
    Migration(1, "the collections and indexes of release 376f2b0", _release_376f2b0),
    Migration(2, "refresh_families: a record per refresh-token family, backfilled from its tokens", _refresh_families),
    Migration(3, "erasures (tombstones of erased accounts); audit entries by target and actor", _erasures),
    Migration(4, "live_events: timed production multipliers", _live_events),
]
check_steps(STEPS)
LATEST = len(STEPS)


def _status(doc: Doc | None, store: str, steps: list[Step]) -> SchemaStatus:
    version = int(doc.get("version", 0)) if doc else 0
    min_code = int(doc.get("min_code", 0)) if doc else 0
    return status_of(store, steps, version, min_code)


async def read_status(db: AsyncDatabase[Doc], store: str = "mongodb", steps: list[Step] = STEPS) -> SchemaStatus:
    return _status(await db[COLLECTION].find_one({"_id": DOC_ID}), store, steps)


async def _take_lock(db: AsyncDatabase[Doc], owner: str, lease_s: float) -> Doc | None:
    """The version document with our lock in it, or None while someone else's lock holds."""
    now = time.time()
    free = {"$or": [{"lock": {"$exists": False}}, {"lock.until": {"$lt": now}}]}
    try:
        return await db[COLLECTION].find_one_and_update(
            {"_id": DOC_ID, **free},
            {"$set": {"lock": {"owner": owner, "until": now + lease_s}}, "$setOnInsert": {"version": 0, "min_code": 0}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
    except DuplicateKeyError:  # the document exists and its lock is held: the upsert's insert collided
        return None


async def upgrade(
    db: AsyncDatabase[Doc],
    store: str = "mongodb",
    steps: list[Step] = STEPS,
    *,
    owner: str | None = None,
    lease_s: float = LEASE_S,
    poll_s: float = POLL_S,
    wait_s: float = WAIT_S,
    on_wait: Callable[[Doc], Awaitable[None]] | None = None,
) -> list[Step]:
    """Run every pending step under the lock; the steps this call ran (none when another
    replica ran them). Waits while another replica holds the lock, at most `wait_s`."""
    owner = owner or uuid.uuid4().hex
    deadline = time.monotonic() + wait_s
    while True:
        doc = await db[COLLECTION].find_one({"_id": DOC_ID})
        if not admit(_status(doc, store, steps), "apply"):
            return []
        locked = await _take_lock(db, owner, lease_s)
        if locked is not None:
            break
        if time.monotonic() > deadline:
            holder = (doc or {}).get("lock", {}).get("owner")
            raise SchemaError(f"{store}: replica {holder} has held the schema migration lock for over {wait_s:g} s")
        _log.info("schema.waiting_for_lock", holder=(doc or {}).get("lock", {}).get("owner"))
        if on_wait is not None:
            await on_wait(doc or {})
        await asyncio.sleep(poll_s)
    renewing = asyncio.create_task(_renew(db, owner, lease_s))
    try:
        return await _run_locked(db, store, steps, locked, owner, lease_s)
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)
        await db[COLLECTION].update_one({"_id": DOC_ID, "lock.owner": owner}, {"$unset": {"lock": ""}})


async def _renew(db: AsyncDatabase[Doc], owner: str, lease_s: float) -> None:
    """Extend our lease every third of it while a step runs: a step may take longer than
    a lease (a backfill of many documents), and its holder is alive all the while."""
    while True:
        await asyncio.sleep(lease_s / 3)
        await db[COLLECTION].update_one(
            {"_id": DOC_ID, "lock.owner": owner}, {"$set": {"lock.until": time.time() + lease_s}}
        )


async def _run_locked(
    db: AsyncDatabase[Doc], store: str, steps: list[Step], locked: Doc, owner: str, lease_s: float
) -> list[Step]:
    status = _status(locked, store, steps)
    admit(status, "apply")  # re-read under the lock: another replica may have upgraded
    ran: list[Step] = []
    for step in [s for s in steps if s.version > status.version]:
        _log.info("schema.migrating", store=store, version=step.version, step=step.name)
        await step.apply(db)
        now = time.time()
        bumped = await db[COLLECTION].update_one(
            {"_id": DOC_ID, "version": step.version - 1, "lock.owner": owner},
            {
                "$set": {
                    "version": step.version,
                    "min_code": min_code_after(steps, step.version, status.min_code),
                    "lock.until": now + lease_s,
                },
                "$push": {"history": {"version": step.version, "name": step.name, "at": now, "by": owner}},
            },
        )
        if bumped.matched_count != 1:
            raise SchemaError(f"{store}: lost the schema migration lock during step {step.version} (a slow step?)")
        ran.append(step)
    return ran


async def prepare(db: AsyncDatabase[Doc], policy: SchemaPolicy, store: str = "mongodb") -> list[Step]:
    """What `MongoStore.open` runs: refuse, upgrade, or leave alone (see `admit`)."""
    if admit(await read_status(db, store), policy):
        return await upgrade(db, store)
    return []
