"""Coordination behind one interface (`base.Coordinator`): limits, boards, fan-out."""

from __future__ import annotations

from ..settings import Settings
from .base import (
    BOARDS,
    BadCursor,
    BoardEntry,
    BoardPage,
    CoordinationUnavailable,
    Coordinator,
    Cursor,
    LimitResult,
    ScoreUpdate,
)
from .local import LocalCoordinator


def open_coordinator(settings: Settings, leaderboard_ttl_s: float) -> Coordinator:
    """The adapter the settings select (in-process by default)."""
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
    "CoordinationUnavailable",
    "Coordinator",
    "Cursor",
    "LimitResult",
    "LocalCoordinator",
    "ScoreUpdate",
    "open_coordinator",
]
