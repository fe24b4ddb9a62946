"""Typed domain errors. `api/` maps each `code` to one HTTP status in one table."""

from __future__ import annotations

from typing import Any


class GameError(Exception):
    """A rule refused an action. `code` is stable and part of the protocol."""

    code = "GAME_ERROR"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InsufficientResources(GameError):
    code = "INSUFFICIENT_RESOURCES"


class RequirementNotMet(GameError):
    code = "REQUIREMENT_NOT_MET"


class UnknownItem(GameError):
    code = "NOT_FOUND"


class ActionConflict(GameError):
    """The action contradicts the farm's current state (already owned, max level,
    a stale expected prestige gain)."""

    code = "CONFLICT"


class InvalidAction(GameError):
    code = "VALIDATION_ERROR"
