"""Live events in every store: kept whole, listed by start, cancelled once (never after their end)."""

from __future__ import annotations

from llamawool.game.events import LiveEvent
from llamawool.store import Store

T0 = 1_800_000_000.0


async def test_events_are_kept_listed_by_start_and_cancelled_once(store: Store) -> None:
    later = LiveEvent("b-later", "Golden hour", 3.0, ("golden", "silver"), T0 + 100, T0 + 200, None, T0, "admin-1")
    weekend = LiveEvent("a-weekend", "Double wool weekend", 2.0, None, T0 + 10, T0 + 50, None, T0, "admin-1")
    assert await store.list_events() == []
    await store.add_event(later)
    await store.add_event(weekend)
    assert await store.list_events() == [weekend, later]

    cancelled = await store.cancel_event("a-weekend", T0 + 20)
    assert cancelled is not None and cancelled.cancelled_at == T0 + 20 and cancelled.effective_end == T0 + 20
    assert await store.cancel_event("a-weekend", T0 + 30) is None  # once
    assert await store.cancel_event("b-later", T0 + 200) is None  # ended by then
    assert await store.cancel_event("nope", T0) is None
    assert await store.list_events() == [cancelled, later]
