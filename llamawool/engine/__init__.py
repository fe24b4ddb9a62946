"""The live engine: resident farms as numpy columns, the tick loop, the action path."""

from .engine import Engine
from .errors import FarmConflict, IdempotencyMismatch, PlayerGone, SaveRejected, SaveStale
from .farms import IdempotentRequest, Reply
from .residents import Sink
from .views import farm_view

__all__ = [
    "Engine",
    "FarmConflict",
    "IdempotencyMismatch",
    "IdempotentRequest",
    "PlayerGone",
    "Reply",
    "SaveRejected",
    "SaveStale",
    "Sink",
    "farm_view",
]
