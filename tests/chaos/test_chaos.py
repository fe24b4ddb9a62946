"""Chaos under load (issue 8, item 4) on the embedded and the production backends.

One server process (SQLite, or MongoDB-wire + Redis) serves players who shear
and buy barns back to back over REST, each POST carrying an Idempotency-Key
and retried with the same key until answered (a connection error or a 503 is
retried; any other answer is final), plus a few WebSockets that reconnect.
Mid-stream the test injects one fault:

- kill -9, then a restart on the same port and data;
- SIGTERM (a drain), then a restart;
- (SQLite) the disk full: the data folder is a 16 MiB tmpfs that a filler file
  fills; actions must answer 503 + Retry-After (never 500), `/ready` 503;
  the filler is then removed and the server must recover by itself.

Afterwards every farm is read back: the barns bought and the wool sheared
that were acknowledged must equal what is found (every request was retried
until answered, so nothing is left in doubt), no client saw anything but
200/409 answers, 503s with Retry-After, or connection errors while the
process was down, and each farm's balance follows its closed form.

Each scenario appends a one-line JSON summary to SUMMARIES (printed at the end
of the run by conftest.py): `.venv/bin/pytest -q tests/chaos`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.cluster import CLUSTER_SECRET, unavailable
from tests.e2e.test_durability import Api, assert_balance_follows_the_closed_form
from tests.helpers import REPO, ServerProcess
from tests.mongo_server import cluster_mongo, start_or_skip
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

API = "/api/v1"
PLAYERS = 12
SOCKETS = 4  # players 0..3 also hold a WebSocket that reconnects
WARM_ACKS = 60  # acknowledged actions before the fault
AFTER_S = 3.0  # play after recovery before stopping
DISK_MIB = 16  # more than SQLite's WAL at its automatic checkpoint (1000 pages, 4 MiB)
SUMMARIES: list[str] = []


def chaos_env(work: Path) -> dict[str, str]:
    cfg = json.loads((REPO / "config" / "game-config.json").read_text())
    cfg["antiCheat"]["maxActionsPerMinute"] = 1_000_000
    path = work / "game-config.chaos.json"
    path.write_text(json.dumps(cfg))
    return {
        "LLAMAWOOL_GAME_CONFIG_FILE": str(path),
        "LLAMAWOOL_GUESTS_PER_IP_PER_HOUR": "100000",
        "LLAMAWOOL_SHEAR_REQUESTS_PER_MINUTE": "1000000",
        "LLAMAWOOL_WS_VIOLATIONS_BEFORE_CLOSE": "1000000",
        "LLAMAWOOL_DRAIN_GRACE_S": "5",
        "LLAMAWOOL_LEASE_TTL_S": "3",
        "LLAMAWOOL_RPC_TIMEOUT_S": "1.5",
        "LLAMAWOOL_TICK_INTERVAL_S": "0.5",
        "LLAMAWOOL_LOG_LEVEL": "warning",
    }


@dataclass
class Player:
    headers: dict[str, str] = field(default_factory=dict)
    token: str = ""
    initial: dict[str, Any] = field(default_factory=dict)
    acked_barns: int = 0
    acked_sheared: int = 0


@dataclass
class Load:
    """The players, what they were told, and every answer they saw."""

    url: str
    # How long one request may go unanswered (retried with its key) before the test fails.
    # On MongoDB a process killed inside a commit transaction leaves it open, and the
    # server refuses other writes to those farms (WriteConflict) until it aborts the
    # orphan after `transactionLifetimeLimitSeconds` (60 s by default, in mongod and in
    # SecantusDB alike; docs/operations.md says to lower it): the wait is bounded by that,
    # and nothing acknowledged may be lost meanwhile.
    unanswered_s: float = 30.0
    players: list[Player] = field(default_factory=lambda: [Player() for _ in range(PLAYERS)])
    acked: int = 0
    refused: int = 0  # 409: cannot afford (nothing applied)
    statuses: dict[str, int] = field(default_factory=dict)  # every answer or failure seen, by status
    bad: list[str] = field(default_factory=list)  # anything a client must never see
    retried: int = 0  # requests that needed the same Idempotency-Key again
    replayed: int = 0  # retries the server answered from its idempotency record
    ws_welcomes: int = 0
    ws_closes: dict[str, int] = field(default_factory=dict)
    first_ack_after: float | None = None  # set at the fault; the first ack after it
    fault_at: float | None = None
    warm: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def saw(self, key: str) -> None:
        self.statuses[key] = self.statuses.get(key, 0) + 1

    async def post(self, s: aiohttp.ClientSession, p: Player, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """POST with one Idempotency-Key, retried until the server gives a final answer."""
        key = uuid.uuid4().hex
        deadline = time.monotonic() + self.unanswered_s
        tries = 0
        while True:
            tries += 1
            try:
                async with s.post(self.url + API + path, json=body, headers={**p.headers, "Idempotency-Key": key}) as r:
                    data = await r.json(content_type=None)
                    self.saw(str(r.status))
                    if r.status == 503:
                        if not r.headers.get("Retry-After"):
                            self.bad.append(f"{path}: 503 without Retry-After")
                        wait = min(float(r.headers.get("Retry-After") or 1), 1.0)
                    elif r.status >= 500:
                        self.bad.append(f"{path}: {r.status} {data}")
                        return r.status, data
                    else:
                        if tries > 1:
                            self.retried += 1
                            self.replayed += r.headers.get("Idempotent-Replayed", "") == "true"
                        return r.status, data
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                self.saw("no answer")
                wait = 0.2
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} unanswered for {self.unanswered_s:.0f} s")
            await asyncio.sleep(wait * random.uniform(0.5, 1.0))

    async def join(self, s: aiohttp.ClientSession, i: int) -> None:
        p = self.players[i]
        async with s.post(self.url + API + "/auth/guest", json={"device_id": f"chaos-{uuid.uuid4().hex}"}) as r:
            assert r.status in (200, 201), await r.text()
            body = await r.json()
        p.token = body["access_token"]
        p.headers = {"Authorization": f"Bearer {p.token}"}
        status, reply = await self.post(s, p, "/farm/shear", {"count": 20})  # wool for the first barns
        assert status == 200, reply
        p.acked_sheared += reply["result"]["sheared"]
        self.acked += 1
        async with s.get(self.url + API + "/farm", headers=p.headers) as r:
            assert r.status == 200
            p.initial = await r.json()
        p.acked_sheared = 0  # counted from `initial` on
        self.acked = 0

    async def play(self, s: aiohttp.ClientSession, p: Player) -> None:
        n = random.randrange(2)
        while not self.stop.is_set():
            n += 1
            if n % 2:
                status, body = await self.post(s, p, "/farm/shear", {"count": random.randint(1, 5)})
                if status == 200:
                    p.acked_sheared += body["result"]["sheared"]
            else:
                status, body = await self.post(s, p, "/farm/buildings/barn/purchase", {"quantity": 1})
                if status == 200:
                    p.acked_barns += body["result"]["bought"]
            if status == 200:
                self.acked += 1
                if self.fault_at is not None and self.first_ack_after is None:
                    self.first_ack_after = time.monotonic() - self.fault_at
                if self.acked >= WARM_ACKS:
                    self.warm.set()
            elif status in (409, 429):
                self.refused += 1  # cannot afford / shear bucket empty: nothing applied
            else:
                self.bad.append(f"{status} {body}")
            await asyncio.sleep(random.uniform(0.02, 0.08))

    async def socket(self, s: aiohttp.ClientSession, p: Player) -> None:
        ws_url = self.url.replace("http", "ws") + API + "/ws"
        while not self.stop.is_set():
            try:
                async with s.ws_connect(ws_url, headers=p.headers, heartbeat=5) as ws:
                    async for msg in ws:
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        m = msg.json()
                        if m["type"] == "welcome":
                            self.ws_welcomes += 1
                        elif m["type"] == "error" and m["data"].get("code") not in ("UNAVAILABLE",):
                            self.bad.append(f"ws error {m['data']}")
                        if self.stop.is_set():
                            break
                    code = str(ws.close_code)
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                code = type(exc).__name__
            if not self.stop.is_set():
                self.ws_closes[code] = self.ws_closes.get(code, 0) + 1
                await asyncio.sleep(0.2)


@asynccontextmanager
async def playing(load: Load) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        await asyncio.gather(*(load.join(s, i) for i in range(PLAYERS)))
        tasks = [asyncio.create_task(load.play(s, p)) for p in load.players]
        tasks += [asyncio.create_task(load.socket(s, p)) for p in load.players[:SOCKETS]]
        try:
            await asyncio.wait_for(load.warm.wait(), 30)
            yield s
        finally:
            load.stop.set()
            done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 70)
            load.bad += [f"client task failed: {r!r}" for r in done if isinstance(r, BaseException)]


async def verify(load: Load, s: aiohttp.ClientSession) -> dict[str, int]:
    """Acknowledged vs found, per farm, summed; every balance follows its closed form."""
    acked_barns = found_barns = acked_sheared = found_sheared = 0
    for p in load.players:
        async with s.get(load.url + API + "/farm", headers=p.headers) as r:
            assert r.status == 200, await r.text()
            farm = await r.json()
        acked_barns += p.acked_barns
        acked_sheared += p.acked_sheared
        found_barns += farm["buildings"].get("barn", 0) - p.initial["buildings"].get("barn", 0)
        found_sheared += farm["stats"]["shears"] - p.initial["stats"]["shears"]
        await assert_balance_follows_the_closed_form(Api(s, load.url, p.token))
    return {
        "acked_barns": acked_barns,
        "found_barns": found_barns,
        "acked_sheared": acked_sheared,
        "found_sheared": found_sheared,
    }


def report(scenario: str, backend: str, load: Load, found: dict[str, int], **extra: Any) -> dict[str, Any]:
    line = {
        "scenario": scenario,
        "backend": backend,
        "players": PLAYERS,
        "sockets": SOCKETS,
        "acked_actions": load.acked,
        **found,
        "unresolved": 0,
        "retried_same_key": load.retried,
        "replayed": load.replayed,
        "client_saw": dict(sorted(load.statuses.items())),
        "ws_welcomes": load.ws_welcomes,
        "ws_closes": dict(sorted(load.ws_closes.items())),
        "bad": len(load.bad),
        **extra,
    }
    SUMMARIES.append(json.dumps(line))
    print(json.dumps(line))
    return line


def assert_nothing_lost(load: Load, found: dict[str, int]) -> None:
    assert not load.bad, load.bad[:10]
    assert found["acked_barns"] == found["found_barns"], found
    assert found["acked_sheared"] == found["found_sheared"], found
    assert found["acked_barns"] >= 1, "no barn was bought: the test proves nothing about purchases"
    allowed = {"200", "409", "429", "503", "no answer"}
    assert set(load.statuses) <= allowed, load.statuses


# ---- backends ------------------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    env: dict[str, str]
    close: list[Any] = field(default_factory=list)


@asynccontextmanager
async def backend(name: str, work: Path) -> AsyncIterator[Backend]:
    env = chaos_env(work)
    if name == "sqlite":
        yield Backend(name, env)
        return
    mongo = cluster_mongo(work)  # the test URI's MongoDB where one is given, else SecantusDB
    redis = RedisServer(work_dir=work / "redis")
    await asyncio.to_thread(start_or_skip, mongo)
    try:
        try:
            await asyncio.to_thread(redis.start)
        except (RuntimeError, OSError) as exc:
            unavailable(f"cannot start redis-server: {exc}")
        env |= {"MONGODB_URI": mongo.uri, "REDIS_URI": redis.url, "JWT_SECRET": CLUSTER_SECRET}
        yield Backend(name, env)
    finally:
        redis.stop()
        mongo.stop()


async def wait_ready(url: str, s: aiohttp.ClientSession, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with s.get(url + "/ready") as r:
                if r.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} not ready within {timeout}s")


# ---- kill -9 and SIGTERM under load --------------------------------------------------------


@pytest.mark.timeout(240)  # a MongoDB kill -9 may leave a farm unwritable for 60 s (Load.unanswered_s)
@pytest.mark.parametrize("fault", ["kill-9", "sigterm"])
@pytest.mark.parametrize("backend_name", ["sqlite", "mongo+redis"])
async def test_process_death_under_load_loses_nothing_acknowledged(
    tmp_path: Path, backend_name: str, fault: str
) -> None:
    async with backend(backend_name, tmp_path) as be:
        server = ServerProcess(tmp_path / "data", env=be.env)
        await asyncio.to_thread(server.start)
        orphaned_txn_s = 60.0 if backend_name == "mongo+redis" and fault == "kill-9" else 0.0
        load = Load(server.url, unanswered_s=30.0 + orphaned_txn_s)
        restarted = ServerProcess(tmp_path / "data", port=server.port, env=be.env)
        try:
            async with playing(load):
                load.fault_at = time.monotonic()
                acked_at_fault = load.acked
                if fault == "kill-9":
                    await asyncio.to_thread(server.kill)
                    exit_code = -9
                else:
                    exit_code = await asyncio.to_thread(server.terminate, 15)
                    assert exit_code == 0, server.log_path.read_text()[-2000:]
                down_s = time.monotonic() - load.fault_at
                await asyncio.to_thread(restarted.start)
                ready_s = time.monotonic() - load.fault_at
                load.fault_at, load.first_ack_after = time.monotonic(), None  # from ready to the first ack
                deadline = time.monotonic() + 20
                while load.first_ack_after is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert load.first_ack_after is not None, "no action succeeded after the restart"
                await asyncio.sleep(AFTER_S)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s2:
                found = await verify(load, s2)
        finally:
            server.kill()
            restarted.kill()
    report(
        fault,
        backend_name,
        load,
        found,
        acked_before_fault=acked_at_fault,
        exit_code=exit_code,
        process_gone_s=round(down_s, 3),
        fault_to_ready_s=round(ready_s, 3),
        ready_to_first_ack_s=round(load.first_ack_after, 3),
    )
    assert_nothing_lost(load, found)
    assert load.ws_welcomes > SOCKETS, "the sockets did not reconnect"


# ---- the disk full (SQLite) -----------------------------------------------------------------


def as_root(*command: str) -> list[str]:
    """The command as root: as it is when the tests run as root, else through `sudo -n`
    (a hosted CI runner's user may, without a password)."""
    return list(command) if os.geteuid() == 0 else ["sudo", "-n", *command]


def tmpfs_mount(path: Path, mib: int) -> list[str]:
    """Mount a tmpfs that the user running the tests owns (root mounts it, the server writes it)."""
    options = f"size={mib}m,mode=0700,uid={os.getuid()},gid={os.getgid()}"
    return as_root("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path))


@contextlib.contextmanager
def small_disk(path: Path, mib: int) -> Any:
    path.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            tmpfs_mount(path, mib),
            capture_output=True,
            text=True,
            timeout=10,
        )
        error = proc.stderr.strip() if proc.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        error = str(exc)
    if error:
        unavailable(f"cannot mount a {mib} MiB tmpfs (needs root, CAP_SYS_ADMIN or sudo without a password): {error}")
    try:
        yield path
    finally:
        subprocess.run(as_root("umount", "-l", str(path)), capture_output=True, timeout=10, check=False)


def fill(path: Path) -> int:
    """Write a filler file until the file system refuses even 512 bytes; returns bytes written."""
    written = 0
    with (path / "filler").open("wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 512):
            block = b"\0" * chunk
            while True:
                try:
                    written += f.write(block) or 0
                except OSError:
                    break
    return written


async def test_disk_full_answers_503_reports_unready_and_recovers_by_itself(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", DISK_MIB) as disk:
        async with backend("sqlite", tmp_path) as be:
            server = ServerProcess(disk / "data", env=be.env)
            server.log_path = tmp_path / "server.log"  # the log lives on another disk
            await asyncio.to_thread(server.start)
            load = Load(server.url)
            ready_seen: dict[str, int] = {}
            try:
                async with playing(load) as s:
                    try:
                        filled = await asyncio.to_thread(fill, disk)
                        load.fault_at = time.monotonic()
                        acked_at_fault = load.acked
                        # keep playing until the writes fail and /ready says so
                        first_503_s = unready_s = None
                        deadline = time.monotonic() + 30
                        while time.monotonic() < deadline and (first_503_s is None or unready_s is None):
                            if first_503_s is None and load.statuses.get("503"):
                                first_503_s = time.monotonic() - load.fault_at
                            async with s.get(server.url + "/ready") as r:
                                ready_seen[str(r.status)] = ready_seen.get(str(r.status), 0) + 1
                                if r.status == 503 and unready_s is None:
                                    assert r.headers.get("Retry-After"), "/ready 503 without Retry-After"
                                    unready_s = time.monotonic() - load.fault_at
                            await asyncio.sleep(0.1)
                        assert first_503_s is not None, f"no action answered 503 on a full disk ({load.statuses})"
                        assert unready_s is not None, f"/ready never reported the full disk ({ready_seen})"
                        await asyncio.sleep(2.0)  # a while on the full disk
                        statuses_full = dict(load.statuses)
                        (disk / "filler").unlink()
                        freed_at = time.monotonic()
                        load.fault_at, load.first_ack_after = freed_at, None
                        await wait_ready(server.url, s, timeout=30)
                        ready_again_s = time.monotonic() - freed_at
                        deadline = time.monotonic() + 20
                        while load.first_ack_after is None and time.monotonic() < deadline:
                            await asyncio.sleep(0.05)
                        assert load.first_ack_after is not None, "no action succeeded after space was freed"
                        await asyncio.sleep(AFTER_S)
                    finally:  # free the disk even when the scenario fails
                        with contextlib.suppress(FileNotFoundError):
                            (disk / "filler").unlink()
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s2:
                    found = await verify(load, s2)
                assert server.proc is not None and server.proc.poll() is None, "the server died on the full disk"
            finally:
                with contextlib.suppress(FileNotFoundError):
                    (disk / "filler").unlink()
                server.kill()
    report(
        "disk-full",
        "sqlite",
        load,
        found,
        disk_mib=DISK_MIB,
        filler_bytes=filled,
        acked_before_fault=acked_at_fault,
        fault_to_first_503_s=round(first_503_s, 3),
        fault_to_unready_s=round(unready_s, 3),
        statuses_until_freed=dict(sorted(statuses_full.items())),
        ready_while_full=ready_seen,
        freed_to_ready_s=round(ready_again_s, 3),
        freed_to_first_ack_s=round(load.first_ack_after, 3),
        server_restarted=False,
    )
    assert_nothing_lost(load, found)
    assert "500" not in load.statuses
