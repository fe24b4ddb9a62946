"""Rebalancing sockets over replicas, so a replica added under load takes its share.

WebSockets live for hours and the load balancer only places new connections:
without help, a replica added by a scale-out would serve nobody until players
happen to reconnect. Every `rebalance_interval_s` each replica reports its
open sockets and resident farms to the coordinator (with a TTL of three
intervals) and reads everyone's reports in one round trip. The fair share is
the sockets of live replicas over their number (a draining replica counts for
neither). A replica above fair share x (1 + `rebalance_tolerance`), by at
least `rebalance_min_excess` sockets, in two rounds in a row (peers' reports
lag by up to an interval, so one fresh count during a wave of connects is not
an excess), closes `rebalance_step` of its excess (rounded up) with 1012 and
the reason "rebalancing"; clients reconnect through the load balancer and
farms follow their players there. Shedding a fraction per interval, and only
from replicas above the band, keeps reconnects from arriving as a herd and
keeps replicas from trading the same sockets back and forth.

While above its band and a peer has room (a fresh report, sockets already
reaching it), a replica also answers up to its excess of new sockets per
interval 503 (`full`), which the balancer retries on the next replica:
least-connections would send them to the emptiest replica anyway, but round
robin (all ingress-nginx offers) would bring one shed socket in N straight
back. Replicas only compare themselves with their own `rebalance_pool`.

Sockets whose farm this replica does not own go first (they are relayed from
another replica anyway), then the oldest (the newest are often the ones that
just bounced back through the balancer). Nothing is shed or refused while
draining, in the first `rebalance_warmup_s` of a replica's life (its peers'
reports are not all in yet), when the coordinator cannot be read, or with
`rebalance_step` 0.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import structlog

from ..coord import CoordinationUnavailable, ReplicaLoad
from ..settings import Settings
from .context import AppContext
from .ws import CLOSE_RESTART

if TYPE_CHECKING:
    from .ws import WsSession

log = structlog.get_logger("llamawool.rebalance")

REASON = "rebalancing: reconnect"
REPORT_TTL_INTERVALS = 3  # a report lapses after three missed rounds: that replica is gone
FRESH_INTERVALS = 1.5  # a peer's report this young counts as a peer with room


def fair_share(loads: dict[str, ReplicaLoad]) -> float | None:
    """Sockets per live replica; None when no replica is live."""
    live = [load for load in loads.values() if not load.draining]
    if not live:
        return None
    return sum(load.sockets for load in live) / len(live)


def excess(own: int, fair: float, settings: Settings) -> float:
    """Sockets above fair share when `own` is outside the band (above fair x (1 + tolerance)
    by at least the minimum excess); 0 inside it."""
    over = own - fair
    if own <= fair * (1 + settings.rebalance_tolerance) or over < settings.rebalance_min_excess:
        return 0.0
    return over


def sockets_to_shed(me: str, loads: dict[str, ReplicaLoad], settings: Settings) -> int:
    """How many of its sockets replica `me` closes this round (0 when within its band)."""
    mine = loads.get(me)
    live = sum(1 for load in loads.values() if not load.draining)
    fair = fair_share(loads)
    if mine is None or mine.draining or live < 2 or fair is None:
        return 0
    over = excess(mine.sockets, fair, settings)
    return min(int(over), math.ceil(over * settings.rebalance_step))


def room_elsewhere(me: str, loads: dict[str, ReplicaLoad], settings: Settings, now: float) -> bool:
    """A peer that surely takes sockets holds at least the minimum excess fewer than fair share.

    Surely: live, measured within the last 1.5 intervals (a replica killed a moment ago
    still has a report that has not lapsed), and holding a socket already (the balancer
    reaches it: a replica that reports before it is routed must not make its peers turn
    sockets away that nobody else would take).
    """
    fair = fair_share(loads)
    if fair is None:
        return False
    fresh = FRESH_INTERVALS * settings.rebalance_interval_s
    return any(
        replica != me
        and not load.draining
        and now - load.at <= fresh
        and 0 < load.sockets <= fair - settings.rebalance_min_excess
        for replica, load in loads.items()
    )


def choose_shed(sessions: Iterable[WsSession], n: int, owned_here: Callable[[str], bool]) -> list[WsSession]:
    """The `n` sockets to close: those whose farm lives elsewhere first, then the oldest."""
    if n <= 0:
        return []
    candidates = [s for s in sessions if s.player_id is not None and not s.closing]
    candidates.sort(key=lambda s: (owned_here(s.player_id or ""), s.opened_at))
    return candidates[:n]


@dataclass(frozen=True, slots=True)
class _View:
    """What the last round read: the fair share, and whether a peer has room."""

    fair: float
    room_elsewhere: bool
    at: float  # monotonic


class Rebalancer:
    """One replica's side of rebalancing: report its load, shed above its share, and
    turn new sockets away while it is full and a peer has room."""

    def __init__(self, c: AppContext, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.c = c
        self.monotonic = monotonic
        self.started_at = monotonic()
        self._view: _View | None = None
        self._refusals_left = 0  # until the next round: at most the excess is turned away
        self._reported = 0  # sockets in the previous round's report (none before the first)

    def load(self) -> ReplicaLoad:
        c = self.c
        pool = c.settings.rebalance_pool
        return ReplicaLoad(len(c.sessions), len(c.engine.residents), c.draining, pool, c.engine.clock())

    async def report(self) -> ReplicaLoad:
        """Tell the peers what this replica holds now (draining included)."""
        s = self.c.settings
        load = self.load()
        ttl = REPORT_TTL_INTERVALS * s.rebalance_interval_s
        await self.c.coord.report_load(self.c.coord.replica_id, load, self.c.engine.clock(), ttl)
        return load

    def _active(self) -> bool:
        s = self.c.settings
        return s.rebalance_step > 0 and self.monotonic() - self.started_at >= s.rebalance_warmup_s

    def full(self) -> bool:
        """Refuse a new socket: this replica is above its band while a peer has room.

        The load balancer retries the upgrade on the next replica (`proxy_next_upstream
        http_503`), so a socket shed for rebalancing that a round-robin balancer sends
        straight back lands elsewhere. Judged on the last round's reports (never older
        than two intervals) and this replica's live count: no Redis round trip here.
        """
        view = self._view
        if view is None or not view.room_elsewhere or self.c.draining or not self._active():
            return False
        if self.monotonic() - view.at > 2 * self.c.settings.rebalance_interval_s:
            return False
        if self._refusals_left > 0 and excess(len(self.c.sessions), view.fair, self.c.settings) > 0:
            self._refusals_left -= 1
            self.c.metrics.rebalance_refused.inc()
            return True
        return False

    async def round(self) -> int:
        """Report, read every replica's load, shed this replica's excess; return how many closed."""
        c, s = self.c, self.c.settings
        me = c.coord.replica_id
        try:
            sent = await self.report()
            if c.draining:
                return 0
            now = c.engine.clock()
            loads = {r: load for r, load in (await c.coord.replica_loads(now)).items() if load.pool == s.rebalance_pool}
        except CoordinationUnavailable as exc:
            self._view = None  # blind: neither shed nor refuse
            log.warning("rebalance.unavailable", error=str(exc))
            return 0
        # Judge this replica by the lower of its last two counts: peers' reports are up to one
        # interval old, so while everyone fills up (a wave of connects) this replica's fresh
        # count would look like an excess that is not there. An excess must show twice.
        loads[me] = replace(sent, sockets=min(sent.sockets, self._reported))
        self._reported = sent.sockets
        fair = fair_share(loads)
        c.metrics.replicas_live.set(sum(1 for load in loads.values() if not load.draining))
        if fair is None:
            self._view = None
            return 0
        c.metrics.rebalance_fair_share.set(fair)
        self._view = _View(fair, room_elsewhere(me, loads, s, now), self.monotonic())
        self._refusals_left = int(excess(loads[me].sockets, fair, s))
        n = sockets_to_shed(me, loads, s) if self._active() else 0
        shed = choose_shed(list(c.sessions), n, lambda pid: c.engine.resident_state(pid) is not None)
        if not shed:
            return 0
        log.info("rebalance.shedding", sockets=len(shed), holding=len(c.sessions), fair_share=fair)
        # Counted when they are sent away, not once every close handshake is over: a client
        # has the close frame (and may be connected elsewhere) before its handshake ends.
        c.metrics.rebalance_closed.inc(len(shed))
        await asyncio.gather(*(session.send_away(CLOSE_RESTART, REASON) for session in shed), return_exceptions=True)
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


__all__ = [
    "REASON",
    "Rebalancer",
    "choose_shed",
    "excess",
    "fair_share",
    "room_elsewhere",
    "sockets_to_shed",
]
