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
    """nginx in the foreground with its own prefix, proxying HTTP and WebSockets to the
    replica with the fewest connections (`least_conn`, as deploy/nginx/llamawool.conf does:
    sockets closed for rebalancing reconnect to the emptiest replica). WebSockets have their
    own upstream group whose 503s (a replica above its share) mark no replica failed."""

    def __init__(self, work: Path, upstream_ports: list[int]) -> None:
        self.work = work
        self.port = free_port()
        self.upstream_ports = upstream_ports
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;" for p in self.upstream_ports)
        ws_servers = "\n".join(f"    server 127.0.0.1:{p} max_fails=0;" for p in self.upstream_ports)
        # GETs (and WebSocket upgrades: a draining replica's, or a full one's) retry on the
        # next replica; POSTs are never replayed by nginx (clients retry them with the same
        # Idempotency-Key).
        proxy = """      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_connect_timeout 2s;
      proxy_read_timeout 3600s;
      proxy_next_upstream error timeout http_502 http_503;"""
        user = "user root;" if os.geteuid() == 0 else ""
        w = self.work
        return f"""{user}
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {w}/body;
  proxy_temp_path {w}/proxy;
  fastcgi_temp_path {w}/fastcgi;
  uwsgi_temp_path {w}/uwsgi;
  scgi_temp_path {w}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream llamawool {{
    least_conn;
{servers}
  }}
  upstream llamawool_ws {{
    least_conn;
{ws_servers}
  }}
  server {{
    listen 127.0.0.1:{self.port};
    location = /api/v1/ws {{
      proxy_pass http://llamawool_ws;
{proxy}
    }}
    location / {{
      proxy_pass http://llamawool;
{proxy}
    }}
  }}
}}
"""

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

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Cluster:
    def __init__(self, work: Path, replicas: int = 3, env: dict[str, str] | None = None) -> None:
        self.work = work
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

    def start(self) -> Cluster:
        """Start everything; if any part fails (or skips), stop what did start."""
        try:
            start_or_skip(self.mongo)
            try:
                self.redis.start()
            except (RuntimeError, OSError) as exc:
                unavailable(f"cannot start redis-server: {exc}")
            for i in range(self.n):
                self.replicas.append(ServerProcess(self.work / f"replica-{i}", env=self.replica_env()))
            for r in self.replicas:  # start all, then wait: they boot in parallel
                r.start_async()
            for r in self.replicas:
                r.wait_ready()
            self.nginx = Nginx(self.work / "nginx", [r.port for r in self.replicas]).start()
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
