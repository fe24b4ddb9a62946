"""The cluster under load (issue 13): P players behaving like the web client
against 1, 2 and 3 replicas (MongoDB-wire store + Redis coordination) behind
nginx, and against ONE embedded process (SQLite, local coordination) behind
the same nginx as the baseline, all in one run on this machine.

`python -m benchmarks.cluster [--quick]`

Full (`make bench`): 2,000 players, 60 s windows, embedded + 1, 2, 3 replicas.
Quick (`make bench-quick`, part of `make test`): 100 players, 4 s windows,
embedded + 1, 2 replicas; never fails on a goal, only on a crash.

Per configuration: the players sign in (`POST /auth/guest`), load their farm
(`GET /farm`) and open a socket (benchmarks/cluster_players.py); the shears
start (one per player every ~10 s, over REST); after a settling pause one
window is measured. Its first half the shears carry an Idempotency-Key (as the
web client's do), its second half none: store round trips per action are
given for both. Figures:

- tick delivery: ticks received whose server_time is in the window / (sockets
  open at its start x window seconds at 1 Hz); lateness = arrival - server_time;
- actions: the shears sent in the window (latency p50/p99; 503 + Retry-After is
  load shed, counted apart from errors);
- CPU per 1,000 players: cores used over the window (psutil) by the replicas,
  redis-server, the store (SecantusDB), nginx, and the load generator itself;
- store round trips and Redis commands: the replicas' own counters
  (`llamawool_store_ops_total`, `llamawool_redis_commands_total`; "n/a" when
  the replicas do not export them), and from the servers' side SecantusDB's
  serverStatus opcounters and Redis `INFO commandstats` (every command Redis
  ran, the ones inside Lua scripts included), read before and after; "per
  shear" divides every store op of the half-window (autosaves included) by the
  shears answered 200 in it, "per connection" those of the GET /farm + socket
  phase by the sockets opened, "per player-second" by sockets x seconds;
- remote-watched sockets: `llamawool_remote_watched_sockets` when exported,
  else estimated: the replica the socket landed on (nginx's X-Upstream on the
  handshake) is not the replica holding the farm's lease (`lease:<farm>`).

The 2-replica configuration then runs the elasticity test: a third replica
starts and is added to nginx (config rewrite + `nginx -s reload`); its share
of sockets and of leases is printed every 10 s for 60 s. Last, the capacity
model those figures imply, and the goals (issue 13), met or missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.cluster import Cluster, Nginx
from tests.helpers import ServerProcess
from tests.redis_server import RedisServer

from . import cluster_meters as meters
from .cluster_players import Crowd
from .common import JWT_SECRET, LOAD_TEST_LIMITS, Workdir, finish, fmt, print_table, raise_nofile, round_floats

# ASSUMPTION (not measured here: SecantusDB's throughput says nothing about MongoDB's): a MongoDB
# primary on dedicated hardware with SSDs serves about 10,000 single-document operations per
# second with journaled majority writes. Change it to your own primary's measured figure.
MONGO_PRIMARY_OPS_PER_S = 10_000.0
GOAL_PLAYERS = 2_000
GENERATOR_LAG_LIMIT_MS = 250.0  # above it, the generator (not only the servers) delays what it measures


@dataclass
class Plan:
    players: int
    replicas: list[int]  # 0: the embedded baseline
    window_s: float
    settle_s: float
    sign_in_timeout_s: float  # players not signed in by then never connect (the table counts them)
    connect_timeout_s: float
    elastic_s: float
    elastic_every_s: float
    redis_bench_requests: int
    concurrency: int = 64


QUICK = Plan(
    players=100,
    replicas=[0, 1, 2],
    window_s=4.0,
    settle_s=2.0,
    sign_in_timeout_s=30.0,
    connect_timeout_s=30.0,
    elastic_s=6.0,
    elastic_every_s=3.0,
    redis_bench_requests=20_000,
)
FULL = Plan(
    players=GOAL_PLAYERS,
    replicas=[0, 1, 2, 3],
    window_s=60.0,
    settle_s=10.0,
    sign_in_timeout_s=75.0,
    connect_timeout_s=45.0,
    elastic_s=60.0,
    elastic_every_s=10.0,
    redis_bench_requests=100_000,
)
REPLICA_ENV = {**LOAD_TEST_LIMITS, "LLAMAWOOL_LOG_LEVEL": "info", "LLAMAWOOL_TICK_INTERVAL_S": "1"}
NGINX = {"worker_connections": 16384, "name_upstream": True}


class Embedded:
    """The baseline: one `llamawool serve` on SQLite with local coordination, behind nginx."""

    def __init__(self, work: Path) -> None:
        env = {**REPLICA_ENV, "LLAMAWOOL_JWT_SECRET": JWT_SECRET}
        self.replicas = [ServerProcess(work / "embedded", env=env)]
        self.nginx: Nginx | None = None
        self.redis = None
        self.mongo = None

    def start(self) -> Embedded:
        self.replicas[0].start()
        self.nginx = Nginx(self.replicas[0].data_dir / "nginx", [self.replicas[0].port], **NGINX).start()
        return self

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        self.replicas[0].kill()


def _pid(proc: Any) -> list[int]:
    return [proc.pid] if proc is not None and proc.poll() is None else []


class Readings:
    """Snapshots of every counter the benchmark differences."""

    def __init__(self, system: Cluster | Embedded) -> None:
        self.system = system

    def take(self) -> dict[str, Any]:
        s = self.system
        return {
            "at": time.perf_counter(),
            "metrics": meters.scrape(s.replicas),
            "redis": meters.redis_commandstats(s.redis.url) if s.redis is not None else None,
            "store": meters.store_opcounters(s.mongo.uri) if s.mongo is not None else None,
        }

    def cpu(self) -> meters.CpuMeter:
        s = self.system
        return meters.CpuMeter(
            {
                "replicas": lambda: [p for r in s.replicas for p in _pid(r.proc)],
                "redis": lambda: _pid(s.redis.proc) if s.redis is not None else [],
                "store": lambda: _pid(s.mongo.proc) if s.mongo is not None else [],
                "nginx": lambda: s.nginx.pids() if s.nginx is not None else [],
                "loadgen": lambda: [os.getpid()],
            }
        )


def _store_ops(a: dict[str, Any], b: dict[str, Any]) -> tuple[float | None, float | None]:
    """(the replicas' own count, SecantusDB's opcounters) of store round trips between two readings."""
    own = meters.metric_delta(a["metrics"], b["metrics"], meters.STORE_OPS)
    seen = b["store"] - a["store"] if a["store"] is not None and b["store"] is not None else None
    return own, seen


def _per(x: float | None, n: float) -> float | None:
    return x / n if x is not None and n > 0 else None


async def run_configuration(replicas: int, plan: Plan, work: Path) -> dict[str, Any]:
    label = "embedded" if replicas == 0 else f"{replicas} replica{'s' if replicas > 1 else ''}"
    print(f"\n== {label}: starting", file=sys.stderr, flush=True)
    system: Cluster | Embedded
    if replicas == 0:
        system = Embedded(work)
    else:
        (work / f"cluster-{replicas}").mkdir()
        system = Cluster(work / f"cluster-{replicas}", replicas=replicas, env=REPLICA_ENV, nginx_options=NGINX)
    started = time.monotonic()
    await asyncio.to_thread(system.start)
    print(f"   up in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    rec: dict[str, Any] = {"label": label, "replicas": replicas}
    try:
        readings = Readings(system)
        async with Crowd(system.url, plan.players, run=f"{replicas}-{int(time.time())}") as crowd:
            deadline = time.monotonic() + plan.sign_in_timeout_s
            r0 = await asyncio.to_thread(readings.take)
            cpu = readings.cpu()
            cpu.start()
            signed = await crowd.sign_in(plan.concurrency, deadline)
            rec["sign_in_cores"] = cpu.stop()
            r1 = await asyncio.to_thread(readings.take)
            conn = await crowd.connect(plan.concurrency, time.monotonic() + plan.connect_timeout_s)
            r2 = await asyncio.to_thread(readings.take)
            print(f"   signed in {signed}; connected {conn}", file=sys.stderr, flush=True)
            rec |= {
                "players": plan.players,
                "signed_in": signed["signed_in"],
                "sign_in_s": signed["seconds"],
                "connect_s": conn["seconds"],
                "join_s": signed["seconds"] + conn["seconds"],
                "never_connected": plan.players - conn["connected"],
                "join_failures": {**signed["failures"], **conn["failures"]},
            }
            own, seen = _store_ops(r0, r1)
            rec["store_per_sign_in"] = _per(own, signed["signed_in"])
            rec["store_seen_per_sign_in"] = _per(seen, signed["signed_in"])
            own, seen = _store_ops(r1, r2)
            rec["store_per_connection"] = _per(own, conn["connected"])
            rec["store_seen_per_connection"] = _per(seen, conn["connected"])

            crowd.play()
            await asyncio.sleep(plan.settle_s)
            rec |= await measure(crowd, readings, plan)
            rec["remote_watched"], rec["remote_watched_source"] = await asyncio.to_thread(remote_watched, system, crowd)
            if replicas == 2 and isinstance(system, Cluster):
                rec["elasticity"] = await elasticity(system, crowd, plan)
    finally:
        stopping = time.monotonic()
        await asyncio.to_thread(system.stop)
        print(f"   stopped in {time.monotonic() - stopping:.1f} s", file=sys.stderr, flush=True)
    return rec


async def measure(crowd: Crowd, readings: Readings, plan: Plan) -> dict[str, Any]:
    """One window: keyed shears the first half, un-keyed the second; CPU over all of it."""
    half = plan.window_s / 2
    cpu = readings.cpu()
    crowd.keyed = True
    a = await asyncio.to_thread(readings.take)
    done0 = dict(crowd.answered)
    cpu.start()
    window = asyncio.create_task(crowd.window(plan.window_s, grace_s=min(3.0, plan.window_s / 2)))
    await asyncio.sleep(half)
    crowd.keyed = False
    b = await asyncio.to_thread(readings.take)
    done1 = dict(crowd.answered)
    await asyncio.sleep(max(0.0, plan.window_s - (time.perf_counter() - a["at"])))
    cores = cpu.stop()
    c = await asyncio.to_thread(readings.take)
    done2 = dict(crowd.answered)
    w = await window
    crowd.keyed = True
    out = w.summary()
    out["load1"] = os.getloadavg()[0]
    players = out["sockets"]
    k = players / 1000.0
    out["cpu_cores"] = cores
    out["cpu_per_1k"] = {name: v / k if k else float("nan") for name, v in cores.items()}
    keyed = done1[True] - done0[True]
    unkeyed = done2[False] - done1[False]
    own, seen = _store_ops(a, b)
    out["store_per_keyed_action"], out["store_seen_per_keyed_action"] = _per(own, keyed), _per(seen, keyed)
    own, seen = _store_ops(b, c)
    out["store_per_unkeyed_action"], out["store_seen_per_unkeyed_action"] = _per(own, unkeyed), _per(seen, unkeyed)
    player_s = players * (c["at"] - a["at"])
    own, seen = _store_ops(a, c)
    out["store_per_player_s"], out["store_seen_per_player_s"] = _per(own, player_s), _per(seen, player_s)
    out["store_ops_by_op"] = meters.metric_by_label(a["metrics"], c["metrics"], meters.STORE_OPS)
    own_redis = meters.metric_delta(a["metrics"], c["metrics"], meters.REDIS_COMMANDS)
    out["redis_per_player_s"] = _per(own_redis, player_s)
    out["redis_by_purpose"] = meters.metric_by_label(a["metrics"], c["metrics"], meters.REDIS_COMMANDS)
    if a["redis"] is not None and c["redis"] is not None:
        by_cmd = meters.commands_delta(a["redis"], c["redis"])
        out["redis_seen_per_player_s"] = _per(float(sum(by_cmd.values())), player_s)
        out["redis_seen_by_command"] = dict(sorted(by_cmd.items(), key=lambda kv: -kv[1]))
    else:
        out["redis_seen_per_player_s"] = None
    return out


def remote_watched(system: Cluster | Embedded, crowd: Crowd) -> tuple[float | None, str]:
    """Share of open sockets whose farm is leased by another replica than the socket's."""
    if isinstance(system, Embedded):
        return 0.0, "one process"
    gauge = meters.gauge(meters.scrape(system.replicas), meters.REMOTE_WATCHED)
    open_n = sum(crowd.sockets_by_replica().values())
    if gauge is not None:
        return (gauge / open_n if open_n else None), "metric"
    ports = meters.replica_ids(system.replicas)
    connected = [p for p in crowd.players if p.socket is not None and not p.socket.closed]
    if not connected:
        return None, "no socket open"
    if not ports or any(p.replica_port is None for p in connected):
        return None, "unknown: no replica ids in the logs or no X-Upstream"
    owners = meters.lease_owners(system.redis.url, [p.player_id for p in connected])
    remote = sum(1 for p, o in zip(connected, owners, strict=True) if ports.get(o or "") != p.replica_port)
    return remote / len(connected), "estimate"


