"""The cost budget, as the server counts it: store round trips and Redis commands
per action, per connection and per connected player-second.

`python -m benchmarks.costs [--quick] [--players N] [--seconds S]`

Servers run in this process (real HTTP and WebSockets on loopback) on their real
backends: SQLite with the in-process coordinator (embedded), and SecantusDB
(MongoDB wire) with redis-server, as one replica and as two (actions sent to the
replica that does not own the farm, which forwards them). The figures are the
server's own counters (`llamawool_store_ops_total`, `llamawool_redis_commands_total`,
`llamawool_redis_round_trips_total`, summed over replicas) and, for MongoDB, the
commands the driver sent (a command listener): deltas over each phase divided by
what the phase did. docs/scaling.md "Cost budget" quotes them as printed.

Goals (issue 13): store round trips per action without a key <= 1; a keyed action
no read before its commit; Redis commands per connected player-second <= 0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent

from llamawool.api import create_app
from llamawool.api.app import context
from llamawool.coord.redis import RedisCoordinator
from llamawool.observability import configure_logging
from llamawool.settings import Settings
from llamawool.store import MongoStore
from tests.mongo_server import SecantusServer
from tests.redis_server import RedisServer

from .common import Workdir, finish, print_table

API = "/api/v1"
COUNTERS = {
    "store": ("llamawool_store_ops_total", "op"),
    "redis": ("llamawool_redis_commands_total", "purpose"),
    "redis_trips": ("llamawool_redis_round_trips_total", "purpose"),
}


class WireCommands(CommandListener):
    """What the MongoDB driver sent, by command name: the real round trips."""

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()

    def started(self, event: CommandStartedEvent) -> None:
        self.sent[event.command_name] += 1

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


@dataclass
class Replica:
    server: TestServer
    wire: WireCommands | None

    @property
    def base(self) -> str:
        return str(self.server.make_url(API))

    def counts(self) -> dict[str, Counter[str]]:
        registry = context(self.server.app).metrics.registry
        out: dict[str, Counter[str]] = {}
        for kind, (name, label) in COUNTERS.items():
            found: Counter[str] = Counter()
            for family in registry.collect():
                for sample in family.samples:
                    if sample.name == name:
                        found[sample.labels[label]] += int(sample.value)
            out[kind] = found
        out["mongo"] = Counter(self.wire.sent) if self.wire else Counter()
        return out


@dataclass
class Cluster:
    name: str
    replicas: list[Replica]
    sent_to: int = 0  # the replica actions go to (1: the one not owning the farms)

    @asynccontextmanager
    async def quiet(self) -> AsyncIterator[None]:
        """No ticks, lease renewals or board pushes meanwhile: a phase's counts are its
        requests' own (the background is measured on its own, per player-second)."""
        engines = [context(r.server.app).engine for r in self.replicas]
        for engine in engines:
            await engine.ticker.stop()
            await engine.boards.stop()
        try:
            yield
        finally:
            for engine in engines:
                engine.ticker.start()
                engine.boards.start()

    def counts(self) -> dict[str, Counter[str]]:
        total: dict[str, Counter[str]] = {}
        for r in self.replicas:
            for kind, c in r.counts().items():
                total.setdefault(kind, Counter()).update(c)
        return total


@dataclass
class Row:
    config: str
    phase: str
    per: str
    units: int
    spent: dict[str, Counter[str]] = field(default_factory=dict)

    def per_unit(self, kind: str) -> float:
        return sum(self.spent.get(kind, Counter()).values()) / self.units

    def detail(self, kind: str) -> str:
        c = self.spent.get(kind, Counter())
        return " ".join(f"{k}={v / self.units:.3g}" for k, v in sorted(c.items()) if v) or "-"


def settings_for(work: Path, **extra: Any) -> Settings:
    return Settings(
        env="test",
        log_level="warning",
        data_dir=work,
        sqlite_synchronous="NORMAL",
        guests_per_ip_per_hour=100_000_000,
        shear_requests_per_minute=100_000_000,
        access_token_ttl_s=7200,
        **extra,
    )


@asynccontextmanager
async def replica(settings: Settings, **app_args: Any) -> AsyncIterator[Replica]:
    wire = None
    if settings.mongodb_uri:
        wire = WireCommands()
        app_args["store"] = MongoStore(settings.mongodb_uri, listeners=[wire])
    if settings.redis_uri:
        app_args["coord"] = RedisCoordinator(settings.redis_uri, prefix=f"costs-{settings.region}:")
    server = TestServer(create_app(settings, **app_args))
    await server.start_server()
    try:
        yield Replica(server, wire)
    finally:
        await server.close()


async def phase(
    cluster: Cluster, rows: list[Row], phase_name: str, per: str, units: int, work: Callable[[], Any]
) -> None:
    """Count what `work` costs; requests' phases run with the background quiet."""
    async with contextlib.AsyncExitStack() as stack:
        if per != "player-second":
            await stack.enter_async_context(cluster.quiet())
        before = cluster.counts()
        await work()
        await asyncio.sleep(0.2)  # the last group commit and releases land
        after = cluster.counts()
    spent = {k: after[k] - before.get(k, Counter()) for k in after}
    rows.append(Row(cluster.name, phase_name, per, units, spent))


