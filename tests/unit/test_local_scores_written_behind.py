"""Embedded mode's boards: changed scores are written behind (every SCORES_FLUSH_S and at
close), and what is written is what a new process on the same file reads back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from llamawool.coord import ScoreUpdate
from llamawool.coord.local import LocalCoordinator

T0 = 1_800_000_000.0


def stored(path: Path) -> dict[str, float]:
    with sqlite3.connect(path) as db:
        return {pid: score for pid, score in db.execute("SELECT player_id, score FROM scores")}


async def test_scores_reach_the_file_when_flushed_not_at_every_push(tmp_path: Path) -> None:
    path = tmp_path / "coord.sqlite3"
    coord = LocalCoordinator(path)
    await coord.open()
    try:
        await coord.push_scores("lifetime", "all", [ScoreUpdate("a", 10.0, 0.0, T0), ScoreUpdate("b", 5.0, 0.0, T0)])
        await coord.push_scores("lifetime", "all", [ScoreUpdate("a", 12.0, 0.0, T0 + 5)])
        assert stored(path) == {}  # gathered, not written per push
        await coord.flush_scores()
        assert stored(path) == {"a": 12.0, "b": 5.0}  # the latest of each
    finally:
        await coord.close()


async def test_close_writes_what_is_pending_and_an_erased_player_stays_erased(tmp_path: Path) -> None:
    path = tmp_path / "coord.sqlite3"
    coord = LocalCoordinator(path)
    await coord.open()
    await coord.push_scores("lifetime", "all", [ScoreUpdate("a", 10.0, 0.0, T0), ScoreUpdate("gone", 7.0, 0.0, T0)])
    await coord.remove_player("gone")  # erased before its score was written
    await coord.close()
    assert stored(path) == {"a": 10.0}

    again = LocalCoordinator(path)
    await again.open()
    try:
        assert (await again.rank("lifetime", "all", "a")) is not None
        assert (await again.rank("lifetime", "all", "gone")) is None
    finally:
        await again.close()
