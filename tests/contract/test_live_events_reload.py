"""Reloads of the live-event schedule apply in the order they read (SQLite and MongoDB).

A poll that read the store just before an admin scheduled an event must not apply
its older list after the admin's reload applied the newer one: the event would
vanish from this replica until the next poll. The first read is held at a gate
(the interleaving is forced): the admin's reload runs meanwhile, and is given up to
2 s to finish before the held read goes on (it finishes at once when nothing orders
the reloads; with the order it cannot finish before the held read is applied).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from llamawool.engine.live_events import LiveEvents
from llamawool.engine.residents import ResidentSet
from llamawool.engine.table import FarmTable
from llamawool.game.events import LiveEvent
from llamawool.settings import load_rules
from llamawool.store import Store

T0 = 1_800_000_000.0


class Residents:
    def __init__(self, table: FarmTable) -> None:
        self.table = table

    def all(self) -> list[Any]:
        return []

    def resend_rates(self) -> None:
        """No farm is resident here: nothing to resend."""


class GatedStore:
    """The real store, with the first `list_events` answer held until the gate opens."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.read_done = asyncio.Event()
        self.gate = asyncio.Event()
        self.reads = 0

    async def list_events(self) -> list[LiveEvent]:
        self.reads += 1
        first = self.reads == 1
        events = await self.store.list_events()
        if first:
            self.read_done.set()
            await self.gate.wait()
        return events


async def test_an_older_read_never_undoes_a_newer_schedule(store: Store) -> None:
    rules = load_rules()
    gated = GatedStore(store)
    sent: list[str] = []

    def broadcast(message: str) -> int:
        sent.append(message)
        return 1

    live = LiveEvents(
        rules, cast(Store, gated), cast(ResidentSet, Residents(FarmTable(rules))), broadcast, lambda: T0, 5.0
    )
    live.apply([])  # the start-up read
    poll = asyncio.create_task(live.reload())  # reads the empty list, then waits at the gate
    await gated.read_done.wait()
    await store.add_event(LiveEvent("e1", "Double wool", 2.0, None, T0 + 10, T0 + 20))
    admin = asyncio.create_task(live.reload())  # the admin's reload, after the insert
    # Without ordering the admin's reload reads and applies the new list now, and the held
    # poll applies its older one after it. With it, the admin's reload waits for the poll.
    await asyncio.wait({admin}, timeout=2.0)
    gated.gate.set()
    await asyncio.gather(poll, admin)
    assert [e.id for e in rules.schedule.events] == ["e1"]
    assert len(sent) == 1 and '"phase":"scheduled"' in sent[0]
