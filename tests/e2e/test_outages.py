"""Backend outages during play (ARCHITECTURE.md "Many replicas", issue 4 item 4).

Two replicas on MongoDB + Redis behind nginx; ~20 simulated players act
through the load balancer (REST with Idempotency-Key retries, and a few
WebSockets) while the test kills a backend (SIGKILL) for 10 s and starts it
again on the same port. No replica is ever restarted.

- Redis down: actions keep succeeding (each replica serves locally, the
  revision compare-and-set keeps data safe), `/ready` stays 200 "degraded";
  once Redis is back the replicas notice by themselves: `/ready` says ready,
  the boards are pushed again and are not stale, pub/sub carries ticks to
  remote watchers and an admin broadcast to every socket, and no replica shows
  a player an older revision than one they were already shown.
- MongoDB down (SecantusDB on a data folder with --sync-on-commit): actions
  answer 503 + Retry-After within a few seconds (never a 500, never a 200),
  `/ready` is 503; once it is back actions succeed again on every replica.

Either way every acknowledged action is in the final state: barns exactly,
shears within [acknowledged, acknowledged + uncertain], and every farm view a
player was shown obeys the closed form of its revision (no wrong balance).
The figures (share served, 503 latency, time to recover) are printed (`-s`).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.e2e.cluster import Cluster, answered, ws_action
from tests.mongo_server import SecantusServer

pytestmark = pytest.mark.slow

PLAYERS = 20
SOCKET_PLAYERS = 8  # players 0..7 also hold a WebSocket (spread over the replicas by nginx)
WARMUP_S = 5.0
OUTAGE_S = 10.0
AFTER_S = 6.0
API = "/api/v1"
ADMIN_PASSWORD = "outage-admin-password-123"  # a test account
ENV = {
    "LLAMAWOOL_GUESTS_PER_IP_PER_HOUR": "100000",
    "LLAMAWOOL_LEASE_TTL_S": "3",
    "LLAMAWOOL_RPC_TIMEOUT_S": "1.5",
    "LLAMAWOOL_DRAIN_GRACE_S": "10",
    "LLAMAWOOL_TICK_INTERVAL_S": "0.5",
    "LLAMAWOOL_LEADERBOARD_PUSH_S": "1",
}


@dataclass
class Attempt:
    """One HTTP request as the client saw it."""

    started: float
    elapsed: float
    kind: str
    status: int  # 0: no answer (connection error or client timeout)
    retry_after: str | None = None
    code: str | None = None
    via: str = "lb"


@dataclass
class Socket:
    connected: bool = False
    welcomes: int = 0
    ticks_after_mark: int = 0
    broadcasts: list[str] = field(default_factory=list)
    ws: aiohttp.ClientWebSocketResponse | None = None


@dataclass
class Player:
    token: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    sheared: int = 0  # acknowledged shears (result.sheared)
    barns: int = 0  # acknowledged barn levels
    uncertain_shears: int = 0  # WS shears whose outcome the client cannot know
    views: list[dict[str, Any]] = field(default_factory=list)  # every farm view shown to the player
    socket: Socket | None = None
    pending: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)

    def saw(self, farm: dict[str, Any]) -> None:
        self.views.append(farm)


class Sim:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.url = cluster.url
        self.players = [Player() for _ in range(PLAYERS)]
        self.attempts: list[Attempt] = []
        self.stop_play = asyncio.Event()
        self.stop_sockets = asyncio.Event()
        self.mark = False
        self.errors: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def cancel_all(self) -> None:
        """Stop every player and socket task (also when the test failed half way)."""
        self.stop_play.set()
        self.stop_sockets.set()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def replica_urls(self) -> list[str]:
        return [r.url for r in self.cluster.replicas]

    async def request(
        self,
        s: aiohttp.ClientSession,
        method: str,
        url: str,
        kind: str,
        *,
        headers: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        via: str = "lb",
    ) -> tuple[int, Any, Attempt]:
        t0 = time.monotonic()
        try:
            async with s.request(method, url, json=body, headers=headers) as r:
                text = await r.text()
                data: Any = None
                if r.content_type.endswith("json"):
                    data = orjson.loads(text)
                code = data.get("code") if isinstance(data, dict) else None
                a = Attempt(t0, time.monotonic() - t0, kind, r.status, r.headers.get("Retry-After"), code, via)
        except (TimeoutError, aiohttp.ClientError):
            data = None
            a = Attempt(t0, time.monotonic() - t0, kind, 0, via=via)
        self.attempts.append(a)
        return a.status, data, a

    async def post(
        self, s: aiohttp.ClientSession, p: Player, path: str, body: dict[str, Any], base: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """POST with one Idempotency-Key, retried through failures until it is answered."""
        key = uuid.uuid4().hex
        kind = path.rsplit("/", 1)[-1]
        deadline = time.monotonic() + 60
        while True:
            status, data, a = await self.request(
                s,
                "POST",
                (base or self.url) + API + path,
                kind,
                headers={**p.headers, "Idempotency-Key": key},
                body=body,
                via="lb" if base is None else "direct",
            )
            if status not in (0, 502, 503, 504):
                return status, data
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} unanswered for 60 s (last status {status})")
            wait = min(float(a.retry_after or 0.5), 1.0)
            await asyncio.sleep(wait * random.uniform(0.3, 1.0))

    async def join(self, s: aiohttp.ClientSession, i: int) -> None:
        p = self.players[i]
        for _ in range(50):
            status, body, _ = await self.request(
                s, "POST", self.url + API + "/auth/guest", "join", body={"device_id": f"outage-device-{i:04d}"}
            )
            if status in (200, 201):
                p.token = body["access_token"]
                p.headers = {"Authorization": f"Bearer {p.token}"}
                return
            await asyncio.sleep(0.2)
        raise AssertionError("could not join")

    async def socket_loop(self, s: aiohttp.ClientSession, p: Player) -> None:
        sock = p.socket
        assert sock is not None
        while not self.stop_sockets.is_set():
            try:
                async with s.ws_connect(self.url.replace("http", "ws") + API + f"/ws?token={p.token}") as ws:
                    sock.ws = ws
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        m = msg.json()
                        if m["type"] == "welcome":
                            sock.connected = True
                            sock.welcomes += 1
                            p.saw(m["data"]["farm"])
                        elif m["type"] == "tick":
                            if self.mark:
                                sock.ticks_after_mark += 1
                        elif m["type"] == "event" and m["data"].get("type") == "broadcast":
                            sock.broadcasts.append(m["data"]["message"])
                        elif m["type"] in ("result", "error"):
                            answered(p.pending, m)
                        if self.stop_sockets.is_set():
                            break
            except (TimeoutError, aiohttp.ClientError):
                pass
            sock.connected = False
            sock.ws = None
            await asyncio.sleep(random.uniform(0.1, 0.4))

    async def ws_shear(self, p: Player, count: int) -> None:
        ws = p.socket.ws if p.socket else None
        if ws is None or ws.closed:
            return
        try:
            m = await ws_action(ws, p.pending, {"action": "shear", "count": count}, 8)
        except (aiohttp.ClientError, ConnectionError, TimeoutError, RuntimeError):
            p.uncertain_shears += count
            return
        if m["type"] == "result":
            p.sheared += m["data"]["result"]["sheared"]
            p.saw(m["data"]["farm"])
        elif m["data"]["code"] == "UNAVAILABLE":
            # Without an Idempotency-Key a client cannot tell whether a commit cut off
            # by a storage crash landed: uncertain, not lost.
            p.uncertain_shears += count
        else:
            self.errors.append(f"ws error {m['data']}")

    async def shear(self, s: aiohttp.ClientSession, p: Player, base: str | None = None) -> None:
        status, body = await self.post(s, p, "/farm/shear", {"count": random.randint(1, 5)}, base)
        if status == 200:
            p.sheared += body["result"]["sheared"]
            p.saw(body["farm"])
        else:
            self.errors.append(f"shear {status} {body}")

    async def play(self, s: aiohttp.ClientSession, p: Player) -> None:
        while not self.stop_play.is_set():
            roll = random.random()
            if roll < 0.45:
                await self.shear(s, p)
            elif roll < 0.7:
                status, body = await self.post(s, p, "/farm/buildings/barn/purchase", {"quantity": 1})
                if status == 200:
                    p.barns += body["result"]["bought"]
                    p.saw(body["farm"])
                elif body.get("code") != "INSUFFICIENT_RESOURCES":
                    self.errors.append(f"barn {status} {body}")
            elif roll < 0.85 and p.socket is not None:
                await self.ws_shear(p, random.randint(1, 5))
            else:
                status, body, _ = await self.request(s, "GET", self.url + API + "/farm", "view", headers=p.headers)
                if status == 200:
                    p.saw(body)
                elif status not in (0, 502, 503, 504):
                    self.errors.append(f"view {status} {body}")
            await asyncio.sleep(random.uniform(0.4, 1.0))

    def during(self, t0: float, t1: float, via: str = "lb") -> list[Attempt]:
        """Players' requests sent and answered between t0 and t1."""
        kinds = ("shear", "purchase", "view")
        return [
            a
            for a in self.attempts
            if t0 <= a.started and a.started + a.elapsed <= t1 and a.kind in kinds and a.via == via
        ]


