"""`UNAVAILABLE` says only what is true about the request it answers.

A write whose commit reached storage but whose answer was lost (a MongoDB
commit with an unknown result, a majority write that timed out after it
applied) was answered "nothing was applied": a client believing it would send
the action again without its key and have it applied twice. Here storage
commits and then fails, on SQLite and on MongoDB: the answer says the outcome
is unknown and to retry with the same key, and the retry with that key finds
the action, applied once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from llamawool.api import create_app
from llamawool.api.app import context
from llamawool.settings import Settings
from llamawool.store import FarmCommit, MongoStore, StorageUnavailable, Store
from tests.conftest import API, new_guest
from tests.mongo_server import shared_server

from .support import bearer, receive_json, receive_until


@pytest.fixture(params=["sqlite", "mongodb"])
async def client(request: pytest.FixtureRequest, aiohttp_client: Any, settings: Settings) -> AsyncIterator[TestClient]:
    store: Store | None = None
    if request.param == "mongodb":
        database = f"unavailable_{uuid.uuid4().hex[:12]}"
        store = MongoStore(shared_server().uri, database=database, timeout_s=5.0)
    app = create_app(settings, store=store, tick=False)
    yield await aiohttp_client(app)
    if isinstance(store, MongoStore):
        await store.client.drop_database(database)


def lose_the_next_commit_answer(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next commit is written, then storage fails before saying so."""
    store = context(client.server.app).store
    real = store.commit
    lost: list[int] = []

    async def commit(batch: list[FarmCommit]) -> list[bool]:
        applied = await real(batch)
        if not lost:
            lost.append(len(batch))
            raise StorageUnavailable("commit result unknown: the connection closed before the reply")
        return applied

    monkeypatch.setattr(store, "commit", commit)


async def stored_revision(client: TestClient, guest: dict[str, Any]) -> int:
    """The farm's revision in storage (not the engine's copy in memory)."""
    stored = await context(client.server.app).store.load_farm(guest["player"]["id"])
    return stored.revision if stored is not None else 0


async def shears(client: TestClient, headers: dict[str, str]) -> int:
    resp = await client.get(f"{API}/farm", headers=headers)
    assert resp.status == 200, await resp.text()
    return int((await resp.json())["stats"]["shears"])


async def test_a_write_with_a_lost_commit_answer_is_unknown_and_its_key_finds_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest = await new_guest(client)
    h = {**bearer(guest["access_token"]), "Idempotency-Key": "lost-answer-1"}
    assert await shears(client, h) == 0
    before = await stored_revision(client, guest)
    lose_the_next_commit_answer(client, monkeypatch)

    resp = await client.post(f"{API}/farm/shear", json={"count": 3}, headers=h)
    assert resp.status == 503 and resp.headers["Retry-After"]
    problem = await resp.json()
    assert problem["code"] == "UNAVAILABLE" and problem["outcome"] == "unknown", problem
    assert "nothing was applied" not in problem["detail"]
    assert "may or may not have been applied" in problem["detail"]
    assert "retry with the same Idempotency-Key" in problem["detail"]

    # The retry the answer asks for: the action was applied, once, and its answer comes back.
    again = await client.post(f"{API}/farm/shear", json={"count": 3}, headers=h)
    assert again.status == 200, await again.text()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert (await again.json())["farm"]["stats"]["shears"] == 3
    assert await stored_revision(client, guest) == before + 1  # one commit, not two


async def test_a_socket_action_with_a_lost_commit_answer_is_unknown_and_its_key_finds_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest = await new_guest(client)
    ws = await client.ws_connect(f"{API}/ws", headers=bearer(guest["access_token"]))
    assert (await receive_json(ws))["type"] == "welcome"
    before = await stored_revision(client, guest)
    lose_the_next_commit_answer(client, monkeypatch)
    action = {"type": "action", "id": "s1", "data": {"action": "shear", "count": 2, "idempotency_key": "lost-ws-1"}}

    await ws.send_str(orjson.dumps(action).decode())
    error = await receive_until(ws, lambda m: m.get("id") == "s1")
    assert error["type"] == "error", error
    data = error["data"]
    assert data["code"] == "UNAVAILABLE" and data["outcome"] == "unknown" and data["retry_after"] > 0
    assert "nothing was applied" not in data["message"]
    assert "retry with the same data.idempotency_key" in data["message"]

    await ws.send_str(orjson.dumps({**action, "id": "s2"}).decode())
    result = await receive_until(ws, lambda m: m.get("id") == "s2")
    assert result["type"] == "result", result
    assert result["data"]["farm"]["stats"]["shears"] == 2  # the first answer: applied once
    assert await stored_revision(client, guest) == before + 1
    await ws.close()


async def test_a_read_that_fails_says_nothing_changed(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    guest = await new_guest(client)
    store = context(client.server.app).store

    async def down(*args: Any) -> Any:
        raise StorageUnavailable("no primary")

    monkeypatch.setattr(store, "list_snapshots", down)
    resp = await client.get(f"{API}/farm/saves", headers=bearer(guest["access_token"]))
    assert resp.status == 503
    problem = await resp.json()
    assert problem["code"] == "UNAVAILABLE" and "outcome" not in problem
    assert "nothing was changed" in problem["detail"]
