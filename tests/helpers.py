"""Shared test helpers: a controllable clock, a real server subprocess, free ports,
a sink that keeps what the engine sends it, quiet engine logs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def logs_go_nowhere() -> Iterator[None]:
    """The engine logs; render its lines but write them nowhere, whatever an earlier
    test left structlog bound to (a CLI test can leave it on a closed stream).
    Applies to every test of a module that imports it."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    yield
    structlog.configure(**saved)


class CollectingSink:
    """A connection that keeps what the engine sends it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def send(self, message: str) -> None:
        self.messages.append(orjson.loads(message))

    def ticks(self) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages if m["type"] == "tick"]


class FakeClock:
    """Server time under the test's control (the engine reads it through `clock()`)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def die_with_parent() -> list[str]:
    """A prefix that makes a server get SIGTERM when the process (strictly: the thread)
    that started it dies, even by SIGKILL, so a crashed or interrupted test run leaves
    no server behind.

    util-linux's `setpriv` sets the parent-death signal and execs the server (no Python
    code runs between fork and exec); without it the server is only stopped by a clean
    teardown.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class ServerProcess:
    """`python -m llamawool serve` as a real subprocess on a free port."""

    def __init__(self, data_dir: Path, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = {**os.environ, "LLAMAWOOL_ENV": "test", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.start_async()
        return self.wait_ready(timeout)

    def start_async(self) -> None:
        """Spawn the process without waiting (start several, then wait for each)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *die_with_parent(),
                sys.executable,
                "-m",
                "llamawool",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 20.0) -> ServerProcess:
        import urllib.request

        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=1) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server not ready within {timeout}s: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout)

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        return out
