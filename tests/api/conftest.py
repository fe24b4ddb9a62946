"""Fixtures for the API tests: a server whose time the test controls."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import MakeClient
from tests.helpers import FakeClock


@pytest.fixture
async def frozen(make_client: MakeClient, clock: FakeClock) -> TestClient:
    """A server on the fake `clock` with no tick loop: time moves only when the test says so."""
    return await make_client(clock=clock, tick=False)
