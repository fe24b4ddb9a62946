"""Rebalancing sockets over replicas, so a replica added under load takes its share.

WebSockets live for hours and the load balancer only places new connections:
without help, a replica added by a scale-out would serve nobody until players
happen to reconnect. Every `rebalance_interval_s` each replica reports its
open sockets and resident farms to the coordinator (with a TTL of three
intervals) and reads everyone's reports in one round trip. The fair share is
the sockets of live replicas over their number (a draining replica counts for
neither). A replica above fair share x (1 + `rebalance_tolerance`), by at
least `rebalance_min_excess` sockets, closes `rebalance_step` of its excess
(rounded up) with 1012 and the reason "rebalancing"; clients reconnect through
the load balancer (least-connections sends them to the emptier replica), and
farms follow their players there. Shedding a fraction per interval, and only
from replicas above the band, keeps reconnects from arriving as a herd and
keeps replicas from trading the same sockets back and forth.

Sockets whose farm this replica does not own go first (they are relayed from
another replica anyway), then the newest (the player who just connected loses
the least). Nothing is shed while draining, in the first `rebalance_warmup_s`
of a replica's life (its peers' reports are not all in yet) or when the
coordinator cannot be read.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable

import structlog
from aiohttp import web

from ..coord import CoordinationUnavailable, ReplicaLoad
from ..settings import Settings
from .context import AppContext
from .ws import CLOSE_RESTART, WsSession

log = structlog.get_logger("llamawool.rebalance")

REASON = "rebalancing: reconnect"
REPORT_TTL_INTERVALS = 3  # a report lapses after three missed rounds: that replica is gone


def fair_share(loads: dict[str, ReplicaLoad]) -> float | None:
    """Sockets per live replica; None when no replica is live."""
    live = [load for load in loads.values() if not load.draining]
    if not live:
        return None
    return sum(load.sockets for load in live) / len(live)


def sockets_to_shed(me: str, loads: dict[str, ReplicaLoad], settings: Settings) -> int:
    """How many of its sockets replica `me` closes this round (0 when within its band)."""
    mine = loads.get(me)
    live = sum(1 for load in loads.values() if not load.draining)
    fair = fair_share(loads)
    if mine is None or mine.draining or live < 2 or fair is None:
        return 0
    excess = mine.sockets - fair
    if mine.sockets <= fair * (1 + settings.rebalance_tolerance) or excess < settings.rebalance_min_excess:
        return 0
    return min(int(excess), math.ceil(excess * settings.rebalance_step))


def choose_shed(sessions: Iterable[WsSession], n: int, owned_here: Callable[[str], bool]) -> list[WsSession]:
    """The `n` sockets to close: those whose farm lives elsewhere first, then the newest."""
    if n <= 0:
        return []
    candidates = [s for s in sessions if s.player_id is not None and not s.closing]
    candidates.sort(key=lambda s: (owned_here(s.player_id or ""), -s.opened_at))
    return candidates[:n]


class Rebalancer:
    """One replica's side of rebalancing: report its load, shed above its share."""

    def __init__(self, c: AppContext, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.c = c
        self.monotonic = monotonic
        self.started_at = monotonic()

    def load(self) -> ReplicaLoad:
        c = self.c
        return ReplicaLoad(len(c.sessions), len(c.engine.residents), c.draining)

    async def report(self) -> None:
        """Tell the peers what this replica holds now (draining included)."""
        s = self.c.settings
        ttl = REPORT_TTL_INTERVALS * s.rebalance_interval_s
        await self.c.coord.report_load(self.c.coord.replica_id, self.load(), self.c.engine.clock(), ttl)

    async def round(self) -> int:
        """Report, read every replica's load, shed this replica's excess; return how many closed."""
        c, s = self.c, self.c.settings
        try:
            await self.report()
            if c.draining:
                return 0
            loads = await c.coord.replica_loads(c.engine.clock())
        except CoordinationUnavailable as exc:
            log.warning("rebalance.unavailable", error=str(exc))
            return 0
        fair = fair_share(loads)
        c.metrics.replicas_live.set(sum(1 for load in loads.values() if not load.draining))
        if fair is not None:
            c.metrics.rebalance_fair_share.set(fair)
        warming = self.monotonic() - self.started_at < s.rebalance_warmup_s
        n = 0 if warming else sockets_to_shed(c.coord.replica_id, loads, s)
        shed = choose_shed(list(c.sessions), n, lambda pid: c.engine.resident_state(pid) is not None)
        if not shed:
            return 0
        log.info("rebalance.shedding", sockets=len(shed), holding=len(c.sessions), fair_share=fair)
        await asyncio.gather(*(session.close(CLOSE_RESTART, REASON) for session in shed), return_exceptions=True)
        c.metrics.rebalance_closed.inc(len(shed))
        return len(shed)

    async def run(self) -> None:
        interval = self.c.settings.rebalance_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.round()
            except Exception:
                log.exception("rebalance.failed")

    async def withdraw(self) -> None:
        """Draining: tell the peers now, so their fair share stops counting this replica."""
        try:
            await self.report()
        except CoordinationUnavailable as exc:
            log.warning("rebalance.unavailable", error=str(exc))


REBALANCER = web.AppKey("rebalancer", Rebalancer)

__all__ = ["REASON", "REBALANCER", "Rebalancer", "choose_shed", "fair_share", "sockets_to_shed"]
