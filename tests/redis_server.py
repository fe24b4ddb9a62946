"""A real Redis for the tests: `redis-server` on a free port, in memory only.

`shared_redis()` starts one server for the whole test session the first time a
test needs it (the session-scoped `redis_server` fixture yields its URL) and
stops it when the session ends. Tests that stop and restart Redis start their
own `RedisServer`. The machine's own Redis (port 6379) is never used.

When redis-server cannot start, a test skips with how to enable it, except with
CI=true, where it fails: CI must never pass by skipping Redis.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import die_with_parent, free_port, in_ci

ENABLE_HINT = (
    "Redis tests need redis-server 7 on PATH (Debian: `apt-get install redis-server`); "
    "with CI=true these tests fail instead of skipping"
)


def redis_server_command() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None


class RedisServer:
    """One `redis-server` process: no RDB snapshots, no AOF, bound to loopback."""

    def __init__(self, port: int | None = None, work_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self._own_dir = work_dir is None
        self._work_dir = work_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def work_dir(self) -> Path:
        if self._work_dir is None:
            self._work_dir = Path(tempfile.mkdtemp(prefix="llamawool-redis-"))
        return self._work_dir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.work_dir / f"redis-{self.port}.log"

    def start(self, timeout: float = 15.0) -> RedisServer:
        exe = redis_server_command()
        if exe is None:
            raise RuntimeError("redis-server not found")
        if self.port == 6379:
            raise RuntimeError("refusing the machine's own Redis port 6379")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                *die_with_parent(),
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.work_dir),
                "--logfile",
                str(self.log_path),
                "--daemonize",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self.log_tail()}")
            if self.answers_ping():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {timeout}s: {self.log_tail()}")

    def answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def cleanup(self) -> None:
        """Stop it and remove the scratch folder it made for itself."""
        self.stop()
        if self._own_dir and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL: Redis vanishes without a goodbye (connections drop mid-flight)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""


def unavailable(message: str) -> None:
    """Skip with how to enable it; under CI=true fail instead."""
    text = f"{message}. {ENABLE_HINT}"
    if in_ci():
        pytest.fail(text, pytrace=False)
    pytest.skip(text)


_shared: RedisServer | None = None
_shared_error: str | None = None


def shared_redis() -> RedisServer:
    """The session's server, started on first use (one attempt only, a few tries for a free port)."""
    global _shared, _shared_error
    if _shared is None and _shared_error is None:
        error = ""
        for _ in range(3):  # another process may grab the free port before redis-server binds it
            server = RedisServer()
            try:
                _shared = server.start()
                atexit.register(stop_shared_redis)
                break
            except (RuntimeError, OSError) as exc:
                server.cleanup()
                error = str(exc)
                if "not found" in error:
                    break
        if _shared is None:
            _shared_error = f"cannot start redis-server: {error}"
    if _shared is None:
        unavailable(_shared_error or "cannot start redis-server")
    assert _shared is not None
    return _shared


def stop_shared_redis() -> None:
    global _shared
    if _shared is not None:
        _shared.cleanup()
        _shared = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The URL of a redis-server the session started on a free port (stopped at the end)."""
    yield shared_redis().url
    stop_shared_redis()
