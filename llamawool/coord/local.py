"""Coordination inside one process (embedded mode).

Limits and violation counts live in memory (they only matter for minutes);
leaderboards live in memory as sorted lists and are persisted to a small
SQLite file beside the game data, so boards, the hidden set and the weekly
rollover marker survive restarts.

Scores are written behind: the changed ones are gathered and written together
every SCORES_FLUSH_S and at close (every online farm's score moves at every
push; writing each push's tens of thousands of rows was 5.7 % of the
profile of a server with 19,976 sockets, BENCHMARKS.md "Issue 14"). A crash
loses at most that much board movement, and only for farms that do not come
back (a farm's scores are pushed again when it returns).
Hidden players, erasures and rollovers are written at once.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import sqlite3
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
import structlog
from sortedcontainers import SortedList  # type: ignore[import-untyped]

from .base import (
    BadCursor,
    BoardEntry,
    BoardPage,
    CoordinationUnavailable,
    Cursor,
    LimitHit,
    LimitResult,
    Listener,
    Renewal,
    ReplicaLoad,
    ScoreUpdate,
)

if TYPE_CHECKING:
    from ..observability import Metrics

log = structlog.get_logger("llamawool.coord")

_T = TypeVar("_T")

Key = tuple[float, float, float, str]  # (-score, -tiebreak, reached_at, player_id): ascending = best first
# Work on a board is done in slices with the event loop free between them (a few ms each):
SLICE = 500  # score changes or rank lookups (several us each)
SCORES_FLUSH_S = 30.0  # how often changed scores are written (see the module docstring)
WALK_SLICE = 2000  # entries of a walk down the board (under a us each)
# `ranks` walks the whole board when asked for at least 1/WALK_SHARE of it: one lookup
# (SortedList.index, about 5 us) costs about as much as walking 50 entries.
WALK_SHARE = 50

SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    board TEXT NOT NULL, period TEXT NOT NULL, player_id TEXT NOT NULL,
    score REAL NOT NULL, tiebreak REAL NOT NULL, reached_at REAL NOT NULL,
    PRIMARY KEY (board, period, player_id)
);
CREATE TABLE IF NOT EXISTS hidden (player_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS rollovers (period TEXT PRIMARY KEY);
"""


@dataclass(slots=True)
class _View:
    keys: list[Key]
    created_at: float


@dataclass(slots=True)
class _Board:
    keys: SortedList = field(default_factory=SortedList)
    by_player: dict[str, Key] = field(default_factory=dict)
    views: dict[str, _View] = field(default_factory=dict)
    latest_view: str | None = None


def _key(u: ScoreUpdate, reached_at: float) -> Key:
    return (-u.score, -u.tiebreak, reached_at, u.player_id)