async def get_json(s: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    try:
        async with s.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=15)) as r:
            return r.status, await r.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError):
        return 0, None


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float, every: float = 0.2) -> float:
    """Poll `check` until true; return how long it took."""
    t0 = time.monotonic()
    while not await check():
        if time.monotonic() - t0 > within:
            raise AssertionError(f"{what}: not within {within:.0f}s")
        await asyncio.sleep(every)
    return time.monotonic() - t0


def check_views(sim: Sim) -> int:
    """Every view of one revision obeys its closed form: balance(t) = balance(t0) + rate × (t - t0)."""
    checked = 0
    for i, p in enumerate(sim.players):
        by_rev: dict[int, list[dict[str, Any]]] = {}
        for v in p.views:
            by_rev.setdefault(v["revision"], []).append(v)
        for rev, views in by_rev.items():
            views.sort(key=lambda v: v["server_time"])
            first = views[0]
            for v in views[1:]:
                if not (first["online"] and v["online"]):
                    continue
                assert v["buildings"] == first["buildings"], (i, rev)
                dt = v["server_time"] - first["server_time"]
                for tier, value in v["balances"].items():
                    expected = first["balances"][tier] + first["rates"][tier] * dt
                    assert value == pytest.approx(expected, rel=1e-9, abs=1e-6), (i, rev, tier, value, expected)
                checked += 1
    return checked


