"""Leaderboard feed: the engine pushes resident farms' scores in batches.

Scores are computed for every online (or changed) farm from the numpy columns,
and only those that differ from what the farm last sent (the table remembers)
are handed to the coordinator, which keeps the boards: one call per board. After
each push, connected players hear `rank_changed` when their rank moved (one
batched rank lookup per board), and subscribers of a board's live top 10 get it
when it changed. A push runs in slices with the event loop free between them:
the tick and requests never wait behind it for long. The weekly board
rolls over at Monday 00:00 UTC; the coordinator's marker makes that happen
exactly once per week across replicas and restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import orjson
import structlog
from prometheus_client import Counter, Gauge

from ..coord import BOARDS, BoardEntry, Boards, CoordinationUnavailable, Presence, ScoreUpdate
from ..game import FarmState, Rules, iso_week, week_start
from ..observability import Metrics
from ..store import Store
from .residents import Resident, ResidentIndex, Sink
from .table import I64, PUSHED

log = structlog.get_logger("llamawool.boards")

ALL_TIME = "all"
CHUNK = 500  # farms per slice of a push; the event loop runs ticks between slices
# Each board's columns in the table's memory of what was sent (prestige: its score, then its tiebreak).
_COLUMNS = {
    "lifetime": (PUSHED.index("lifetime"),),
    "prestige": (PUSHED.index("prestige"), PUSHED.index("prestige_tiebreak")),
    "rate": (PUSHED.index("rate"),),
    "weekly": (PUSHED.index("weekly"),),
}
TOP_LIVE = 10
# Every this many pushes every resident farm's scores go out again, changed or not (and
# online or not): a board that lost entries (Redis restarted empty) is whole again within
# a minute.
FULL_PUSH_EVERY = 12


def period_of(board: str, now: float) -> str:
    return iso_week(now) if board == "weekly" else ALL_TIME


class FeedCoord(Boards, Presence, Protocol):
    """The part of the coordinator the feed uses: the boards and the online count."""


class BoardFeed:
    def __init__(
        self,
        residents: ResidentIndex,
        rules: Rules,
        clock: Callable[[], float],
        metrics: Metrics,
        coord: FeedCoord,
        store: Store,
        push_s: float,
    ) -> None:
        self.residents = residents
        self.rules = rules
        self.coord = coord
        self.store = store
        self.push_s = push_s
        self.clock = clock
        self.week: str | None = None
        self.subscribers: dict[str, set[Sink]] = {b: set() for b in BOARDS}
        self._last_top: dict[str, bytes] = {}
        self._task: asyncio.Task[None] | None = None
        self.stale = False
        registry = metrics.registry
        self.rollovers = Counter(
            "llamawool_leaderboard_rollovers_total", "Weekly board rollovers performed", registry=registry
        )
        self.push_errors = Counter(
            "llamawool_leaderboard_push_errors_total", "Score pushes that failed", registry=registry
        )
        self.cluster_online = Gauge(
            "llamawool_players_online_cluster", "Players online on every replica (as last reported)", registry=registry
        )
        # Profiles (usernames on boards) are cached for the ConfigMap's userProfileTTL.
        self.profile_ttl_s = float(rules.config.cache.userProfileTTL)
        self._names: dict[str, tuple[str, float]] = {}
        # What each farm last sent is kept in the table (FarmTable.unpushed): an unchanged
        # score is not sent again (a farm's rate and prestige scores rarely move).
        self._pushes = 0
        self._weekly_period: str | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="board-feed")

    async def stop(self) -> None:
        """End the feed's loop. Cancelled until it has really ended: a cancellation that
        lands inside a Redis call can be swallowed by the client library (redis-py on
        Python 3.11 does, now and then), and the loop would push on, holding shutdown."""
        task, self._task = self._task, None
        if task is None:
            return
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()

    async def _loop(self) -> None:
        while True:
            try:
                await self.push()
            except CoordinationUnavailable as exc:
                self.stale = True
                self.push_errors.inc()
                log.warning("boards.push_failed", error=str(exc))
            except Exception:
                self.push_errors.inc()
                log.exception("boards.push_crashed")
            await asyncio.sleep(self.push_s)

    async def check_rollover(self, now: float) -> bool:
        week = iso_week(now)
        if week == self.week:
            return False
        performed = await self.coord.claim_rollover(week)
        self.week = week
        if performed:
            self.rollovers.inc()
            log.info("leaderboard.weekly_reset", week=week)
        return performed

    async def push(self) -> None:
        """One batch: the scores of every online or changed resident farm that moved since
        they were last sent, then the rank notices and the live tops.

        Done in slices of `CHUNK` farms with the event loop free between them (ticks and
        requests run there), and one coordinator call per board for each of scores and ranks.
        """
        now = self.clock()
        await self.check_rollover(now)
        table = self.residents.table
        self._pushes += 1
        full = self._pushes % FULL_PUSH_EVERY == 0
        if full:
            table.forget_pushed()
        weekly = period_of("weekly", now)
        new_week = weekly != self._weekly_period
        if new_week:
            table.forget_pushed(_COLUMNS["weekly"])  # a new week's board starts empty
            self._weekly_period = weekly
        rows = table.score_rows(every=full or new_week)
        start_of_week = week_start(now)
        for board in BOARDS:
            # Board by board: only one board's updates are alive at a time.
            updates: list[ScoreUpdate] = []
            marked: list[I64] = []
            try:
                for start in range(0, rows.size, CHUNK):
                    self._collect(board, rows[start : start + CHUNK], now, start_of_week, updates, marked)
                    await asyncio.sleep(0)
                if updates:
                    await self.coord.push_scores(board, period_of(board, now), updates)
            except BaseException:
                # What was not sent goes next time: its marks go, and farms that are not
                # online are taken again (they would not be otherwise).
                if marked:
                    table.forget_pushed(_COLUMNS[board], np.concatenate(marked))
                table.score_dirty[rows] = True
                raise
        self.stale = False
        await self.coord.report_online(self.coord.replica_id, self.residents.online_count(), now, 3 * self.push_s)
        self.cluster_online.set(await self.coord.online_count(now))
        await self._notify_ranks(now)
        await self._notify_tops(now)

    def _collect(
        self,
        board: str,
        rows: I64,
        now: float,
        start_of_week: float,
        updates: list[ScoreUpdate],
        marked: list[I64],
    ) -> None:
        """One slice of a board's push: an update for each of `rows` whose score differs
        from what it last sent, marked as sent here (a row that changes hands meanwhile
        is unmarked by the table). One stretch, so a row's score and its owner are read
        together."""
        table = self.residents.table
        s = table.scores(rows, now, start_of_week)
        score, tiebreak = {
            "lifetime": (s.lifetime, None),
            "prestige": (s.prestige, s.lifetime),
            "rate": (s.rate, None),
            "weekly": (s.weekly, None),
        }[board]
        columns = _COLUMNS[board]
        changed = table.unpushed(rows, columns[0], score)
        if tiebreak is not None:
            changed |= table.unpushed(rows, columns[1], tiebreak)
        at = np.flatnonzero(changed)
        if not at.size:
            return
        owners = self.residents.row_owners
        ids = [res.player_id if (res := owners[r]) is not None else "" for r in rows[at].tolist()]
        at = at[np.fromiter(map(bool, ids), dtype=bool, count=len(ids))]  # rows without a resident farm
        if len(at) < len(ids):
            ids = [pid for pid in ids if pid]
        sent = rows[at]
        table.mark_pushed(sent, columns[0], score[at])
        if tiebreak is None:
            tiebreaks = [0.0] * len(ids)
        else:
            table.mark_pushed(sent, columns[1], tiebreak[at])
            tiebreaks = tiebreak[at].tolist()
        marked.append(sent)
        updates.extend(
            ScoreUpdate(pid, sc, tb, now) for pid, sc, tb in zip(ids, score[at].tolist(), tiebreaks, strict=True)
        )

    async def push_state(self, state: FarmState, now: float) -> None:
        """Push one farm's final scores (it is leaving memory)."""
        s = self.rules.scores(state, now)
        pid = state.player_id
        try:
            await self.coord.push_scores("lifetime", ALL_TIME, [ScoreUpdate(pid, s["lifetime"], 0.0, now)])
            await self.coord.push_scores("prestige", ALL_TIME, [ScoreUpdate(pid, s["prestige"], s["lifetime"], now)])
            await self.coord.push_scores("rate", ALL_TIME, [ScoreUpdate(pid, s["rate"], 0.0, now)])
            await self.coord.push_scores("weekly", iso_week(now), [ScoreUpdate(pid, s["weekly"], 0.0, now)])
        except CoordinationUnavailable as exc:
            self.push_errors.inc()
            log.warning("boards.push_failed", error=str(exc), player_id=pid)

    async def _connected(self) -> list[Resident]:
        """The resident farms with a live connection, gathered in slices."""
        table = self.residents.table
        n = table.size
        rows = np.flatnonzero(table.used[:n] & (table.connections[:n] > 0)).tolist()
        owners = self.residents.row_owners
        out: list[Resident] = []
        for start in range(0, len(rows), CHUNK):
            out.extend(res for r in rows[start : start + CHUNK] if (res := owners[r]) is not None and res.sinks)
            await asyncio.sleep(0)
        return out

    async def _notify_ranks(self, now: float) -> None:
        """Tell each connected player when a rank of theirs moved: one batched rank
        lookup per board for every connected farm (not one round trip per farm), then
        a message for each farm whose rank differs from the one it was last told."""
        connected = await self._connected()
        if not connected:
            return
        ids = [res.player_id for res in connected]
        for board in BOARDS:
            entries = await self.coord.ranks(board, period_of(board, now), ids)
            for start in range(0, len(connected), CHUNK):
                _tell_ranks(board, connected[start : start + CHUNK], entries)
                await asyncio.sleep(0)  # thousands of messages must not delay a tick

    async def top_message(self, board: str, now: float) -> bytes:
        page = await self.coord.page(board, period_of(board, now), TOP_LIVE, None, now)
        entries = await self.named(page.entries)
        return orjson.dumps(
            {
                "type": "event",
                "data": {"type": "leaderboard", "board": board, "period": page.period, "entries": entries},
            }
        )

    async def _notify_tops(self, now: float) -> None:
        for board, sinks in self.subscribers.items():
            if not sinks:
                continue
            msg = await self.top_message(board, now)
            if self._last_top.get(board) == msg:
                continue
            self._last_top[board] = msg
            text = msg.decode()
            for sink in list(sinks):
                sink.send(text)

    async def subscribe(self, board: str, sink: Sink) -> None:
        msg = await self.top_message(board, self.clock())
        if not self.subscribers[board]:
            self._last_top[board] = msg  # the only subscriber has it: the next push sends only a change
        self.subscribers[board].add(sink)
        sink.send(msg.decode())

    def unsubscribe(self, sink: Sink, board: str | None = None) -> None:
        for b, sinks in self.subscribers.items():
            if board is None or b == board:
                sinks.discard(sink)

    async def named(self, entries: list[BoardEntry]) -> list[dict[str, Any]]:
        names = await self.usernames([e.player_id for e in entries])
        return [
            {
                "rank": e.rank,
                "player_id": e.player_id,
                "username": names.get(e.player_id, "(deleted)"),
                "score": e.score,
                "reached_at": e.reached_at,
            }
            for e in entries
        ]

    async def usernames(self, player_ids: list[str]) -> dict[str, str]:
        now = self.clock()
        out = {pid: hit[0] for pid in player_ids if (hit := self._names.get(pid)) and hit[1] > now}
        missing = [pid for pid in player_ids if pid not in out]
        if missing:
            fetched = await self.store.usernames(missing)
            for pid, name in fetched.items():
                self._names[pid] = (name, now + self.profile_ttl_s)
            out.update(fetched)
        if len(self._names) > 100_000:
            self._names = {k: v for k, v in self._names.items() if v[1] > now}
        return out

    def forget_name(self, player_id: str) -> None:
        self._names.pop(player_id, None)


def _tell_ranks(board: str, connected: list[Resident], entries: dict[str, BoardEntry]) -> None:
    """`rank_changed` to each of `connected` whose rank on `board` differs from the one it was last told."""
    for res in connected:
        entry = entries.get(res.player_id)
        if entry is None or not res.sinks:
            continue
        before = res.ranks.get(board)
        res.ranks[board] = entry.rank
        if before is None or before == entry.rank:
            continue
        msg = orjson.dumps(
            {
                "type": "event",
                "data": {
                    "type": "rank_changed",
                    "board": board,
                    "rank": entry.rank,
                    "previous_rank": before,
                    "score": entry.score,
                },
            }
        ).decode()
        for sink in res.sinks:
            sink.send(msg)