async def elasticity(cluster: Cluster, crowd: Crowd, plan: Plan) -> list[dict[str, Any]]:
    """A third replica joins under load: its share of sockets and leases over time."""
    print("   elasticity: adding a replica", file=sys.stderr, flush=True)
    booting = time.monotonic()
    new = await asyncio.to_thread(cluster.add_replica)
    started = time.monotonic()  # the clock starts when nginx sends it connections
    print(f"   its boot took {started - booting:.1f} s", file=sys.stderr, flush=True)
    ids = meters.replica_ids([new])
    new_id = next(iter(ids), None)
    rows = []
    t = 0.0
    while t < plan.elastic_s:
        t = min(plan.elastic_s, t + plan.elastic_every_s)
        await asyncio.sleep(max(0.0, started + t - time.monotonic()))
        by_replica = crowd.sockets_by_replica()
        open_n = sum(by_replica.values())
        players = [p.player_id for p in crowd.players if p.player_id]
        owners = await asyncio.to_thread(meters.lease_owners, cluster.redis.url, players)
        leased = [o for o in owners if o]
        rows.append(
            {
                "t_s": t,
                "sockets": open_n,
                "socket_share": by_replica.get(new.port, 0) / open_n if open_n else 0.0,
                "leases": len(leased),
                "lease_share": sum(1 for o in leased if o == new_id) / len(leased) if leased else 0.0,
            }
        )
    return rows


