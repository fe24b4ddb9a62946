"""Pure game rules (GAME.md): no I/O, no asyncio, no clock reads.

May import only the standard library and pydantic (for validating balance tables).
"""

from .balance import BalanceError, BalanceTables, GameConfig, parse_balance, parse_game_config
from .errors import ActionConflict, GameError, InsufficientResources, InvalidAction, RequirementNotMet, UnknownItem
from .rules import (
    Action,
    BuyBuilding,
    BuyUpgrade,
    ClaimDailyReward,
    Event,
    Outcome,
    Prestige,
    Rules,
    Shear,
    apply_action,
    iso_week,
    week_start,
    week_start_of,
)
from .state import FarmState, OfflineReport

__all__ = [
    "Action",
    "ActionConflict",
    "BalanceError",
    "BalanceTables",
    "BuyBuilding",
    "BuyUpgrade",
    "ClaimDailyReward",
    "Event",
    "FarmState",
    "GameConfig",
    "GameError",
    "InsufficientResources",
    "InvalidAction",
    "OfflineReport",
    "Outcome",
    "Prestige",
    "RequirementNotMet",
    "Rules",
    "Shear",
    "UnknownItem",
    "apply_action",
    "iso_week",
    "parse_balance",
    "parse_game_config",
    "week_start",
    "week_start_of",
]