async def final_checks(sim: Sim, s: aiohttp.ClientSession) -> None:
    assert not sim.errors, sim.errors[:5]
    for i, p in enumerate(sim.players):
        status, farm = 0, None
        for _ in range(50):
            status, farm = await get_json(s, sim.url + API + "/farm", p.headers)
            if status == 200:
                break
            await asyncio.sleep(0.2)
        assert status == 200 and farm is not None, (i, status, farm)
        p.saw(farm)
        seen = sorted({(v["revision"], v["stats"]["shears"], v["buildings"]["barn"]) for v in p.views})[-6:]
        assert farm["buildings"]["barn"] == p.barns, (i, farm["buildings"], p.barns, "(revision, shears, barns)", seen)
        assert p.sheared <= farm["stats"]["shears"] <= p.sheared + p.uncertain_shears, (
            i,
            farm["stats"],
            p.sheared,
            p.uncertain_shears,
            "(revision, shears, barns) seen",
            seen,
        )
    checked = check_views(sim)
    assert checked >= PLAYERS, checked
    served = sum(p.sheared for p in sim.players)
    print(f"  acknowledged shears {served}, barns {sum(p.barns for p in sim.players)}, view pairs checked {checked}")
    assert not [a for a in sim.attempts if a.status == 500], "a request answered 500"


