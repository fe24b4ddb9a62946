"""Soak: many simulated players (REST + WebSocket) on one server process for a
long time, watching for leaks and slow-downs (issue 8, item 5).

`python -m benchmarks.soak [--quick] [--players N] [--minutes M] [--sample-s S]`

Full (`make soak`): 2,000 players for 30 minutes, sampled every minute.
Quick (`make soak-quick`, part of `make test`): 200 players for 60 s, sampled
every 10 s.

Each player is a seeded account (farm with barns and a large balance) holding
one WebSocket (welcome, then a tick every second) and acting every
`--interval-s` seconds on average: GET /farm, a shear or a barn purchase over
REST (with an Idempotency-Key), or a shear over its WebSocket. A socket that
closes reconnects (and counts as an error).

Every sample reads the server's own /metrics (process_resident_memory_bytes
and process_open_fds from prometheus_client's ProcessCollector,
llamawool_asyncio_tasks, websocket_connections_active) and the p99 latency
of the actions answered since the previous sample. To tell where latency
comes from, each sample also shows the p99 since the previous sample of the
server's HTTP, group-commit, tick and event-loop-lag histograms (bucket upper
bounds) and the load generator's own worst event-loop lag. The first sample(s) are
warm-up (players joining, caches filling) and are left out; of the rest, the
median of the last third is compared with the median of the first third.

Goals: growth of RSS, open files, asyncio tasks and p99 latency <= 5 % (for
the p99, growth within 2 ms counts as none: a few milliseconds are scheduler
noise on shared cores); no error (5xx, unexpected status, connection error,
WebSocket close or error message). Quick mode fails on errors only; full mode
fails on any missed goal. Prints a table and one JSON line (benchmarks.common).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from .common import (
    Server,
    Workdir,
    access_tokens,
    bench_config,
    finish,
    percentile,
    print_table,
    raise_nofile,
    round_floats,
    seed_players,
)

API = "/api/v1"
GROWTH_LIMIT = 0.05
P99_NOISE_S = 0.002
WATCHED = ("rss_mib", "open_fds", "asyncio_tasks", "p99_ms")


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)  # since the last sample
    requests: int = 0
    ws_actions: int = 0
    refused: int = 0  # 409/429: the game said no (cannot afford, bucket empty); not an error
    ticks: int = 0
    reconnects: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class Player:
    def __init__(self, url: str, token: str, stats: Stats) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.stats = stats
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.pending: dict[str, tuple[float, asyncio.Future[dict[str, Any]]]] = {}

    async def socket(self, s: aiohttp.ClientSession, stop: asyncio.Event, joined: asyncio.Event) -> None:
        ws_url = self.url.replace("http", "ws") + API + "/ws"
        first = True
        while not stop.is_set():
            try:
                async with s.ws_connect(ws_url, headers=self.headers, heartbeat=30, max_msg_size=1 << 20) as ws:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        data = msg.data
                        if data.startswith('{"type":"tick"'):
                            self.stats.ticks += 1
                            continue
                        m = msg.json()
                        if m["type"] == "welcome":
                            self.ws = ws
                            if first:
                                first = False
                                joined.set()
                        elif m["type"] in ("result", "error"):
                            sent, fut = self.pending.pop(str(m.get("id")), (0.0, None))
                            if fut is not None and not fut.done():
                                fut.set_result(m)
                        if stop.is_set():
                            break
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                if not stop.is_set():
                    self.stats.error(f"ws {type(exc).__name__}")
            self.ws = None
            if not stop.is_set():
                self.stats.error(f"ws closed {ws.close_code if 'ws' in locals() else '?'}")
                self.stats.reconnects += 1
                await asyncio.sleep(1.0)

    async def rest(self, s: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> None:
        headers = self.headers if method == "GET" else {**self.headers, "Idempotency-Key": uuid.uuid4().hex}
        t0 = time.perf_counter()
        try:
            async with s.request(method, self.url + API + path, json=body, headers=headers) as r:
                await r.read()
                status = r.status
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            self.stats.error(f"{path} {type(exc).__name__}")
            return
        self.stats.latencies.append(time.perf_counter() - t0)
        self.stats.requests += 1
        if status in (409, 429):
            self.stats.refused += 1
        elif status != 200:
            self.stats.error(f"{path} {status}")

    async def ws_shear(self) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            return
        mid = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        t0 = time.perf_counter()
        self.pending[mid] = (t0, fut)
        try:
            await ws.send_json({"type": "action", "id": mid, "data": {"action": "shear", "count": 1}})
            async with asyncio.timeout(10):
                m = await fut
        except (TimeoutError, aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            self.pending.pop(mid, None)
            self.stats.error(f"ws action {type(exc).__name__}")
            return
        self.stats.latencies.append(time.perf_counter() - t0)
        self.stats.ws_actions += 1
        if m["type"] == "error":
            if m["data"].get("code") in ("NOTHING_TO_SHEAR", "INSUFFICIENT_RESOURCES", "RATE_LIMITED"):
                self.stats.refused += 1
            else:
                self.stats.error(f"ws error {m['data'].get('code')}")

    async def play(self, s: aiohttp.ClientSession, stop: asyncio.Event, interval_s: float) -> None:
        await asyncio.sleep(random.uniform(0, interval_s))
        while not stop.is_set():
            roll = random.random()
            if roll < 0.35:
                await self.rest(s, "GET", "/farm")
            elif roll < 0.65:
                await self.rest(s, "POST", "/farm/shear", {"count": 1})
            elif roll < 0.85:
                await self.rest(s, "POST", "/farm/buildings/barn/purchase", {"quantity": 1})
            else:
                await self.ws_shear()
            await asyncio.sleep(random.uniform(0.5, 1.5) * interval_s)


HISTOGRAMS = {
    "http_request_duration_seconds": "srv_http",
    "llamawool_store_commit_duration_seconds": "srv_commit",
    "llamawool_tick_duration_seconds": "srv_tick",
    "llamawool_event_loop_lag_seconds": "srv_lag",
    "llamawool_gc_pause_seconds": "srv_gc",
}


def parse_histograms(text: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts of the server's histograms, summed over their labels."""
    out: dict[str, dict[float, float]] = {short: {} for short in HISTOGRAMS.values()}
    for family in text_string_to_metric_families(text):
        short = HISTOGRAMS.get(family.name)
        if short is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                out[short][le] = out[short].get(le, 0.0) + sample.value
    return out


