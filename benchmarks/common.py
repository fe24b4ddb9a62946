"""What every benchmark shares: the server under test and the bare baselines as
subprocesses, seeded players, process statistics, the table and the JSON line.

Also runnable: `python -m benchmarks.common bare-json --port P` and
`python -m benchmarks.common bare-broadcast --port P --interval S --payload-bytes B`
are the baselines (plain aiohttp on uvloop, nothing else).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson
import psutil

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
JWT_SECRET = "llamawool-benchmark-secret-not-for-production-use"  # noqa: S105 - a local benchmark's key
WS_PATH = "/api/v1/ws"
DAY = 86400.0


# ---- small utilities -------------------------------------------------------------------


def raise_nofile(want: int = 65536) -> int:
    """Raise this process's open-file limit (children inherit it); returns the limit now in force."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (max(want, hard), want):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
            break
        except (ValueError, OSError):
            continue
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[k]


def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x != x:  # nan
            return "n/a"
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{max(1, digits - 1)}f}"
    return str(x)


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    sys.stdout.flush()


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load1": round(os.getloadavg()[0], 2),
    }


def finish(name: str, quick: bool, figures: dict[str, Any], goals: dict[str, bool]) -> int:
    """Print the one JSON line; the exit status (quick mode only proves the benchmark runs)."""
    met = all(goals.values())
    line = {
        "benchmark": name,
        "mode": "quick" if quick else "full",
        "machine": machine(),
        "figures": figures,
        "goals": goals,
        "all_goals_met": met,
    }
    print(json.dumps(line, sort_keys=False, default=_json_default))
    sys.stdout.flush()
    return 0 if (quick or met) else 1


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(type(x))


def round_floats(d: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, float):
            out[k] = float(f"{v:.{digits}g}") if v == v else None
        elif isinstance(v, dict):
            out[k] = round_floats(v, digits)
        else:
            out[k] = v
    return out


class ProcStats:
    """CPU seconds and RSS of one process (psutil), sampled between two instants."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self._t0 = 0.0
        self._c0 = 0.0

    def cpu_seconds(self) -> float:
        t = self.proc.cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = self.cpu_seconds()

    def cpu_fraction(self) -> float:
        """CPU used since start() as a fraction of one core."""
        wall = time.perf_counter() - self._t0
        return (self.cpu_seconds() - self._c0) / wall if wall > 0 else 0.0


def start_profile(pid: int, seconds: float, out: Path, native: bool = False) -> subprocess.Popen[bytes]:
    """py-spy in the background over `pid` for `seconds`, collapsed stacks to `out`."""
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    argv = [spy, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "200", "-f", "raw", "-o", str(out)]
    if native:
        argv.append("--native")
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(path: Path, top: int = 25) -> str:
    """Self and total sample shares per function from py-spy's collapsed stacks."""
    self_n: dict[str, int] = {}
    total_n: dict[str, int] = {}
    samples = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return f"(no profile at {path})"
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")" for f in stack.split(";")
        ]
        self_n[frames[-1]] = self_n.get(frames[-1], 0) + n
        for f in set(frames):
            total_n[f] = total_n.get(f, 0) + n
    if not samples:
        return "(empty profile)"
    out = [f"{samples} samples; self% / total% by function"]
    for name, n in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  self {100 * n / samples:5.1f}%  total {100 * total_n[name] / samples:5.1f}%  {name}")
    return "\n".join(out)


# ---- the server under test ---------------------------------------------------------------


def bench_config(directory: Path, actions_per_minute: int = 1_000_000) -> Path:
    """A copy of the ConfigMap with the per-player action limit raised for load tests."""
    cfg = json.loads((REPO / "config" / "game-config.json").read_text())
    cfg["antiCheat"]["maxActionsPerMinute"] = actions_per_minute
    path = directory / "game-config.bench.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


