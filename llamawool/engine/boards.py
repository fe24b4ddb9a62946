"""Leaderboard feed: the engine pushes resident farms' scores in batches.

Scores are computed for every online (or changed) farm at once from the numpy
columns, then handed to the coordinator, which keeps the boards. After each
push, connected players hear `rank_changed` when their rank moved, and
subscribers of a board's live top 10 get it when it changed. The weekly board
rolls over at Monday 00:00 UTC; the coordinator's marker makes that happen
exactly once per week across replicas and restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

import orjson
import structlog
from prometheus_client import Counter, Gauge

from ..coord import BOARDS, BoardEntry, Boards, CoordinationUnavailable, Presence, ScoreUpdate
from ..game import FarmState, Rules, iso_week, week_start
from ..observability import Metrics
from ..store import Store
from .residents import ResidentIndex, Sink

log = structlog.get_logger("llamawool.boards")

ALL_TIME = "all"
CHUNK = 500  # farms per slice of a push; the event loop runs ticks between slices
TOP_LIVE = 10
# Every this many pushes every score goes out again, changed or not: a board that lost
# entries (Redis restarted empty) is whole again within a minute.
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
        # (board, player) -> (period, score, tiebreak) last pushed: an unchanged score is
        # not sent again (a farm's rate and prestige scores rarely move between pushes).
        self._pushed: dict[tuple[str, str], tuple[str, float, float]] = {}
        self._pushes = 0

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
        """One batch: every online or changed resident farm's four scores."""
        now = self.clock()
        await self.check_rollover(now)
        table = self.residents.table
        rows, lifetime, shears, rate, weekly = table.scores(now, week_start(now))
        self._pushes += 1
        if self._pushes % FULL_PUSH_EVERY == 0:
            self._pushed.clear()
        if rows.size:
            owners = self.residents.row_owners
            ids = [owners[r].player_id if owners[r] is not None else "" for r in rows.tolist()]
            batches: dict[str, list[ScoreUpdate]] = {b: [] for b in BOARDS}
            for pid, lv, ss, rv, wv in zip(
                ids, lifetime.tolist(), shears.tolist(), rate.tolist(), weekly.tolist(), strict=True
            ):
                if not pid:
                    continue
                batches["lifetime"].append(ScoreUpdate(pid, lv, 0.0, now))
                batches["prestige"].append(ScoreUpdate(pid, ss, lv, now))
                batches["rate"].append(ScoreUpdate(pid, rv, 0.0, now))
                batches["weekly"].append(ScoreUpdate(pid, wv, 0.0, now))
            for board, updates in batches.items():
                period = period_of(board, now)
                pushed = self._pushed
                changed = [u for u in updates if pushed.get((board, u.player_id)) != (period, u.score, u.tiebreak)]
                # one call per board: the coordinator sends its chunks in one round trip
                await self.coord.push_scores(board, period, changed)
                for u in changed:
                    self._pushed[(board, u.player_id)] = (period, u.score, u.tiebreak)
                await asyncio.sleep(0)  # let ticks and requests run between boards
        # Farms that left memory are pushed whole when they come back (another replica may
        # have pushed their scores meanwhile).
        resident = {res.player_id for res in self.residents.all()}
        self._pushed = {k: v for k, v in self._pushed.items() if k[1] in resident}
        self.stale = False
        await self.coord.report_online(self.coord.replica_id, self.residents.online_count(), now, 3 * self.push_s)
        self.cluster_online.set(await self.coord.online_count(now))
        await self._notify_ranks(now)
        await self._notify_tops(now)

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

    async def _notify_ranks(self, now: float) -> None:
        """Tell each connected player when a rank of theirs moved: one batched rank
        lookup per board for every connected farm (not one round trip per farm)."""
        connected = [res for res in self.residents.all() if res.sinks]
        if not connected:
            return
        ids = [res.player_id for res in connected]
        for board in BOARDS:
            entries = await self.coord.ranks(board, period_of(board, now), ids)
            for i, res in enumerate(connected):
                if i % CHUNK == CHUNK - 1:
                    await asyncio.sleep(0)  # thousands of messages must not delay a tick
                entry = entries.get(res.player_id)
                if entry is None or not res.sinks:
                    continue
                before = res.ranks.get(board)
                res.ranks[board] = entry.rank
                if before is not None and before != entry.rank:
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
