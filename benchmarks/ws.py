"""N concurrent WebSocket players on one server process receiving 1 Hz ticks,
against a bare aiohttp broadcaster sending the same payload sizes to the same
number of clients.

`python -m benchmarks.ws [--quick | --full]`   (1k, 5k, 10k; 20k with --full)

The load generator is another process (benchmarks.common loadgen): uvloop and a
minimal WebSocket client on raw asyncio protocols (the handshake, then frames
parsed by slicing; no library). Its own CPU is measured over each window: it
is not the bottleneck while it stays well under one core (the table prints it).

Per step: players connect (seeded accounts whose farms were offline for a day,
so each connection loads its farm and credits the absence), then a window of
ticks is measured. Tick lateness = the instant the generator read the tick
minus the tick's `server_time` (same machine, same clock). Server CPU is the
server process's CPU seconds over the window; RSS per connection is the growth
of the server's RSS from before the first connection, divided by connections.
Throughput per core = messages delivered per second / server CPU fraction
(what one fully busy core would push); the goal compares it with the bare
broadcaster's.

Goals (issue 6): 10,000 players at 1 Hz on one process with p99 lateness
<= 250 ms, >= 0.7 of the bare broadcaster's throughput, <= 50 KiB RSS per
connection.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .common import (
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
            **m,
        }
        out.append(rec)
        print(
            f"  {label} n={n}: open={open_n} p99={m['lateness_p99_ms']:.1f} ms msgs/s={m['messages_per_s']:.0f} "
            f"cpu={cpu:.2f} loadgen_cpu={m['loadgen_cpu']:.2f} worst per tick (ms): {m['tick_spread_ms']}",
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
    g.add_argument("--full", action="store_true", help="also 20,000 players")
    p.add_argument("--profile", type=Path, help="py-spy the servers at the largest step; stacks to this folder")
    p.add_argument("--steps", help="comma-separated player counts (overrides the mode's)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds between connecting and measuring")
    a = p.parse_args(argv)
    limit = raise_nofile(65536)
    if a.quick:
        steps, window = [200], 3.0
    elif a.full:
        steps, window = [1_000, 5_000, 10_000, 20_000], 10.0
    else:
        steps, window = [1_000, 5_000, 10_000], 10.0
    if a.steps:
        steps = [int(x) for x in a.steps.split(",")]
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
    if limit < steps[-1] + 1000:
        print(f"warning: open-file limit {limit} is below {steps[-1]} sockets", file=sys.stderr)
    with Workdir("ws") as work:
        ids = seed_players(work / "server", steps[-1])
        tokens = access_tokens(ids)
        config = bench_config(work)
        env = {"LLAMAWOOL_TICK_INTERVAL_S": "1"}
        with LoadGenProcess() as gen:
            with Server(work / "server", env=env, config=config) as server:
                server.start()
                ours = run_steps("llamawool", server, gen, steps, tokens, "127.0.0.2", window, a.profile, a.settle)
            payload = int(max((r["mean_tick_bytes"] for r in ours), default=300)) or 300
            with bare_server(
                work / "bare", "bare-broadcast", "--interval", "1", "--payload-bytes", str(payload)
            ) as bare:
                bare.start()
                base = run_steps("bare", bare, gen, steps, [""] * steps[-1], "127.0.0.3", window, a.profile, a.settle)
    rows = []
    figures: dict[str, Any] = {"window_s": window, "tick_payload_bytes": payload}
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
            "messages_per_s": o["messages_per_s"],
            "server_cpu": o["server_cpu"],
            "per_core_msgs_per_s": o["per_core_msgs_per_s"],
            "rss_kib_per_conn": o["rss_kib_per_conn"],
            "loadgen_cpu": o["loadgen_cpu"],
            "bare_lateness_p99_ms": b["lateness_p99_ms"],
            "bare_messages_per_s": b["messages_per_s"],
            "bare_server_cpu": b["server_cpu"],
            "bare_per_core_msgs_per_s": b["per_core_msgs_per_s"],
            "bare_rss_kib_per_conn": b["rss_kib_per_conn"],
            "per_core_throughput_vs_bare": ratio,
        }
    print_table(
        f"ws: players receiving 1 Hz ticks, {window:.0f} s window per step ({'quick' if a.quick else 'full'})",
        [
            "server",
            "players",
            "open",
            "late p50 ms",
            "late p99 ms",
            "late max ms",
            "msgs/s",
            "server CPU",
            "msgs/s per core",
            "RSS MiB",
            "RSS KiB/conn",
            "loadgen CPU",
        ],
        rows,
    )
    goal_n = GOAL_N if GOAL_N in steps else steps[-1]
    f = figures[f"n{goal_n}"]
    print(
        f"\nat {goal_n:,} players: per-core throughput {f['per_core_throughput_vs_bare']:.2f}x the bare broadcaster; "
        f"load generator CPU {f['loadgen_cpu']:.2f} of a core"
    )
    if a.profile:
        for label in ("llamawool", "bare"):
            print(f"\nprofile of {label} at {steps[-1]:,} players:")
            print(summarize_profile(a.profile / f"ws-{label}-{steps[-1]}.txt"))
            print(f"\nprofile of {label} while {steps[-1]:,} players connect:")
            print(summarize_profile(a.profile / f"ws-{label}-{steps[-1]}-connect.txt"))
    goals = {
        f"p99_lateness_le_250ms_at_{goal_n}": f["open"] == goal_n and f["lateness_p99_ms"] <= 250.0,
        f"throughput_ge_0.7_of_bare_at_{goal_n}": f["per_core_throughput_vs_bare"] >= 0.7,
        f"rss_le_50kib_per_conn_at_{goal_n}": f["rss_kib_per_conn"] <= 50.0,
        "loadgen_not_bottleneck": all(r["loadgen_cpu"] < 0.8 for r in ours + base),
    }
    return finish("ws", a.quick, round_floats(figures), goals)


if __name__ == "__main__":
    sys.exit(main())
