"""The balance tables and the ConfigMap block, validated once at start.

Pure data: this module parses dictionaries (read from `config/` by
`llamawool.settings`) into frozen, indexed tables the rules use. A bad value
raises `BalanceError` naming the field, so the server refuses to start with a
message a designer can act on. Imports nothing else of the project.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

EffectKind = Literal[
    "click_mult",
    "building_mult",
    "tier_mult",
    "all_mult",
    "offline_efficiency",
    "offline_cap_hours",
    "auto_shears",
]
AchievementMetric = Literal[
    "lifetime_value", "building_levels", "all_buildings", "prestiges", "soul_shears", "play_hours"
]


class BalanceError(ValueError):
    """A configuration file is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tier(_Strict):
    key: str = Field(pattern=r"^[a-z_]+$")
    name: str
    value: float = Field(gt=0)


class Building(_Strict):
    key: str = Field(pattern=r"^[a-z_]+$")
    name: str
    cost_tier: str
    base_cost: float = Field(gt=0)
    growth: float = Field(gt=1)
    produces: dict[str, float]
    requires: dict[str, int] = {}


class BuildingTable(_Strict):
    max_level: int = Field(gt=0)
    max_bulk_quantity: int = Field(gt=0)
    list: tuple[Building, ...] = Field(min_length=1)


class UpgradeCost(_Strict):
    tier: str
    amount: float = Field(gt=0)


class Effect(_Strict):
    kind: EffectKind
    value: float = Field(gt=0)
    target: str | None = None

    @model_validator(mode="after")
    def _target_matches_kind(self) -> Effect:
        needs_target = self.kind in ("building_mult", "tier_mult")
        if needs_target != (self.target is not None):
            raise ValueError(f"effect {self.kind!r} {'needs' if needs_target else 'takes no'} target")
        return self


class UpgradeRequirements(_Strict):
    upgrades: tuple[str, ...] = ()
    buildings: dict[str, int] = {}
    prestiges: int = 0


class Upgrade(_Strict):
    key: str = Field(pattern=r"^[a-z_]+$")
    name: str
    cost: UpgradeCost
    effects: tuple[Effect, ...] = Field(min_length=1)
    requires: UpgradeRequirements = UpgradeRequirements()


class Achievement(_Strict):
    key: str = Field(pattern=r"^[a-z_]+$")
    name: str
    metric: AchievementMetric
    threshold: float = Field(gt=0)


class ShearRules(_Strict):
    max_per_request: int = Field(gt=0)
    bucket_capacity: float = Field(gt=0)
    bucket_refill_per_s: float = Field(gt=0)
    base_click_power: float = Field(gt=0)


class OfflineRules(_Strict):
    online_window_s: float = Field(gt=0)
    max_efficiency: float = Field(gt=0, le=1)
    efficiency_per_soul_shear: float = Field(ge=0)
    cap_limit_hours: float = Field(gt=0)


class PrestigeRules(_Strict):
    divisor: float = Field(gt=0)
    production_bonus_per_soul_shear: float = Field(ge=0)


class AchievementBonus(_Strict):
    per_achievement: float = Field(ge=0)


class DailyRewardRules(_Strict):
    """The daily return reward: each streak day is worth this many seconds of the farm's production."""

    enabled: bool = True
    seconds_per_streak_day: float = Field(600.0, gt=0, le=86_400)
    max_streak_days: int = Field(7, ge=1, le=365)


class BalanceTables(_Strict):
    """`config/game.toml`."""

    shear: ShearRules
    offline: OfflineRules
    prestige: PrestigeRules
    achievement_bonus: AchievementBonus
    tiers: tuple[Tier, ...] = Field(min_length=1)
    buildings: BuildingTable
    upgrades: tuple[Upgrade, ...]
    achievements: tuple[Achievement, ...]
    daily_reward: DailyRewardRules = DailyRewardRules()

    @model_validator(mode="after")
    def _references_resolve(self) -> BalanceTables:
        tiers = [t.key for t in self.tiers]
        buildings = [b.key for b in self.buildings.list]
        upgrades = [u.key for u in self.upgrades]
        for label, keys in (("tiers", tiers), ("buildings.list", buildings), ("upgrades", upgrades)):
            if len(set(keys)) != len(keys):
                raise ValueError(f"{label}: duplicate key")
        if len({a.key for a in self.achievements}) != len(self.achievements):
            raise ValueError("achievements: duplicate key")
        for b in self.buildings.list:
            if b.cost_tier not in tiers:
                raise ValueError(f"buildings.list.{b.key}.cost_tier: unknown tier {b.cost_tier!r}")
            for tier in b.produces:
                if tier not in tiers:
                    raise ValueError(f"buildings.list.{b.key}.produces: unknown tier {tier!r}")
            for req in b.requires:
                if req not in buildings:
                    raise ValueError(f"buildings.list.{b.key}.requires: unknown building {req!r}")
        for u in self.upgrades:
            if u.cost.tier not in tiers:
                raise ValueError(f"upgrades.{u.key}.cost.tier: unknown tier {u.cost.tier!r}")
            for e in u.effects:
                known = buildings if e.kind == "building_mult" else tiers
                if e.target is not None and e.target not in known:
                    raise ValueError(f"upgrades.{u.key}.effects: unknown target {e.target!r}")
            for req_u in u.requires.upgrades:
                if req_u not in upgrades:
                    raise ValueError(f"upgrades.{u.key}.requires.upgrades: unknown upgrade {req_u!r}")
            for req_b in u.requires.buildings:
                if req_b not in buildings:
                    raise ValueError(f"upgrades.{u.key}.requires.buildings: unknown building {req_b!r}")
        return self


class ProductionBlock(_Strict):
    baseProductionRate: float = Field(ge=0)  # noqa: N815 - the ConfigMap's own spelling
    offlineEfficiency: float = Field(ge=0, le=1)  # noqa: N815
    maxOfflineHours: float = Field(gt=0)  # noqa: N815
    autoSaveInterval: int = Field(gt=0, description="milliseconds")  # noqa: N815
    cloudSyncInterval: int = Field(gt=0, description="milliseconds")  # noqa: N815


class AntiCheatBlock(_Strict):
    enabled: bool
    maxActionsPerMinute: int = Field(gt=0)  # noqa: N815
    suspiciousActivityThreshold: int = Field(gt=0)  # noqa: N815


class CacheBlock(_Strict):
    gameStateTTL: int = Field(gt=0)  # noqa: N815
    leaderboardTTL: int = Field(gt=0)  # noqa: N815
    userProfileTTL: int = Field(gt=0)  # noqa: N815


class GameConfig(_Strict):
    """`config/game-config.json`: the seed ConfigMap's shape."""

    production: ProductionBlock
    antiCheat: AntiCheatBlock  # noqa: N815
    cache: CacheBlock


def _describe(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{source}: {loc or '(root)'}: {err['msg']}")
    return "; ".join(parts)


def parse_balance(data: dict[str, Any], source: str = "game.toml") -> BalanceTables:
    try:
        return BalanceTables.model_validate(data)
    except ValidationError as exc:
        raise BalanceError(_describe(exc, source)) from None


def parse_game_config(data: dict[str, Any], source: str = "game-config.json") -> GameConfig:
    try:
        return GameConfig.model_validate(data)
    except ValidationError as exc:
        raise BalanceError(_describe(exc, source)) from None
