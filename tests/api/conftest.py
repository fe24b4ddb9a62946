"""Fixtures for the API tests: a server whose time the test controls."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from llamawool.api.app import context
from tests.conftest import MakeClient, new_guest
from tests.helpers import FakeClock
from tests.mongo_server import shared_server

from .support import held_online


@pytest.fixture
async def frozen(make_client: MakeClient, clock: FakeClock) -> TestClient:
    """A server on the fake `clock` with no tick loop: time moves only when the test says so."""
    return await make_client(clock=clock, tick=False)


@pytest.fixture
async def farmer(frozen: TestClient) -> AsyncIterator[dict[str, Any]]:
    """A guest on `frozen` whose farm exists and stays online (a socket is held open),
    so advancing the clock accrues wool at the full online rate."""
    guest = await new_guest(frozen)
    async with held_online(frozen, guest["access_token"]):
        yield guest


@pytest.fixture(params=["sqlite", "mongo"])
async def client_on_each_store(request: pytest.FixtureRequest, make_client: MakeClient) -> AsyncIterator[TestClient]:
    """The server on SQLite, or on MongoDB (a database of its own on the session's server)."""
    if request.param == "sqlite":
        yield await make_client()
        return
    database = f"api_{uuid.uuid4().hex[:12]}"
    c = await make_client(mongodb_uri=f"{shared_server().uri}{database}")
    yield c
    store = context(c.server.app).store
    await store.client.drop_database(database)  # type: ignore[attr-defined]
