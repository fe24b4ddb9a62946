"""The board feed (`engine/boards.py`): what one push sends, and that it never holds the loop.

The feed reads resident farms through `ResidentIndex`: here a real `FarmTable`
with farms added straight to it, and the in-process coordinator behind a
wrapper that records every call. A push must send each farm's score on a board
exactly when it differs from what that farm last sent (or the farm is new to
its row, or a full push is due), ask for ranks once per board, tell a player
only when a rank of theirs moved, and let other tasks run between its slices.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from llamawool.coord import BOARDS, BoardEntry, CoordinationUnavailable, LocalCoordinator, ScoreUpdate
from llamawool.engine import boards
from llamawool.engine.boards import CHUNK, FULL_PUSH_EVERY, BoardFeed
from llamawool.engine.residents import Resident
from llamawool.engine.table import FarmTable
from llamawool.game import FarmState, iso_week
from llamawool.observability import Metrics
from llamawool.settings import load_rules
from tests.helpers import CollectingSink, FakeClock, logs_go_nowhere  # noqa: F401 (an autouse fixture)

RULES = load_rules()
T0 = 1_800_000_000.0  # a Friday
PUSH_S = 5.0
MANY = 3 * CHUNK + 123  # several slices, the last one partial


class Residents:
    """The feed's view of resident farms (`ResidentIndex`), filled by the test."""

    def __init__(self) -> None:
        self.table = FarmTable(RULES)
        self.row_owners: list[Resident | None] = []
        self.by_id: dict[str, Resident] = {}

    def add(self, state: FarmState, *, connected: bool = False) -> Resident:
        res = Resident(state.player_id, state, self.table.add(state))
        self.row_owners.extend([None] * (self.table.capacity - len(self.row_owners)))
        self.row_owners[res.row] = res
        self.by_id[res.player_id] = res
        if connected:
            res.sinks.add(CollectingSink())
            self.table.connections[res.row] = 1
        return res

    def remove(self, res: Resident) -> None:
        self.table.remove(res.row)
        self.row_owners[res.row] = None
        del self.by_id[res.player_id]

    def all(self) -> Iterable[Resident]:
        return self.by_id.values()

    def online_count(self) -> int:
        return int(self.table.online[: self.table.size].sum())


class Recording:
    """The in-process coordinator, with what the feed asks of it recorded."""

    def __init__(self) -> None:
        self.inner = LocalCoordinator(None)
        self.pushes: list[tuple[str, str, list[ScoreUpdate]]] = []
        self.ranks_asked: list[tuple[str, list[str]]] = []
        self.failing: set[str] = set()  # boards whose next push fails

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def push_scores(self, board: str, period: str, updates: list[ScoreUpdate]) -> None:
        if board in self.failing:
            self.failing.discard(board)
            raise CoordinationUnavailable("redis: connection refused")
        self.pushes.append((board, period, list(updates)))
        await self.inner.push_scores(board, period, updates)

    async def ranks(self, board: str, period: str, player_ids: list[str]) -> dict[str, BoardEntry]:
        self.ranks_asked.append((board, list(player_ids)))
        return await self.inner.ranks(board, period, player_ids)

    def sent(self) -> dict[str, dict[str, ScoreUpdate]]:
        """What the pushes since the last call sent: board -> player -> update."""
        out: dict[str, dict[str, ScoreUpdate]] = {b: {} for b in BOARDS}
        for board, _, updates in self.pushes:
            for u in updates:
                assert u.player_id not in out[board], f"{u.player_id} sent twice to {board} in one push"
                out[board][u.player_id] = u
        self.pushes.clear()
        return out


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def residents() -> Residents:
    return Residents()


@pytest.fixture
def coord() -> Recording:
    return Recording()


@pytest.fixture
def feed(residents: Residents, coord: Recording, clock: FakeClock) -> BoardFeed:
    return BoardFeed(residents, RULES, clock, Metrics(), coord, store=None, push_s=PUSH_S)  # type: ignore[arg-type]


