"""Fixtures: settings on a temporary data folder, an in-process server, players."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from llamawool.api import create_app
from llamawool.api.app import context
from llamawool.settings import Settings, load_rules
from tests.helpers import FakeClock

API = "/api/v1"


@pytest.fixture(scope="session")
def rules():  # type: ignore[no-untyped-def]
    return load_rules()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(env="test", data_dir=tmp_path / "data", tick_interval_s=0.05, sqlite_synchronous="NORMAL")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_client(aiohttp_client: Any, settings: Settings) -> MakeClient:
    """Start a real aiohttp server in-process; `clock` and `tick` are optional."""

    async def make(clock: Callable[[], float] | None = None, tick: bool = True, **overrides: Any) -> TestClient:
        s = settings.model_copy(update=overrides) if overrides else settings
        kwargs: dict[str, Any] = {"tick": tick}
        if clock is not None:
            kwargs["clock"] = clock
        return await aiohttp_client(create_app(s, **kwargs))

    return make


@pytest.fixture
async def client(make_client: MakeClient) -> TestClient:
    return await make_client()


async def new_guest(client: TestClient, device_id: str | None = None) -> dict[str, Any]:
    import uuid

    resp = await client.post(f"{API}/auth/guest", json={"device_id": device_id or f"dev-{uuid.uuid4().hex}"})
    assert resp.status in (200, 201), await resp.text()
    body: dict[str, Any] = await resp.json()
    body["headers"] = {"Authorization": f"Bearer {body['access_token']}"}
    return body


def engine_of(client: TestClient):  # type: ignore[no-untyped-def]
    return context(client.server.app).engine
