"""A refresh-token rotation and a revocation of its family, interleaved step by step.

`Store.rotate_refresh_token` promises that once a revocation has returned, no
successor of the revoked family is live. SQLite keeps it with one transaction;
MongoDB with an order of single-document writes (the rotation inserts its
successor, then reads the family record; a revocation writes the family record,
then the family's tokens). Each test stops one side in the middle of its steps,
runs the other side whole in the gap, then lets the first finish.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from llamawool.store import MongoStore, RefreshTokenRecord, SQLiteStore, Store
from llamawool.store import sqlite as sqlite_module

from .test_store_contract import T0, player

Revoke = Callable[[Store, str, str], Awaitable[Any]]
REVOCATIONS: dict[str, Revoke] = {
    "logout": lambda s, family, pid: s.revoke_family(family),
    "every_session": lambda s, family, pid: s.revoke_player_tokens(pid, 0.0),
}


async def _family(store: Store, name: str) -> tuple[str, RefreshTokenRecord]:
    p = await store.create_player(player(name))
    t = RefreshTokenRecord(f"h-{name}", f"fam-{name}", p.id, issued_at=T0, expires_at=T0 + 900)
    await store.add_refresh_token(t)
    return p.id, t


async def _successor_is_dead(store: Store, successor: str) -> bool:
    after = await store.spend_refresh_token(successor, T0 + 5)
    return after.record is None or after.reused


@pytest.mark.parametrize("revocation", sorted(REVOCATIONS))
async def test_a_revocation_between_a_rotations_insert_and_its_check(store: Store, revocation: str) -> None:
    """The rotation has stored its successor and not yet looked at the family (MongoDB),
    or is inside its transaction (SQLite), when the revocation comes."""
    pid, t = await _family(store, f"gap{revocation}")
    revoke = REVOCATIONS[revocation]
    if isinstance(store, MongoStore):
        inserted, go_on = asyncio.Event(), asyncio.Event()
        insert = store._insert_token

        async def paused_insert(doc: dict[str, Any]) -> None:
            await insert(doc)
            inserted.set()
            await go_on.wait()

        store._insert_token = paused_insert  # type: ignore[method-assign]
        rotation = asyncio.create_task(store.rotate_refresh_token(t.token_hash, "succ", T0 + 1, T0 + 99))
        await inserted.wait()
        await revoke(store, t.family_id, pid)  # runs whole while the rotation waits
        go_on.set()
        rotated = await rotation
        assert rotated.ended, "the rotation saw the revoked family and revoked its successor"
    else:
        assert isinstance(store, SQLiteStore)
        rotated = await _sqlite_revoke_inside_rotation(store, revoke, pid, t)
        assert not rotated.ended, "SQLite: the revocation waited for the rotation's transaction"
    assert rotated.record is not None and not rotated.reused
    assert await _successor_is_dead(store, "succ")


async def _sqlite_revoke_inside_rotation(store: SQLiteStore, revoke: Revoke, pid: str, t: RefreshTokenRecord) -> Any:
    """Hold the rotation on the writer thread between its spend and its insert, send the
    revocation (it queues for the next transaction), then let the rotation go."""
    inside, go_on = threading.Event(), threading.Event()
    insert = sqlite_module._insert_token

    def held_insert(c: Any, record: RefreshTokenRecord) -> None:
        if record.token_hash == "succ":
            inside.set()
            go_on.wait(10)
        insert(c, record)

    sqlite_module._insert_token = held_insert  # type: ignore[assignment]
    try:
        rotation = asyncio.create_task(store.rotate_refresh_token(t.token_hash, "succ", T0 + 1, T0 + 99))
        assert await asyncio.to_thread(inside.wait, 10)
        revoking = asyncio.create_task(revoke(store, t.family_id, pid))
        while not store._pending:  # the revocation is queued behind the held transaction
            await asyncio.sleep(0)
        go_on.set()
        rotated = await rotation
        await revoking
        return rotated
    finally:
        go_on.set()
        sqlite_module._insert_token = insert


@pytest.mark.parametrize("revocation", sorted(REVOCATIONS))
async def test_a_rotation_between_a_revocations_family_record_and_its_tokens(store: Store, revocation: str) -> None:
    """MongoDB: the revocation has marked the family and not yet its tokens when a
    rotation runs whole: it must answer `ended`, and its successor must be dead."""
    if not isinstance(store, MongoStore):
        pytest.skip("one transaction on SQLite: a revocation has no middle")
    pid, t = await _family(store, f"mid{revocation}")
    marked, go_on = asyncio.Event(), asyncio.Event()
    collection = store._c

    class PausedTokens:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        async def update_many(self, *args: Any, **kwargs: Any) -> Any:
            marked.set()
            await go_on.wait()
            return await self.inner.update_many(*args, **kwargs)

    def paused(name: str) -> Any:
        inner = collection(name)
        return PausedTokens(inner) if name == "refresh_tokens" else inner

    revoking = asyncio.create_task(REVOCATIONS[revocation](store, t.family_id, pid))
    store._c = paused  # type: ignore[method-assign]
    try:
        await marked.wait()
    finally:
        store._c = collection  # type: ignore[method-assign]
    rotated = await store.rotate_refresh_token(t.token_hash, "succ", T0 + 1, T0 + 99)
    go_on.set()
    await revoking

    assert rotated.record is not None and rotated.ended
    assert await _successor_is_dead(store, "succ")