async def play(cluster: Cluster, players: int, seconds: float, rows: list[Row]) -> None:
    owner, actor = cluster.replicas[0], cluster.replicas[cluster.sent_to]
    # no connection limit: every player holds a socket open (the default pool of 100 would starve)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http, AsyncExitStack() as sockets:
        guests: list[dict[str, str]] = []

        async def login() -> None:
            async def one() -> dict[str, str]:
                r = await http.post(f"{owner.base}/auth/guest", json={"device_id": uuid.uuid4().hex})
                body = await r.json()
                assert r.status in (200, 201), body
                return {"Authorization": f"Bearer {body['access_token']}"}

            guests.extend(await asyncio.gather(*(one() for _ in range(players))))

        async def connect() -> None:
            async def one(h: dict[str, str]) -> None:
                r = await http.get(f"{owner.base}/farm", headers=h)
                assert r.status == 200, await r.text()
                ws = await sockets.enter_async_context(http.ws_connect(f"{owner.base}/ws", headers=h))
                welcome = await ws.receive_json()
                assert welcome["type"] == "welcome", welcome
                # the socket's messages are left unread: the engine drops what a slow reader misses

            await asyncio.gather(*(one(h) for h in guests))

        async def shear(keyed: str | None) -> None:
            async def one(i: int, h: dict[str, str]) -> None:
                headers = {**h, "Idempotency-Key": f"{keyed}-{i}"} if keyed else h
                r = await http.post(f"{actor.base}/farm/shear", json={"count": 1}, headers=headers)
                assert r.status == 200, await r.text()

            await asyncio.gather(*(one(i, h) for i, h in enumerate(guests)))

        await phase(cluster, rows, "guest login", "login", players, login)
        await phase(cluster, rows, "GET /farm + socket", "connection", players, connect)
        await phase(cluster, rows, "action, no key", "action", players, lambda: shear(None))
        await phase(cluster, rows, "action, Idempotency-Key", "action", players, lambda: shear("k"))
        await phase(cluster, rows, "same key again (replay)", "action", players, lambda: shear("k"))
        steady = int(players * seconds)
        await phase(
            cluster, rows, f"connected, idle {seconds:g} s", "player-second", steady, lambda: asyncio.sleep(seconds)
        )


async def run(players: int, seconds: float) -> list[Row]:
    rows: list[Row] = []
    with Workdir("costs") as work:
        async with replica(settings_for(work / "embedded")) as embedded:
            await play(Cluster("SQLite, embedded", [embedded]), players, seconds, rows)
        redis = RedisServer().start()
        mongo = SecantusServer().start()
        try:
            for n in (1, 2):
                db = f"{mongo.uri}costs_{n}"
                async with AsyncExitStack() as stack:
                    reps = []
                    for i in range(n):
                        s = settings_for(work / f"r{n}-{i}", mongodb_uri=db, redis_uri=redis.url, region=f"n{n}")
                        reps.append(await stack.enter_async_context(replica(s)))
                    name = "MongoDB + Redis, 1 replica" if n == 1 else "2 replicas, actions forwarded"
                    await play(Cluster(name, reps, sent_to=n - 1), players, seconds, rows)
        finally:
            mongo.stop()
            redis.stop()
            redis.cleanup()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--players", type=int)
    parser.add_argument("--seconds", type=float)
    args = parser.parse_args(argv)
    configure_logging("warning")
    players = args.players or (20 if args.quick else 200)
    seconds = args.seconds or (6.0 if args.quick else 30.0)
    rows = asyncio.run(run(players, seconds))
    print_table(
        f"Cost budget: {players} players (per unit; Mongo = commands the driver sent)",
        [
            "configuration",
            "phase",
            "per",
            "store ops",
            "Mongo cmds",
            "Redis cmds",
            "Redis trips",
            "store ops by op",
            "Redis cmds by purpose",
        ],
        [
            [
                r.config,
                r.phase,
                r.per,
                f"{r.per_unit('store'):.3g}",
                f"{r.per_unit('mongo'):.3g}",
                f"{r.per_unit('redis'):.3g}",
                f"{r.per_unit('redis_trips'):.3g}",
                r.detail("store"),
                r.detail("redis"),
            ]
            for r in rows
        ],
    )
    figures = {
        f"{r.config} | {r.phase}": {k: r.per_unit(k) for k in ("store", "mongo", "redis", "redis_trips")} for r in rows
    }
    keyless = [r for r in rows if r.phase == "action, no key"]
    keyed = [r for r in rows if r.phase.startswith(("action, Idempotency", "same key"))]
    steady = [r for r in rows if r.per == "player-second" and r.config != "SQLite, embedded"]
    goals = {
        "store round trips per action without a key <= 1": all(r.per_unit("store") <= 1 for r in keyless),
        "no idempotency read before a keyed commit": all(
            r.spent["store"].get("get_idempotency", 0) == 0 for r in keyed if not r.phase.startswith("same")
        ),
        "Redis commands per connected player-second <= 0.5": all(r.per_unit("redis") <= 0.5 for r in steady),
    }
    return finish("costs", args.quick, figures, goals)


if __name__ == "__main__":
    sys.exit(main())
