"""Fixtures of the coordination contract: one `coord` per backend in `COORD_BACKENDS`.

`coord_factory.make()` opens another coordinator on the same shared state: for
"local" a new instance on the same SQLite file (what a restart sees), for
"redis" a new instance on the same server and key prefix (another replica, or
a restart). Every coordinator made is closed at the end of the test.

The test module imports these fixtures (with `redis_server`); this file is not
a conftest.py, so nothing else picks them up by accident.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llamawool.coord import Coordinator, LocalCoordinator
from llamawool.coord.redis import RedisCoordinator
from tests.redis_server import redis_server

COORD_BACKENDS = ("local", "redis")

# The production defaults: a first page is reused for 5 s, a cursor's view lives 300 s.
VIEW_TTL_S = 300.0
VIEW_REFRESH_S = 5.0


@dataclass
class CoordBackend:
    name: str
    tmp: Path
    redis_url: str | None = None
    prefix: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:10]}:")
    made: list[Coordinator] = field(default_factory=list)

    @property
    def shared(self) -> bool:
        """Whether two coordinators open at once share state (replicas), not only across restarts."""
        return self.name == "redis"

    async def make(
        self, *, view_ttl_s: float = VIEW_TTL_S, view_refresh_s: float = VIEW_REFRESH_S, **extra: Any
    ) -> Coordinator:
        coord: Coordinator
        if self.name == "local":
            coord = LocalCoordinator(self.tmp / "coord.sqlite3", view_ttl_s=view_ttl_s, view_refresh_s=view_refresh_s)
        else:
            assert self.redis_url is not None
            coord = RedisCoordinator(
                self.redis_url,
                prefix=self.prefix,
                pool_size=4,
                timeout_s=2.0,
                view_ttl_s=view_ttl_s,
                view_refresh_s=view_refresh_s,
                **extra,
            )
        await coord.open()
        self.made.append(coord)
        return coord

    async def close_all(self) -> None:
        for coord in reversed(self.made):
            with contextlib.suppress(Exception):
                await coord.close()


@pytest.fixture(params=COORD_BACKENDS)
async def coord_factory(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CoordBackend]:
    url = request.getfixturevalue("redis_server") if request.param == "redis" else None
    backend = CoordBackend(request.param, tmp_path, url)
    try:
        yield backend
    finally:
        await backend.close_all()


@pytest.fixture
async def coord(coord_factory: CoordBackend) -> Coordinator:
    return await coord_factory.make()


@pytest.fixture
async def redis_factory(redis_server: str, tmp_path: Path) -> AsyncIterator[CoordBackend]:
    """Redis only: several replicas on one server (what the embedded adapter cannot be)."""
    backend = CoordBackend("redis", tmp_path, redis_server)
    try:
        yield backend
    finally:
        await backend.close_all()


__all__ = ["COORD_BACKENDS", "CoordBackend", "coord", "coord_factory", "redis_factory", "redis_server"]