def producing(pid: str, barns: int = 3, *, online: bool = True, lifetime: float = 0.0) -> FarmState:
    state = RULES.new_farm(pid, T0)
    state.buildings = {"barn": barns}
    state.discovered = ["basic"]
    state.online = online
    state.lifetime_value = lifetime
    return state


def assert_scores(sent: dict[str, ScoreUpdate], states: list[FarmState], board: str, now: float) -> None:
    assert sorted(sent) == sorted(s.player_id for s in states)
    for s in states:
        expected = RULES.scores(s, now)
        u = sent[s.player_id]
        assert math.isclose(u.score, expected[board], rel_tol=1e-12, abs_tol=1e-12), (board, s.player_id)
        tiebreak = expected["lifetime"] if board == "prestige" else 0.0
        assert math.isclose(u.tiebreak, tiebreak, rel_tol=1e-12, abs_tol=1e-12), (board, s.player_id)
        assert u.at == now


async def test_a_push_sends_a_score_only_when_it_differs_from_the_one_last_sent(
    feed: BoardFeed, residents: Residents, coord: Recording, clock: FakeClock
) -> None:
    online = [producing(f"on{i}", barns=1 + i) for i in range(3)]
    offline = producing("off", online=False, lifetime=42.0)
    for s in [*online, offline]:
        residents.add(s)

    await feed.push()  # the first: every farm's four scores
    first = coord.sent()
    for board in BOARDS:
        assert_scores(first[board], [*online, offline], board, T0)

    await feed.push()  # the same instant: nothing moved, nothing goes
    assert coord.sent() == {b: {} for b in BOARDS}

    now = clock.advance(PUSH_S)  # online farms produced: lifetime, weekly and prestige's tiebreak moved
    await feed.push()
    moved = coord.sent()
    for board in ("lifetime", "prestige", "weekly"):
        assert_scores(moved[board], online, board, now)
    assert moved["rate"] == {}  # rates did not change


async def test_a_change_to_an_offline_farm_is_sent_once(
    feed: BoardFeed, residents: Residents, coord: Recording, clock: FakeClock
) -> None:
    res = residents.add(producing("off", online=False, lifetime=10.0))
    residents.add(producing("other", online=False, lifetime=5.0))
    await feed.push()
    coord.sent()

    res.state.lifetime_value = 11.0  # an event re-anchored it (an upload, a restore)
    residents.table.sync(res.row, res.state)
    now = clock.advance(PUSH_S)
    await feed.push()

    sent = coord.sent()
    assert_scores(sent["lifetime"], [res.state], "lifetime", now)
    assert_scores(sent["prestige"], [res.state], "prestige", now)
    assert sent["rate"] == {} and sent["weekly"] == {}
    await feed.push()
    assert coord.sent() == {b: {} for b in BOARDS}


async def test_scores_a_failed_push_did_not_send_go_with_the_next(
    feed: BoardFeed, residents: Residents, coord: Recording, clock: FakeClock
) -> None:
    res = residents.add(producing("off", online=False, lifetime=10.0))
    await feed.push()
    coord.sent()

    res.state.lifetime_value = 20.0
    residents.table.sync(res.row, res.state)
    coord.failing.add("prestige")  # lifetime goes out, then Redis goes away
    with pytest.raises(CoordinationUnavailable):
        await feed.push()
    assert set(coord.sent()["lifetime"]) == {"off"}

    now = clock.advance(PUSH_S)
    await feed.push()  # the farm is offline and changed nothing since: still sent where it was not
    sent = coord.sent()
    assert sent["lifetime"] == {}  # that one arrived already
    assert_scores(sent["prestige"], [res.state], "prestige", now)


async def test_a_farm_that_takes_a_freed_row_is_sent_whole(
    feed: BoardFeed, residents: Residents, coord: Recording
) -> None:
    gone = residents.add(producing("gone", online=False))
    await feed.push()
    coord.sent()
    residents.remove(gone)

    came = residents.add(producing("came", online=False))  # the same scores, in the same row
    assert came.row == gone.row
    await feed.push()

    sent = coord.sent()
    for board in BOARDS:
        assert_scores(sent[board], [came.state], board, T0)


