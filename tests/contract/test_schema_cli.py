"""`python -m llamawool migrate status|up`, and `serve` refusing a database it must
not open (MIGRATE_ON_START off and steps pending; a database newer than the code)."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest

from llamawool.cli import main
from llamawool.store.migrations import mongo as mongo_schema
from llamawool.store.migrations import sqlite as sqlite_schema
from tests.mongo_server import shared_server

from .mongo_backend import mongo_server  # noqa: F401 - a fixture
from .schema_fixture import FIXTURES, OldDatabase, drop_database, load_mongo_dump


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data folder holding the last release's SQLite database."""
    shutil.copyfile(FIXTURES / "llamawool.sqlite3", tmp_path / "llamawool.sqlite3")
    return tmp_path


def version(data_dir: Path) -> tuple[int, int | None]:
    return asyncio.run(OldDatabase("sqlite", str(data_dir / "llamawool.sqlite3")).raw_version())


def test_migrate_status_then_up_on_the_configured_sqlite_store(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "status", "--data-dir", str(data_dir)]) == 1  # steps pending
    out = capsys.readouterr().out
    assert f"schema version 0; this code's latest is {sqlite_schema.LATEST}" in out
    assert "pending 1: the tables and indexes of release 376f2b0" in out
    assert version(data_dir) == (0, None)  # status changes nothing
    assert main(["migrate", "up", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "applied: the tables and indexes of release 376f2b0" in out and "up to date" in out
    assert main(["migrate", "status", "--data-dir", str(data_dir)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["migrate", "up", "--data-dir", str(data_dir)]) == 0  # again: nothing to do
    assert "applied" not in capsys.readouterr().out


def test_status_on_a_missing_sqlite_file_creates_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "status", "--data-dir", str(tmp_path)]) == 1
    assert f"no database at {tmp_path / 'llamawool.sqlite3'}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_migrate_status_and_up_on_mongodb_by_uri(capsys: pytest.CaptureFixture[str]) -> None:
    server, database = shared_server().uri, f"schema_cli_{uuid.uuid4().hex[:10]}"
    asyncio.run(load_mongo_dump(server, database))
    try:
        uri = f"{server}{database}"
        assert main(["migrate", "status", "--uri", uri]) == 1
        out = capsys.readouterr().out
        assert f"mongodb: schema version 0; this code's latest is {mongo_schema.LATEST}" in out
        assert "pending 2: refresh_families" in out
        assert main(["migrate", "up", "--uri", uri]) == 0
        assert "applied: refresh_families" in capsys.readouterr().out
        assert main(["migrate", "status", "--uri", uri]) == 0
    finally:
        asyncio.run(drop_database(server, database))


def test_migrate_keeps_copying_between_stores_and_refuses_mixed_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["migrate"],
        ["migrate", "status", "--from", "sqlite:///a", "--to", "sqlite:///b"],
        ["migrate", "--from", "sqlite:///a"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    assert "migrate needs `status`, `up`, or both --from and --to" in capsys.readouterr().err


def test_serve_refuses_an_old_database_when_migrate_on_start_is_off(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLAMAWOOL_MIGRATE_ON_START", "false")
    assert main(["serve", "--data-dir", str(data_dir), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "llamawool: cannot start: sqlite: the database is at schema version 0" in err
    assert "run `python -m llamawool migrate up`" in err
    assert version(data_dir) == (0, None)
    # every command that opens the store says the same, without a traceback
    argv = ["admin", "create-admin", "--username", "root2", "--email", "r@example.org", "--data-dir", str(data_dir)]
    monkeypatch.setenv("LLAMAWOOL_ADMIN_PASSWORD", "a long and unusual password 7")
    assert main(argv) == 1
    assert "llamawool admin: sqlite: the database is at schema version 0" in capsys.readouterr().err
    out = data_dir / "b.gz"
    assert main(["backup", "--out", str(out), "--data-dir", str(data_dir)]) == 1
    assert "llamawool backup: sqlite: the database is at schema version 0" in capsys.readouterr().err
    assert version(data_dir) == (0, None)


def test_serve_refuses_a_database_newer_than_the_code(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    newer = sqlite_schema.LATEST + 1
    asyncio.run(OldDatabase("sqlite", str(data_dir / "llamawool.sqlite3")).set_version(newer, newer))
    assert main(["serve", "--data-dir", str(data_dir), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert f"cannot start: sqlite: the database is at schema version {newer} and needs code of schema version" in err
    assert version(data_dir) == (newer, newer)
    assert main(["migrate", "status", "--data-dir", str(data_dir)]) == 1
    assert "this code refuses it" in capsys.readouterr().out
