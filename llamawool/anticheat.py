"""Anti-cheat: rate limits, violations, flags (GAME.md "Anti-cheat").

Limits are sliding windows kept by the coordinator, so every replica sees the
same counts; hits made at once share one round trip (`coord/batching.py` says
why batching and not per-replica buckets). When coordination is unreachable
the process falls back to its own in-memory windows (per-replica limits beat
no limits). Violations are
counted per player over a rolling window; reaching the threshold flags the
player: hidden from public boards, logged, counted, visible to admins. A flag
decays after `flag_decay_s` without a new violation, or an admin clears it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, Protocol

import structlog
from prometheus_client import Counter

from .coord import Boards, CoordinationUnavailable, LimitResult, Limits, LocalCoordinator
from .coord.batching import BatchedHits
from .game import Rules
from .observability import Metrics
from .settings import Settings
from .store import PlayerChanges, Store

log = structlog.get_logger("llamawool.anticheat")

ActionKind = Literal["action", "shear"]
AuthScope = Literal["guest", "register"]
MINUTE = 60.0


class RateLimited(Exception):
    def __init__(self, scope: str, result: LimitResult) -> None:
        super().__init__(f"{scope} limit reached")
        self.scope = scope
        self.result = result

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.result.retry_after_s))


def limit_headers(result: LimitResult) -> dict[str, str]:
    """IETF RateLimit header fields (draft 7 names) plus Retry-After when refused."""
    headers = {
        "RateLimit-Limit": str(result.limit),
        "RateLimit-Remaining": str(result.remaining),
        "RateLimit-Reset": str(max(0, math.ceil(result.reset_s))),
    }
    if not result.allowed:
        headers["Retry-After"] = str(max(1, math.ceil(result.retry_after_s)))
    return headers


class GuardCoord(Limits, Boards, Protocol):
    """The part of the coordinator anti-cheat uses: limits, and hiding flagged players from boards."""


class AntiCheat:
    def __init__(
        self,
        coord: GuardCoord,
        store: Store,
        settings: Settings,
        rules: Rules,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self.coord = coord
        self.store = store
        self.settings = settings
        self.clock = clock
        block = rules.config.antiCheat
        self.enabled = block.enabled
        self.actions_per_minute = block.maxActionsPerMinute
        self.threshold = block.suspiciousActivityThreshold
        self._fallback: Limits = LocalCoordinator(None)
        self._hits = BatchedHits(coord, clock)
        self.violations = Counter(
            "llamawool_anticheat_violations_total", "Anti-cheat violations", ["kind"], registry=metrics.registry
        )
        self.flags = Counter("llamawool_anticheat_flags_total", "Players flagged", registry=metrics.registry)
        self.limited = Counter(
            "llamawool_rate_limited_total", "Requests refused by a limit", ["scope"], registry=metrics.registry
        )
        self.coord_errors = Counter(
            "llamawool_coordination_errors_total", "Coordination calls that failed", registry=metrics.registry
        )

    async def _hit(self, key: str, limit: int, window_s: float, *, record: bool = True) -> LimitResult:
        """Count (or, with record=False, only look at) one attempt on the shared window.
        Hits made at once share one round trip (`coord.batching`)."""
        try:
            if record:
                return await self._hits.hit(key, limit, window_s)
            return await self.coord.peek(key, limit, window_s, self.clock())
        except CoordinationUnavailable:
            self.coord_errors.inc()
            now = self.clock()
            if record:
                return await self._fallback.hit(key, limit, window_s, now)
            return await self._fallback.peek(key, limit, window_s, now)

    # ---- players' actions ----------------------------------------------------------

    async def check_action(self, player_id: str, kind: ActionKind = "action") -> LimitResult:
        """Count one attempt; raise RateLimited (and count a violation) past the limit."""
        limit = self.settings.shear_requests_per_minute if kind == "shear" else self.actions_per_minute
        if not self.enabled:
            return LimitResult(True, limit, limit, MINUTE, 0.0)
        result = await self._hit(f"{kind}:{player_id}", limit, MINUTE)
        if not result.allowed:
            self.limited.labels(scope=kind).inc()
            await self.violation(player_id, "rate_limit")
            raise RateLimited(kind, result)
        return result

    async def violation(self, player_id: str, kind: str, detail: str = "") -> bool:
        """Count one violation; flag the player at the threshold. Returns whether flagged now."""
        if not self.enabled:
            return False
        self.violations.labels(kind=kind).inc()
        now = self.clock()
        try:
            count = await self.coord.count_violation(player_id, now, self.settings.violation_window_s)
        except CoordinationUnavailable:
            self.coord_errors.inc()
            count = await self._fallback.count_violation(player_id, now, self.settings.violation_window_s)
        reason = None
        if count >= self.threshold:
            reason = f"{count} violations within {self.settings.violation_window_s:.0f}s (last: {kind})"
        # counted and flagged by the store itself: no read-modify-write of the player
        newly = await self.store.record_violation(player_id, now, reason)
        if newly is None:
            return False
        log.info("anticheat.violation", player_id=player_id, kind=kind, count=count, detail=detail)
        if newly:
            self.flags.inc()
            log.warning("anticheat.flagged", player_id=player_id, violations=count, reason=reason)
            await self._set_hidden(player_id, True)
        return newly

    async def _set_hidden(self, player_id: str, hidden: bool) -> None:
        try:
            await self.coord.set_hidden(player_id, hidden)
        except CoordinationUnavailable:
            self.coord_errors.inc()
            log.warning("anticheat.hidden_not_synced", player_id=player_id, hidden=hidden)

    async def clear_flag(self, player_id: str, *, quiet_since: float | None = None) -> bool:
        """Clear the player's flag. With `quiet_since` (the decay sweep), only while the
        last violation is still the one the sweep judged: a violation counted meanwhile
        keeps the flag."""
        player = await self.store.get_player(player_id)
        if player is None or player.flagged_at is None:
            return False
        expect: PlayerChanges = {"flagged_at": player.flagged_at}
        if quiet_since is not None:
            expect["last_violation_at"] = quiet_since
        if not await self.store.update_player_fields(player_id, {"flagged_at": None, "flag_reason": None}, expect):
            return False
        await self._set_hidden(player_id, False)
        log.info("anticheat.flag_cleared", player_id=player_id)
        return True

    async def sweep(self) -> int:
        """Let flags decay after `flag_decay_s` without a violation. Returns how many cleared."""
        now = self.clock()
        cleared = 0
        for player in await self.store.list_flagged():
            last = player.last_violation_at or player.flagged_at or now
            if now - last >= self.settings.flag_decay_s and await self.clear_flag(
                player.id, quiet_since=player.last_violation_at
            ):
                cleared += 1
        return cleared

    # ---- authentication routes (per IP, per login) --------------------------------------

    async def check_auth(self, scope: AuthScope, ip: str) -> None:
        if scope == "guest":
            limit = self.settings.guests_per_ip_per_hour
        else:
            limit = self.settings.registrations_per_ip_per_hour
        result = await self._hit(f"{scope}:{ip}", limit, 3600.0)
        if not result.allowed:
            self.limited.labels(scope=scope).inc()
            raise RateLimited(scope, result)

    async def check_export(self, player_id: str) -> LimitResult:
        """Count one data export of the player (`GET /players/me/export` reads everything
        held about them): refused past `data_exports_per_hour`, whatever `enabled` says."""
        result = await self._hit(f"export:{player_id}", self.settings.data_exports_per_hour, 3600.0)
        if not result.allowed:
            self.limited.labels(scope="export").inc()
            raise RateLimited("export", result)
        return result

    def _login_key(self, ip: str, login: str) -> str:
        return f"loginfail:{ip}:{login.lower()}"

    async def check_login(self, ip: str, login: str) -> None:
        """Refuse while this IP+login has too many recent failures (even a right password)."""
        result = await self._hit(
            self._login_key(ip, login),
            self.settings.login_failures_per_window,
            self.settings.login_failure_window_s,
            record=False,
        )
        if not result.allowed:
            self.limited.labels(scope="login").inc()
            raise RateLimited("login", result)

    async def login_failed(self, ip: str, login: str) -> None:
        await self._hit(
            self._login_key(ip, login), self.settings.login_failures_per_window, self.settings.login_failure_window_s
        )
