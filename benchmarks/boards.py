"""The leaderboard feed's push at N connected farms: its wall time, the longest
stretch it holds the event loop, and its Redis round trips, in-process and
with a real redis-server as the coordinator.

`python -m benchmarks.boards [--quick] [--profile]`

The engine is `benchmarks.tick.build_engine` (every farm online and connected,
producing), on uvloop as the server runs. The feed pushes `FULL_PUSH_EVERY`
times, the clock moving `leaderboard_push_s` between pushes: the first push
finds the boards empty (every score new), the steady ones follow time moving
(every online farm's lifetime and weekly scores changed, and ranks moved with
them), the last is the periodic full push (every score sent again, changed or
not). With Redis, the feed's coordinator is the one the app would open
(`open_coordinator` with `redis_uri`, metrics bound) on a fresh redis-server;
in-process, the embedded one (boards in memory, written to SQLite in a
thread). The rest of the engine stays as built (only the feed is measured).

A probe task sleeps 1 ms in a loop and records how late it wakes: its worst
lateness during a push is the longest stretch the push held the loop (plus
timer granularity, about 1 ms). Right after each push the probe runs as long
again with nothing else to do: that "idle hold" is the machine's own noise
meanwhile (a shared machine preempts the process now and then).
Round trips are the coordinator's own counters
(`llamawool_redis_round_trips_total`, every purpose).

Goal (issue 14): max event-loop lag during a board push at 10,000 connected
farms <= 20 ms, in-process and with Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import uvloop

from llamawool.cli import tune_gc
from llamawool.coord import ScoreUpdate, open_coordinator
from llamawool.engine.boards import FULL_PUSH_EVERY
from llamawool.engine.engine import Engine
from llamawool.observability import configure_logging
from llamawool.settings import Settings
from tests.redis_server import RedisServer

from .common import Workdir, finish, print_table, round_floats
from .tick import build_engine

GOAL_LAG_MS = 20.0
NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class LagProbe:
    """Sleeps `period` in a loop; `worst` is its latest wake-up since `reset`, and
    `worst_gc` the longest garbage collection meanwhile (it stops everything)."""

    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.worst = 0.0
        self.worst_gc = 0.0
        self._gc_began = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        gc.callbacks.append(self._gc)

    async def stop(self) -> None:
        gc.callbacks.remove(self._gc)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def reset(self) -> None:
        self.worst = 0.0
        self.worst_gc = 0.0

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_began = time.perf_counter()
        else:
            self.worst_gc = max(self.worst_gc, time.perf_counter() - self._gc_began)

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.period)
            self.worst = max(self.worst, time.perf_counter() - t - self.period)


@dataclass
class Counting:
    """The feed's coordinator, counting what the feed asks of it."""

    inner: Any
    updates: int = 0
    ranks_calls: int = 0
    per_board: dict[str, int] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def push_scores(self, board: str, period: str, updates: list[ScoreUpdate]) -> None:
        self.updates += len(updates)
        await self.inner.push_scores(board, period, updates)

    async def ranks(self, board: str, period: str, player_ids: list[str]) -> Any:
        self.ranks_calls += 1
        return await self.inner.ranks(board, period, player_ids)


def trips(engine: Engine) -> float:
    registry = engine.metrics.registry
    total = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "llamawool_redis_round_trips_total":
                total += sample.value
    return total


@dataclass
class Push:
    kind: str
    wall_ms: float
    hold_ms: float
    gc_ms: float
    idle_hold_ms: float  # the probe's worst in a window as long as the push, right after it, with no push
    updates: int
    ranks_calls: int
    trips: float


async def run_pushes(engine: Engine, clock: Clock, pushes: int, profile: bool) -> list[Push]:
    feed = engine.boards
    counting = Counting(feed.coord)
    feed.coord = counting  # type: ignore[assignment]
    probe = LagProbe()
    probe.start()
    out: list[Push] = []
    profiler = None
    for i in range(1, pushes + 1):
        if i > 1:
            clock.now += feed.push_s
        kind = "first" if i == 1 else ("periodic full" if i % FULL_PUSH_EVERY == 0 else "steady")
        if profile and kind == "steady" and profiler is None:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005, async_mode="disabled")
            profiler.start()
        u0, r0, t0 = counting.updates, counting.ranks_calls, trips(engine)
        await asyncio.sleep(0.01)
        probe.reset()
        began = time.perf_counter()
        await feed.push()
        wall = time.perf_counter() - began
        await asyncio.sleep(0.005)  # the probe wakes once more: the push's last stretch counts
        if profiler is not None and profiler.is_running:
            profiler.stop()
        hold, gc_pause = probe.worst, probe.worst_gc
        # The same probe with nothing else running, as long: the machine's own noise meanwhile.
        probe.reset()
        await asyncio.sleep(wall + 0.005)
        idle = probe.worst
        out.append(
            Push(
                kind,
                wall * 1e3,
                hold * 1e3,
                gc_pause * 1e3,
                idle * 1e3,
                counting.updates - u0,
                counting.ranks_calls - r0,
                trips(engine) - t0,
            )
        )
    await probe.stop()
    feed.coord = counting.inner
    if profiler is not None:
        print(f"\npyinstrument: one steady push at {engine.table.size:,} farms")
        print(profiler.output_text(unicode=False, color=False, show_all=False))
    return out


