"""A farm's state: everything the rules need, nothing they can derive.

Amounts that grow with time are stored *at the anchor* (`anchor_time`); the
rules compute their value at any later instant in closed form. Rates are never
stored: they follow from buildings, upgrades, soul shears and achievements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(slots=True)
class OfflineReport:
    """The itemised "while you were away" report."""

    went_offline_at: float
    returned_at: float
    elapsed_s: float
    credited_s: float
    capped: bool
    efficiency: float
    cap_s: float
    gains: dict[str, float]
    value_gained: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "went_offline_at": self.went_offline_at,
            "returned_at": self.returned_at,
            "elapsed_s": self.elapsed_s,
            "credited_s": self.credited_s,
            "capped": self.capped,
            "efficiency": self.efficiency,
            "cap_s": self.cap_s,
            "gains": dict(self.gains),
            "value_gained": self.value_gained,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OfflineReport:
        return cls(
            went_offline_at=float(d["went_offline_at"]),
            returned_at=float(d["returned_at"]),
            elapsed_s=float(d["elapsed_s"]),
            credited_s=float(d["credited_s"]),
            capped=bool(d["capped"]),
            efficiency=float(d["efficiency"]),
            cap_s=float(d["cap_s"]),
            gains={str(k): float(v) for k, v in d["gains"].items()},
            value_gained=float(d["value_gained"]),
        )


@dataclass(slots=True)
class FarmStats:
    shears: int = 0
    wool_sheared: float = 0.0
    building_levels_bought: int = 0
    upgrades_bought: int = 0
    offline_credits: int = 0
    daily_rewards: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "shears": self.shears,
            "wool_sheared": self.wool_sheared,
            "building_levels_bought": self.building_levels_bought,
            "upgrades_bought": self.upgrades_bought,
            "offline_credits": self.offline_credits,
            "daily_rewards": self.daily_rewards,
        }


@dataclass(slots=True)
class FarmState:
    """One player's farm. Time-growing amounts are values at `anchor_time`."""

    player_id: str
    created_at: float
    anchor_time: float
    balances: list[float]
    run_produced: list[float]
    lifetime_value: float
    weekly_value: float
    week: str
    play_time_s: float
    online: bool
    last_active: float
    revision: int = 0
    buildings: dict[str, int] = field(default_factory=dict)
    upgrades: list[str] = field(default_factory=list)
    soul_shears: int = 0
    prestige_count: int = 0
    achievements: dict[str, float] = field(default_factory=dict)
    discovered: list[str] = field(default_factory=list)
    shear_tokens: float = 0.0
    shear_tokens_at: float = 0.0
    stats: FarmStats = field(default_factory=FarmStats)
    offline_report: OfflineReport | None = None
    report_unseen: bool = False
    # the revision of the last change a player made (action, save upload,
    # restore); system re-anchors (offline, return, unlocks) leave it alone
    content_revision: int = 0
    # the daily return reward: the server day (YYYY-MM-DD, UTC) of the last claim and its streak
    daily_day: str = ""
    daily_streak: int = 0

    def clone(self) -> FarmState:
        return FarmState(
            player_id=self.player_id,
            created_at=self.created_at,
            anchor_time=self.anchor_time,
            balances=list(self.balances),
            run_produced=list(self.run_produced),
            lifetime_value=self.lifetime_value,
            weekly_value=self.weekly_value,
            week=self.week,
            play_time_s=self.play_time_s,
            online=self.online,
            last_active=self.last_active,
            revision=self.revision,
            buildings=dict(self.buildings),
            upgrades=list(self.upgrades),
            soul_shears=self.soul_shears,
            prestige_count=self.prestige_count,
            achievements=dict(self.achievements),
            discovered=list(self.discovered),
            shear_tokens=self.shear_tokens,
            shear_tokens_at=self.shear_tokens_at,
            stats=FarmStats(**self.stats.to_dict()),
            offline_report=self.offline_report,
            report_unseen=self.report_unseen,
            content_revision=self.content_revision,
            daily_day=self.daily_day,
            daily_streak=self.daily_streak,
        )

    def to_doc(self) -> dict[str, Any]:
        """The storage document (JSON-safe). `revision` travels beside it."""
        return {
            "v": SCHEMA_VERSION,
            "player_id": self.player_id,
            "created_at": self.created_at,
            "anchor_time": self.anchor_time,
            "balances": list(self.balances),
            "run_produced": list(self.run_produced),
            "lifetime_value": self.lifetime_value,
            "weekly_value": self.weekly_value,
            "week": self.week,
            "play_time_s": self.play_time_s,
            "online": self.online,
            "last_active": self.last_active,
            "buildings": dict(self.buildings),
            "upgrades": list(self.upgrades),
            "soul_shears": self.soul_shears,
            "prestige_count": self.prestige_count,
            "achievements": dict(self.achievements),
            "discovered": list(self.discovered),
            "shear_tokens": self.shear_tokens,
            "shear_tokens_at": self.shear_tokens_at,
            "stats": self.stats.to_dict(),
            "offline_report": self.offline_report.to_dict() if self.offline_report else None,
            "report_unseen": self.report_unseen,
            "content_revision": self.content_revision,
            "daily_day": self.daily_day,
            "daily_streak": self.daily_streak,
        }

    @classmethod
    def from_doc(cls, d: dict[str, Any], revision: int) -> FarmState:
        report = d.get("offline_report")
        return cls(
            player_id=str(d["player_id"]),
            created_at=float(d["created_at"]),
            anchor_time=float(d["anchor_time"]),
            balances=[float(x) for x in d["balances"]],
            run_produced=[float(x) for x in d["run_produced"]],
            lifetime_value=float(d["lifetime_value"]),
            weekly_value=float(d["weekly_value"]),
            week=str(d["week"]),
            play_time_s=float(d["play_time_s"]),
            online=bool(d["online"]),
            last_active=float(d["last_active"]),
            revision=revision,
            buildings={str(k): int(v) for k, v in d["buildings"].items()},
            upgrades=[str(u) for u in d["upgrades"]],
            soul_shears=int(d["soul_shears"]),
            prestige_count=int(d["prestige_count"]),
            achievements={str(k): float(v) for k, v in d["achievements"].items()},
            discovered=[str(t) for t in d["discovered"]],
            shear_tokens=float(d["shear_tokens"]),
            shear_tokens_at=float(d["shear_tokens_at"]),
            stats=FarmStats(**d.get("stats", {})),
            offline_report=OfflineReport.from_dict(report) if report else None,
            report_unseen=bool(d.get("report_unseen", False)),
            content_revision=int(d.get("content_revision", 0)),
            daily_day=str(d.get("daily_day", "")),
            daily_streak=int(d.get("daily_streak", 0)),
        )
