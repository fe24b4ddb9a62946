"""N concurrent WebSocket players on one server process receiving 1 Hz ticks,
against a bare aiohttp broadcaster sending the same payload sizes to the same
number of clients.

`python -m benchmarks.ws [--quick | --full] [--with-redis]`
(1k, 5k, 10k; with --full also the most sockets the open-file limit allows,
19,976 under a limit of 20,000: each process keeps 24 descriptors for itself;
19,960 with --with-redis, whose 16 Redis connections take descriptors too)

With `--with-redis` the server runs with a real redis-server (started here, on
a free port) as its coordinator: leases, presence and the boards' feed go
through Redis, as on a cluster.

The load generator is another process (benchmarks.common loadgen): uvloop and a
minimal WebSocket client on raw asyncio protocols (the handshake, then frames
parsed by slicing; no library). Its own CPU is measured over each window: it
is not the bottleneck while it stays well under one core (the table prints it).

Per step: players connect (seeded accounts whose farms were offline for a day,
so each connection loads its farm and credits the absence), then a window of
ticks is measured. Tick lateness = the instant the generator read the tick
minus the tick's `server_time` (same machine, same clock). Inter-arrival
deviation = |gap between a socket's consecutive ticks - 1000 ms| (the figure
Colyseus' measurement uses: a farm's ticks must stay evenly spaced). Event-loop
lag max = the longest lag of the server's event-loop probe (every 5 ms) over
the 10 s up to the window's end (`llamawool_event_loop_lag_max_seconds`; the
bare broadcaster runs the same probe). Server CPU is the server process's CPU
seconds over the window; RSS per connection is the growth of the server's RSS
from before the first connection, divided by connections. Throughput per core
= messages delivered per second / server CPU fraction (what one fully busy
core would push); the goal compares it with the bare broadcaster's.

Goals (issue 14), at the most sockets the open-file limit allows (19,976
here): p99 lateness <= 250 ms and <= 1.0x the bare broadcaster's p99 at the
same step; at 10,000: p99 <= 100 ms; per-core throughput >= 0.7x the bare
broadcaster's at 10,000 and at the largest step; <= 20 KiB RSS per socket.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .common import (
    LAG_SAMPLE_S,
    LoadGenProcess,
    Server,
    Workdir,
    access_tokens,
    bare_server,
    bench_config,
    finish,
    print_table,
    raise_nofile,
    round_floats,
    seed_players,
    start_profile,
    summarize_profile,
)

GOAL_N = 10_000
FD_RESERVE = 24  # descriptors each process keeps for itself (files, pipes, the listener)
REDIS_POOL = 16  # the server's Redis connections with --with-redis (descriptors the sockets can't have)
SCRAPE_ROOM = 8  # sockets closed after the last window at the open-file limit, so the lag can be read
_LAG_MAX = re.compile(rb"^llamawool_event_loop_lag_max_seconds ([0-9.e+-]+)$", re.MULTILINE)


def loop_lag_max_ms(server: Server, label: str) -> float:
    """The server's longest event-loop lag over the last 10 s."""
    if label == "bare":
        with urllib.request.urlopen(server.url + "/lag", timeout=10) as resp:  # noqa: S310 - loopback
            return float(json.loads(resp.read())["max_s"]) * 1e3
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as resp:  # noqa: S310 - loopback
        m = _LAG_MAX.search(resp.read())
    return float(m.group(1)) * 1e3 if m else float("nan")


@contextlib.contextmanager
def coordinator(with_redis: bool, work: Path) -> Iterator[dict[str, str]]:
    """The server's environment for its coordinator: in-process, or a real redis-server."""
    if not with_redis:
        yield {}
        return
    from tests.redis_server import RedisServer

    redis = RedisServer(work_dir=work / "redis").start()
    try:
        yield {"LLAMAWOOL_REDIS_URI": redis.url, "LLAMAWOOL_REDIS_POOL_SIZE": str(REDIS_POOL)}
    finally:
        redis.stop()