class LocalCoordinator:
    name = "local"

    def __init__(self, path: Path | None, *, view_ttl_s: float = 300.0, view_refresh_s: float = 5.0) -> None:
        self.path = path
        self.view_ttl_s = view_ttl_s
        self.view_refresh_s = view_refresh_s
        self._windows: dict[str, deque[float]] = {}
        self._longest_window = 0.0
        self._boards: dict[tuple[str, str], _Board] = {}
        self._hidden: set[str] = set()
        self._rollovers: set[str] = set()
        self._listeners: list[Listener] = []
        self._db: sqlite3.Connection | None = None
        self._io = ThreadPoolExecutor(1, thread_name_prefix="coord-local")
        self._hits = 0
        self._online: dict[str, tuple[int, float]] = {}
        self._loads: dict[str, tuple[ReplicaLoad, float]] = {}
        self.replica_id = uuid.uuid4().hex[:12]
        self._leases: dict[str, str] = {}
        self._beats: dict[str, float] = {}  # replica -> monotonic time its heartbeat lapses
        self._dirty: dict[tuple[str, str, str], tuple[Any, ...]] = {}  # scores not yet written
        self._flusher: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        path = self.path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)

        def load() -> tuple[list[tuple[Any, ...]], list[str], list[str]]:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            rows = self._db.execute(
                "SELECT board, period, player_id, score, tiebreak, reached_at FROM scores"
            ).fetchall()
            hidden = [r[0] for r in self._db.execute("SELECT player_id FROM hidden")]
            rolled = [r[0] for r in self._db.execute("SELECT period FROM rollovers")]
            return rows, hidden, rolled

        rows, hidden, rolled = await asyncio.get_running_loop().run_in_executor(self._io, load)
        self._boards = {}  # a reopened instance must not add the rows it still holds a second time
        for board, period, pid, score, tiebreak, reached_at in rows:
            b = self._board(board, period)
            key = (-score, -tiebreak, reached_at, pid)
            b.by_player[pid] = key
            b.keys.add(key)
        self._hidden = set(hidden)
        self._rollovers = set(rolled)
        self._flusher = asyncio.create_task(self._flush_every(SCORES_FLUSH_S), name="coord-local-scores")

    async def _flush_every(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.flush_scores()
            except CoordinationUnavailable as exc:
                log.warning("coord.local_scores_not_written", error=str(exc), scores=len(self._dirty))

    async def flush_scores(self) -> None:
        """Write the scores changed since the last write (kept for the next one on failure)."""
        rows, self._dirty = self._dirty, {}
        try:
            await self._persist("INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?)", list(rows.values()))
        except CoordinationUnavailable:
            self._dirty = rows | self._dirty  # newer changes win
            raise

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        try:
            await self.flush_scores()
        except CoordinationUnavailable as exc:
            log.warning("coord.local_scores_not_written", error=str(exc), scores=len(self._dirty))

        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._io, close)
        self._io.shutdown(wait=True)
        # A closed coordinator can be opened again (threads are only started when used).
        self._io = ThreadPoolExecutor(1, thread_name_prefix="coord-local")

    async def ping(self) -> None:
        return None

    def bind_metrics(self, metrics: Metrics) -> None:
        """Nothing to count: every call stays in this process (no round trip to a backend)."""

    async def _persist(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if self._db is None or not rows:
            return
        db = self._db

        def run() -> None:
            db.execute("BEGIN")
            try:
                db.executemany(sql, rows)
                db.execute("COMMIT")
            except sqlite3.Error:
                # roll back, or every later BEGIN fails ("within a transaction") after the disk recovers
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

        try:
            await asyncio.get_running_loop().run_in_executor(self._io, run)
        except sqlite3.Error as exc:  # a full disk: the boards stay in memory, the next push writes them
            raise CoordinationUnavailable(f"local boards: {exc}") from exc

    # ---- limits ------------------------------------------------------------------

    def _window(self, key: str, window_s: float, now: float) -> deque[float]:
        hits = self._windows.get(key)
        if hits is None:
            hits = self._windows[key] = deque()
        while hits and hits[0] <= now - window_s:
            hits.popleft()
        self._longest_window = max(self._longest_window, window_s)
        self._hits += 1
        if self._hits % 10_000 == 0:
            self._sweep(now)
        return hits

    def _sweep(self, now: float) -> None:
        # Keys are created per player/IP; drop the ones whose windows are empty (no key's
        # window is longer than the longest one asked for, which may exceed an hour).
        horizon = max(3600.0, self._longest_window)
        for key in [k for k, v in self._windows.items() if not v or v[-1] <= now - horizon]:
            del self._windows[key]

    async def hit(self, key: str, limit: int, window_s: float, now: float) -> LimitResult:
        hits = self._window(key, window_s, now)
        if len(hits) >= limit:
            retry = max(0.0, hits[0] + window_s - now)
            return LimitResult(False, limit, 0, retry, retry)
        hits.append(now)
        reset = hits[0] + window_s - now
        return LimitResult(True, limit, limit - len(hits), reset, 0.0)

    async def hit_many(self, hits: list[LimitHit], now: float) -> list[LimitResult]:
        return [await self.hit(h.key, h.limit, h.window_s, now) for h in hits]

    async def peek(self, key: str, limit: int, window_s: float, now: float) -> LimitResult:
        hits = self._window(key, window_s, now)
        if len(hits) >= limit:
            retry = max(0.0, hits[0] + window_s - now)
            return LimitResult(False, limit, 0, retry, retry)
        reset = (hits[0] + window_s - now) if hits else window_s
        return LimitResult(True, limit, limit - len(hits), reset, 0.0)

    async def count_violation(self, player_id: str, now: float, window_s: float) -> int:
        hits = self._window("violations:" + player_id, window_s, now)
        hits.append(now)
        return len(hits)

    # ---- leaderboards ---------------------------------------------------------------

    def _board(self, board: str, period: str) -> _Board:
        b = self._boards.get((board, period))
        if b is None:
            b = self._boards[(board, period)] = _Board()
        return b

    async def push_scores(self, board: str, period: str, updates: list[ScoreUpdate]) -> None:
        b = self._board(board, period)
        dirty = self._dirty
        for start in range(0, len(updates), SLICE):
            if start:
                await asyncio.sleep(0)  # a push of thousands must not hold the event loop
            for u in updates[start : start + SLICE]:
                old = b.by_player.get(u.player_id)
                if old is not None and old[0] == -u.score and old[1] == -u.tiebreak:
                    continue  # an unchanged score keeps its place (and its reached_at)
                key = _key(u, u.at)
                if old is not None:
                    b.keys.remove(old)
                b.keys.add(key)
                b.by_player[u.player_id] = key
                dirty[(board, period, u.player_id)] = (board, period, u.player_id, u.score, u.tiebreak, u.at)

    def _visible(self, key: Key) -> bool:
        return key[3] not in self._hidden

    def _expired(self, view: _View, now: float) -> bool:
        return now - view.created_at > self.view_ttl_s

    def _view(self, board: str, period: str, b: _Board, now: float) -> tuple[str, _View]:
        for vid in [v for v, view in b.views.items() if self._expired(view, now)]:
            del b.views[vid]
        latest = b.views.get(b.latest_view) if b.latest_view else None
        if latest is not None and b.latest_view and now - latest.created_at < self.view_refresh_s:
            return b.latest_view, latest
        vid = uuid.uuid4().hex[:12]
        keys = list(b.keys)  # copied at C speed; filtered only when someone is hidden
        hidden = self._hidden
        view = _View([k for k in keys if k[3] not in hidden] if hidden else keys, now)
        b.views[vid] = view
        b.latest_view = vid
        return vid, view

    def _entries(self, keys: list[Key], first_rank: int) -> list[BoardEntry]:
        return [BoardEntry(first_rank + i, k[3], -k[0], k[2]) for i, k in enumerate(keys)]

    async def page(self, board: str, period: str, limit: int, cursor: Cursor | None, now: float) -> BoardPage:
        b = self._board(board, period)
        view: _View | None = None
        vid = ""
        offset = 0
        if cursor is not None:
            view = b.views.get(cursor.view)
            if view is not None and self._expired(view, now):
                view = None  # expired views are only swept when a new one is made; never serve one
            if view is not None:
                vid, offset = cursor.view, cursor.offset
            elif cursor.after is None:
                if cursor.offset != 0:
                    raise BadCursor("this cursor has expired; start again from the top")
            else:
                # The frozen view expired: continue after the last row seen, on a fresh view.
                vid, view = self._view(board, period, b, now)
                offset = bisect.bisect_right(view.keys, cursor.after)
        if view is None:
            vid, view = self._view(board, period, b, now)
        rows = view.keys[offset : offset + limit]
        end = offset + len(rows)
        next_c = Cursor(vid, end, rows[-1] if rows else None).encode() if end < len(view.keys) else None
        prev_c = Cursor(vid, max(0, offset - limit)).encode() if offset > 0 else None
        return BoardPage(
            board, period, self._entries(rows, offset + 1), next_c, prev_c, len(view.keys), view.created_at
        )

    def _visible_rank(self, b: _Board, key: Key) -> int:
        idx = int(b.keys.index(key))
        hidden_before = sum(1 for pid in self._hidden if (k := b.by_player.get(pid)) is not None and k < key)
        return idx - hidden_before + 1

    async def rank(self, board: str, period: str, player_id: str) -> BoardEntry | None:
        b = self._board(board, period)
        key = b.by_player.get(player_id)
        if key is None:
            return None
        return BoardEntry(self._visible_rank(b, key), player_id, -key[0], key[2])

    async def ranks(self, board: str, period: str, player_ids: list[str]) -> dict[str, BoardEntry]:
        """Many players' ranks, in slices with the event loop free between them. Asked for a
        good share of the board, one walk down a copy of it (the ranks of one instant);
        for a few players on a long board, one lookup each."""
        b = self._board(board, period)
        if len(player_ids) * WALK_SHARE < len(b.keys):
            out: dict[str, BoardEntry] = {}
            for start in range(0, len(player_ids), SLICE):
                if start:
                    await asyncio.sleep(0)
                for pid in player_ids[start : start + SLICE]:
                    entry = await self.rank(board, period, pid)
                    if entry is not None:
                        out[pid] = entry
            return out
        wanted = set(player_ids)
        hidden = self._hidden
        keys = list(b.keys)
        found: dict[str, BoardEntry] = {}
        hidden_before = 0
        for start in range(0, len(keys), WALK_SLICE):
            if start:
                await asyncio.sleep(0)
            for i, key in enumerate(keys[start : start + WALK_SLICE], start):
                pid = key[3]
                if pid in wanted:
                    found[pid] = BoardEntry(i - hidden_before + 1, pid, -key[0], key[2])
                if pid in hidden:
                    hidden_before += 1  # ranks after it are visible ranks (a hidden player still sees its own)
        return found

    async def around(self, board: str, period: str, player_id: str, radius: int) -> list[BoardEntry]:
        b = self._board(board, period)
        key = b.by_player.get(player_id)
        if key is None:
            return []
        rank = self._visible_rank(b, key)
        idx = b.keys.index(key)
        above: list[Key] = []
        i = idx - 1
        while i >= 0 and len(above) < radius:
            k = b.keys[i]
            if self._visible(k):
                above.append(k)
            i -= 1
        below: list[Key] = []
        i = idx + 1
        while i < len(b.keys) and len(below) < radius:
            k = b.keys[i]
            if self._visible(k):
                below.append(k)
            i += 1
        above.reverse()
        return self._entries([*above, key, *below], rank - len(above))

    async def set_hidden(self, player_id: str, hidden: bool) -> None:
        if hidden:
            self._hidden.add(player_id)
            await self._persist("INSERT OR IGNORE INTO hidden VALUES (?)", [(player_id,)])
        else:
            self._hidden.discard(player_id)
            await self._persist("DELETE FROM hidden WHERE player_id = ?", [(player_id,)])
        for b in self._boards.values():
            b.latest_view = None  # the next first page reflects the change

    async def remove_player(self, player_id: str) -> None:
        for b in self._boards.values():
            key = b.by_player.pop(player_id, None)
            if key is not None:
                b.keys.remove(key)
            b.latest_view = None
        self._hidden.discard(player_id)
        for k in [k for k in self._dirty if k[2] == player_id]:  # a later write must not bring them back
            del self._dirty[k]
        await self._persist("DELETE FROM scores WHERE player_id = ?", [(player_id,)])
        await self._persist("DELETE FROM hidden WHERE player_id = ?", [(player_id,)])

    async def periods(self, board: str) -> list[str]:
        return sorted((p for (bd, p), b in self._boards.items() if bd == board and b.by_player), reverse=True)

    async def claim_rollover(self, period: str) -> bool:
        if period in self._rollovers:
            return False
        self._rollovers.add(period)
        await self._persist("INSERT OR IGNORE INTO rollovers VALUES (?)", [(period,)])
        return True

    # ---- fan-out --------------------------------------------------------------------

    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        # Messages cross a wire between replicas: only JSON goes (as with Redis), and each
        # listener gets its own copy, so one listener's changes cannot leak into another's.
        raw = orjson.dumps(message)
        for listener in list(self._listeners):
            try:
                listener(channel, orjson.loads(raw))
            except Exception:
                log.exception("coord.listener_failed", channel=channel)

    # ---- presence ---------------------------------------------------------------------

    async def report_online(self, replica: str, count: int, now: float, ttl_s: float) -> None:
        self._online[replica] = (count, now + ttl_s)

    async def online_count(self, now: float) -> int:
        return sum(_current(self._online, now).values())

    async def report_load(self, replica: str, load: ReplicaLoad, now: float, ttl_s: float) -> None:
        self._loads[replica] = (load, now + ttl_s)

    async def replica_loads(self, now: float) -> dict[str, ReplicaLoad]:
        return _current(self._loads, now)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # ---- ownership: one process owns everything ---------------------------------------
    # Leases and heartbeats are kept by replica id like Redis keeps them, so the
    # ownership rules behave the same here (one process is one replica).

    async def acquire_lease(self, farm_id: str, ttl_s: float) -> bool:
        return await self.claim_lease(farm_id, ttl_s) == self.replica_id

    async def claim_lease(self, farm_id: str, ttl_s: float) -> str:
        return self._leases.setdefault(farm_id, self.replica_id)

    async def take_over_lease(self, farm_id: str, silent: str, ttl_s: float) -> str:
        holder = self._leases.get(farm_id)
        if holder is None or (holder == silent and not await self.alive(silent)):
            self._leases[farm_id] = holder = self.replica_id
        return holder

    async def hand_over_lease(self, farm_id: str, to: str, ttl_s: float) -> bool:
        if self._leases.get(farm_id) != self.replica_id:
            return False
        self._leases[farm_id] = to
        return True

    async def renew_leases(self, farm_ids: list[str], ttl_s: float) -> Renewal:
        lost = [f for f in farm_ids if self._leases.get(f, self.replica_id) != self.replica_id]
        retaken = [f for f in farm_ids if f not in self._leases]
        for f in retaken:
            self._leases[f] = self.replica_id
        return Renewal(lost, retaken)

    async def release_lease(self, farm_id: str) -> None:
        if self._leases.get(farm_id) == self.replica_id:
            del self._leases[farm_id]

    async def lease_owner(self, farm_id: str) -> str | None:
        return self._leases.get(farm_id)

    async def beat(self, ttl_s: float) -> None:
        self._beats[self.replica_id] = time.monotonic() + ttl_s

    async def end_beat(self) -> None:
        self._beats.pop(self.replica_id, None)

    async def alive(self, replica: str) -> bool:
        return self._beats.get(replica, 0.0) > time.monotonic()

    async def send(self, replica_id: str, message: dict[str, Any]) -> None:
        if replica_id == self.replica_id:
            await self.publish(f"replica:{replica_id}", message)


def _current(reports: dict[str, tuple[_T, float]], now: float) -> dict[str, _T]:
    """Forget the reports that lapsed by `now`; the rest, by replica."""
    for replica in [r for r, (_, until) in reports.items() if until <= now]:
        del reports[replica]
    return {replica: value for replica, (value, _) in reports.items()}
