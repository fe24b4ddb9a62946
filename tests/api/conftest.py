"""Fixtures for the API tests: a server whose time the test controls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import MakeClient, new_guest
from tests.helpers import FakeClock

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
