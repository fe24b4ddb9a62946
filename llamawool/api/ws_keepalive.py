"""Keep-alive of every WebSocket of an app, from one task.

aiohttp's own heartbeat keeps a timer per socket (a TimerHandle and a libuv
timer: 0.9 KiB of RSS per socket, measured at 2,000 sockets); one task does the
same job for all of them. Each socket joins one of `PHASES` buckets, visited in
turn, so every socket is looked at once per half `ws_heartbeat_s` and the pings
spread over that time instead of leaving in one burst.

A socket that sent nothing for a whole `ws_heartbeat_s` is pinged; one that
then sends nothing (not even the pong) for another half is gone (a dead peer, a
half-open connection): its transport is aborted, which ends its handler, as
aiohttp's heartbeat does. Any frame from the client counts (`WsSession.heard`).
"""

from __future__ import annotations

import asyncio
import weakref

from .context import AppContext
from .ws_session import WsSession

PHASES = 16  # buckets visited in turn over half a heartbeat
YIELD_EVERY = 512  # sockets visited between chances for other callbacks to run


class KeepAlive:
    def __init__(self, heartbeat_s: float) -> None:
        self.step_s = heartbeat_s / 2 / PHASES
        self._buckets: list[set[WsSession]] = [set() for _ in range(PHASES)]
        self._joining = 0  # the bucket the next socket joins

    def add(self, session: WsSession) -> None:
        self._buckets[self._joining].add(session)
        self._joining = (self._joining + 1) % PHASES

    def discard(self, session: WsSession) -> None:
        for bucket in self._buckets:
            bucket.discard(session)

    async def run(self) -> None:
        phase = 0
        while True:
            await asyncio.sleep(self.step_s)
            for i, session in enumerate(list(self._buckets[phase])):
                session.beat()
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
            phase = (phase + 1) % PHASES


_KEEPALIVES: weakref.WeakKeyDictionary[AppContext, KeepAlive] = weakref.WeakKeyDictionary()


def keepalive(c: AppContext) -> KeepAlive:
    """The app's keep-alive (its task is started with the app: `run`)."""
    k = _KEEPALIVES.get(c)
    if k is None:
        k = _KEEPALIVES[c] = KeepAlive(c.settings.ws_heartbeat_s)
    return k


async def run(c: AppContext) -> None:
    await keepalive(c).run()