async def start_players(
    sim: Sim, s: aiohttp.ClientSession
) -> tuple[list[asyncio.Task[None]], list[asyncio.Task[None]]]:
    await asyncio.gather(*(sim.join(s, i) for i in range(PLAYERS)))
    for p in sim.players[:SOCKET_PLAYERS]:
        p.socket = Socket()
    sockets = [asyncio.create_task(sim.socket_loop(s, p)) for p in sim.players[:SOCKET_PLAYERS]]
    players = [asyncio.create_task(sim.play(s, p)) for p in sim.players]
    sim.tasks += sockets + players
    return sockets, players


async def stop_all(sim: Sim, players: list[asyncio.Task[None]]) -> None:
    sim.stop_play.set()
    await asyncio.gather(*players)


async def close_sockets(sim: Sim, sockets: list[asyncio.Task[None]]) -> None:
    sim.stop_sockets.set()
    for t in sockets:
        t.cancel()
    await asyncio.gather(*sockets, return_exceptions=True)


async def all_sockets_tick(sim: Sim, within: float) -> float:
    sim.mark = True
    for p in sim.players:
        if p.socket:
            p.socket.ticks_after_mark = 0

    async def ticking() -> bool:
        return all(p.socket.connected and p.socket.ticks_after_mark >= 3 for p in sim.players if p.socket)

    try:
        return await until("every socket hears ticks", ticking, within, 0.1)
    except AssertionError:
        silent = [i for i, p in enumerate(sim.players) if p.socket and p.socket.ticks_after_mark < 3]
        raise AssertionError(f"sockets without ticks after the outage: players {silent}") from None


async def play_on_then_check(
    sim: Sim,
    s: aiohttp.ClientSession,
    t_restarted: float,
    players: list[asyncio.Task[None]],
    sockets: list[asyncio.Task[None]],
) -> None:
    """Play until AFTER_S past the restart, stop, report what the clients got, and check
    that every acknowledged action is in the final state."""
    await asyncio.sleep(max(0.0, AFTER_S - (time.monotonic() - t_restarted)))
    await stop_all(sim, players)
    after = sim.during(t_restarted, time.monotonic())
    print(f"  after the restart: {sum(a.status == 200 for a in after)}/{len(after)} requests answered 200")
    await final_checks(sim, s)
    await close_sockets(sim, sockets)


@asynccontextmanager
async def playing(sim: Sim) -> AsyncIterator[None]:
    try:
        yield
    finally:
        await sim.cancel_all()


def create_admin(cluster: Cluster) -> None:
    cluster.create_admin("outage_ops", "ops@outage.example", ADMIN_PASSWORD)


