"""deploy/dr/restore-drill.sh refuses a damaged backup.

Its end-to-end run on a real backup, the one the rendered backup CronJob wrote from a
live server, is in test_backup_cronjob.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import restore_drill

pytestmark = pytest.mark.slow


def test_restore_drill_fails_on_a_damaged_backup(tmp_path: Path) -> None:
    damaged = tmp_path / "llamawool-20260101T000000Z.jsonl.gz"
    damaged.write_bytes(b"not a backup")
    result = restore_drill(damaged, tmp_path, timeout=60)
    assert result.returncode != 0
    assert "smoke test passed" not in result.stdout
