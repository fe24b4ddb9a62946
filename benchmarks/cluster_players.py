"""Players that behave like the web client, many in one asyncio process (the load
generator of `benchmarks.cluster`).

Each player signs in as a guest (`POST /auth/guest`), loads its farm
(`GET /farm`), keeps a WebSocket open (1 Hz ticks) and shears over REST every
~10 s (jittered), as the web client does when its player clicks. A socket that
closes is opened again after 0.25-1.25 s, like the client's reconnect after a
server restart: a server that moves sockets between replicas needs clients
that come back. Sockets are the raw-protocol `WsClient` of benchmarks.common
(one parse per TCP read), REST is one aiohttp session: the generator's own CPU
is measured and printed, so a saturated generator shows.

A measuring window counts, per socket, the ticks whose `server_time` falls in
the window (expected: one per second per socket open when it began), their
lateness (arrival minus `server_time`, same clock), and every shear sent in the
window: its latency and outcome (200; 503 with Retry-After, counted apart;
anything else an error, by kind).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .common import WS_PATH, WsClient, percentile, server_time

API = "/api/v1"
TICK_PREFIX = b'{"type":"tick"'
WELCOME_PREFIX = b'{"type":"welcome"'


class PlayerSocket(WsClient):
    """A WsClient that knows its player (and, from nginx's X-Upstream header, its replica)."""

    def __init__(self, crowd: Crowd, path: str, host: str, player: Player) -> None:
        super().__init__(crowd, path, host)
        self.player = player

    def upstream_port(self) -> int | None:
        for line in self.head.split(b"\r\n"):
            if line.lower().startswith(b"x-upstream:"):
                addr = line.split(b":", 1)[1].strip().split(b",")[-1].strip()
                try:
                    return int(addr.rsplit(b":", 1)[1])
                except (IndexError, ValueError):
                    return None
        return None


@dataclass
class Player:
    index: int
    device_id: str
    token: str = ""
    player_id: str = ""
    socket: PlayerSocket | None = None
    replica_port: int | None = None
    reconnects: int = 0


@dataclass
class Window:
    """What one measuring window saw."""

    started: float
    ended: float
    sockets_at_start: int
    ticks: int = 0
    expected_ticks: float = 0.0
    lateness: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    shed: int = 0  # 503 with Retry-After: load shed, not an error
    errors: dict[str, int] = field(default_factory=dict)
    socket_closes: int = 0
    loop_lag: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def actions(self) -> int:
        return self.ok + self.shed + sum(self.errors.values())

    def summary(self) -> dict[str, Any]:
        return {
            "window_s": self.seconds,
            "sockets": self.sockets_at_start,
            "ticks": self.ticks,
            "expected_ticks": self.expected_ticks,
            "tick_delivery": self.ticks / self.expected_ticks if self.expected_ticks else float("nan"),
            "lateness_p50_ms": percentile(self.lateness, 50) * 1e3,
            "lateness_p99_ms": percentile(self.lateness, 99) * 1e3,
            "actions": self.actions,
            "action_p50_ms": percentile(self.latencies, 50) * 1e3,
            "action_p99_ms": percentile(self.latencies, 99) * 1e3,
            "actions_ok": self.ok,
            "actions_shed_503": self.shed,
            "action_errors": sum(self.errors.values()),
            "action_error_kinds": dict(self.errors),
            "socket_closes": self.socket_closes,
            "loop_lag_p99_ms": percentile(self.loop_lag, 99) * 1e3,
            "loop_lag_max_ms": max(self.loop_lag, default=float("nan")) * 1e3,
        }


class Crowd:
    """The players, their sockets and their shears; `window()` measures a stretch of it."""

    def __init__(
        self, url: str, n: int, run: str, *, shear_every_s: float = 10.0, timeout_s: float = 15.0, tick_s: float = 1.0
    ) -> None:
        self.url = url
        u = urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.players = [Player(i, f"bench-{run}-{i:06d}") for i in range(n)]
        self.shear_every_s = shear_every_s
        self.timeout_s = timeout_s
        self.tick_s = tick_s
        self.open: set[WsClient] = set()
        self.keyed = True  # shears carry an Idempotency-Key, as the web client's do
        self.answered = {True: 0, False: 0}  # shears answered 200, keyed and un-keyed
        self._window: Window | None = None
        self._in_flight = 0  # shears sent during the window, not answered yet
        self._answered: asyncio.Event | None = None  # set while none is in flight
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    # ---- joining -------------------------------------------------------------------------

    async def __aenter__(self) -> Crowd:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, force_close=False),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        )
        self._answered = asyncio.Event()
        self._answered.set()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for c in list(self.open):
            if c.transport is not None:
                c.transport.close()
        if self._session is not None:
            await self._session.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def sign_in(self, concurrency: int, deadline: float) -> dict[str, Any]:
        """Every player's `POST /auth/guest` (what the client does first)."""
        sem = asyncio.Semaphore(concurrency)
        failures: dict[str, int] = {}

        async def one(p: Player) -> None:
            async with sem:
                while not p.token and time.monotonic() < deadline:
                    status, body = await self._rest("POST", "/auth/guest", {"device_id": p.device_id}, None)
                    if status in (200, 201) and isinstance(body, dict):
                        p.token = body["access_token"]
                        p.player_id = body["player"]["id"]
                        return
                    failures[str(status)] = failures.get(str(status), 0) + 1
                    await asyncio.sleep(0.5)

        started = time.monotonic()
        await asyncio.gather(*(one(p) for p in self.players))
        signed = sum(1 for p in self.players if p.token)
        return {"signed_in": signed, "seconds": time.monotonic() - started, "failures": failures}

    async def connect(self, concurrency: int, deadline: float) -> dict[str, Any]:
        """Each signed-in player's `GET /farm`, then its socket until the welcome."""
        sem = asyncio.Semaphore(concurrency)
        failures: dict[str, int] = {}

        async def one(p: Player) -> None:
            async with sem:
                while time.monotonic() < deadline:
                    status, _ = await self._rest("GET", "/farm", None, p)
                    if status == 200:
                        break
                    failures[f"GET /farm {status}"] = failures.get(f"GET /farm {status}", 0) + 1
                    await asyncio.sleep(0.5)
                while time.monotonic() < deadline:
                    if await self._open_socket(p, deadline - time.monotonic()):
                        return
                    failures["socket"] = failures.get("socket", 0) + 1
                    await asyncio.sleep(0.5)

        started = time.monotonic()
        await asyncio.gather(*(one(p) for p in self.players if p.token))
        return {"connected": len(self.open), "seconds": time.monotonic() - started, "failures": failures}

    async def _open_socket(self, p: Player, wait_s: float) -> bool:
        loop = asyncio.get_running_loop()
        path = f"{WS_PATH}?token={p.token}"
        try:
            _, sock = await loop.create_connection(
                lambda: PlayerSocket(self, path, f"{self.host}:{self.port}", p), self.host, self.port
            )
        except OSError:
            return False
        try:
            ok = await asyncio.wait_for(sock.welcome, max(0.1, wait_s))
        except TimeoutError:
            ok = False
        if not ok:
            if sock.transport is not None:
                sock.transport.close()
            return False
        p.socket = sock
        p.replica_port = sock.upstream_port()
        self.open.add(sock)
        return True

    # ---- steady state --------------------------------------------------------------------

    def play(self) -> None:
        """Every connected player starts shearing (first shear at a random point of the period)."""
        for p in self.players:
            if p.socket is not None:
                self._spawn(self._shear_loop(p))

    async def _shear_loop(self, p: Player) -> None:
        await asyncio.sleep(random.uniform(0, self.shear_every_s))
        while not self._stopping:
            self._spawn(self._shear(p))
            await asyncio.sleep(self.shear_every_s * random.uniform(0.8, 1.2))

    async def _shear(self, p: Player) -> None:
        w = self._window
        counted = w is not None and w.started <= time.time() < w.ended
        if counted:
            self._in_flight += 1
            assert self._answered is not None
            self._answered.clear()
        key = uuid.uuid4().hex if self.keyed else None
        t0 = time.perf_counter()
        try:
            for attempt in range(3):  # the client retries a keyed POST on a network error, same key
                status, body, retry_after = await self._rest_full("POST", "/farm/shear", {"count": 1}, p, key)
                if status >= 0 or key is None or attempt == 2:
                    break
                await asyncio.sleep(0.4 * (attempt + 1))
            if status == 200:
                self.answered[key is not None] += 1
            if counted and w is not None:
                w.latencies.append(time.perf_counter() - t0)
                if status == 200:
                    w.ok += 1
                elif status == 503 and retry_after:
                    w.shed += 1
                else:
                    code = body.get("code", "") if isinstance(body, dict) else ""
                    kind = f"{status} {code}".strip() if status >= 0 else str(body)
                    w.errors[kind] = w.errors.get(kind, 0) + 1
        finally:
            if counted:
                self._in_flight -= 1
                if self._in_flight == 0 and self._answered is not None:
                    self._answered.set()

    async def _rest(self, method: str, path: str, body: Any, p: Player | None) -> tuple[int, Any]:
        status, out, _ = await self._rest_full(method, path, body, p, None)
        return status, out

    async def _rest_full(
        self, method: str, path: str, body: Any, p: Player | None, key: str | None
    ) -> tuple[int, Any, str | None]:
        """(status, parsed body, Retry-After); status -1 and the exception's name when no answer came."""
        assert self._session is not None
        headers = {"Accept": "application/json"}
        if p is not None:
            headers["Authorization"] = f"Bearer {p.token}"
        if key is not None:
            headers["Idempotency-Key"] = key
        try:
            async with self._session.request(method, self.url + API + path, json=body, headers=headers) as r:
                raw = await r.read()
                try:
                    parsed = await r.json(content_type=None) if raw else None
                except ValueError:
                    parsed = None
                return r.status, parsed, r.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return -1, type(exc).__name__, None

    # ---- what the sockets report ---------------------------------------------------------

    def lost(self, client: WsClient) -> None:
        self.open.discard(client)
        if not isinstance(client, PlayerSocket) or self._stopping:
            return
        p = client.player
        if p.socket is client:
            p.socket = None
            if self._window is not None and self._window.started <= time.time() < self._window.ended:
                self._window.socket_closes += 1
            self._spawn(self._reconnect(p))

    async def _reconnect(self, p: Player) -> None:
        delay = 0.25
        while not self._stopping and p.socket is None:
            await asyncio.sleep(delay + random.random())
            p.reconnects += 1
            if await self._open_socket(p, self.timeout_s):
                return
            delay = min(15.0, delay * 2)

    def on_text(self, client: WsClient, payload: bytes, now: float) -> None:
        w = self._window
        if not payload.startswith(TICK_PREFIX):
            if payload.startswith(WELCOME_PREFIX) and not client.welcome.done():
                client.welcome.set_result(True)
            return
        if w is None:
            return
        st = server_time(payload)
        if st is not None and w.started <= st < w.ended:
            w.ticks += 1
            w.lateness.append(now - st)

    # ---- measuring -----------------------------------------------------------------------

    async def window(self, seconds: float, grace_s: float = 3.0) -> Window:
        """Measure `seconds` from now; then wait for the window's late ticks and answers."""
        now = time.time()
        w = Window(started=now, ended=now + seconds, sockets_at_start=len(self.open))
        w.expected_ticks = w.sockets_at_start * seconds / self.tick_s
        self._window = w
        # the generator's own lateness: a starved generator reads ticks and answers late too
        step = 0.05
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            before = time.perf_counter()
            await asyncio.sleep(step)
            w.loop_lag.append(time.perf_counter() - before - step)
        await asyncio.sleep(grace_s)
        assert self._answered is not None
        with contextlib.suppress(TimeoutError):  # a shear gives up after 3 tries of timeout_s
            await asyncio.wait_for(self._answered.wait(), self.timeout_s * 3 + 2)
        self._window = None
        return w

    def sockets_by_replica(self) -> dict[int | None, int]:
        out: dict[int | None, int] = {}
        for p in self.players:
            if p.socket is not None and not p.socket.closed:
                out[p.replica_port] = out.get(p.replica_port, 0) + 1
        return out
