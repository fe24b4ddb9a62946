"""A real cluster for tests: MongoDB-wire + Redis + N replicas behind nginx."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e import nginx_conf
from tests.helpers import REPO, ServerProcess, free_port, in_ci
from tests.mongo_server import cluster_mongo, start_or_skip
from tests.redis_server import RedisServer

CLUSTER_SECRET = "cluster-test-secret-0123456789abcdef-0123456789"


def nginx_command() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def unavailable(message: str) -> None:
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


class Nginx:
    """nginx in the foreground with its own prefix, running the config we ship
    (deploy/nginx/llamawool.conf, see tests/e2e/nginx_conf.py) on these replicas: requests
    and WebSockets each through their own upstream group, as in production."""

    def __init__(
        self, work: Path, upstream_ports: list[int], worker_connections: int = 4096, name_upstream: bool = False
    ) -> None:
        self.work = work
        self.port = free_port()
        self.upstream_ports = upstream_ports
        self.worker_connections = worker_connections
        # the benchmark's load generator reads which replica answered (an internal address: tests only)
        self.name_upstream = name_upstream
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        """The whole nginx.conf: the shipped site config with its upstreams on our replicas
        (and, for the cluster benchmark, each answer naming the replica that served it)."""
        return nginx_conf.main_config(
            self.work,
            nginx_conf.site(self.upstream_ports, self.port),
            worker_connections=self.worker_connections,
            http_extra="add_header X-Upstream $upstream_addr always;" if self.name_upstream else "",
        )

    def start(self) -> Nginx:
        exe = nginx_command()
        if exe is None:
            unavailable("nginx is not installed: `make test` installs it (apt-get install nginx-light)")
        assert exe is not None
        self.work.mkdir(parents=True, exist_ok=True)
        conf = self.work / "nginx.conf"
        conf.write_text(self.config())
        self.proc = subprocess.Popen(
            [exe, "-p", str(self.work), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=(self.work / "stderr.log").open("ab"),
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.work / 'stderr.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not come up")

    def set_upstreams(self, ports: list[int]) -> None:
        """Route to these replicas from now on: rewrite the config and reload (SIGHUP), as an
        operator or the ingress controller does when a replica is added or removed. Open
        connections stay on the old worker until they close."""
        assert self.proc is not None and self.proc.poll() is None
        self.upstream_ports = list(ports)
        (self.work / "nginx.conf").write_text(self.config())
        self.proc.send_signal(signal.SIGHUP)

    def pids(self) -> list[int]:
        """The master and its workers (after a reload, the new workers)."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return []
        return [self.proc.pid, *(c.pid for c in psutil.Process(self.proc.pid).children())]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Cluster:
    def __init__(
        self,
        work: Path,
        replicas: int = 3,
        env: dict[str, str] | None = None,
        nginx_options: dict[str, Any] | None = None,
    ) -> None:
        self.work = work
        self.nginx_options = nginx_options or {}
        self.mongo = cluster_mongo(work)
        self.redis = RedisServer(work_dir=work / "redis")
        self.env = env or {}
        self.replicas: list[ServerProcess] = []
        self.n = replicas
        self.nginx: Nginx | None = None

    def replica_env(self) -> dict[str, str]:
        return {
            "MONGODB_URI": self.mongo.uri,
            "REDIS_URI": self.redis.url,
            "JWT_SECRET": CLUSTER_SECRET,
            "LLAMAWOOL_LOG_LEVEL": "warning",
            **self.env,
        }

    def start_backends(self) -> None:
        """MongoDB-wire and Redis only (skipped, or failed in CI, when they cannot start); the
        caller starts replicas and nginx itself, and `stop` stops whatever it has started."""
        start_or_skip(self.mongo)
        try:
            self.redis.start()
        except (RuntimeError, OSError) as exc:
            unavailable(f"cannot start redis-server: {exc}")

    def start(self) -> Cluster:
        """Start everything; if any part fails (or skips), stop what did start."""
        try:
            self.start_backends()
            for i in range(self.n):
                self.replicas.append(ServerProcess(self.work / f"replica-{i}", env=self.replica_env()))
            for r in self.replicas:  # start all, then wait: they boot in parallel
                r.start_async()
            for r in self.replicas:
                r.wait_ready()
            self.nginx = Nginx(self.work / "nginx", [r.port for r in self.replicas], **self.nginx_options).start()
        except BaseException:
            self.stop()
            raise
        return self

    def add_replica(self) -> ServerProcess:
        """Start one more replica and route to it (a scale-out)."""
        replica = ServerProcess(self.work / f"replica-{len(self.replicas)}", env=self.replica_env())
        self.replicas.append(replica)
        replica.start()
        assert self.nginx is not None
        self.nginx.set_upstreams([r.port for r in self.replicas])
        return replica

    def create_admin(self, username: str, email: str, password: str) -> None:
        """An admin account in the cluster's store, made by the CLI as an operator would."""
        env = {**os.environ, **self.replica_env(), "LLAMAWOOL_ENV": "test", "LLAMAWOOL_ADMIN_PASSWORD": password}
        out = subprocess.run(
            [
                sys.executable,
                *("-m", "llamawool", "admin", "create-admin", "--username", username),
                *("--email", email, "--data-dir", str(self.work / "admin")),
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr.decode()[-2000:]

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    def stop(self) -> None:
        """Stop every part, each even if stopping another failed."""
        parts = [*([self.nginx.stop] if self.nginx else []), *(r.kill for r in self.replicas)]
        parts += [self.redis.stop, self.mongo.stop]
        failures = []
        for stop in parts:
            try:
                stop()
            except Exception as exc:  # each part gets its turn
                failures.append(exc)
        if failures:
            raise failures[0]


# ---- a simulated player's socket actions (shared by the cluster and outage simulations) ----

Pending = dict[str, "asyncio.Future[dict[str, Any]]"]


async def ws_action(
    ws: aiohttp.ClientWebSocketResponse, pending: Pending, data: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    """Send an action with a fresh id and wait for the `result` or `error` with that id
    (the socket's reader hands it over with `answered`). Raises what the socket or the
    wait raised: then the client cannot know whether the action was applied."""
    mid = uuid.uuid4().hex
    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    pending[mid] = fut
    try:
        await ws.send_json({"type": "action", "id": mid, "data": data})
        async with asyncio.timeout(timeout_s):
            return await fut
    finally:
        pending.pop(mid, None)


def answered(pending: Pending, message: dict[str, Any]) -> None:
    """The socket's reader got a `result` or `error`: wake whoever waits for its id."""
    fut = pending.pop(str(message.get("id")), None)
    if fut is not None and not fut.done():
        fut.set_result(message)
