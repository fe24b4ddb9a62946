"""Everything a handler needs, wired once by the app factory."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from ..anticheat import AntiCheat
from ..auth import Auth
from ..coord import Boards, Bus, Coordinator
from ..engine import Engine
from ..game import Rules
from ..observability import Metrics
from ..settings import Settings
from ..store import Store

if TYPE_CHECKING:
    from .rebalance import Rebalancer
    from .ws import WsSession


@dataclass(eq=False)
class AppContext:
    settings: Settings
    rules: Rules
    store: Store
    engine: Engine
    auth: Auth
    metrics: Metrics
    coord: Coordinator
    anticheat: AntiCheat
    trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    sessions: set[WsSession] = field(default_factory=set)
    draining: bool = False

    @property
    def boards(self) -> Boards:
        """The coordinator as the leaderboard and player routes use it."""
        return self.coord

    @property
    def bus(self) -> Bus:
        """The coordinator as the routes that message every replica use it."""
        return self.coord


CTX = web.AppKey("llamawool", AppContext)
REBALANCER: web.AppKey[Rebalancer] = web.AppKey("rebalancer")


def ctx(request: web.Request) -> AppContext:
    return request.app[CTX]