def bucket_quantile(now: dict[float, float], before: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding quantile `q` of what was observed between
    two scrapes (Prometheus's histogram_quantile without the interpolation)."""
    delta = sorted((le, n - before.get(le, 0.0)) for le, n in now.items())
    total = delta[-1][1] if delta else 0.0
    if total <= 0:
        return 0.0
    for le, n in delta:
        if n >= q * total:
            return le
    return float("inf")


def bucket_max(now: dict[float, float], before: dict[float, float]) -> float:
    """The upper bound of the highest bucket that gained an observation between two scrapes."""
    delta = sorted((le, n - before.get(le, 0.0)) for le, n in now.items())
    highest = 0.0
    below = 0.0
    for le, n in delta:
        if n > below:
            highest = le
        below = n
    return highest


async def watch_lag(lags: list[float], stop: asyncio.Event, every_s: float = 0.25) -> None:
    """The load generator's own event-loop lag: a slow client inflates every latency it measures."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        asked = loop.time() + every_s
        await asyncio.sleep(every_s)
        lags.append(max(0.0, loop.time() - asked))


def parse_metrics(text: str) -> dict[str, float]:
    wanted = {
        "process_resident_memory_bytes": "rss",
        "process_open_fds": "open_fds",
        "llamawool_asyncio_tasks": "asyncio_tasks",
        "websocket_connections_active": "ws_active",
    }
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out


def growth(samples: list[dict[str, Any]], key: str) -> float:
    """Median of the last third over the median of the first third, minus one."""
    values = [float(x[key]) for x in samples]
    third = max(1, len(values) // 3)
    first, last = statistics.median(values[:third]), statistics.median(values[-third:])
    return (last - first) / first if first else 0.0


async def soak(url: str, tokens: list[str], args: argparse.Namespace, server: Server) -> dict[str, Any]:
    stats = Stats()
    stop = asyncio.Event()
    players = [Player(url, t, stats) for t in tokens]
    conn = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    samples: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s:
        joined = [asyncio.Event() for _ in players]
        tasks = []
        for i, p in enumerate(players):
            tasks.append(asyncio.create_task(p.socket(s, stop, joined[i])))
            if i % 50 == 49:
                await asyncio.sleep(0.05)  # a gentle ramp: 1,000 sockets a second
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in joined)), 120)
        gc.freeze()  # every player's socket and session: out of the generator's full collections
        tasks += [asyncio.create_task(p.play(s, stop, args.interval_s)) for p in players]
        started = time.monotonic()
        stats.latencies.clear()
        client_lags: list[float] = []
        tasks.append(asyncio.create_task(watch_lag(client_lags, stop)))
        async with s.get(url + "/metrics") as r:
            hist_before = parse_histograms(await r.text())
        n = 0
        while True:
            n += 1
            await asyncio.sleep(max(0.0, started + n * args.sample_s - time.monotonic()))
            lat, stats.latencies = stats.latencies, []
            lags, client_lags[:] = list(client_lags), []
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            m = parse_metrics(text)
            hist = parse_histograms(text)
            server_p99 = {f"{k}_p99_ms": 1000 * bucket_quantile(hist[k], hist_before[k], 0.99) for k in hist}
            server_p99["srv_gc_max_ms"] = 1000 * bucket_max(hist["srv_gc"], hist_before["srv_gc"])
            # one slow group commit (an fsync the host held up) delays every action in it, yet
            # hides below the commits' p99: the slowest one is shown too
            server_p99["srv_commit_max_ms"] = 1000 * bucket_max(hist["srv_commit"], hist_before["srv_commit"])
            hist_before = hist
            psutil_fds = server.stats.proc.num_fds() if server.stats else -1
            samples.append(
                {
                    "t_s": round(time.monotonic() - started),
                    "rss_mib": round(m["rss"] / 2**20, 1),
                    "open_fds": int(m["open_fds"]),
                    "psutil_fds": psutil_fds,
                    "asyncio_tasks": int(m["asyncio_tasks"]),
                    "ws_active": int(m["ws_active"]),
                    "answered": len(lat),
                    "p50_ms": round(1000 * percentile(lat, 50), 2),
                    "p99_ms": round(1000 * percentile(lat, 99), 2),
                    "max_ms": round(1000 * max(lat, default=0.0), 1),
                    # where the time goes: the server's own histograms (bucket bounds) and the client's loop
                    **server_p99,
                    "client_lag_max_ms": round(1000 * max(lags, default=0.0), 1),
                    "errors": sum(stats.errors.values()),
                }
            )
            print(
                "  sample " + " ".join(f"{k}={v}" for k, v in samples[-1].items()),
                flush=True,
            )
            if time.monotonic() - started >= args.duration_s - 0.5:
                break
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"stats": stats, "samples": samples}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 players for 60 s, samples every 10 s")
    ap.add_argument("--players", type=int)
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--sample-s", type=float)
    ap.add_argument("--interval-s", type=float, default=10.0, help="mean seconds between one player's actions")
    ap.add_argument("--warmup-samples", type=int)
    args = ap.parse_args(argv)
    quick = args.quick
    args.players = args.players or (200 if quick else 2000)
    args.duration_s = 60 * (args.minutes or (1.0 if quick else 30.0))
    args.sample_s = args.sample_s or (10.0 if quick else 60.0)
    if args.warmup_samples is None:
        args.warmup_samples = 1 if quick or args.duration_s < 600 else 2
    if quick and args.interval_s == 10.0:
        args.interval_s = 2.0
    raise_nofile(65536)
    # The load generator is one Python process holding every socket: the same garbage-collector
    # tuning as the server's (llamawool.cli.tune_gc), so its own pauses do not pass for the server's.
    gc.set_threshold(50_000, 10, 10)

    with Workdir("soak") as work:
        ids = seed_players(work / "data", args.players, balance=1e15, barns=10, offline_for_s=3600.0)
        tokens = access_tokens(ids, ttl_s=int(args.duration_s) + 3600)
        config = bench_config(work)
        env = {"LLAMAWOOL_ACCESS_TOKEN_TTL_S": str(int(args.duration_s) + 3600)}
        with Server(work / "data", config=config, env=env) as server:
            server.start()
            print(
                f"soak: {args.players} players (REST + WebSocket), {args.duration_s:.0f} s, "
                f"a sample every {args.sample_s:.0f} s, one action per player every ~{args.interval_s:g} s",
                flush=True,
            )
            out = asyncio.run(soak(server.url, tokens, args, server))
            alive = server.proc is not None and server.proc.poll() is None
            log_errors = [line for line in server.tail(200).splitlines() if '"level": "error"' in line]

    stats: Stats = out["stats"]
    samples: list[dict[str, Any]] = out["samples"]
    print_table(
        f"soak: {args.players} players, samples every {args.sample_s:g} s (the first {args.warmup_samples} warm-up)",
        list(samples[0].keys()),
        [list(x.values()) for x in samples],
    )
    steady = samples[args.warmup_samples :]
    trend = {k: growth(steady, k) for k in WATCHED}
    p99_first = statistics.median([x["p99_ms"] for x in steady[: max(1, len(steady) // 3)]])
    p99_last = statistics.median([x["p99_ms"] for x in steady[-max(1, len(steady) // 3) :]])
    goals = {f"{k}_growth_le_5pct": trend[k] <= GROWTH_LIMIT for k in ("rss_mib", "open_fds", "asyncio_tasks")}
    goals["p99_growth_le_5pct"] = trend["p99_ms"] <= GROWTH_LIMIT or p99_last - p99_first <= 1000 * P99_NOISE_S
    goals["no_error"] = not stats.errors and alive and not log_errors
    figures = {
        "players": args.players,
        "duration_s": args.duration_s,
        "sample_s": args.sample_s,
        "samples": len(samples),
        "warmup_samples": args.warmup_samples,
        "requests": stats.requests,
        "ws_actions": stats.ws_actions,
        "refused_409_429": stats.refused,
        "ticks_received": stats.ticks,
        "reconnects": stats.reconnects,
        "errors": stats.errors,
        "server_error_log_lines": len(log_errors),
        "server_alive": alive,
        "growth_last_vs_first_third": trend,
        "first": steady[0] if steady else {},
        "last": steady[-1] if steady else {},
    }
    code = finish("soak", quick, round_floats(figures), goals)
    if quick and not goals["no_error"]:
        return 1  # quick mode proves the run is clean; a trend over 60 s is only reported
    return code


if __name__ == "__main__":
    sys.exit(main())