# anti-cheat limits raised: a load test is one IP and few players doing a lot
LOAD_TEST_LIMITS = {
    "LLAMAWOOL_ACCESS_TOKEN_TTL_S": "7200",
    "LLAMAWOOL_SHEAR_REQUESTS_PER_MINUTE": "100000000",
    "LLAMAWOOL_GUESTS_PER_IP_PER_HOUR": "100000000",
    "LLAMAWOOL_REGISTRATIONS_PER_IP_PER_HOUR": "100000000",
    "LLAMAWOOL_WS_VIOLATIONS_BEFORE_CLOSE": "100000000",
}


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "LLAMAWOOL_ENV": "test",
        "LLAMAWOOL_LOG_LEVEL": "warning",
        "LLAMAWOOL_JWT_SECRET": JWT_SECRET,
        **LOAD_TEST_LIMITS,
    }
    env.update(extra or {})
    return env


class Server:
    """`python -m llamawool serve` (or a baseline) as a subprocess on a free port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        env: dict[str, str] | None = None,
        config: Path | None = None,
        argv: list[str] | None = None,
        ready_path: str = "/ready",
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.ready_path = ready_path
        if argv is None:
            argv = [PY, "-m", "llamawool", "serve", "--port", str(self.port), "--data-dir", str(data_dir)]
            if config is not None:
                argv += ["--config", str(config)]
        else:
            argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.argv = argv
        self.env = server_env(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"
        self.stats: ProcStats | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{WS_PATH}"

    def start(self, timeout: float = 60.0) -> float:
        """Spawn and wait until `ready_path` answers 200; returns seconds from spawn to ready."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, cwd=REPO, env=self.env, stdout=log, stderr=log)
        log.close()
        self.stats = ProcStats(self.proc.pid)
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as resp:  # noqa: S310 - loopback
                    if resp.status == 200:
                        return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.005)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout}s; see {self.log_path}:\n{self.tail()}")

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bare_server(data_dir: Path, kind: str, *args: str) -> Server:
    argv = [PY, "-m", "benchmarks.common", kind, "--port", "{port}", *args]
    return Server(data_dir, argv=argv, ready_path="/ready")