# ---- printing --------------------------------------------------------------------------------


def _cell(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else fmt(x, digits)


def print_results(recs: list[dict[str, Any]], plan: Plan, mode: str) -> None:
    def row(name: str, get: Any) -> list[str]:
        return [name, *(_cell(get(r)) for r in recs)]

    def pct(x: float | None) -> str:
        return "n/a" if x is None or x != x else f"{100 * x:.2f} %"

    headers = ["", *(("embedded, 1 process" if r["replicas"] == 0 else r["label"]) for r in recs)]
    rows = [
        row("players connected / asked", lambda r: f"{r['sockets']:,} / {r['players']:,}"),
        row(f"time to sign everyone in (s; at most {plan.sign_in_timeout_s:.0f})", lambda r: r["sign_in_s"]),
        row(
            f"time to connect everyone: GET /farm + socket (s; at most {plan.connect_timeout_s:.0f})",
            lambda r: r["connect_s"],
        ),
        row("never connected", lambda r: r["never_connected"]),
        [
            "cores busy while signing in: replicas / redis / store / nginx",
            *(" / ".join(fmt(r["sign_in_cores"][k], 2) for k in ("replicas", "redis", "store", "nginx")) for r in recs),
        ],
        row("tick delivery (received / expected at 1 Hz)", lambda r: _cell(r["tick_delivery"], 4)),
        row("tick lateness p99 (ms)", lambda r: r["lateness_p99_ms"]),
        row("shears in the window", lambda r: r["actions"]),
        row("shear latency p50 / p99 (ms)", lambda r: f"{fmt(r['action_p50_ms'])} / {fmt(r['action_p99_ms'])}"),
        row("shear errors", lambda r: r["action_errors"]),
        row("503 with Retry-After (shed, not errors)", lambda r: r["actions_shed_503"]),
        row("sockets closed in the window", lambda r: r["socket_closes"]),
        row("CPU per 1k players: replicas", lambda r: r["cpu_per_1k"]["replicas"]),
        row("CPU per 1k players: redis", lambda r: r["cpu_per_1k"]["redis"] if r["replicas"] else None),
        row("CPU per 1k players: store (SecantusDB)", lambda r: r["cpu_per_1k"]["store"] if r["replicas"] else None),
        row("CPU per 1k players: nginx", lambda r: r["cpu_per_1k"]["nginx"]),
        row("load generator CPU (cores)", lambda r: r["cpu_cores"]["loadgen"]),
        row(
            "load generator event-loop lag p99 / max (ms)",
            lambda r: f"{fmt(r['loop_lag_p99_ms'])} / {fmt(r['loop_lag_max_ms'])}",
        ),
        row("machine load average (1 min) after the window", lambda r: r["load1"]),
        row("store round trips per keyed shear (own metric)", lambda r: r["store_per_keyed_action"]),
        row("store round trips per un-keyed shear (own metric)", lambda r: r["store_per_unkeyed_action"]),
        row("store round trips per connection (own metric)", lambda r: r["store_per_connection"]),
        row("store round trips per sign-in (own metric)", lambda r: r["store_per_sign_in"]),
        row("store ops per keyed shear (SecantusDB opcounters)", lambda r: r["store_seen_per_keyed_action"]),
        row("store ops per un-keyed shear (SecantusDB opcounters)", lambda r: r["store_seen_per_unkeyed_action"]),
        row("store ops per connection (SecantusDB opcounters)", lambda r: r["store_seen_per_connection"]),
        row("store ops per sign-in (SecantusDB opcounters)", lambda r: r["store_seen_per_sign_in"]),
        row("Redis commands per player-second (own metric)", lambda r: r["redis_per_player_s"]),
        row("Redis commands per player-second (INFO, scripts' included)", lambda r: r["redis_seen_per_player_s"]),
        [
            "remote-watched sockets",
            *(f"{pct(r['remote_watched'])} ({r['remote_watched_source']})" for r in recs),
        ],
    ]
    print_table(
        f"cluster: {plan.players:,} players like the web client, {plan.window_s:.0f} s window per configuration "
        f"({mode}; everything on this machine, {os.cpu_count()} cores)",
        headers,
        [r[:1] + r[1:] for r in rows],
    )
    for r in recs:
        extra = []
        if r["action_error_kinds"]:
            extra.append(f"shear errors by kind {r['action_error_kinds']}")
        if r["join_failures"]:
            extra.append(f"join failures {r['join_failures']}")
        if r.get("redis_seen_by_command"):
            top = list(r["redis_seen_by_command"].items())[:8]
            extra.append("Redis commands in the window " + ", ".join(f"{k} {v:,}" for k, v in top))
        if r.get("redis_by_purpose"):
            extra.append(f"Redis commands by purpose {round_floats(r['redis_by_purpose'])}")
        if r.get("store_ops_by_op"):
            extra.append(f"store ops by op {round_floats(r['store_ops_by_op'])}")
        for line in extra:
            print(f"  {r['label']}: {line}")
    for r in recs:
        if "elasticity" in r:
            print_table(
                "elasticity: a third replica added to nginx under load (2 replicas serving); its share",
                ["t (s)", "sockets open", "its sockets", "leases held", "its leases"],
                [
                    [e["t_s"], e["sockets"], pct(e["socket_share"]), e["leases"], pct(e["lease_share"])]
                    for e in r["elasticity"]
                ],
            )
    sys.stdout.flush()


def capacity_model(recs: list[dict[str, Any]], redis_rates: dict[str, float]) -> dict[str, Any]:
    """Players per replica core, per Redis core and per MongoDB primary implied by the largest cluster run."""
    cluster = [r for r in recs if r["replicas"] > 0]
    r = max(cluster, key=lambda x: x["replicas"])
    players = r["sockets"]
    replica_cores = r["cpu_cores"]["replicas"]
    redis_cores = r["cpu_cores"]["redis"]
    per_player_s = r["redis_per_player_s"] if r["redis_per_player_s"] is not None else r["redis_seen_per_player_s"]
    redis_source = (
        "own metric" if r["redis_per_player_s"] is not None else "INFO commandstats, scripts' commands included"
    )
    store_rate = r["store_per_player_s"] if r["store_per_player_s"] is not None else r["store_seen_per_player_s"]
    store_source = "own metric" if r["store_per_player_s"] is not None else "SecantusDB opcounters"
    bench_rate = min(redis_rates.values()) if redis_rates else None
    model = {
        "from": r["label"],
        "players": players,
        "players_per_replica_core": players / replica_cores if replica_cores else None,
        "players_per_redis_core_measured": players / redis_cores if redis_cores else None,
        "redis_commands_per_player_s": per_player_s,
        "redis_benchmark_ops_per_s": bench_rate,
        "players_per_redis_core_modeled": bench_rate / per_player_s if bench_rate and per_player_s else None,
        "store_ops_per_player_s": store_rate,
        "mongo_primary_ops_per_s_assumed": MONGO_PRIMARY_OPS_PER_S,
        "players_per_mongo_primary": MONGO_PRIMARY_OPS_PER_S / store_rate if store_rate else None,
    }
    print(f"\ncapacity model (from the {r['label']} run, {players:,} players connected):")
    print(
        f"  replica: {_cell(model['players_per_replica_core'])} players per replica core "
        f"= {players:,} players / {replica_cores:.3f} cores the replicas used (psutil, this run)"
    )
    print(
        f"  Redis: {_cell(model['players_per_redis_core_modeled'])} players per Redis core "
        f"= {_cell(bench_rate)} ops/s (redis-benchmark -t get,set on this machine, this run; the slower of "
        f"{ {k: round(v) for k, v in redis_rates.items()} }) / {_cell(per_player_s)} commands per player-second "
        f"({redis_source}); measured directly: {_cell(model['players_per_redis_core_measured'])} players per "
        f"core ({redis_cores:.3f} cores used)"
    )
    print(
        f"  MongoDB primary: {_cell(model['players_per_mongo_primary'])} players per primary "
        f"= {MONGO_PRIMARY_OPS_PER_S:,.0f} ops/s ASSUMED (not measured: a primary on dedicated SSD hardware, "
        f"journaled majority writes; SecantusDB's speed says nothing about MongoDB's) / "
        f"{_cell(store_rate)} store round trips per player-second ({store_source})"
    )
    return model


def judge(recs: list[dict[str, Any]], plan: Plan) -> dict[str, bool]:
    by = {r["replicas"]: r for r in recs}
    goals: dict[str, bool] = {}
    n = plan.players
    lines = []

    def goal(name: str, met: bool, detail: str) -> None:
        goals[name] = met
        lines.append(f"  {'met   ' if met else 'MISSED'} {name}: {detail}")

    for k in (2, 3):
        r = by.get(k)
        if r is None:
            continue
        met = r["sockets"] == n and r["tick_delivery"] >= 0.999 and r["action_errors"] == 0
        goal(
            f"ticks_ge_99.9pct_and_0_errors_at_{n}_with_{k}_replicas",
            met,
            f"{r['sockets']:,}/{n:,} connected, delivery {_cell(r['tick_delivery'], 4)} "
            f"(x{_cell(r['tick_delivery'] / 0.999, 4)} of 0.999), {r['action_errors']} errors",
        )
    if 1 in by and 2 in by:
        one, two = by[1]["cpu_per_1k"]["replicas"], by[2]["cpu_per_1k"]["replicas"]
        ratio = two / one if one else float("inf")
        goal("cpu_per_1k_2_replicas_le_1.2x_1_replica", ratio <= 1.2, f"{two:.3f} / {one:.3f} = {ratio:.2f}x (<= 1.2x)")
    for k in (2, 3):
        r = by.get(k)
        if r is None:
            continue
        x = r["remote_watched"]
        goal(
            f"remote_watched_le_5pct_with_{k}_replicas",
            x is not None and x <= 0.05,
            f"{'n/a' if x is None else f'{100 * x:.1f} %'} ({r['remote_watched_source']}) after "
            f"{plan.settle_s + plan.window_s:.0f} s (<= 5 %)",
        )
    el = by.get(2, {}).get("elasticity")
    if el:
        last = el[-1]
        goal(
            "added_replica_ge_25pct_sockets_and_farms_in_60s",
            last["socket_share"] >= 0.25 and last["lease_share"] >= 0.25,
            f"after {last['t_s']:.0f} s: {100 * last['socket_share']:.1f} % of sockets, "
            f"{100 * last['lease_share']:.1f} % of leases (>= 25 %)",
        )
    cluster = [r for r in recs if r["replicas"] > 0]
    store = [r["store_per_unkeyed_action"] for r in cluster]
    src = "own metric"
    if any(x is None for x in store):
        store, src = [r["store_seen_per_unkeyed_action"] for r in cluster], "SecantusDB opcounters (no own metric)"
    worst = max((x for x in store if x is not None), default=None)
    goal(
        "store_round_trips_per_unkeyed_action_le_1",
        worst is not None and worst <= 1.0,
        f"worst {_cell(worst)} ({src}; all store ops in the half-window / shears answered 200 in it) (<= 1)",
    )
    redis = [r["redis_per_player_s"] for r in cluster]
    src = "own metric"
    if any(x is None for x in redis):
        redis, src = [r["redis_seen_per_player_s"] for r in cluster], "INFO commandstats (no own metric)"
    worst = max((x for x in redis if x is not None), default=None)
    goal(
        "redis_commands_per_player_s_le_0.5",
        worst is not None and worst <= 0.5,
        f"worst {_cell(worst)} ({src}) (<= 0.5)",
    )
    print(f"\ngoals (issue 13) at {n:,} players:")
    print("\n".join(lines))
    for r in recs:
        if r["loop_lag_p99_ms"] > GENERATOR_LAG_LIMIT_MS:
            print(
                f"  WARNING {r['label']}: the load generator's own event loop lagged {r['loop_lag_p99_ms']:,.0f} ms "
                f"(p99; load average {r['load1']:.1f}): its tick lateness, shear latencies and timeouts include "
                "the generator's own delay, not only the servers'"
            )
    return goals


async def run(plan: Plan, work: Path) -> list[dict[str, Any]]:
    recs = []
    for replicas in plan.replicas:
        recs.append(await run_configuration(replicas, plan, work))
    return recs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster")
    p.add_argument("--quick", action="store_true", help="a smoke run: 100 players, short windows, 1 and 2 replicas")
    p.add_argument("--players", type=int, help="players per configuration (overrides the mode's)")
    a = p.parse_args(argv)
    plan = QUICK if a.quick else FULL
    if a.players:
        plan.players = a.players
    raise_nofile(65536)
    import uvloop

    with Workdir("cluster") as work:
        recs = uvloop.run(run(plan, work))
        redis = RedisServer(work_dir=work / "redis-benchmark").start()
        try:
            rates = meters.redis_benchmark(redis.port, plan.redis_bench_requests)
        finally:
            redis.stop()
    print_results(recs, plan, "quick" if a.quick else "full")
    model = capacity_model(recs, rates)
    goals = judge(recs, plan)
    figures = {r["label"]: {k: v for k, v in r.items() if k not in ("label",)} for r in recs}
    figures["capacity_model"] = model
    figures["redis_benchmark"] = rates
    return finish("cluster", a.quick, round_floats(figures), goals)


if __name__ == "__main__":
    sys.exit(main())
