"""A real MongoDB-wire server for the tests: SecantusDB's `secantusd-py` on a free port.

`shared_server()` starts one in-memory server for the whole test session the
first time a test needs it (the `mongo_server` fixture and the contract
suite's "mongo" backend share it) and stops it when the session ends. Tests
that stop and restart a server start their own `SecantusServer` on a data
folder.

When the server cannot start, a test skips with how to enable it, except with
CI=true, where it fails: CI must never pass by skipping MongoDB.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import die_with_parent, free_port, in_ci

ENABLE_HINT = (
    "MongoDB tests need SecantusDB's secantusd-py: `make install` (or `.venv/bin/pip install -c constraints.txt "
    "secantusdb`); with CI=true these tests fail instead of skipping"
)


def secantusd_command() -> str | None:
    local = Path(sys.executable).parent / "secantusd-py"
    if local.exists():
        return str(local)
    return shutil.which("secantusd-py")


class SecantusServer:
    """One `secantusd-py` process; `storage` is ':memory:' or a folder kept across restarts."""

    def __init__(
        self,
        storage: str | Path = ":memory:",
        port: int | None = None,
        log_dir: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.storage = str(storage)
        self.port = port or free_port()
        self.extra = list(extra)
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 30.0) -> SecantusServer:
        exe = secantusd_command()
        if exe is None:
            raise RuntimeError("secantusd-py not found")
        if self.storage != ":memory:":
            Path(self.storage).mkdir(parents=True, exist_ok=True)
        log_dir = self.log_dir or Path(tempfile.gettempdir())
        self._log = log_dir / f"secantusd-{self.port}.log"
        with self._log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *die_with_parent(),
                    exe,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--storage-path",
                    self.storage,
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"secantusd-py exited with {self.proc.returncode}: {self.log_tail()}")
            if self.answers_ping():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"secantusd-py did not answer a ping within {timeout}s: {self.log_tail()}")

    def answers_ping(self) -> bool:
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        client: MongoClient[dict[str, object]] = MongoClient(
            self.uri, serverSelectionTimeoutMS=300, connectTimeoutMS=300, directConnection=True
        )
        try:
            client.admin.command("ping")
            return True
        except PyMongoError:
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown (and no waiting for one)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def log_tail(self) -> str:
        return self._log.read_text(errors="replace")[-2000:] if self._log and self._log.exists() else ""


def start_or_skip(server: SecantusServer) -> SecantusServer:
    """Start it; skip the test (fail under CI=true) when it cannot start."""
    try:
        return server.start()
    except (RuntimeError, OSError) as exc:
        message = f"cannot start secantusd-py: {exc}. {ENABLE_HINT}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


_shared: SecantusServer | None = None
_shared_error: str | None = None


def shared_server() -> SecantusServer:
    """The session's in-memory server, started on first use (one attempt only)."""
    global _shared, _shared_error
    if _shared is None and _shared_error is None:
        try:
            _shared = SecantusServer().start()
            atexit.register(stop_shared_server)
        except (RuntimeError, OSError) as exc:
            _shared_error = f"cannot start secantusd-py: {exc}. {ENABLE_HINT}"
    if _shared is None:
        assert _shared_error is not None
        if in_ci():
            pytest.fail(_shared_error, pytrace=False)
        pytest.skip(_shared_error)
    return _shared


def stop_shared_server() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        if _shared._log is not None:  # a clean run leaves no log behind in the temp folder
            _shared._log.unlink(missing_ok=True)
        _shared = None
