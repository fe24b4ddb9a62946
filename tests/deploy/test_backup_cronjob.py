"""The backup CronJob's script as rendered (deploy/rendered/production.yaml), run with bash.

The script comes out of the manifest an operator applies, not a copy: it runs
against a live server on MongoDB (SecantusDB) into a temporary backup folder
(BACKUP_DIR; /backups in the pod). A backup appears under its final name only
once complete, retention removes files past 30 days, a failed run leaves nothing
half-written and prunes nothing, and the restore drill restores the file it wrote.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
import yaml

from tests.helpers import REPO, ServerProcess
from tests.mongo_server import SecantusServer, start_or_skip

from .conftest import DEPLOY, restore_drill, tool

pytestmark = pytest.mark.slow

DAY_S = 86400
RETENTION_DAYS = 30  # values-production.yaml (test_chart checks the rendered -mmin)


def backup_script() -> str:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "rendered" / "production.yaml").read_text()) if d]
    [cron] = [d for d in docs if d["kind"] == "CronJob"]
    [c] = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["/bin/sh", "-c"], c["command"]
    [script] = c["args"]
    assert isinstance(script, str)
    return script


def run_backup(backups: Path, python: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", backup_script()],
        cwd=REPO,
        env={**os.environ, "LLAMAWOOL_ENV": "test", **env, "BACKUP_DIR": str(backups), "PYTHON": str(python)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def aged(path: Path, days: float, body: bytes = b"old backup") -> Path:
    path.write_bytes(body)
    then = time.time() - days * DAY_S
    os.utime(path, (then, then))
    return path


def watching_python(tmp_path: Path) -> tuple[Path, Path]:
    """A PYTHON that runs the real backup, then records the backup folder as it stands at the
    moment the backup command ends, before the script renames anything."""
    seen = tmp_path / "seen-when-written.txt"
    shim = tmp_path / "python-watched"
    shim.write_text(f'#!/bin/bash\n"{sys.executable}" "$@"\nstatus=$?\nls -1 "$BACKUP_DIR" > "{seen}"\nexit $status\n')
    shim.chmod(0o755)
    return shim, seen


def test_the_rendered_backup_script_backs_up_a_live_server_and_the_drill_restores_it(tmp_path: Path) -> None:
    """Also the restore drill's end-to-end run (deploy/dr/restore-drill.sh on a real backup)."""
    mongo = SecantusServer(log_dir=tmp_path)
    start_or_skip(mongo)
    server = None
    try:
        store_env = {"MONGODB_URI": mongo.uri, "LLAMAWOOL_MONGODB_SELECT_TIMEOUT_S": "1"}
        server = ServerProcess(tmp_path / "server", env=store_env).start()
        req = urllib.request.Request(  # noqa: S310 - loopback
            server.url + "/api/v1/auth/guest",
            data=orjson.dumps({"device_id": "backup-cronjob-player"}),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback
            assert resp.status == 201

        backups = tmp_path / "backups"
        backups.mkdir()
        expired = aged(backups / "llamawool-20250101T000000Z.jsonl.gz", RETENTION_DAYS + 1)
        expired_partial = aged(backups / "llamawool-20250101T001500Z.jsonl.gz.partial", RETENTION_DAYS + 1)
        kept = aged(backups / "llamawool-20250102T000000Z.jsonl.gz", RETENTION_DAYS - 1)
        python, seen = watching_python(tmp_path)

        result = run_backup(backups, python, store_env)
        assert result.returncode == 0, result.stdout + result.stderr
        match = re.search(r"backup written: (\S+)", result.stdout)
        assert match, result.stdout
        written = Path(match.group(1))
        assert written.parent == backups and re.fullmatch(r"llamawool-\d{8}T\d{6}Z\.jsonl\.gz", written.name)
        # Atomic: while the backup was being written only the .partial existed; now only the final name.
        when_written = seen.read_text().split()
        assert f"{written.name}.partial" in when_written and written.name not in when_written
        assert sorted(p.name for p in backups.iterdir()) == sorted([kept.name, written.name])
        assert {str(expired), str(expired_partial)} <= set(result.stdout.split()), "retention prints what it removed"

        # The restore drill restores that very file (into a scratch store) and serves it.
        drill = restore_drill(written, tmp_path)
        assert drill.returncode == 0, drill.stdout + drill.stderr
        assert "player 1" in drill.stdout  # restore verified what the backup holds
        assert "smoke test passed" in drill.stdout
        assert "(RTO 3600s); backup age" in drill.stdout and "(RPO 900s)" in drill.stdout

        # A real failure: the database is gone. Nothing new, nothing partial, nothing pruned.
        server.kill()
        mongo.kill()
        aged(expired, RETENTION_DAYS + 1)
        before = sorted(p.name for p in backups.iterdir())
        failed = run_backup(backups, sys.executable, {**store_env, "LLAMAWOOL_MONGODB_TIMEOUT_S": "1"})
        assert failed.returncode != 0, failed.stdout
        assert "backup written" not in failed.stdout
        assert sorted(p.name for p in backups.iterdir()) == before
    finally:
        if server is not None:
            server.kill()
        mongo.stop()


def test_a_run_that_dies_mid_write_leaves_nothing_half_written_and_prunes_nothing(tmp_path: Path) -> None:
    """The backup command crashes after writing half a file (a PYTHON that does just that)."""
    backups = tmp_path / "backups"
    backups.mkdir()
    expired = aged(backups / "llamawool-20250101T000000Z.jsonl.gz", RETENTION_DAYS + 1)
    crashing = tmp_path / "python-crashing"
    crashing.write_text('#!/bin/bash\n# called as: -m llamawool backup --out FILE\nprintf half > "$5"\nexit 1\n')
    crashing.chmod(0o755)
    result = run_backup(backups, crashing, {})
    assert result.returncode != 0
    assert [p.name for p in backups.iterdir()] == [expired.name]


def test_shellcheck_passes_the_script_as_the_pod_runs_it(tmp_path: Path) -> None:
    """/bin/sh -c in the pod: POSIX sh, whatever bash accepts here."""
    script = tmp_path / "backup.sh"
    script.write_text(backup_script())
    result = subprocess.run([tool("shellcheck"), "-s", "sh", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
