"""What `benchmarks.cluster` reads from the servers around a window: CPU per part
(psutil), each replica's /metrics, Redis `INFO commandstats` and the farms' leases,
the MongoDB-wire server's `serverStatus` op counters, `redis-benchmark`.

Every reading is a snapshot; a figure is the difference of two snapshots. A
metric a replica does not export (yet) reads as None and prints as "n/a".
"""

from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ServerProcess

# the servers' own cost counters (issue 13 item 1; read when a replica exports them)
STORE_OPS = "llamawool_store_ops_total"
REDIS_COMMANDS = "llamawool_redis_commands_total"
REMOTE_WATCHED = "llamawool_remote_watched_sockets"


class CpuMeter:
    """CPU seconds of groups of processes ('replicas', 'redis', ...) between start() and stop()."""

    def __init__(self, groups: dict[str, Callable[[], Sequence[int]]]) -> None:
        self.groups = groups
        self._t0 = 0.0
        self._c0: dict[str, dict[int, float]] = {}

    @staticmethod
    def _cpu(pids: Sequence[int]) -> dict[int, float]:
        out = {}
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                out[pid] = float(t.user + t.system)
            except psutil.Error:
                continue
        return out

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = {name: self._cpu(pids()) for name, pids in self.groups.items()}

    def stop(self) -> dict[str, float]:
        """Cores used per group (CPU seconds / wall seconds); a process that exited in between counts 0."""
        wall = time.perf_counter() - self._t0
        out = {}
        for name, pids in self.groups.items():
            now = self._cpu(pids())
            before = self._c0.get(name, {})
            out[name] = sum(c - before.get(pid, 0.0) for pid, c in now.items()) / wall
        return out


def scrape(replicas: Sequence[ServerProcess]) -> dict[str, dict[str, float]]:
    """Each replica's /metrics, summed over replicas: sample name -> {labels as text: value}."""
    out: dict[str, dict[str, float]] = {}
    for r in replicas:
        try:
            with urllib.request.urlopen(r.url + "/metrics", timeout=5) as resp:  # noqa: S310 - loopback
                text = resp.read().decode()
        except OSError:
            continue
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                by = out.setdefault(s.name, {})
                by[labels] = by.get(labels, 0.0) + float(s.value)
    return out


def metric_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], name: str) -> float | None:
    """The growth of a counter summed over its labels; None when the replicas do not export it."""
    if name not in after:
        return None
    return sum(after[name].values()) - sum(before.get(name, {}).values())


def metric_by_label(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], name: str
) -> dict[str, float]:
    grown = {k: v - before.get(name, {}).get(k, 0.0) for k, v in after.get(name, {}).items()}
    return {k: v for k, v in grown.items() if v}


def gauge(now: dict[str, dict[str, float]], name: str) -> float | None:
    return sum(now[name].values()) if name in now else None


def redis_commandstats(url: str) -> dict[str, int]:
    """Calls per command since Redis started (commands run inside scripts included)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def commands_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The window's commands by name, the meter's own INFO calls left out."""
    out = {k: v - before.get(k, 0) for k, v in after.items() if k != "info"}
    return {k: v for k, v in out.items() if v > 0}


def lease_owners(url: str, farm_ids: Sequence[str], prefix: str = "llamawool:") -> list[str | None]:
    """Which replica id holds each farm's lease (`lease:<farm>`, llamawool/coord/redis.py); None: nobody."""
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        out: list[str | None] = []
        for start in range(0, len(farm_ids), 1000):
            out.extend(client.mget([prefix + "lease:" + f for f in farm_ids[start : start + 1000]]))
        return out
    finally:
        client.close()


def replica_ids(replicas: Sequence[ServerProcess]) -> dict[str, int]:
    """Replica id -> port, from each replica's `server.started` log line."""
    out = {}
    for r in replicas:
        for line in r.logs():
            if line.get("event") == "server.started" and line.get("replica"):
                out[str(line["replica"])] = r.port
    return out


def store_opcounters(uri: str) -> int | None:
    """Operations the MongoDB-wire server has served (serverStatus opcounters, summed)."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, Any]] = MongoClient(uri, directConnection=True, serverSelectionTimeoutMS=2000)
    try:
        counters = client.admin.command("serverStatus").get("opcounters", {})
        return int(sum(int(v) for v in counters.values()))
    except PyMongoError:
        return None
    finally:
        client.close()


def redis_benchmark(port: int, requests: int) -> dict[str, float]:
    """`redis-benchmark -q -t get,set` on this machine: requests per second per command."""
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-q", "-n", str(requests), "-t", "get,set"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rates = {}
    for m in re.finditer(r"([A-Z]+): ([\d.]+) requests per second", out.replace("\r", "\n")):
        rates[m.group(1)] = float(m.group(2))
    return rates
