"""A real MongoDB-wire server for the tests: SecantusDB's `secantusd-py` on a free port.

`shared_server()` starts one in-memory server for the whole test session the
first time a test needs it (the `mongo_server` fixture and the contract
suite's "mongo" backend share it) and stops it when the session ends. Tests
that stop and restart a server start their own `SecantusServer` on a data
folder.

When the server cannot start, a test skips with how to enable it, except with
CI=true, where it fails: CI must never pass by skipping MongoDB.

A real MongoDB, where one exists (CI's mongo:7 service), replaces SecantusDB:
`LLAMAWOOL_TEST_MONGODB_URI=mongodb://HOST:PORT/?directConnection=true` makes
`shared_server()`, the cluster tests and the chaos suite use that server (each
test in a database of its own, dropped afterwards) instead of starting
`secantusd-py`.
Tests that stop, kill or restart their server keep a `SecantusServer` of their
own: a shared real server is not theirs to stop.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.helpers import die_with_parent, free_port, in_ci

TEST_URI_VARIABLE = "LLAMAWOOL_TEST_MONGODB_URI"
ENABLE_HINT = (
    "MongoDB tests need SecantusDB's secantusd-py: `make install` (or `.venv/bin/pip install -c constraints.txt "
    "secantusdb`); with CI=true these tests fail instead of skipping"
)


def external_mongodb_uri() -> str | None:
    """The real MongoDB the environment names for the tests, if any."""
    return os.environ.get(TEST_URI_VARIABLE) or None


def with_database(uri: str, database: str) -> str:
    """The URI with `database` as its default database; its host list and options are kept."""
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def answers_ping(uri: str) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=300, connectTimeoutMS=300)
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


class ExternalMongo:
    """A MongoDB the test did not start (`LLAMAWOOL_TEST_MONGODB_URI`), with the surface of
    `SecantusServer` that the shared and cluster tests use. With a `database`, `uri` names it
    and `stop()` drops it; it never stops the server itself."""

    def __init__(self, server_uri: str, database: str | None = None) -> None:
        self.server_uri = server_uri
        self.database = database

    @property
    def uri(self) -> str:
        return with_database(self.server_uri, self.database) if self.database else self.server_uri

    def uri_for(self, database: str) -> str:
        return with_database(self.server_uri, database)

    def start(self, timeout: float = 30.0) -> ExternalMongo:
        deadline = time.monotonic() + timeout
        while not answers_ping(self.server_uri):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{TEST_URI_VARIABLE} names a server that did not answer a ping within {timeout}s")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.database is None:
            return
        from pymongo import MongoClient

        client: MongoClient[dict[str, object]] = MongoClient(self.server_uri, serverSelectionTimeoutMS=5000)
        try:
            client.drop_database(self.database)
        finally:
            client.close()


def cluster_mongo(work: Path) -> SecantusServer | ExternalMongo:
    """The store a test cluster shares: a database of its own on the test URI's server, else
    its own in-memory SecantusDB (logging into `work`)."""
    uri = external_mongodb_uri()
    if uri:
        return ExternalMongo(uri, database=f"cluster_{uuid.uuid4().hex[:12]}")
    return SecantusServer(log_dir=work)


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

    def uri_for(self, database: str) -> str:
        return with_database(self.uri, database)

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
        return answers_ping(self.uri + "?directConnection=true")

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


Server = TypeVar("Server", SecantusServer, ExternalMongo)


def start_or_skip(server: Server) -> Server:
    """Start it; skip the test (fail under CI=true) when it cannot start."""
    try:
        return server.start()
    except (RuntimeError, OSError) as exc:
        message = f"cannot start or reach the test MongoDB: {exc}. {ENABLE_HINT}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


_shared: SecantusServer | ExternalMongo | None = None
_shared_error: str | None = None


def shared_server() -> SecantusServer | ExternalMongo:
    """The session's server: the test URI's, else an in-memory SecantusDB started on first
    use (one attempt only). Callers take a database of their own on it (`uri_for`)."""
    global _shared, _shared_error
    if _shared is None and _shared_error is None:
        uri = external_mongodb_uri()
        try:
            _shared = ExternalMongo(uri).start() if uri else SecantusServer().start()
            atexit.register(stop_shared_server)
        except (RuntimeError, OSError) as exc:
            _shared_error = f"cannot reach {TEST_URI_VARIABLE}: {exc}" if uri else f"cannot start secantusd-py: {exc}"
            _shared_error += f". {ENABLE_HINT}"
    if _shared is None:
        assert _shared_error is not None
        if in_ci():
            pytest.fail(_shared_error, pytrace=False)
        pytest.skip(_shared_error)
    return _shared


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """The URI of a fresh database on the session's server, dropped afterwards (a real
    server outlives the test run: nothing may be left on it)."""
    database = f"{prefix}_{uuid.uuid4().hex[:10]}"
    server = shared_server()
    try:
        yield server.uri_for(database)
    finally:
        ExternalMongo(server.uri, database=database).stop()


def stop_shared_server() -> None:
    global _shared
    if _shared is not None:
        _shared.stop()
        if isinstance(_shared, SecantusServer) and _shared._log is not None:
            _shared._log.unlink(missing_ok=True)  # a clean run leaves no log behind in the temp folder
        _shared = None
