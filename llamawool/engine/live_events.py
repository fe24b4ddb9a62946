"""This replica's copy of the live-event schedule, and what follows from a change.

Every replica applies the same stored schedule: it reads the events at start,
again at once when a replica announces a change over the coordination bus, and
every `events_poll_s` regardless (the guarantee when an announcement is lost).
Boundaries are the events' own server times, so a replica that learns of a
change a moment late still re-anchors its rows at the stored instants: a
change that reaches into time the rows have already passed (a running event
cancelled now) re-derives every resident row from its farm's state, which the
rules integrate under the new schedule.

Sockets hear of it as `{"type": "event", "data": {"kind": "live_event", ...}}`:
"scheduled" and "cancelled" when the schedule changes, "started" and "ended"
from the tick that passes the boundary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from ..game import Rules
from ..game.events import LiveEvent, Schedule
from ..store import Store
from .residents import ResidentSet

log = structlog.get_logger("llamawool.engine")


def live_event_message(event: LiveEvent, phase: str, now: float) -> str:
    data = {"kind": "live_event", "event": event.view(now), "phase": phase}
    return orjson.dumps({"type": "event", "data": data}).decode()


class LiveEvents:
    def __init__(
        self,
        rules: Rules,
        store: Store,
        residents: ResidentSet,
        broadcast: Callable[[str], int],
        clock: Callable[[], float],
        poll_s: float,
    ) -> None:
        self.rules = rules
        self.store = store
        self.residents = residents
        self.table = residents.table
        self.broadcast = broadcast
        self.clock = clock
        self.poll_s = poll_s
        self.known: dict[str, LiveEvent] | None = None  # None until the first read
        self._ticked_to: float | None = None
        self._reading = asyncio.Lock()

    async def reload(self) -> None:
        """Read the stored schedule and apply it (announcing what changed).

        One read-and-apply at a time: the poll, a bus announcement and an admin call may
        reload together, and an older read applied after a newer one would take a just
        scheduled event away again (until the next read, announcing it twice)."""
        async with self._reading:
            self.apply(await self.store.list_events())

    def apply(self, events: list[LiveEvent]) -> None:
        now = self.clock()
        old = self.rules.schedule
        new = Schedule(self.rules.tier_keys, events)
        self.rules.schedule = new
        since = new.changed_since(old)
        if since is not None and since <= self.table.applied_to:
            # The change reaches into time the rows already passed: re-derive each from its state.
            for res in list(self.residents.all()):
                if not res.evicted:
                    self.table.sync(res.row, res.state)
        if since is not None:
            self.residents.resend_rates()
        previous, self.known = self.known, {e.id: e for e in events}
        if previous is None:  # the first read: nothing to announce; ticks announce from now on
            self._ticked_to = now
            return
        for e in events:
            before = previous.get(e.id)
            if before is None:
                self._announce(e, "cancelled" if e.cancelled_at is not None else "scheduled", now)
            elif before.cancelled_at is None and e.cancelled_at is not None:
                self._announce(e, "cancelled", now)

    def on_tick(self, now: float) -> None:
        """A tick listener: announce the events that started or ended since the last tick."""
        prev, self._ticked_to = self._ticked_to, now
        if prev is None:
            return
        # (The ticker sends every farm its rates again when its rows cross a boundary.)
        for e in self.rules.schedule.events:
            if not e.applies:
                continue
            if prev < e.starts_at <= now:
                self._announce(e, "started", now)
            if prev < e.effective_end <= now and e.cancelled_at is None:
                self._announce(e, "ended", now)

    def _announce(self, event: LiveEvent, phase: str, now: float) -> None:
        sent = self.broadcast(live_event_message(event, phase, now))
        log.info("live_event.announced", event_id=event.id, phase=phase, sockets=sent)

    def current(self, now: float) -> list[dict[str, Any]]:
        """Views of the running and upcoming events (what `/config` lists)."""
        return [e.view(now) for e in self.rules.schedule.events if e.applies and e.effective_end > now]

    async def watch(self) -> None:
        """The periodic read: every replica converges on the stored schedule even when an
        announcement was lost."""
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.reload()
            except Exception as exc:  # storage away: keep the schedule we have, try again
                log.warning("live_events.unavailable", error=str(exc))
