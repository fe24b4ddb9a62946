"""The event-loop lag watch: a callback held up on the loop shows in the histogram."""

from __future__ import annotations

import asyncio
import gc
import time

from llamawool.observability import Metrics, watch_gc, watch_loop_lag


def lag(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(f"llamawool_event_loop_lag_seconds_{name}")
    return float(value or 0.0)


async def test_a_blocked_event_loop_is_measured_as_lag() -> None:
    metrics = Metrics()
    watch = asyncio.create_task(watch_loop_lag(metrics, every_s=0.01))
    try:
        while lag(metrics, "count") < 1:  # the watch is running
            await asyncio.sleep(0.005)
        quiet = lag(metrics, "sum")
        seen = lag(metrics, "count")

        time.sleep(0.2)  # what a long synchronous callback does to everything else on the loop

        while lag(metrics, "count") < seen + 1:
            await asyncio.sleep(0.005)
        assert lag(metrics, "sum") - quiet >= 0.15
        under_100ms = metrics.registry.get_sample_value("llamawool_event_loop_lag_seconds_bucket", {"le": "0.1"})
        assert lag(metrics, "count") - float(under_100ms or 0) >= 1, "the long wait lands above the 0.1 s bucket"
        # ... and is the longest of the last 10 s
        assert (metrics.registry.get_sample_value("llamawool_event_loop_lag_max_seconds") or 0.0) >= 0.15
    finally:
        watch.cancel()


def test_garbage_collections_are_timed_by_generation() -> None:
    metrics = Metrics()
    undo = watch_gc(metrics)
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        undo()
    gc.collect(2)  # after the undo: not counted

    def count(generation: str) -> float:
        value = metrics.registry.get_sample_value("llamawool_gc_pause_seconds_count", {"generation": generation})
        return float(value or 0.0)

    assert count("2") == 1
    assert count("0") >= 1
    assert (metrics.registry.get_sample_value("llamawool_gc_pause_seconds_sum", {"generation": "2"}) or 0) > 0


def test_serve_tunes_the_collector_for_a_long_running_process() -> None:
    from llamawool.cli import tune_gc
    from llamawool.settings import Settings

    saved = gc.get_threshold()
    try:
        tune_gc(Settings(env="test", gc_young_threshold=12_345))
        assert gc.get_threshold() == (12_345, 10, 10)
        assert gc.get_freeze_count() > 0, "what exists at start-up is frozen"
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