async def test_every_score_goes_again_on_every_full_push_and_weekly_ones_when_the_week_turns(
    feed: BoardFeed, residents: Residents, coord: Recording, clock: FakeClock
) -> None:
    still = producing("still", online=False, lifetime=3.0)
    still.weekly_value = 3.0
    residents.add(still)
    for _ in range(FULL_PUSH_EVERY - 1):
        await feed.push()
    coord.sent()

    await feed.push()  # the FULL_PUSH_EVERY-th
    assert all(set(sent) == {"still"} for sent in coord.sent().values())
    await feed.push()
    assert coord.sent() == {b: {} for b in BOARDS}

    monday = clock.advance(4 * 86400.0)  # Friday to Tuesday: a new week
    assert iso_week(monday) != iso_week(T0)
    await feed.push()
    pushes = [(board, period) for board, period, _ in coord.pushes]
    assert pushes == [("weekly", iso_week(monday))]
    assert coord.sent()["weekly"]["still"].score == 0.0  # nothing produced this week


async def test_ranks_are_asked_once_per_board_and_only_moved_ranks_are_told(
    feed: BoardFeed, residents: Residents, coord: Recording
) -> None:
    # Offline farms that produce nothing, connected (a socket keeps them resident), with
    # distinct lifetime values: ranks move only when the test moves them.
    farms = [
        residents.add(producing(f"p{i:04d}", barns=0, online=False, lifetime=float(i)), connected=True)
        for i in range(MANY)
    ]
    await feed.push()
    assert [board for board, _ in coord.ranks_asked] == list(BOARDS)
    assert all(sorted(ids) == sorted(res.player_id for res in farms) for _, ids in coord.ranks_asked)
    assert all(not sink.messages for res in farms for sink in res.sinks)  # first ranks: nothing to tell

    last, next_to_last = farms[0], farms[1]  # lifetime 0 and 1
    last.state.lifetime_value = 1.5  # overtakes one farm, on lifetime and on prestige (its tiebreak)
    residents.table.sync(last.row, last.state)
    coord.ranks_asked.clear()
    await feed.push()

    assert [board for board, _ in coord.ranks_asked] == list(BOARDS)
    told = {
        res.player_id: [(m["data"]["board"], m["data"]["previous_rank"], m["data"]["rank"]) for m in sink.messages]
        for res in farms
        for sink in res.sinks  # type: ignore[attr-defined]
        if sink.messages  # type: ignore[attr-defined]
    }
    assert told == {
        last.player_id: [("lifetime", MANY, MANY - 1), ("prestige", MANY, MANY - 1)],
        next_to_last.player_id: [("lifetime", MANY - 1, MANY), ("prestige", MANY - 1, MANY)],
    }


async def test_a_push_lets_other_tasks_run_between_its_slices(
    feed: BoardFeed, residents: Residents, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(MANY):
        residents.add(producing(f"p{i:04d}", barns=1 + i % 7), connected=True)
    spins = 0

    async def spin() -> None:
        nonlocal spins
        while True:
            spins += 1
            await asyncio.sleep(0)

    seen: dict[str, list[int]] = {"collect": [], "tell": []}

    def recorded(name: str, fn: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            seen[name].append(spins)
            fn(*args)

        return call

    monkeypatch.setattr(feed, "_collect", recorded("collect", feed._collect))
    monkeypatch.setattr(boards, "_tell_ranks", recorded("tell", boards._tell_ranks))
    spinner = asyncio.create_task(spin())
    try:
        await feed.push()
    finally:
        spinner.cancel()

    slices = -(-MANY // CHUNK)
    assert len(seen["collect"]) == len(seen["tell"]) == len(BOARDS) * slices
    for name, counts in seen.items():
        # another task ran before every slice of the feed's own work (a board's first
        # slice follows the previous board's coordinator call, which yields too)
        assert all(a < b for a, b in itertools.pairwise(counts)), (name, counts)
