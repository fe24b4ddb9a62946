"""Start-up with many players stored, and the first use of a farm that was
offline for a day.

`python -m benchmarks.startup [--quick]`

The data folder is seeded with 100,000 players (10,000 with --quick), each with
a producing farm that went offline a day ago. Time to ready = from spawning
`python -m llamawool serve` to the first 200 from `/ready`; the baseline is
the same measure for a bare aiohttp process (interpreter and aiohttp start).

Load on first use: one client, one keep-alive connection, `GET /api/v1/farm`
for players not yet resident, one after another: each loads the farm from
SQLite, credits the day offline (closed form, capped by the offline rules),
commits that durably and answers the whole farm. The same players' second
request (resident now) and the bare handler's GET are printed beside it.

Goals (issue 6): ready <= 2 s with 100k players stored; first-use p99 <= 5 ms.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import time
from typing import Any

from .common import (
    Server,
    Workdir,
    access_tokens,
    bare_server,
    finish,
    percentile,
    print_table,
    round_floats,
    seed_players,
)


def timed_gets(port: int, paths: list[str], tokens: list[str | None]) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    try:
        for path, token in zip(paths, tokens, strict=True):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            t0 = time.perf_counter()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            out.append(time.perf_counter() - t0)
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: {resp.status} {body[:300]!r}")
    finally:
        conn.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.startup")
    p.add_argument("--quick", action="store_true", help="a smoke run: 10,000 players stored, fewer samples")
    a = p.parse_args(argv)
    stored = 10_000 if a.quick else 100_000
    starts = 1 if a.quick else 3
    loads = 100 if a.quick else 1_000
    with Workdir("startup") as work:
        t0 = time.perf_counter()
        ids = seed_players(work / "server", stored)
        seed_s = time.perf_counter() - t0
        db_mib = (work / "server" / "llamawool.sqlite3").stat().st_size / 2**20
        ready: list[float] = []
        bare_ready: list[float] = []
        first: list[float] = []
        again: list[float] = []
        bare_get: list[float] = []
        # Cold farms spread over the whole id range.
        chosen = ids[:: max(1, len(ids) // loads)][:loads]
        tokens: list[str | None] = list(access_tokens(chosen))
        for i in range(starts):
            with bare_server(work / "bare", "bare-json") as bare:
                bare_ready.append(bare.start())
                if i == starts - 1:
                    bare_get = timed_gets(bare.port, ["/echo/farm"] * loads, [None] * loads)
            with Server(work / "server") as server:
                ready.append(server.start())
                if i == starts - 1:
                    paths = ["/api/v1/farm"] * len(chosen)
                    first = timed_gets(server.port, paths, tokens)
                    again = timed_gets(server.port, paths, tokens)
    ms = 1e3
    rows: list[list[Any]] = [
        ["time to /ready, llamawool", starts, statistics.median(ready) * ms, min(ready) * ms, max(ready) * ms],
        [
            "time to /ready, bare aiohttp",
            starts,
            statistics.median(bare_ready) * ms,
            min(bare_ready) * ms,
            max(bare_ready) * ms,
        ],
    ]
    print_table(
        f"startup: {stored:,} players stored (SQLite file {db_mib:.0f} MiB, seeded in {seed_s:.1f} s)",
        ["measure", "runs", "median ms", "min ms", "max ms"],
        rows,
    )
    lat_rows = [
        [
            "GET /farm, first use after a day offline",
            len(first),
            *(percentile(first, q) * ms for q in (50, 90, 99)),
            max(first) * ms,
        ],
        [
            "GET /farm, same farms again (resident)",
            len(again),
            *(percentile(again, q) * ms for q in (50, 90, 99)),
            max(again) * ms,
        ],
        [
            "GET, bare aiohttp handler",
            len(bare_get),
            *(percentile(bare_get, q) * ms for q in (50, 90, 99)),
            max(bare_get) * ms,
        ],
    ]
    print_table(
        "load on first use (one client, sequential, keep-alive)",
        ["request", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        lat_rows,
    )
    figures = {
        "players_stored": stored,
        "ready_ms_median": statistics.median(ready) * ms,
        "ready_ms_max": max(ready) * ms,
        "bare_ready_ms_median": statistics.median(bare_ready) * ms,
        "first_use_p50_ms": percentile(first, 50) * ms,
        "first_use_p99_ms": percentile(first, 99) * ms,
        "resident_p99_ms": percentile(again, 99) * ms,
        "bare_get_p99_ms": percentile(bare_get, 99) * ms,
    }
    goals = {
        f"ready_le_2s_with_{stored}_players": max(ready) <= 2.0,
        "first_use_p99_le_5ms": figures["first_use_p99_ms"] <= 5.0,
    }
    return finish("startup", a.quick, round_floats(figures), goals)


if __name__ == "__main__":
    sys.exit(main())