def run_steps(
    label: str,
    server: Server,
    gen: LoadGenProcess,
    steps: list[int],
    tokens: list[str],
    local_addr: str,
    window_s: float,
    profile: Path | None = None,
    settle_s: float = 2.0,
    limit: int = 65536,
    reserve_extra: int = 0,
) -> list[dict[str, Any]]:
    assert server.stats is not None
    time.sleep(1.0)
    rss0 = server.stats.rss()
    out = []
    have = 0
    for n in steps:
        spy = None
        if profile is not None and n == steps[-1]:
            assert server.proc is not None
            spy = start_profile(server.proc.pid, 600, profile / f"ws-{label}-{n}-connect.txt")
            time.sleep(0.5)
        conn = gen.call("connect", url=server.ws_url, tokens=tokens[have:n], local_addr=local_addr, concurrency=256)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        have = n
        time.sleep(settle_s)  # settle: the connection burst's commits and first ticks
        spy = None
        if profile is not None and n == steps[-1]:
            assert server.proc is not None
            spy = start_profile(server.proc.pid, window_s, profile / f"ws-{label}-{n}.txt")
        server.stats.start()
        m = gen.call("measure", seconds=window_s)
        if spy is not None:
            spy.wait()
        cpu = server.stats.cpu_fraction()
        rss = server.stats.rss()
        if n + FD_RESERVE >= limit - reserve_extra:
            # The server has no descriptor left for the scrape: a few sockets go first.
            gen.call("close", n=SCRAPE_ROOM)
            have -= SCRAPE_ROOM
        lag_ms = loop_lag_max_ms(server, label)
        open_n = m["open"]
        rec = {
            "label": label,
            "n": n,
            "open": open_n,
            "connect_s": conn["seconds"],
            "connect_failed": conn["failed"],
            "server_cpu": cpu,
            "rss_mib": rss / 2**20,
            "rss_kib_per_conn": (rss - rss0) / 1024 / max(1, open_n),
            "per_core_msgs_per_s": m["messages_per_s"] / cpu if cpu > 0 else float("nan"),
            "loop_lag_max_ms": lag_ms,
            **m,
        }
        out.append(rec)
        print(
            f"  {label} n={n}: open={open_n} p99={m['lateness_p99_ms']:.1f} ms msgs/s={m['messages_per_s']:.0f} "
            f"cpu={cpu:.2f} loop lag max={lag_ms:.1f} ms loadgen_cpu={m['loadgen_cpu']:.2f} "
            f"worst per tick (ms): {m['tick_spread_ms']}",
            file=sys.stderr,
            flush=True,
        )
    gen.call("close")
    return out