async def with_coordinator(engine: Engine, settings: Settings, clock: Clock, pushes: int, profile: bool) -> list[Push]:
    coord = open_coordinator(settings, engine.rules.config.cache.leaderboardTTL)  # as create_app does
    coord.bind_metrics(engine.metrics)
    await coord.open()
    engine.boards.coord = coord
    try:
        return await run_pushes(engine, clock, pushes, profile)
    finally:
        await coord.close()


def measure(n: int, pushes: int, settings: Settings, profile: bool) -> list[Push]:
    engine, _ = build_engine(n, NOW)
    clock = Clock(NOW)
    engine.boards.clock = clock
    gc.collect()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(with_coordinator(engine, settings, clock, pushes, profile))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.boards")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2,000 farms")
    p.add_argument("--farms", type=int, help="connected farms (default 10,000; 2,000 with --quick)")
    p.add_argument("--profile", action="store_true", help="pyinstrument over one steady push (each coordinator)")
    a = p.parse_args(argv)
    configure_logging("warning", "console", "bench")
    tune_gc(Settings())  # the server's collector settings (farms loaded later are not frozen, as there)
    n = a.farms or (2_000 if a.quick else 10_000)
    pushes = FULL_PUSH_EVERY
    results: dict[str, list[Push]] = {}
    with Workdir("boards") as work:
        # embedded mode: the boards in memory, written to SQLite beside the data (a thread)
        results["in-process"] = measure(n, pushes, Settings(data_dir=work), a.profile)
    redis = RedisServer().start()
    try:
        results["redis"] = measure(n, pushes, Settings(redis_uri=redis.url), a.profile)
    finally:
        redis.stop()
        redis.cleanup()
    rows = []
    figures: dict[str, Any] = {"farms": n, "pushes": pushes, "full_push_every": FULL_PUSH_EVERY}
    for coord, runs in results.items():
        for kind in ("first", "steady", "periodic full"):
            some = [r for r in runs if r.kind == kind]
            if not some:
                continue
            walls = [r.wall_ms for r in some]
            rows.append(
                [
                    coord,
                    kind,
                    len(some),
                    n,
                    statistics.median(walls),
                    max(walls),
                    max(r.hold_ms for r in some),
                    max(r.gc_ms for r in some),
                    statistics.median(r.updates for r in some),
                    statistics.median(r.ranks_calls for r in some),
                    statistics.median(r.trips for r in some) if coord == "redis" else "-",
                    max(r.idle_hold_ms for r in some),
                ]
            )
        figures[coord] = {
            "wall_ms": [round(r.wall_ms, 1) for r in runs],
            "max_loop_hold_ms": [round(r.hold_ms, 2) for r in runs],
            "longest_gc_ms": [round(r.gc_ms, 2) for r in runs],
            "worst_loop_hold_ms": max(r.hold_ms for r in runs),
            "steady_wall_ms_median": statistics.median(r.wall_ms for r in runs if r.kind == "steady"),
            "updates": [r.updates for r in runs],
            "ranks_calls": [r.ranks_calls for r in runs],
            "round_trips": [r.trips for r in runs],
            "idle_hold_ms": [round(r.idle_hold_ms, 2) for r in runs],
        }
    print_table(
        f"boards: BoardFeed.push() at {n:,} connected farms, {pushes} pushes {feed_note()}",
        [
            "coordinator",
            "push",
            "pushes",
            "farms",
            "wall ms (median)",
            "wall ms (max)",
            "max loop hold ms",
            "longest gc ms",
            "score updates",
            "ranks calls",
            "redis round trips",
            "idle hold ms",
        ],
        rows,
    )
    print(
        "\n(max loop hold = the probe's worst lateness during the pushes of that kind; longest gc = the longest "
        "garbage collection during them (part of the hold when it happens); idle hold = the probe's worst in "
        "windows as long with no push; score updates = entries sent to push_scores over the four boards; "
        "round trips = every Redis round trip the push made)"
    )
    goals = {
        f"max_loop_lag_le_{GOAL_LAG_MS:g}ms_at_{n}_{coord.replace('-', '_')}": figures[coord]["worst_loop_hold_ms"]
        <= GOAL_LAG_MS
        for coord in results
    }
    return finish("boards", a.quick, round_floats(figures), goals)


def feed_note() -> str:
    return f"(first: empty boards; steady: the clock moved leaderboard_push_s; every {FULL_PUSH_EVERY}th: full)"


if __name__ == "__main__":
    sys.exit(main())
