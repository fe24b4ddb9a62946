"""Replicas starting together on one MongoDB: the schema migration lock.

Two replicas that open at once must not both run a step: the first takes the
lock in the version document (a compare-and-set), the second waits, then finds
nothing pending. The interleaving is forced: replica A is held inside its step
while replica B tries to upgrade.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from llamawool.store.migrations import Migration, SchemaError
from llamawool.store.migrations import mongo as schema
from tests.mongo_server import shared_server

from .mongo_backend import mongo_server  # noqa: F401 - a fixture
from .schema_fixture import old_database

Doc = dict[str, Any]


@pytest.fixture
async def db() -> AsyncIterator[AsyncDatabase[Doc]]:
    client: AsyncMongoClient[Doc] = AsyncMongoClient(shared_server().uri, tz_aware=False)
    name = f"lock_{uuid.uuid4().hex[:12]}"
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        await client.close()


async def version_doc(db: AsyncDatabase[Doc]) -> Doc:
    doc = await db[schema.COLLECTION].find_one({"_id": schema.DOC_ID})
    assert doc is not None
    return doc


async def test_a_second_replica_waits_for_the_first_and_runs_no_step_itself(db: AsyncDatabase[Doc]) -> None:
    runs: list[str] = []
    in_step, release, b_waits, ran_twice = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_step(d: AsyncDatabase[Doc]) -> None:
        runs.append("ran")
        await d["things"].insert_one({"n": len(runs)})
        if len(runs) > 1:
            ran_twice.set()
        in_step.set()
        await release.wait()

    async def b_waiting(doc: Doc) -> None:
        assert doc["lock"]["owner"] == "replica-a"
        b_waits.set()

    steps = [Migration(1, "a slow step", slow_step)]
    a = asyncio.create_task(schema.upgrade(db, steps=steps, owner="replica-a"))
    await in_step.wait()
    b = asyncio.create_task(schema.upgrade(db, steps=steps, owner="replica-b", poll_s=0.01, on_wait=b_waiting))
    # B either waits for A's lock, or (without the lock) runs the step a second time
    first = [asyncio.ensure_future(b_waits.wait()), asyncio.ensure_future(ran_twice.wait())]
    async with asyncio.timeout(10):
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    for f in first:
        f.cancel()
    assert runs == ["ran"], "replica B ran the step while replica A was running it"
    release.set()
    assert [s.version for s in await a] == [1]
    assert await b == []
    assert runs == ["ran"]
    assert await db["things"].count_documents({}) == 1
    doc = await version_doc(db)
    assert (doc["version"], doc["min_code"], "lock" in doc) == (1, 0, False)
    assert [(h["version"], h["by"]) for h in doc["history"]] == [(1, "replica-a")]


async def test_a_lock_left_by_a_replica_that_died_is_taken_over_after_its_lease(db: AsyncDatabase[Doc]) -> None:
    """The dead replica had begun step 1 (lock held, version still 0): the next one
    runs step 1 again from its start, which is why steps are idempotent."""
    await db[schema.COLLECTION].insert_one(
        {"_id": schema.DOC_ID, "version": 0, "min_code": 0, "lock": {"owner": "dead", "until": time.time() - 1}}
    )
    ran = await schema.upgrade(db, owner="replica-b")
    assert [s.version for s in ran] == list(range(1, schema.LATEST + 1))
    doc = await version_doc(db)
    assert (doc["version"], "lock" in doc) == (schema.LATEST, False)


async def test_a_live_lock_is_waited_for_then_refused_with_a_clear_message(db: AsyncDatabase[Doc]) -> None:
    await db[schema.COLLECTION].insert_one(
        {"_id": schema.DOC_ID, "version": 0, "min_code": 0, "lock": {"owner": "busy", "until": time.time() + 60}}
    )
    waits: list[str] = []

    async def waiting(doc: Doc) -> None:
        waits.append(doc["lock"]["owner"])

    with pytest.raises(SchemaError, match=r"replica busy has held the schema migration lock for over 0\.05 s"):
        await schema.upgrade(db, owner="replica-b", wait_s=0.05, poll_s=0.01, on_wait=waiting)
    assert waits and set(waits) == {"busy"}
    assert (await version_doc(db))["version"] == 0


async def test_a_step_longer_than_the_lease_keeps_its_lock(db: AsyncDatabase[Doc]) -> None:
    """The holder renews its lease while a step runs: a waiting replica does not take
    the lock over from a live holder however long the step takes (here 3 leases)."""
    lease = 1.0
    runs: list[str] = []
    in_step, b_polled, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def long_step(d: AsyncDatabase[Doc]) -> None:
        runs.append("ran")
        in_step.set()
        if len(runs) > 1:  # B took the lock over and ran the step: let A finish too
            release.set()
            b_polled.set()
            return
        until = time.monotonic() + 3 * lease
        while time.monotonic() < until and not release.is_set():
            await b_polled.wait()  # each of B's looks at the lock
            b_polled.clear()

    async def polled(doc: Doc) -> None:
        b_polled.set()

    steps = [Migration(1, "a long step", long_step)]
    a = asyncio.create_task(schema.upgrade(db, steps=steps, owner="replica-a", lease_s=lease))
    await in_step.wait()
    b = await schema.upgrade(db, steps=steps, owner="replica-b", lease_s=lease, poll_s=0.02, on_wait=polled)
    assert runs == ["ran"], "replica B took the lock from a live holder and ran the step again"
    assert b == [] and [s.version for s in await a] == [1]


async def test_a_replica_whose_lock_was_taken_over_stops_before_bumping_the_version(db: AsyncDatabase[Doc]) -> None:
    async def stolen(d: AsyncDatabase[Doc]) -> None:
        # the lease ran out during a slow step and another replica took the lock
        await d[schema.COLLECTION].update_one({"_id": schema.DOC_ID}, {"$set": {"lock.owner": "replica-b"}})

    with pytest.raises(SchemaError, match="lost the schema migration lock during step 1"):
        await schema.upgrade(db, steps=[Migration(1, "slow", stolen)], owner="replica-a")
    doc = await version_doc(db)
    assert (doc["version"], doc["lock"]["owner"]) == (0, "replica-b")  # B's lock is left alone


async def test_two_stores_opening_the_old_release_s_database_at_once_both_start(tmp_path: Path) -> None:
    async with old_database("mongo", tmp_path) as old:
        first, second = old.store(), old.store()
        await asyncio.gather(first.open(), second.open())
        await first.close()
        await second.close()
        history = (await old.mongo_docs(schema.COLLECTION))[0]["history"]
        assert [h["version"] for h in history] == list(range(1, schema.LATEST + 1))  # each step once
        assert len(await old.mongo_docs("refresh_families")) == 3
