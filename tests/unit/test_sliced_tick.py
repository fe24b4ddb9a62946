"""The tick's sending spread over the interval (`Ticker.run_phase`, `TICK_SLICES`).

Each connected farm must still get exactly one tick per interval, evenly spaced
(its table row fixes its phase), and each tick must carry the closed-form
balances of the farm's state at that tick's own `server_time`, even when an
action changed the farm between two phases.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from llamawool.engine import Engine
from llamawool.game import BuyBuilding, Rules, Shear
from llamawool.game.events import LiveEvent
from llamawool.observability import Metrics
from llamawool.settings import Settings, load_rules
from llamawool.store import PlayerRecord, SQLiteStore
from tests.helpers import CollectingSink, FakeClock, logs_go_nowhere  # noqa: F401 (an autouse fixture)

RULES = load_rules()
T0 = 1_800_000_000.0
FARMS = 25


class CheckingSink(CollectingSink):
    """Keeps what it gets, and checks each tick against the farm's state as it is sent."""

    def __init__(self, engine: Engine, player_id: str) -> None:
        super().__init__()
        self.engine = engine
        self.player_id = player_id
        self.checked = 0

    def send(self, message: str) -> None:
        super().send(message)
        if self.messages[-1]["type"] == "tick":
            assert_closed_form(self.engine, self.player_id, self.messages[-1]["data"])
            self.checked += 1


@asynccontextmanager
async def engine_with_farms(
    tmp_path: Path, clock: Callable[[], float], *, tick: bool, rules: Rules = RULES, **settings: Any
) -> AsyncIterator[tuple[Engine, dict[str, CheckingSink]]]:
    store = SQLiteStore(tmp_path / "tick.sqlite3", synchronous="NORMAL")
    await store.open()
    engine = Engine(rules, store, Settings(env="test", data_dir=tmp_path, **settings), Metrics(), clock=clock)
    await engine.start(tick=False)
    sinks: dict[str, CheckingSink] = {}
    try:
        for i in range(FARMS):
            pid = f"p{i:02d}"
            await store.create_player(PlayerRecord(id=pid, username=f"u_{pid}", created_at=T0))
            sinks[pid] = CheckingSink(engine, pid)
            await engine.attach(pid, sinks[pid])
        # Some production, so balances move between ticks.
        for pid in sinks:
            await engine.submit(pid, Shear(20))
            await engine.submit(pid, BuyBuilding("barn", 1))
        if tick:
            engine.ticker.start()
        yield engine, sinks
    finally:
        await engine.stop()
        await store.close()


def assert_closed_form(engine: Engine, pid: str, tick: dict[str, Any]) -> None:
    """The tick's balances are the farm's state's closed form at the tick's own instant."""
    state = engine.residents[pid].state
    assert tick["revision"] == state.revision
    want = engine.rules.balances_at(state, tick["server_time"])
    got = [tick["balances"][k] for k in engine.rules.tier_keys]
    for g, w in zip(got, want, strict=True):
        assert math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-9), (pid, g, w)


async def test_each_farm_gets_one_tick_per_interval_at_its_phase_with_exact_balances(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    phases = 10
    async with engine_with_farms(tmp_path, clock, tick=False, tick_slices=phases) as (engine, sinks):
        for sink in sinks.values():
            sink.messages.clear()
        start = clock.now
        rounds = 4
        for r in range(rounds):
            for phase in range(phases):
                clock.now = start + r + (phase + 1) / phases
                engine.ticker.run_phase(phase, phases)
                # A farm of a later phase acts between two phases: its next tick
                # carries the new state (checked by its sink as it is sent).
                if r == 1 and phase == 4:
                    await engine.submit("p05", Shear(7))
        seen_phases = set()
        for pid, sink in sinks.items():
            ticks = sink.ticks()
            assert len(ticks) == rounds, pid  # one per interval, none doubled, none skipped
            row = engine.residents[pid].row
            phase = row % phases
            seen_phases.add(phase)
            times = [t["server_time"] for t in ticks]
            # its phase's instant, then exactly one interval apart
            assert math.isclose(times[0], start + (phase + 1) / phases, abs_tol=1e-6), pid
            for a, b in itertools.pairwise(times):
                assert math.isclose(b - a, 1.0, abs_tol=1e-6), (pid, times)
            assert sink.checked == rounds
        assert seen_phases == set(range(phases))  # 25 farms in rows 0..24 fill every phase
        # p05's state changed between its ticks: each tick matched the state of its time
        p05 = sinks["p05"].ticks()
        assert p05[0]["revision"] < p05[1]["revision"] == engine.residents["p05"].state.revision


async def test_the_running_loop_spreads_ticks_over_the_interval_and_keeps_each_farms_rate(tmp_path: Path) -> None:
    interval = 0.2
    async with engine_with_farms(tmp_path, time.time, tick=True, tick_interval_s=interval, tick_slices=4) as (
        _engine,
        sinks,
    ):
        for sink in sinks.values():
            sink.messages.clear()
        deadline = time.monotonic() + 30.0
        while not all(len(s.ticks()) >= 6 for s in sinks.values()):
            assert time.monotonic() < deadline, "ticks stopped"
            await asyncio.sleep(0.01)
        instants = set()
        for pid, sink in sinks.items():
            ticks = sink.ticks()
            times = [t["server_time"] for t in ticks]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            # one tick per interval: never two in one interval, none skipped (jitter allowed)
            assert all(interval * 0.5 < g < interval * 1.5 for g in gaps), (pid, gaps)
            assert math.isclose(sum(gaps) / len(gaps), interval, rel_tol=0.25), (pid, gaps)
            assert sink.checked == len(ticks)
            instants.add(round(times[-1], 6))
        # the farms' latest ticks went out at several instants (their phases), not one
        assert len(instants) >= 2


async def test_a_live_event_boundary_between_phases_reaches_each_farms_next_tick(tmp_path: Path) -> None:
    """Balances are re-anchored at the boundary's own instant, and the first tick of
    each farm after it carries the new rates, whichever phase comes first."""
    rules = load_rules()  # its own: the schedule is the rules' (RULES is shared by other tests)
    boundary = T0 + 99.45  # between phase 3 (.4) and phase 4 (.5) of the second round
    clock = FakeClock(T0)
    phases = 10
    async with engine_with_farms(tmp_path, clock, tick=False, rules=rules, tick_slices=phases) as (engine, sinks):
        engine.live_events.apply([LiveEvent("d", "double", 2.0, None, boundary, T0 + 500)])
        base_rate = rules.rates(engine.residents["p00"].state)[0]
        assert base_rate > 0
        for sink in sinks.values():
            sink.messages.clear()
        start = T0 + 98
        for r in range(3):
            for phase in range(phases):
                clock.now = start + r + (phase + 1) / phases
                engine.ticker.run_phase(phase, phases)
        for pid, sink in sinks.items():
            ticks = sink.ticks()
            assert len(ticks) == 3 and sink.checked == 3, pid  # balances exact across the boundary
            first_after = next(t for t in ticks if t["server_time"] > boundary)
            assert "rates" in first_after, (pid, [(t["server_time"] - T0, "rates" in t) for t in ticks])
            assert first_after["rates"]["basic"] == 2 * base_rate, (pid, first_after)
            # before the boundary the rates were sent once (the farm's first tick), and not again
            assert "rates" not in ticks[1] or ticks[1] is first_after, pid
            assert all("rates" not in t for t in ticks if t["server_time"] > first_after["server_time"]), pid