class Workdir:
    """A temporary data folder, removed afterwards (kept with BENCH_KEEP=1)."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=f"llamawool-bench-{prefix}-"))

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(self.path, ignore_errors=True)


# ---- seeded players -----------------------------------------------------------------------


def player_id(i: int) -> str:
    return f"bench{i:08d}"


def seed_players(
    data_dir: Path,
    n: int,
    *,
    offline_for_s: float = DAY,
    balance: float = 0.0,
    barns: int = 10,
    now: float | None = None,
) -> list[str]:
    """Create `n` players with farms straight in the server's SQLite file (one transaction).

    Each farm has `barns` barns (so it produces), `balance` of every tier, and
    went offline `offline_for_s` ago: its first use credits that absence.
    """
    from llamawool.settings import Settings, load_rules
    from llamawool.store import SQLiteStore

    settings = Settings(data_dir=data_dir)
    rules = load_rules(settings)
    db = data_dir / "llamawool.sqlite3"
    data_dir.mkdir(parents=True, exist_ok=True)

    async def schema() -> None:
        store = SQLiteStore(db)
        await store.open()
        await store.close()

    asyncio.run(schema())
    now = time.time() if now is None else now
    away = now - offline_for_s
    ids = [player_id(i) for i in range(n)]
    players = []
    farms = []
    for pid in ids:
        state = rules.new_farm(pid, away - 3600.0)
        state.buildings = {"barn": barns} if barns else {}
        state.balances = [balance] * rules.n_tiers
        state.discovered = ["basic"] if barns else []
        state.online = False
        state.anchor_time = away
        state.last_active = away
        state.revision = 1
        players.append((pid, f"b_{pid}", None, None, "player", 1, away - 3600.0, "{}", None, None, None, 0))
        farms.append((pid, 1, orjson.dumps(state.to_doc()), away))
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT OR REPLACE INTO players (id, username, email, password_hash, role, is_guest, created_at, "
            "settings, flagged_at, flag_reason, last_violation_at, violations_total) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            players,
        )
        conn.executemany(
            "INSERT OR REPLACE INTO farms (player_id, revision, doc, last_active) VALUES (?, ?, ?, ?)", farms
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return ids


def access_tokens(ids: Sequence[str], ttl_s: int = 7200) -> list[str]:
    """Access tokens for seeded players, signed with the key the benchmark server uses."""
    import jwt

    now = int(time.time())
    return [
        jwt.encode(
            {"sub": pid, "role": "player", "typ": "access", "iat": now, "exp": now + ttl_s, "jti": f"b{i}"},
            JWT_SECRET,
            algorithm="HS256",
        )
        for i, pid in enumerate(ids)
    ]


# ---- the load generator: a minimal WebSocket client on raw asyncio protocols ----------------
#
# The lightest client that keeps up: no library framing, one `data_received` per
# TCP read, frames parsed with slicing, the receive instant taken once per read.
# It runs in its own process (`python -m benchmarks.common loadgen`) on uvloop,
# driven by JSON lines on stdin, answering JSON lines on stdout.


class WsListener(Protocol):
    """What a WsClient reports to: its text frames, and that it closed."""

    open: set[WsClient]

    def on_text(self, client: WsClient, payload: bytes, now: float) -> None: ...

    def lost(self, client: WsClient) -> None: ...


class WsClient(asyncio.Protocol):
    def __init__(self, gen: WsListener, path: str, host: str) -> None:
        self.gen = gen
        self.path = path
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.upgraded = False
        self.head = b""  # the handshake's response head
        self.welcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.pending: dict[int, float] = {}  # action id -> sent at
        self.ticks = 0
        self.last_tick = 0.0  # when the previous tick arrived (for the inter-arrival deviation)
        self.waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        self.transport.write(
            (
                f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gen.lost(self)
        if not self.welcome.done():
            self.welcome.set_result(False)

    def send_text(self, payload: bytes) -> None:
        n = len(payload)
        head = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
        mask = os.urandom(4)
        rep = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(rep, "big")).to_bytes(n, "big")
        assert self.transport is not None
        self.transport.write(head + mask + masked)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf + data if self.buf else data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if b" 101 " not in buf[:end]:
                self.welcome.set_result(False)
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            self.head = buf[:end]
            buf = buf[end + 4 :]
        gen = self.gen
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            n = buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if size - pos < head + n:
                break
            payload = buf[pos + head : pos + head + n]
            pos += head + n
            op = b0 & 0x0F
            if op == 1:
                gen.on_text(self, payload, now)
            elif op == 9:  # ping -> pong
                assert self.transport is not None
                self.send_control(0x8A, payload)
            elif op == 8:
                assert self.transport is not None
                self.transport.close()
        self.buf = buf[pos:] if pos < size else b""

    def send_control(self, first: int, payload: bytes) -> None:
        mask = b"\x00\x00\x00\x00"  # a zero mask is a valid mask
        assert self.transport is not None
        self.transport.write(bytes((first, 0x80 | len(payload))) + mask + payload)


def server_time(payload: bytes) -> float | None:
    i = payload.find(b'"server_time":')
    if i < 0:
        return None
    i += 14
    j = i
    while payload[j] in b"0123456789.eE+-":
        j += 1
    return float(payload[i:j])


class LoadGen:
    """Many WsClients; counts what arrives and how late ticks are."""

    def __init__(self) -> None:
        self.open: set[WsClient] = set()
        self.measuring = False
        self.messages = 0
        self.tick_messages = 0
        self.tick_bytes = 0
        self.bytes = 0
        self.lateness: list[float] = []
        self.per_tick: dict[float, float] = {}  # server_time -> latest arrival
        self.interval = 1.0  # the tick interval the inter-arrival deviation is measured against
        self.deviation: list[float] = []  # |arrival gap - interval| of each socket's consecutive ticks
        self.action_latency: list[float] = []
        self.action_sent: list[float] = []
        self.action_ok = 0
        self.action_err = 0
        self.errors: dict[str, int] = {}

    def lost(self, client: WsClient) -> None:
        self.open.discard(client)

    def on_text(self, client: WsClient, payload: bytes, now: float) -> None:
        if payload.startswith(b'{"type":"tick"'):
            client.ticks += 1
            last, client.last_tick = client.last_tick, now
            if self.measuring:
                if last:
                    self.deviation.append(abs(now - last - self.interval))
                self.messages += 1
                self.tick_messages += 1
                self.tick_bytes += len(payload)
                self.bytes += len(payload)
                st = server_time(payload)
                if st is not None:
                    self.lateness.append(now - st)
                    worst = self.per_tick.get(st, 0.0)
                    if now - st > worst:
                        self.per_tick[st] = now - st
            return
        if self.measuring:
            self.messages += 1
            self.bytes += len(payload)
        if payload.startswith(b'{"type":"welcome"'):
            if not client.welcome.done():
                client.welcome.set_result(True)
        elif payload.startswith(b'{"type":"result"') or payload.startswith(b'{"type":"error"'):
            obj = orjson.loads(payload)
            sent = client.pending.pop(obj.get("id"), None)
            if sent is not None and self.measuring:
                self.action_latency.append(now - sent)
                self.action_sent.append(sent)
                if obj["type"] == "result":
                    self.action_ok += 1
                else:
                    self.action_err += 1
                    code = obj.get("data", {}).get("code", "?")
                    self.errors[code] = self.errors.get(code, 0) + 1
            if client.waiter is not None and not client.pending and not client.waiter.done():
                client.waiter.set_result(None)

    async def connect(self, url: str, tokens: list[str], local_addr: str, concurrency: int) -> dict[str, Any]:
        from urllib.parse import urlsplit

        u = urlsplit(url)
        host, port = u.hostname or "127.0.0.1", u.port or 80
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(concurrency)
        ok = 0
        failed = 0
        started = time.perf_counter()

        async def one(token: str) -> None:
            nonlocal ok, failed
            async with sem:
                try:
                    path = f"{u.path}?token={token}" if token else u.path
                    _, client = await loop.create_connection(
                        lambda: WsClient(self, path, f"{host}:{port}"), host, port, local_addr=(local_addr, 0)
                    )
                    if await asyncio.wait_for(client.welcome, 60):
                        self.open.add(client)
                        ok += 1
                    else:
                        failed += 1
                except (OSError, TimeoutError):
                    failed += 1

        await asyncio.gather(*(one(t) for t in tokens))
        return {"connected": ok, "failed": failed, "seconds": time.perf_counter() - started, "open": len(self.open)}

    def _reset(self) -> None:
        self.messages = self.tick_messages = self.tick_bytes = self.bytes = 0
        self.lateness = []
        self.deviation = []
        self.per_tick = {}
        self.action_latency = []
        self.action_sent = []
        self.action_ok = self.action_err = 0
        self.errors = {}

    async def measure(self, seconds: float, interval: float = 1.0) -> dict[str, Any]:
        me = ProcStats(os.getpid())
        self._reset()
        self.interval = interval
        me.start()
        started = time.perf_counter()
        self.measuring = True
        await asyncio.sleep(seconds)
        self.measuring = False
        wall = time.perf_counter() - started
        return self._summary(wall, me.cpu_fraction())

    def _summary(self, wall: float, cpu: float) -> dict[str, Any]:
        lat = self.lateness
        act = self.action_latency
        return {
            "window_s": wall,
            "messages": self.messages,
            "messages_per_s": self.messages / wall,
            "tick_messages": self.tick_messages,
            "bytes_per_s": self.bytes / wall,
            "mean_tick_bytes": self.tick_bytes / self.tick_messages if self.tick_messages else 0,
            "lateness_p50_ms": percentile(lat, 50) * 1e3,
            "lateness_p99_ms": percentile(lat, 99) * 1e3,
            "lateness_max_ms": max(lat) * 1e3 if lat else float("nan"),
            "interarrival_dev_p99_ms": percentile(self.deviation, 99) * 1e3,
            "interarrival_dev_max_ms": max(self.deviation) * 1e3 if self.deviation else float("nan"),
            "loadgen_cpu": cpu,
            "tick_spread_ms": [round((v) * 1e3, 1) for _, v in sorted(self.per_tick.items())],
            "open": len(self.open),
            "actions_ok": self.action_ok,
            "actions_err": self.action_err,
            "action_errors": self.errors,
            "actions_per_s": (self.action_ok + self.action_err) / wall,
            "action_p50_ms": percentile(act, 50) * 1e3,
            "action_p99_ms": percentile(act, 99) * 1e3,
            "action_stalls": self._stalls(),
        }

    def _stalls(self, slow_s: float = 0.025) -> list[list[float]]:
        """When answers were slow: [seconds into the window, slow answers, worst ms] per 100 ms."""
        if not self.action_sent:
            return []
        t0 = min(self.action_sent)
        buckets: dict[int, list[float]] = {}
        for sent, lat in zip(self.action_sent, self.action_latency, strict=True):
            if lat > slow_s:
                buckets.setdefault(int((sent - t0) * 10), []).append(lat)
        return [[k / 10, len(v), round(max(v) * 1e3, 1)] for k, v in sorted(buckets.items())]

    async def actions(self, seconds: float, rate: float, messages: list[str], in_flight: int) -> dict[str, Any]:
        """Send WS actions: at `rate` per second in all (0 = as fast as replies come back),
        at most `in_flight` unanswered per socket, rotating over sockets and `messages`."""
        clients = [c for c in self.open if not c.closed]
        for c in clients:
            c.waiter = None
            c.pending.clear()
        me = ProcStats(os.getpid())
        self._reset()
        me.start()
        started = time.perf_counter()
        self.measuring = True
        deadline = started + seconds
        seq = 0
        bodies = [m.encode() for m in messages]

        def send(c: WsClient) -> None:
            nonlocal seq
            seq += 1
            c.pending[seq] = time.time()
            body = bodies[seq % len(bodies)]
            c.send_text(b'{"type":"action","id":' + str(seq).encode() + b',"data":' + body + b"}")

        if rate <= 0:

            async def worker(c: WsClient) -> None:
                while time.perf_counter() < deadline and not c.closed:
                    c.waiter = asyncio.get_running_loop().create_future()
                    for _ in range(in_flight):
                        send(c)
                    try:
                        await asyncio.wait_for(c.waiter, 10)
                    except TimeoutError:
                        return

            await asyncio.gather(*(worker(c) for c in clients))
        else:
            interval = 1.0 / rate
            next_at = time.perf_counter()
            i = 0
            while time.perf_counter() < deadline:
                now = time.perf_counter()
                while next_at <= now:
                    c = clients[i % len(clients)]
                    i += 1
                    if len(c.pending) < in_flight:
                        send(c)
                    next_at += interval
                await asyncio.sleep(max(0.0, min(next_at - time.perf_counter(), 0.005)))
            await asyncio.sleep(0.5)  # let the last answers in
        self.measuring = False
        wall = time.perf_counter() - started
        return self._summary(min(wall, seconds) if rate > 0 else wall, me.cpu_fraction())

    def close(self, n: int | None = None) -> int:
        """Close `n` of the open sockets (all of them by default); how many were closed."""
        some = list(self.open)[:n]
        for c in some:
            if c.transport is not None:
                c.transport.close()
            self.open.discard(c)
        return len(some)


async def _loadgen_main() -> None:
    gen = LoadGen()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        cmd = orjson.loads(line)
        op = cmd.pop("cmd")
        if op == "connect":
            out = await gen.connect(**cmd)
        elif op == "measure":
            out = await gen.measure(**cmd)
        elif op == "actions":
            out = await gen.actions(**cmd)
        elif op == "close":
            out = {"closed": gen.close(cmd.get("n"))}
            await asyncio.sleep(0.5)
        elif op == "exit":
            gen.close()
            return
        else:
            out = {"error": f"unknown command {op}"}
        sys.stdout.write(orjson.dumps(out).decode() + "\n")
        sys.stdout.flush()


class LoadGenProcess:
    """The parent's handle on a load-generator process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [PY, "-m", "benchmarks.common", "loadgen"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.stats = ProcStats(self.proc.pid)

    def call(self, cmd: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps({"cmd": cmd, **kw}) + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited ({self.proc.poll()})")
        out: dict[str, Any] = orjson.loads(line)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(b'{"cmd":"exit"}\n')
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> LoadGenProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- the bare baselines (run as `python -m benchmarks.common KIND`) -----------------------


LAG_WINDOW_S = 10.0  # as llamawool.observability.LOOP_LAG_MAX_WINDOW_S
LAG_SAMPLE_S = 0.005  # both servers' event-loop probes, in the ws benchmark


def _run_bare(kind: str, port: int, interval: float, payload_bytes: int, lag_sample_s: float = LAG_SAMPLE_S) -> None:
    import uvloop
    from aiohttp import WSMsgType, web

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    async def echo(request: web.Request) -> web.Response:
        """A bare JSON handler: parse the body, answer a small JSON document."""
        body = orjson.loads(await request.read()) if request.can_read_body else {}
        out = {"ok": True, "got": body, "server_time": time.time()}
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    clients: set[web.WebSocketResponse] = set()
    lags: deque[tuple[float, float]] = deque()  # (when, lag): the same probe as the server's

    async def lag(request: web.Request) -> web.Response:
        """The longest event-loop lag of the last LAG_WINDOW_S (llamawool_event_loop_lag_max_seconds)."""
        since = asyncio.get_running_loop().time() - LAG_WINDOW_S
        return web.json_response({"max_s": max((v for t, v in lags if t >= since), default=0.0)})

    async def lag_probe(app: web.Application) -> Any:
        async def probe() -> None:
            lp = asyncio.get_running_loop()
            while True:
                asked = lp.time() + lag_sample_s
                await asyncio.sleep(lag_sample_s)
                now = lp.time()
                lags.append((now, max(0.0, now - asked)))
                while lags[0][0] < now - LAG_WINDOW_S:
                    lags.popleft()

        task = asyncio.create_task(probe())
        yield
        task.cancel()

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        await ws.send_str('{"type":"welcome","data":{}}')
        clients.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            clients.discard(ws)
        return ws

    async def broadcaster(app: web.Application) -> Any:
        async def loop() -> None:
            lp = asyncio.get_running_loop()
            next_at = lp.time() + interval
            while True:
                await asyncio.sleep(max(0.0, next_at - lp.time()))
                next_at += interval
                now = time.time()
                head = orjson.dumps({"type": "tick", "data": {"server_time": now, "pad": ""}})
                pad = "x" * max(0, payload_bytes - len(head))
                msg = orjson.dumps({"type": "tick", "data": {"server_time": now, "pad": pad}}).decode()
                for ws in list(clients):
                    if not ws.closed:
                        await ws.send_str(msg)

        task = asyncio.create_task(loop())
        yield
        task.cancel()

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/lag", lag)
    app.cleanup_ctx.append(lag_probe)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get(WS_PATH, ws_handler)
    if kind == "bare-broadcast":
        app.cleanup_ctx.append(broadcaster)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=uvloop.new_event_loop())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.common")
    p.add_argument("kind", choices=["bare-json", "bare-broadcast", "loadgen"])
    p.add_argument("--port", type=int)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--payload-bytes", type=int, default=300)
    a = p.parse_args(argv)
    raise_nofile()
    if a.kind == "loadgen":
        import uvloop

        uvloop.run(_loadgen_main())
        return 0
    _run_bare(a.kind, a.port, a.interval, a.payload_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
