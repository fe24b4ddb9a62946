"""deploy/dr/restore-drill.sh end to end on a real backup (the offline half of the drill)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.helpers import REPO, ServerProcess

from .conftest import DEPLOY

pytestmark = pytest.mark.slow


def test_restore_drill_restores_serves_and_reports_against_rpo_and_rto(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data).start()
    backup = tmp_path / f"llamawool-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.jsonl.gz"
    env = {**os.environ, "LLAMAWOOL_ENV": "test"}
    try:
        req = urllib.request.Request(  # noqa: S310 - loopback
            server.url + "/api/v1/auth/guest",
            data=orjson.dumps({"device_id": "drill-player"}),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback
            assert resp.status == 201
        # Taken from the live server's database, as the CronJob does (a point-in-time export).
        subprocess.run(
            [sys.executable, "-m", "llamawool", "backup", "--out", str(backup), "--data-dir", str(data)],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
            timeout=60,
        )
    finally:
        assert server.terminate() == 0
    result = subprocess.run(
        ["bash", str(DEPLOY / "dr" / "restore-drill.sh"), str(backup)],
        cwd=tmp_path,
        env={**env, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "player 1" in result.stdout  # restore verified what the backup holds
    assert "smoke test passed" in result.stdout
    assert "(RTO 3600s); backup age" in result.stdout and "(RPO 900s)" in result.stdout


def test_restore_drill_fails_on_a_damaged_backup(tmp_path: Path) -> None:
    damaged = tmp_path / "llamawool-20260101T000000Z.jsonl.gz"
    damaged.write_bytes(b"not a backup")
    result = subprocess.run(
        ["bash", str(DEPLOY / "dr" / "restore-drill.sh"), str(damaged)],
        cwd=tmp_path,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "smoke test passed" not in result.stdout