async def test_redis_down_for_10s_keeps_serving_and_recovers(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, replicas=2, env=ENV)
    await asyncio.to_thread(cluster.start)
    try:
        sim = Sim(cluster)
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as s,
            playing(sim),
        ):
            admin = asyncio.create_task(asyncio.to_thread(create_admin, cluster))
            sockets, players = await start_players(sim, s)
            await admin
            status, body, _ = await sim.request(
                s,
                "POST",
                sim.url + API + "/auth/login",
                "login",
                body={"login": "outage_ops", "password": ADMIN_PASSWORD},
            )
            assert status == 200, body
            admin_headers = {"Authorization": f"Bearer {body['access_token']}"}
            await asyncio.sleep(WARMUP_S)
            await all_sockets_tick(sim, 15)

            # ---- Redis goes away ----
            t_down = time.monotonic()
            await asyncio.to_thread(cluster.redis.kill)
            ready_seen: list[tuple[int, str]] = []
            boards_seen: list[int] = []
            await asyncio.sleep(0.5)
            while time.monotonic() - t_down < OUTAGE_S:
                for url in sim.replica_urls():
                    st, b = await get_json(s, url + "/ready")
                    ready_seen.append((st, (b or {}).get("status", "")))
                    st, _ = await get_json(s, url + API + "/leaderboards/lifetime")
                    boards_seen.append(st)
                await asyncio.sleep(0.5)
            t_up = time.monotonic()
            await asyncio.to_thread(cluster.redis.start)
            t_restarted = time.monotonic()

            during = sim.during(t_down, t_up)
            ok = [a for a in during if a.status == 200]
            share = len(ok) / max(1, len(during))
            print(
                f"\nRedis outage {t_up - t_down:.1f}s: {len(ok)}/{len(during)} requests answered 200 "
                f"({share:.0%}); statuses {sorted({a.status for a in during})}; "
                f"/ready {sorted(set(ready_seen))}; leaderboard pages {sorted(set(boards_seen))}"
            )
            assert len(during) >= 50, len(during)
            assert share >= 0.8, f"only {share:.0%} of the requests during the Redis outage were served"
            assert ready_seen and all(r == (200, "degraded") for r in ready_seen), ready_seen
            assert 500 not in boards_seen, boards_seen

            # ---- back by itself, no replica restarted ----
            async def ready_everywhere() -> bool:
                for url in sim.replica_urls():
                    st, b = await get_json(s, url + "/ready")
                    if st != 200 or b["status"] != "ready" or not b["checks"]["coordination"].startswith("ok"):
                        return False
                return True

            async def boards_fresh() -> bool:
                for url in sim.replica_urls():
                    st, b = await get_json(s, url + API + "/leaderboards/lifetime?limit=100")
                    if st != 200 or b["stale"] or b["total"] < PLAYERS:
                        return False
                return True

            async def since_restart(check: Awaitable[float]) -> float:
                await check
                return time.monotonic() - t_restarted

            t_ready, t_boards, t_ticks = await asyncio.gather(
                since_restart(until("/ready says ready on every replica", ready_everywhere, 20)),
                since_restart(until("boards pushed again and not stale", boards_fresh, 20)),
                since_restart(all_sockets_tick(sim, 20)),
            )

            message = f"back to normal {uuid.uuid4().hex[:8]}"
            status, body, _ = await sim.request(
                s,
                "POST",
                sim.url + API + "/admin/broadcast",
                "broadcast",
                headers=admin_headers,
                body={"message": message},
            )
            assert status == 200, body

            async def everyone_heard() -> bool:
                return all(message in p.socket.broadcasts for p in sim.players if p.socket)

            t_broadcast = await until("the admin broadcast reaches every socket", everyone_heard, 10, 0.05)

            # Resynced: whichever replica is asked, no player is shown an older revision than
            # one they were already shown (copies served without a lease were reloaded).
            shown = [max(v["revision"] for v in p.views) for p in sim.players]
            for url in sim.replica_urls():
                for i, p in enumerate(sim.players):
                    st, farm = await get_json(s, url + API + "/farm", p.headers)
                    assert st == 200 and farm["revision"] >= shown[i], (url, i, st, farm and farm["revision"], shown[i])
            print(
                f"recovery, seconds after Redis restarted: /ready ready {t_ready:.1f}, boards fresh {t_boards:.1f}, "
                f"ticks on every socket {t_ticks:.1f}; broadcast delivered to every socket in {t_broadcast:.2f}s"
            )
            await play_on_then_check(sim, s, t_restarted, players, sockets)
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_mongodb_down_for_10s_answers_503_and_recovers(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, replicas=2, env=ENV)
    cluster.mongo = SecantusServer(tmp_path / "mongo-data", log_dir=tmp_path, extra=("--sync-on-commit",))
    await asyncio.to_thread(cluster.start)
    try:
        sim = Sim(cluster)
        # one probe player per replica, acting on it directly (not through nginx)
        probes = [Player() for _ in cluster.replicas]
        connector = aiohttp.TCPConnector(limit=0)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as s,
            playing(sim),
        ):
            sockets, players = await start_players(sim, s)
            for probe in probes:
                sim.players.append(probe)
                await sim.join(s, len(sim.players) - 1)
            await asyncio.sleep(WARMUP_S)

            # ---- MongoDB crashes ----
            t_down = time.monotonic()
            await asyncio.to_thread(cluster.mongo.kill)
            probe_seen: list[Attempt] = []
            ready_seen: list[int] = []

            async def probe_loop(url: str, probe: Player) -> None:
                while time.monotonic() - t_down < OUTAGE_S - 0.5:
                    st, b, a = await sim.request(
                        s,
                        "POST",
                        url + API + "/farm/shear",
                        "probe",
                        headers={**probe.headers, "Idempotency-Key": uuid.uuid4().hex},
                        body={"count": 1},
                        via="direct",
                    )
                    if st == 200:
                        probe.sheared += b["result"]["sheared"]
                        probe.saw(b["farm"])
                    else:
                        probe.uncertain_shears += 1  # its key is not retried: count it as unknown
                        if a.started - t_down > 1.0:  # (a commit in flight at the crash is still settling)
                            probe_seen.append(a)
                    st, _ = await get_json(s, url + "/ready")
                    ready_seen.append(st)
                    await asyncio.sleep(0.3)

            await asyncio.gather(*(probe_loop(u, p) for u, p in zip(sim.replica_urls(), probes, strict=True)))
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_down)))
            t_up = time.monotonic()
            await asyncio.to_thread(cluster.mongo.start)
            t_restarted = time.monotonic()

            during = sim.during(t_down + 1.0, t_up)
            statuses = {st: sum(a.status == st for a in during) for st in sorted({a.status for a in during})}
            latencies = [a.elapsed for a in probe_seen] or [0.0]
            print(
                f"\nMongoDB outage {t_up - t_down:.1f}s: load-balanced requests by status {statuses} "
                f"(200s are farm views from memory); direct probes {sorted({a.status for a in probe_seen})} "
                f"x{len(probe_seen)}, 503 in median {statistics.median(latencies):.2f}s, max {max(latencies):.2f}s; "
                f"/ready {sorted(set(ready_seen))}"
            )
            assert probe_seen, "no probe ran during the outage"
            for a in probe_seen:
                assert a.status == 503 and a.retry_after and a.code == "UNAVAILABLE", a
            assert max(latencies) < 4.0, f"503s took up to {max(latencies):.1f}s"
            assert set(ready_seen) == {503}, ready_seen
            assert not [a for a in during if a.status == 500], "a 500 during the MongoDB outage"
            assert not [a for a in during if a.status == 503 and not a.retry_after], "a 503 without Retry-After"
            assert not [a for a in during if a.status == 200 and a.kind != "view"], "an action acknowledged"

            # ---- back by itself, no replica restarted ----
            async def serving_everywhere() -> bool:
                for url, probe in zip(sim.replica_urls(), probes, strict=True):
                    st, _ = await get_json(s, url + "/ready")
                    if st != 200:
                        return False
                    await sim.shear(s, probe, url)
                return True

            await until("actions succeed again on every replica", serving_everywhere, 30)
            t_ready = time.monotonic() - t_restarted
            await all_sockets_tick(sim, 20)
            t_ticks = time.monotonic() - t_restarted
            print(
                f"recovery, seconds after MongoDB restarted: /ready and actions on every replica {t_ready:.1f}, "
                f"ticks on every socket {t_ticks:.1f}"
            )
            await play_on_then_check(sim, s, t_restarted, players, sockets)
    finally:
        await asyncio.to_thread(cluster.stop)
