"""Coordination behind one interface (`base.Coordinator`): limits, boards, fan-out."""

from __future__ import annotations

from ..settings import Settings
from .base import (
    BOARDS,
    BadCursor,
    BoardEntry,
    BoardPage,
    Boards,
    Bus,
    CoordinationUnavailable,
    Coordinator,
    Cursor,
    Leases,
    LimitHit,
    LimitResult,
    Limits,
    Presence,
    Renewal,
    ReplicaLoad,
    ScoreUpdate,
)
from .local import LocalCoordinator


def open_coordinator(settings: Settings, leaderboard_ttl_s: float) -> Coordinator:
    """The adapter the settings select: Redis when `redis_uri` is set, else in-process."""
    if settings.redis_uri:
        from .redis import RedisCoordinator

        return RedisCoordinator(
            settings.redis_uri,
            pool_size=settings.redis_pool_size,
            timeout_s=settings.redis_timeout_s,
            view_ttl_s=leaderboard_ttl_s,
            view_refresh_s=settings.leaderboard_view_refresh_s,
        )
    return LocalCoordinator(
        settings.data_dir / "coord.sqlite3",
        view_ttl_s=leaderboard_ttl_s,
        view_refresh_s=settings.leaderboard_view_refresh_s,
    )


__all__ = [
    "BOARDS",
    "BadCursor",
    "BoardEntry",
    "BoardPage",
    "Boards",
    "Bus",
    "CoordinationUnavailable",
    "Coordinator",
    "Cursor",
    "Leases",
    "LimitHit",
    "LimitResult",
    "Limits",
    "LocalCoordinator",
    "Presence",
    "Renewal",
    "ReplicaLoad",
    "ScoreUpdate",
    "open_coordinator",
]