def _prev(recs: list[dict[str, Any]], r: dict[str, Any]) -> int | None:
    i = recs.index(r)
    return recs[i - 1]["n"] if i else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ws")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="a smoke run: 200 players, a short window")
    g.add_argument("--full", action="store_true", help="also the most players the open-file limit allows (20,000)")
    p.add_argument("--with-redis", action="store_true", help="the server coordinates through a real redis-server")
    p.add_argument("--profile", type=Path, help="py-spy the servers at the largest step; stacks to this folder")
    p.add_argument("--steps", help="comma-separated player counts (overrides the mode's)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds between connecting and measuring")
    a = p.parse_args(argv)
    limit = raise_nofile(65536)
    reserve = FD_RESERVE + (REDIS_POOL if a.with_redis else 0)
    most = min(20_000, limit - reserve)
    if a.quick:
        steps, window = [200], 3.0
    elif a.full:
        steps, window = [1_000, 5_000, 10_000, most], 10.0
    else:
        steps, window = [1_000, 5_000, 10_000], 10.0
    if a.steps:
        steps = [int(x) for x in a.steps.split(",")]
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
    if limit < steps[-1] + reserve:
        print(f"warning: open-file limit {limit} is below {steps[-1]} sockets", file=sys.stderr)
    with Workdir("ws") as work:
        ids = seed_players(work / "server", steps[-1])
        tokens = access_tokens(ids)
        config = bench_config(work)
        env = {"LLAMAWOOL_TICK_INTERVAL_S": "1", "LLAMAWOOL_LOOP_LAG_SAMPLE_S": str(LAG_SAMPLE_S)}
        with LoadGenProcess() as gen, coordinator(a.with_redis, work) as coord_env:
            with Server(work / "server", env={**env, **coord_env}, config=config) as server:
                server.start()
                ours = run_steps(
                    "llamawool",
                    server,
                    gen,
                    steps,
                    tokens,
                    "127.0.0.2",
                    window,
                    a.profile,
                    a.settle,
                    limit,
                    reserve - FD_RESERVE,
                )
            payload = int(max((r["mean_tick_bytes"] for r in ours), default=300)) or 300
            with bare_server(
                work / "bare", "bare-broadcast", "--interval", "1", "--payload-bytes", str(payload)
            ) as bare:
                bare.start()
                base = run_steps(
                    "bare", bare, gen, steps, [""] * steps[-1], "127.0.0.3", window, a.profile, a.settle, limit
                )
    rows = []
    figures: dict[str, Any] = {
        "window_s": window,
        "tick_payload_bytes": payload,
        "coordination": "redis" if a.with_redis else "in-process",
        "open_file_limit": limit,
    }
    for o, b in zip(ours, base, strict=True):
        ratio = o["per_core_msgs_per_s"] / b["per_core_msgs_per_s"] if b["per_core_msgs_per_s"] else float("nan")
        for r in (o, b):
            rows.append(
                [
                    r["label"],
                    r["n"],
                    r["open"],
                    r["lateness_p50_ms"],
                    r["lateness_p99_ms"],
                    r["lateness_max_ms"],
                    r["interarrival_dev_p99_ms"],
                    r["loop_lag_max_ms"],
                    r["messages_per_s"],
                    r["server_cpu"],
                    r["per_core_msgs_per_s"],
                    r["rss_mib"],
                    r["rss_kib_per_conn"],
                    r["loadgen_cpu"],
                ]
            )
        figures[f"n{o['n']}"] = {
            "open": o["open"],
            "connect_s": o["connect_s"],
            "connects_per_s": (o["n"] - prev) / o["connect_s"] if (prev := _prev(ours, o)) is not None else None,
            "lateness_p50_ms": o["lateness_p50_ms"],
            "lateness_p99_ms": o["lateness_p99_ms"],
            "lateness_max_ms": o["lateness_max_ms"],
            "interarrival_dev_p99_ms": o["interarrival_dev_p99_ms"],
            "loop_lag_max_ms": o["loop_lag_max_ms"],
            "messages_per_s": o["messages_per_s"],
            "server_cpu": o["server_cpu"],
            "per_core_msgs_per_s": o["per_core_msgs_per_s"],
            "rss_kib_per_conn": o["rss_kib_per_conn"],
            "loadgen_cpu": o["loadgen_cpu"],
            "bare_lateness_p50_ms": b["lateness_p50_ms"],
            "bare_lateness_p99_ms": b["lateness_p99_ms"],
            "bare_lateness_max_ms": b["lateness_max_ms"],
            "bare_interarrival_dev_p99_ms": b["interarrival_dev_p99_ms"],
            "bare_loop_lag_max_ms": b["loop_lag_max_ms"],
            "bare_messages_per_s": b["messages_per_s"],
            "bare_server_cpu": b["server_cpu"],
            "bare_per_core_msgs_per_s": b["per_core_msgs_per_s"],
            "bare_rss_kib_per_conn": b["rss_kib_per_conn"],
            "per_core_throughput_vs_bare": ratio,
        }
    print_table(
        f"ws: players receiving 1 Hz ticks, {window:.0f} s window per step ({'quick' if a.quick else 'full'}; "
        f"coordination {figures['coordination']}; open-file limit {limit:,})",
        [
            "server",
            "players",
            "open",
            "late p50 ms",
            "late p99 ms",
            "late max ms",
            "gap dev p99 ms",
            "loop lag max ms",
            "msgs/s",
            "server CPU",
            "msgs/s per core",
            "RSS MiB",
            "RSS KiB/conn",
            "loadgen CPU",
        ],
        rows,
    )
    top = steps[-1]
    mid = GOAL_N if GOAL_N in steps else top
    f, g = figures[f"n{top}"], figures[f"n{mid}"]
    for n in sorted({mid, top}):
        h = figures[f"n{n}"]
        print(
            f"\nat {n:,} players ({h['open']:,} sockets open): p99 lateness {h['lateness_p99_ms']:.1f} ms "
            f"({h['lateness_p99_ms'] / h['bare_lateness_p99_ms']:.2f}x the bare broadcaster's), per-core throughput "
            f"{h['per_core_throughput_vs_bare']:.2f}x the bare broadcaster's, {h['rss_kib_per_conn']:.1f} KiB RSS "
            f"per socket, event-loop lag max {h['loop_lag_max_ms']:.1f} ms; load generator CPU "
            f"{h['loadgen_cpu']:.2f} of a core"
        )
    if a.profile:
        for label in ("llamawool", "bare"):
            print(f"\nprofile of {label} at {steps[-1]:,} players:")
            print(summarize_profile(a.profile / f"ws-{label}-{steps[-1]}.txt"))
            print(f"\nprofile of {label} while {steps[-1]:,} players connect:")
            print(summarize_profile(a.profile / f"ws-{label}-{steps[-1]}-connect.txt"))
    goals = {
        f"p99_lateness_le_250ms_at_{top}": f["open"] == top and f["lateness_p99_ms"] <= 250.0,
        f"p99_lateness_le_1x_bare_at_{top}": f["lateness_p99_ms"] <= f["bare_lateness_p99_ms"],
        f"p99_lateness_le_100ms_at_{mid}": g["open"] == mid and g["lateness_p99_ms"] <= 100.0,
        f"throughput_ge_0.7_of_bare_at_{mid}": g["per_core_throughput_vs_bare"] >= 0.7,
        f"throughput_ge_0.7_of_bare_at_{top}": f["per_core_throughput_vs_bare"] >= 0.7,
        f"rss_le_20kib_per_socket_at_{top}": f["rss_kib_per_conn"] <= 20.0,
        "loadgen_not_bottleneck": all(r["loadgen_cpu"] < 0.8 for r in ours + base),
    }
    return finish("ws", a.quick, round_floats(figures), goals)


if __name__ == "__main__":
    sys.exit(main())
