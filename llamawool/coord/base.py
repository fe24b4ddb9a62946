"""The coordination port: what replicas share that is not durable game state.

Rate limits and violation counts, leaderboards, the hidden (flagged) set, the
weekly rollover marker and fan-out of messages to every replica. `local.py`
serves one process (embedded mode); a Redis adapter serves many and passes the
same contract tests (`tests/contract/test_coord_contract.py`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

if TYPE_CHECKING:
    from ..observability import Metrics

BOARDS = ("lifetime", "prestige", "rate", "weekly")


class CoordinationUnavailable(Exception):
    """The coordination backend cannot be reached; callers degrade (local limits, stale boards)."""


class BadCursor(ValueError):
    """A pagination cursor that this server did not issue (or no longer understands)."""


@dataclass(frozen=True, slots=True)
class LimitResult:
    allowed: bool
    limit: int
    remaining: int
    reset_s: float  # until the window has room again for one more
    retry_after_s: float  # 0 when allowed


@dataclass(frozen=True, slots=True)
class LimitHit:
    """One attempt counted against the sliding window `key` (`limit` hits per `window_s`)."""

    key: str
    limit: int
    window_s: float


@dataclass(frozen=True, slots=True)
class ScoreUpdate:
    player_id: str
    score: float
    tiebreak: float = 0.0  # a secondary score (prestige board: lifetime value)
    at: float = 0.0  # when this score was reached; ties rank the earlier first


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """What one replica carries, as it last reported it (for rebalancing sockets).

    A draining replica still reports (with `draining` set) so its peers leave it
    out of the fair share at once instead of when its report lapses. Replicas
    rebalance only within their `pool` (those behind one load balancer: each
    colour of a blue-green release is its own). `at` is when it was measured.
    """

    sockets: int
    farms: int = 0
    draining: bool = False
    pool: str = ""
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class BoardEntry:
    rank: int
    player_id: str
    score: float
    reached_at: float


@dataclass(frozen=True, slots=True)
class BoardPage:
    board: str
    period: str
    entries: list[BoardEntry]
    next_cursor: str | None
    prev_cursor: str | None
    total: int
    as_of: float


@dataclass(frozen=True, slots=True)
class Cursor:
    """Points into a frozen view of a board: `view` id and an offset into it.

    Pages read through one cursor chain come from the same frozen view, so
    paging forward then back returns the same rows while live scores move.
    When the view has expired, `after` (the last row's ordering key) lets the
    next page continue from the live board without repeating rows.
    """

    view: str
    offset: int
    after: tuple[float, float, float, str] | None = None

    def encode(self) -> str:
        raw = orjson.dumps({"v": self.view, "o": self.offset, "a": self.after})
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            d = orjson.loads(raw)
            after = d.get("a")
            key = None
            if after is not None:
                key = (float(after[0]), float(after[1]), float(after[2]), str(after[3]))
            offset = int(d["o"])
            if offset < 0:
                raise ValueError("negative offset")
            return cls(str(d["v"]), offset, key)
        except (ValueError, KeyError, TypeError, IndexError, binascii.Error, orjson.JSONDecodeError):
            raise BadCursor("cursor is not valid") from None


Listener = Callable[[str, dict[str, Any]], None]


class Limits(Protocol):
    """Rate limits and violation counts (anti-cheat)."""

    # a sliding window of `limit` hits per `window_s`
    async def hit(self, key: str, limit: int, window_s: float, now: float) -> LimitResult: ...
    async def hit_many(self, hits: list[LimitHit], now: float) -> list[LimitResult]:
        """`hit` for each, in order, in one round trip (each window is still exact)."""

    async def peek(self, key: str, limit: int, window_s: float, now: float) -> LimitResult:
        """Like `hit`, without recording one."""

    async def count_violation(self, player_id: str, now: float, window_s: float) -> int:
        """Record one violation; return how many fall within the window."""


class Boards(Protocol):
    """The leaderboards, the hidden (flagged) set and the weekly rollover marker."""

    async def push_scores(self, board: str, period: str, updates: list[ScoreUpdate]) -> None: ...
    async def page(self, board: str, period: str, limit: int, cursor: Cursor | None, now: float) -> BoardPage: ...
    async def rank(self, board: str, period: str, player_id: str) -> BoardEntry | None:
        """The player's rank among visible players (plus themselves when hidden)."""

    async def ranks(self, board: str, period: str, player_ids: list[str]) -> dict[str, BoardEntry]:
        """`rank` of many players in one round trip; players not on the board are left out."""

    async def around(self, board: str, period: str, player_id: str, radius: int) -> list[BoardEntry]: ...
    async def set_hidden(self, player_id: str, hidden: bool) -> None: ...
    async def remove_player(self, player_id: str) -> None: ...
    async def periods(self, board: str) -> list[str]: ...
    async def claim_rollover(self, period: str) -> bool:
        """True exactly once per period across all replicas and restarts."""


class Bus(Protocol):
    """Messages between replicas; messages are JSON."""

    @property
    def replica_id(self) -> str:
        """This process's identity among replicas."""

    # fan-out to every replica (a replica also hears its own messages)
    async def publish(self, channel: str, message: dict[str, Any]) -> None: ...
    def subscribe(self, listener: Listener) -> None: ...

    # point to point: listeners of replica `replica_id` hear it on channel "replica:<id>"
    async def send(self, replica_id: str, message: dict[str, Any]) -> None: ...


class Presence(Protocol):
    """Each replica reports how many players it serves; the sum is the online count."""

    @property
    def replica_id(self) -> str:
        """This process's identity among replicas."""

    async def report_online(self, replica: str, count: int, now: float, ttl_s: float) -> None:
        """This replica serves `count` players; the report lapses after `ttl_s` unless renewed."""

    async def online_count(self, now: float) -> int:
        """Players served by every replica whose report has not lapsed."""

    async def report_load(self, replica: str, load: ReplicaLoad, now: float, ttl_s: float) -> None:
        """This replica's open sockets and resident farms; the report lapses after `ttl_s` unless renewed."""

    async def replica_loads(self, now: float) -> dict[str, ReplicaLoad]:
        """Every replica whose load report has not lapsed (one round trip)."""


@dataclass(frozen=True, slots=True)
class Renewal:
    """What a renewal of our leases found."""

    lost: list[str]  # held by another replica now
    retaken: list[str]  # had lapsed and were free: ours again, but another replica may have served them meanwhile


class Leases(Protocol):
    """Farm ownership: one lease holder per farm; and the liveness of lease holders.

    A lease says who owns a farm; a heartbeat (a short-TTL key each replica renews
    from its tick) says whether that replica is alive. Together they tell an owner
    that is slow (heartbeat present: wait, answer 503) from one that is gone
    (heartbeat absent: take its lease at once), in one round trip.
    """

    async def acquire_lease(self, farm_id: str, ttl_s: float) -> bool:
        """Take the lease when free (or renew it when ours); False when another replica holds it."""

    async def claim_lease(self, farm_id: str, ttl_s: float) -> str:
        """Like `acquire_lease`, answering the holder after the call (our replica id when ours)."""

    async def take_over_lease(self, farm_id: str, silent: str, ttl_s: float) -> str:
        """Take the lease when it is free, or held by `silent` whose heartbeat is absent (it
        is gone); answer the holder after the call. `silent` still holding it means alive."""

    async def hand_over_lease(self, farm_id: str, to: str, ttl_s: float) -> bool:
        """Move our lease to replica `to`; False (nothing changed) when it is not ours."""

    async def renew_leases(self, farm_ids: list[str], ttl_s: float) -> Renewal:
        """Extend our leases (taking lapsed free ones again) and say which were lost or lapsed."""

    async def release_lease(self, farm_id: str) -> None: ...
    async def lease_owner(self, farm_id: str) -> str | None: ...

    async def beat(self, ttl_s: float) -> None:
        """This replica is alive for `ttl_s` more seconds."""

    async def end_beat(self) -> None:
        """This replica is going away: its leases may be taken at once."""

    async def alive(self, replica: str) -> bool:
        """Whether `replica`'s heartbeat is current."""


class Coordinator(Limits, Boards, Bus, Presence, Leases, Protocol):
    """Everything replicas share, as one adapter; its users take the narrow part they need."""

    name: str
    replica_id: str  # this process's identity among replicas

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    def bind_metrics(self, metrics: Metrics) -> None:
        """Count this adapter's round trips and time its calls into `metrics` (the cost budget)."""
