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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
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
    k = max(0, min(len(ordered) - 1, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))
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


# ---- the server under test ---------------------------------------------------------------


def bench_config(directory: Path, actions_per_minute: int = 1_000_000) -> Path:
    """A copy of the ConfigMap with the per-player action limit raised for load tests."""
    cfg = json.loads((REPO / "config" / "game-config.json").read_text())
    cfg["antiCheat"]["maxActionsPerMinute"] = actions_per_minute
    path = directory / "game-config.bench.json"
    path.write_text(json.dumps(cfg, indent=2))
    return path


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "LLAMAWOOL_ENV": "test",
        "LLAMAWOOL_LOG_LEVEL": "warning",
        "LLAMAWOOL_JWT_SECRET": JWT_SECRET,
        "LLAMAWOOL_ACCESS_TOKEN_TTL_S": "7200",
        # anti-cheat limits raised: a load test is one IP and few players doing a lot
        "LLAMAWOOL_SHEAR_REQUESTS_PER_MINUTE": "100000000",
        "LLAMAWOOL_GUESTS_PER_IP_PER_HOUR": "100000000",
        "LLAMAWOOL_REGISTRATIONS_PER_IP_PER_HOUR": "100000000",
        "LLAMAWOOL_WS_VIOLATIONS_BEFORE_CLOSE": "100000000",
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
                with urllib.request.urlopen(self.url + self.ready_path, timeout=1) as resp:  # noqa: S310
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
        conn.executemany("INSERT OR REPLACE INTO farms (player_id, revision, doc, last_active) VALUES (?, ?, ?, ?)", farms)
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


# ---- the bare baselines (run as `python -m benchmarks.common KIND`) -----------------------


def _run_bare(kind: str, port: int, interval: float, payload_bytes: int) -> None:
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

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
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
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get(WS_PATH, ws_handler)
    if kind == "bare-broadcast":
        app.cleanup_ctx.append(broadcaster)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=uvloop.new_event_loop())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.common")
    p.add_argument("kind", choices=["bare-json", "bare-broadcast"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--payload-bytes", type=int, default=300)
    a = p.parse_args(argv)
    _run_bare(a.kind, a.port, a.interval, a.payload_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
