"""The coordination contract (`llamawool.coord.base.Coordinator`), on every adapter.

Each test runs on the in-process adapter and on a real `redis-server` started
by the tests (see `tests/redis_server.py`). Time is always passed in (`now`),
so windows, view lifetimes and caches are exercised without sleeping.

The leaderboard tests pin down the bugs players of well-known game servers
have hit: around-me off by one at the top, ranks that lag new scores, ties
that reshuffle on an unchanged score, stale ranks after a board is emptied,
pages that shift under the reader, flagged players leaking into public views.

Paging guarantee (what a client may rely on): every page read through one
cursor chain comes from the frozen view its first page made, for the
leaderboard TTL, so forward then back returns the same rows while scores move;
ranks (`rank`, `around`) are always live; a first page may be reused for
`view_refresh_s` (its `as_of` tells when it was taken); a cursor whose view
expired continues after the last row it showed, without repeating rows.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamawool.coord import (
    BadCursor,
    BoardEntry,
    BoardPage,
    CoordinationUnavailable,
    Coordinator,
    Cursor,
    LimitHit,
    LocalCoordinator,
    ReplicaLoad,
    ScoreUpdate,
    open_coordinator,
)
from llamawool.coord import redis as redis_coord
from llamawool.coord.batching import BatchedHits
from llamawool.coord.redis import _PURPOSE, RedisCoordinator, decode_key, decode_numbers, encode_key, encode_keys
from llamawool.observability import Metrics
from llamawool.settings import Settings
from tests.helpers import free_port
from tests.redis_server import RedisServer, unavailable

from . import conftest_coord as fixtures
from .conftest_coord import VIEW_REFRESH_S, CoordBackend

# The fixtures, by name in this module (conftest_coord.py is not a conftest.py).
coord = fixtures.coord
coord_factory = fixtures.coord_factory
redis_factory = fixtures.redis_factory
redis_server = fixtures.redis_server

T0 = 1_800_000_000.0
B = "lifetime"
ALL = "all"


def up(pid: str, score: float, at: float = T0, tiebreak: float = 0.0) -> ScoreUpdate:
    return ScoreUpdate(pid, score, tiebreak, at)


def rows(entries: list[BoardEntry]) -> list[tuple[int, str]]:
    return [(e.rank, e.player_id) for e in entries]


def full(page: BoardPage) -> list[tuple[int, str, float, float]]:
    return [(e.rank, e.player_id, e.score, e.reached_at) for e in page.entries]


async def top(c: Coordinator, now: float, board: str = B, period: str = ALL, limit: int = 100) -> list[str]:
    page = await c.page(board, period, limit, None, now)
    return [e.player_id for e in page.entries]


async def follow(c: Coordinator, cursor: str | None, now: float, limit: int = 10) -> BoardPage:
    assert cursor is not None
    return await c.page(B, ALL, limit, Cursor.decode(cursor), now)


async def eventually(cond: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# ---- rate limits ----------------------------------------------------------------------------------


async def test_sixty_hits_allowed_the_61st_refused(coord: Coordinator) -> None:
    for i in range(60):
        now = T0 + i * 0.5
        r = await coord.hit("action:p1", 60, 60.0, now)
        assert r.allowed and r.limit == 60 and r.retry_after_s == 0.0
        assert r.remaining == 59 - i
        assert r.reset_s == pytest.approx(60.0 - i * 0.5)  # until the oldest hit leaves the window
    r = await coord.hit("action:p1", 60, 60.0, T0 + 30.0)
    assert not r.allowed and r.remaining == 0 and r.limit == 60
    assert r.retry_after_s == pytest.approx(30.0) and r.reset_s == pytest.approx(30.0)
    # A refused attempt is not recorded: room comes back exactly when the first hit expires.
    r = await coord.hit("action:p1", 60, 60.0, T0 + 59.75)
    assert not r.allowed and r.retry_after_s == pytest.approx(0.25)
    r = await coord.hit("action:p1", 60, 60.0, T0 + 60.0)
    assert r.allowed and r.remaining == 0 and r.reset_s == pytest.approx(0.5)
    # Other keys are untouched.
    r = await coord.hit("action:p2", 60, 60.0, T0 + 30.0)
    assert r.allowed and r.remaining == 59 and r.reset_s == pytest.approx(60.0)


async def test_peek_does_not_count(coord: Coordinator) -> None:
    for _ in range(5):
        r = await coord.peek("login:ip", 3, 10.0, T0)
        assert r.allowed and r.remaining == 3 and r.reset_s == pytest.approx(10.0)
    assert [(await coord.hit("login:ip", 3, 10.0, T0 + i)).remaining for i in range(3)] == [2, 1, 0]
    for _ in range(3):
        r = await coord.peek("login:ip", 3, 10.0, T0 + 3)
        assert not r.allowed and r.remaining == 0 and r.retry_after_s == pytest.approx(7.0)
    r = await coord.peek("login:ip", 3, 10.0, T0 + 10)
    assert r.allowed and r.remaining == 1 and r.reset_s == pytest.approx(1.0)
    assert (await coord.hit("login:ip", 3, 10.0, T0 + 10)).remaining == 0


async def test_limits_hold_under_concurrent_hits_from_every_replica(coord_factory: CoordBackend) -> None:
    coords = [await coord_factory.make()]
    if coord_factory.shared:
        coords.append(await coord_factory.make())
    results = await asyncio.gather(
        *(coords[i % len(coords)].hit("action:busy", 60, 60.0, T0 + i * 0.001) for i in range(100))
    )
    assert sum(r.allowed for r in results) == 60
    assert sorted(r.remaining for r in results if r.allowed) == list(range(60))


async def test_hits_in_one_batch_count_exactly_as_one_by_one(coord: Coordinator) -> None:
    await coord.hit("action:a", 3, 60.0, T0)
    batch = [LimitHit("action:a", 3, 60.0)] * 3 + [LimitHit("action:b", 3, 60.0), LimitHit("shear:a", 1, 10.0)] * 2

    results = await coord.hit_many(batch, T0 + 1)

    assert [(r.allowed, r.remaining) for r in results] == [
        (True, 1),
        (True, 0),
        (False, 0),
        (True, 2),
        (True, 0),
        (True, 1),
        (False, 0),
    ]
    assert results[2].retry_after_s == pytest.approx(59.0) and results[6].retry_after_s == pytest.approx(10.0)
    assert not (await coord.hit("action:a", 3, 60.0, T0 + 2)).allowed  # the batch's hits were recorded
    assert await coord.hit_many([], T0) == []


async def test_batched_hits_from_every_replica_share_one_window(coord_factory: CoordBackend) -> None:
    coords = [await coord_factory.make()]
    if coord_factory.shared:
        coords.append(await coord_factory.make())
    batches = [[LimitHit("action:busy", 60, 60.0)] * 10 for _ in range(10)]
    results = await asyncio.gather(*(coords[i % len(coords)].hit_many(b, T0 + i) for i, b in enumerate(batches)))
    allowed = [r for batch in results for r in batch if r.allowed]
    assert len(allowed) == 60
    assert sorted(r.remaining for r in allowed) == list(range(60))


async def test_violations_roll_off_after_the_window(coord: Coordinator) -> None:
    counts = [await coord.count_violation("cheater", T0 + i * 60, 3600.0) for i in range(5)]
    assert counts == [1, 2, 3, 4, 5]
    assert await coord.count_violation("cheater", T0 + 3600, 3600.0) == 5  # the first one left
    assert await coord.count_violation("cheater", T0 + 3600 + 241, 3600.0) == 2  # 60..240 left too
    assert await coord.count_violation("cheater", T0 + 2 * 3600 + 242, 3600.0) == 1
    assert await coord.count_violation("someone-else", T0, 3600.0) == 1


# ---- leaderboards: ranks ------------------------------------------------------------------------------


async def test_ranks_right_after_new_scores_arrive(coord: Coordinator) -> None:
    await coord.push_scores(B, ALL, [up("a", 100), up("b", 50), up("c", 10)])
    assert [(await coord.rank(B, ALL, p)) for p in "abc"] == [
        BoardEntry(1, "a", 100.0, T0),
        BoardEntry(2, "b", 50.0, T0),
        BoardEntry(3, "c", 10.0, T0),
    ]
    await coord.push_scores(B, ALL, [up("c", 200, T0 + 1)])
    assert [(await coord.rank(B, ALL, p)).rank for p in "cab"] == [1, 2, 3]  # type: ignore[union-attr]
    await coord.push_scores(B, ALL, [up("d", 150, T0 + 2)])
    assert rows(await coord.around(B, ALL, "d", 5)) == [(1, "c"), (2, "d"), (3, "a"), (4, "b")]
    assert await top(coord, T0 + 2) == ["c", "d", "a", "b"]
    await coord.push_scores(B, ALL, [up("b", 1000, T0 + 3)])
    assert (await coord.rank(B, ALL, "b")) == BoardEntry(1, "b", 1000.0, T0 + 3)


async def test_first_page_is_reused_only_for_view_refresh_s(coord: Coordinator) -> None:
    await coord.push_scores(B, ALL, [up("a", 100)])
    first = await coord.page(B, ALL, 10, None, T0)
    await coord.push_scores(B, ALL, [up("b", 200, T0 + 1)])
    again = await coord.page(B, ALL, 10, None, T0 + 1)
    assert full(again) == full(first) and again.as_of == first.as_of == T0  # a cached page says when
    assert (await coord.rank(B, ALL, "b")).rank == 1  # type: ignore[union-attr]  # ranks are live
    fresh = await coord.page(B, ALL, 10, None, T0 + VIEW_REFRESH_S)
    assert [e.player_id for e in fresh.entries] == ["b", "a"] and fresh.as_of == T0 + VIEW_REFRESH_S


async def test_around_me_when_first_second_and_last(coord: Coordinator) -> None:
    await coord.push_scores(B, ALL, [up(f"p{i}", 700 - i * 100) for i in range(1, 7)])
    assert rows(await coord.around(B, ALL, "p1", 2)) == [(1, "p1"), (2, "p2"), (3, "p3")]
    assert rows(await coord.around(B, ALL, "p2", 2)) == [(1, "p1"), (2, "p2"), (3, "p3"), (4, "p4")]
    assert rows(await coord.around(B, ALL, "p2", 1)) == [(1, "p1"), (2, "p2"), (3, "p3")]
    assert rows(await coord.around(B, ALL, "p6", 2)) == [(4, "p4"), (5, "p5"), (6, "p6")]
    assert rows(await coord.around(B, ALL, "p1", 0)) == [(1, "p1")]
    assert rows(await coord.around(B, ALL, "p3", 0)) == [(3, "p3")]
    assert rows(await coord.around(B, ALL, "p1", 100)) == [(i, f"p{i}") for i in range(1, 7)]
    entries = await coord.around(B, ALL, "p2", 1)
    assert [e.score for e in entries] == [600.0, 500.0, 400.0]
    assert await coord.around(B, ALL, "nobody", 3) == []
    assert await coord.rank(B, ALL, "nobody") is None
    await coord.push_scores("rate", ALL, [up("solo", 1.5)])
    assert rows(await coord.around("rate", ALL, "solo", 5)) == [(1, "solo")]


async def test_ranks_of_many_players_are_their_ranks_one_by_one(coord: Coordinator) -> None:
    # More players than one script call takes, so the Redis adapter pipelines several.
    players = [f"p{i:04d}" for i in range(2300)]
    await coord.push_scores(B, ALL, [up(p, float(i % 700), T0 + i % 3) for i, p in enumerate(players)])
    await coord.set_hidden("p0005", True)
    await coord.set_hidden("p0699", True)
    asked = [*players[::7], "nobody", "p0005"]

    ranks = await coord.ranks(B, ALL, asked)

    assert "nobody" not in ranks
    assert ranks == {p: e for p in asked if (e := await coord.rank(B, ALL, p)) is not None}
    assert len(ranks) == len(asked) - 1
    few = ["p0005", "p0007", "p0700"]  # a few of a long board (the in-process adapter looks each one up)
    assert await coord.ranks(B, ALL, few) == {p: ranks[p] for p in few}
    assert await coord.ranks(B, ALL, []) == {}
    assert await coord.ranks("rate", ALL, ["p0001"]) == {}


class Spinner:
    """A task that counts how often it got to run: other work between an adapter's slices."""

    def __init__(self) -> None:
        self.spins = 0
        self._task: asyncio.Task[None] | None = None

    async def _spin(self) -> None:
        while True:
            self.spins += 1
            await asyncio.sleep(0)

    async def __aenter__(self) -> Spinner:
        self._task = asyncio.create_task(self._spin())
        await asyncio.sleep(0)
        self.spins = 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


class Watched(list[ScoreUpdate]):
    """Score updates that note how often `spinner` had run each time the adapter takes some."""

    def __init__(self, items: list[ScoreUpdate], spinner: Spinner) -> None:
        super().__init__(items)
        self.spinner = spinner
        self.taken: list[int] = []

    def __getitem__(self, index: Any) -> Any:
        self.taken.append(self.spinner.spins)
        return super().__getitem__(index)

    def __iter__(self) -> Iterator[ScoreUpdate]:
        self.taken.append(self.spinner.spins)
        return super().__iter__()


async def test_pushes_and_ranks_of_thousands_of_players_let_other_tasks_run_meanwhile(coord: Coordinator) -> None:
    """The board feed hands an adapter every connected farm at once (10,000 and more): the
    adapter works through them in slices, the event loop free in between, never in one go."""
    players = [f"p{i:05d}" for i in range(10_000)]
    async with Spinner() as during_push:
        updates = Watched([up(p, float(i)) for i, p in enumerate(players)], during_push)
        await coord.push_scores(B, ALL, updates)
    async with Spinner() as during_ranks:
        ranks = await coord.ranks(B, ALL, players)

    assert len(set(updates.taken)) >= 3  # taken a slice at a time, other tasks running between
    assert during_ranks.spins >= 3
    assert ranks["p09999"].rank == 1 and ranks["p00000"].rank == 10_000


async def test_redis_encodes_and_decodes_a_big_batch_chunk_by_chunk_with_the_loop_free_between(
    redis_factory: CoordBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One round trip for all chunks, yet not one stretch: a chunk is encoded and written,
    then the next; the answers are read and decoded one chunk at a time."""
    coord = await redis_factory.make()
    metrics = Metrics()
    coord.bind_metrics(metrics)
    players = [f"p{i:05d}" for i in range(5500)]
    seen: dict[str, list[int]] = {"encode": [], "decode": []}
    spinner = Spinner()

    def recorded(name: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def call(arg: Any) -> Any:
            seen[name].append(spinner.spins)
            return fn(arg)

        return call

    monkeypatch.setattr(redis_coord, "encode_keys", recorded("encode", redis_coord.encode_keys))
    monkeypatch.setattr(redis_coord, "decode_numbers", recorded("decode", redis_coord.decode_numbers))
    async with spinner:
        await coord.push_scores(B, ALL, [up(p, float(i)) for i, p in enumerate(players)])
        ranks = await coord.ranks(B, ALL, players)

    assert len(seen["encode"]) == len(seen["decode"]) == 6
    for name, counts in seen.items():
        assert all(a < b for a, b in itertools.pairwise(counts)), (name, counts)
    assert ranks["p05499"].rank == 1 and ranks["p00000"].rank == 5500
    assert _counted(metrics, "llamawool_redis_round_trips_total", "boards") == 2


async def test_unchanged_score_does_not_move_anyone(coord: Coordinator) -> None:
    await coord.push_scores(B, ALL, [up("a", 100, T0 + 1), up("b", 100, T0 + 2), up("c", 100, T0 + 3)])
    assert rows(await coord.around(B, ALL, "b", 5)) == [(1, "a"), (2, "b"), (3, "c")]
    # Pushed again later (as every batch does): nothing moves, reached_at is kept.
    await coord.push_scores(B, ALL, [up("c", 100, T0 + 10), up("b", 100, T0 + 11), up("a", 100, T0 + 12)])
    assert [(e.rank, e.player_id, e.reached_at) for e in await coord.around(B, ALL, "b", 5)] == [
        (1, "a", T0 + 1),
        (2, "b", T0 + 2),
        (3, "c", T0 + 3),
    ]
    # Same score reached at the same moment: the player id decides, the same way everywhere.
    await coord.push_scores(B, ALL, [up("aa", 100, T0 + 1)])
    assert rows(await coord.around(B, ALL, "aa", 5)) == [(1, "a"), (2, "aa"), (3, "b"), (4, "c")]
    # Leaving the tie and coming back means reaching the score again, later.
    await coord.push_scores(B, ALL, [up("b", 101, T0 + 20)])
    assert (await coord.rank(B, ALL, "b")).rank == 1  # type: ignore[union-attr]
    await coord.push_scores(B, ALL, [up("b", 100, T0 + 30)])
    assert rows(await coord.around(B, ALL, "b", 5)) == [(1, "a"), (2, "aa"), (3, "c"), (4, "b")]
    assert await top(coord, T0 + 100) == ["a", "aa", "c", "b"]


async def test_tiebreak_orders_equal_scores(coord: Coordinator) -> None:
    await coord.push_scores("prestige", ALL, [up("x", 3, T0 + 1, tiebreak=1000), up("y", 3, T0 + 9, tiebreak=2000)])
    assert await top(coord, T0, "prestige") == ["y", "x"]
    await coord.push_scores("prestige", ALL, [up("x", 3, T0 + 20, tiebreak=1000)])  # unchanged
    assert (await coord.rank("prestige", ALL, "x")) == BoardEntry(2, "x", 3.0, T0 + 1)
    await coord.push_scores("prestige", ALL, [up("x", 3, T0 + 30, tiebreak=2000)])  # tied on both: earlier wins
    assert rows(await coord.around("prestige", ALL, "x", 1)) == [(1, "y"), (2, "x")]
    await coord.push_scores("prestige", ALL, [up("x", 3, T0 + 40, tiebreak=2500)])
    assert (await coord.rank("prestige", ALL, "x")) == BoardEntry(1, "x", 3.0, T0 + 40)


async def test_board_emptied_and_refilled_has_no_stale_ranks(coord: Coordinator) -> None:
    await coord.push_scores(B, ALL, [up("a", 30), up("b", 20), up("c", 10)])
    await coord.push_scores("weekly", "2027-W01", [up("a", 5)])
    assert await top(coord, T0) == ["a", "b", "c"]
    for pid in "abc":
        await coord.remove_player(pid)
    assert [await coord.rank(B, ALL, p) for p in "abc"] == [None, None, None]
    assert await coord.around(B, ALL, "a", 3) == []
    empty = await coord.page(B, ALL, 10, None, T0)  # not the cached page from before the removal
    assert empty.entries == [] and empty.total == 0 and empty.next_cursor is None
    assert await coord.periods("weekly") == []
    await coord.push_scores(B, ALL, [up("d", 5, T0 + 1), up("a", 1, T0 + 1)])
    assert (await coord.rank(B, ALL, "d")) == BoardEntry(1, "d", 5.0, T0 + 1)
    assert (await coord.rank(B, ALL, "a")) == BoardEntry(2, "a", 1.0, T0 + 1)
    assert rows(await coord.around(B, ALL, "a", 5)) == [(1, "d"), (2, "a")]
    page = await coord.page(B, ALL, 10, None, T0 + VIEW_REFRESH_S)
    assert full(page) == [(1, "d", 5.0, T0 + 1), (2, "a", 1.0, T0 + 1)] and page.total == 2


async def test_ordering_matches_the_reference_on_random_pushes(coord: Coordinator) -> None:
    """Many ties, repeated scores, players hidden, shown and removed: exactly the reference order."""
    rnd = random.Random(4)
    players = [f"p{i:02d}" for i in range(30)]
    reference: dict[str, tuple[float, float, float, str]] = {}
    hidden: set[str] = set()
    now = T0
    for round_ in range(16):
        now += 1
        batch = []
        for pid in rnd.sample(players, 12):
            score = float(rnd.choice([0, 1, 2, 2.5, 3, -1]))
            tiebreak = float(rnd.choice([0, 0, 7]))
            batch.append(up(pid, score, now, tiebreak))
            old = reference.get(pid)
            if old is None or (old[0], old[1]) != (-score, -tiebreak):
                reference[pid] = (-score, -tiebreak, now, pid)
        await coord.push_scores("prestige", ALL, batch)
        if round_ in (5, 9):
            for pid in rnd.sample(sorted(reference), 3):
                await coord.set_hidden(pid, True)
                hidden.add(pid)
        if round_ == 11:
            shown = sorted(hidden)[0]
            await coord.set_hidden(shown, False)
            hidden.discard(shown)
            gone = sorted(hidden)[-1]
            await coord.remove_player(gone)
            hidden.discard(gone)
            del reference[gone]
    order = [k[3] for k in sorted(reference.values())]
    visible = [p for p in order if p not in hidden]
    page = await coord.page("prestige", ALL, 100, None, now)
    assert [e.player_id for e in page.entries] == visible and page.total == len(visible)
    assert [(e.score, e.reached_at) for e in page.entries] == [(-reference[p][0], reference[p][2]) for p in visible]
    for i, pid in enumerate(order):
        ahead = [p for p in order[:i] if p not in hidden]  # a hidden player sees themselves, nobody else hidden
        behind = [p for p in order[i + 1 :] if p not in hidden]
        rank = len(ahead) + 1
        assert (await coord.rank("prestige", ALL, pid)).rank == rank  # type: ignore[union-attr]
        above, below = ahead[-2:], behind[:2]
        expected = list(enumerate([*above, pid, *below], start=rank - len(above)))
        assert rows(await coord.around("prestige", ALL, pid, 2)) == expected


# ---- leaderboards: pages and cursors ---------------------------------------------------------------


async def test_paging_forward_then_back_is_stable_while_scores_move(coord: Coordinator) -> None:
    await coord.push_scores(B, ALL, [up(f"p{i:02d}", 1000 - i * 10) for i in range(25)])
    p1 = await coord.page(B, ALL, 10, None, T0 + 1)
    assert [e.rank for e in p1.entries] == list(range(1, 11)) and p1.total == 25 and p1.prev_cursor is None
    # The board moves between pages: the last jumps to the top, the first drops, a newcomer leads.
    await coord.push_scores(B, ALL, [up("p24", 5000, T0 + 2), up("p00", 1, T0 + 2), up("new", 9000, T0 + 2)])
    p2 = await follow(coord, p1.next_cursor, T0 + 3)
    p3 = await follow(coord, p2.next_cursor, T0 + 4)
    assert [e.rank for e in p2.entries] == list(range(11, 21))
    assert [e.player_id for e in p1.entries + p2.entries + p3.entries] == [f"p{i:02d}" for i in range(25)]
    assert p3.next_cursor is None and {p.total for p in (p1, p2, p3)} == {25}
    back2 = await follow(coord, p3.prev_cursor, T0 + 5)
    back1 = await follow(coord, back2.prev_cursor, T0 + 6)
    assert full(back2) == full(p2) and full(back1) == full(p1)
    assert back1.prev_cursor is None and back1.as_of == p1.as_of
    # Ranks and fresh first pages are live.
    assert (await coord.rank(B, ALL, "new")).rank == 1  # type: ignore[union-attr]
    assert (await top(coord, T0 + 10, limit=3)) == ["new", "p24", "p01"]


async def test_continuing_after_an_expired_view_does_not_repeat_rows(coord_factory: CoordBackend) -> None:
    coord = await coord_factory.make(view_ttl_s=60.0)
    await coord.push_scores(B, ALL, [up(f"p{i:02d}", 1000 - i * 10) for i in range(30)])
    p1 = await coord.page(B, ALL, 10, None, T0)
    old_p3 = await follow(coord, (await follow(coord, p1.next_cursor, T0 + 1)).next_cursor, T0 + 1)
    await coord.push_scores(B, ALL, [up("new", 9999, T0 + 2)])  # shifts everyone down one
    p2 = await follow(coord, p1.next_cursor, T0 + 61)  # the view is 61 s old: expired
    assert [e.player_id for e in p2.entries] == [f"p{i:02d}" for i in range(10, 20)]  # not p09 again
    assert [e.rank for e in p2.entries] == list(range(12, 22)) and p2.as_of == T0 + 61 and p2.total == 31
    p3 = await follow(coord, p2.next_cursor, T0 + 62)  # the new chain is stable again
    assert [e.player_id for e in p3.entries] == [f"p{i:02d}" for i in range(20, 30)] and p3.next_cursor is None
    with pytest.raises(BadCursor):  # a prev cursor of an expired view has no row to go on
        await follow(coord, old_p3.prev_cursor, T0 + 61)
    # A cursor back to the top of an expired view is just a fresh first page.
    top_again = await coord.page(B, ALL, 10, Cursor(Cursor.decode(p1.next_cursor or "").view, 0), T0 + 200)
    assert top_again.entries[0].player_id == "new"


async def test_foreign_and_broken_cursors(coord: Coordinator) -> None:
    await coord.push_scores(B, ALL, [up("a", 1)])
    with pytest.raises(BadCursor):
        Cursor.decode("not a cursor")
    with pytest.raises(BadCursor):
        await coord.page(B, ALL, 10, Cursor("no-such-view", 20), T0)
    page = await coord.page(B, ALL, 10, Cursor("no-such-view", 0), T0)
    assert [e.player_id for e in page.entries] == ["a"]
    past_the_end = await coord.page(B, ALL, 10, Cursor(Cursor.decode(Cursor("v", 0).encode()).view, 0), T0)
    assert [e.player_id for e in past_the_end.entries] == ["a"]
    # a view of another board is not this board's view
    await coord.push_scores("rate", ALL, [up("r1", 1), up("r2", 2), up("r3", 3)])
    rate_page = await coord.page("rate", ALL, 1, None, T0)
    with pytest.raises(BadCursor):
        await coord.page(B, ALL, 10, Cursor(Cursor.decode(rate_page.next_cursor or "").view, 1), T0)


async def test_periods_and_past_weeks_stay_readable(coord: Coordinator) -> None:
    await coord.push_scores("weekly", "2027-W01", [up("a", 10), up("b", 20)])
    await coord.push_scores("weekly", "2027-W02", [up("a", 5)])
    await coord.push_scores(B, ALL, [up("a", 50)])
    assert await coord.periods("weekly") == ["2027-W02", "2027-W01"]
    assert await coord.periods(B) == [ALL]
    assert await coord.periods("rate") == []
    assert await top(coord, T0, "weekly", "2027-W01") == ["b", "a"]
    assert (await coord.rank("weekly", "2027-W02", "b")) is None


# ---- hidden players ----------------------------------------------------------------------------------


async def test_hidden_players_vanish_from_public_views_but_see_their_own_rank(coord: Coordinator) -> None:
    await coord.push_scores(B, ALL, [up("a", 400), up("b", 300), up("c", 200), up("d", 100)])
    assert await top(coord, T0) == ["a", "b", "c", "d"]
    await coord.set_hidden("b", True)
    page = await coord.page(B, ALL, 10, None, T0)  # same moment: the change is not hidden by a cache
    assert rows(page.entries) == [(1, "a"), (2, "c"), (3, "d")] and page.total == 3
    assert [(await coord.rank(B, ALL, p)).rank for p in "acd"] == [1, 2, 3]  # type: ignore[union-attr]
    assert (await coord.rank(B, ALL, "b")) == BoardEntry(2, "b", 300.0, T0)  # their own view
    assert rows(await coord.around(B, ALL, "b", 1)) == [(1, "a"), (2, "b"), (3, "c")]
    assert rows(await coord.around(B, ALL, "c", 1)) == [(1, "a"), (2, "c"), (3, "d")]
    assert rows(await coord.around(B, ALL, "a", 5)) == [(1, "a"), (2, "c"), (3, "d")]
    await coord.set_hidden("a", True)  # the leader flagged too
    assert rows(await coord.around(B, ALL, "a", 1)) == [(1, "a"), (2, "c")]
    assert rows(await coord.around(B, ALL, "d", 5)) == [(1, "c"), (2, "d")]
    assert await top(coord, T0 + 1) == ["c", "d"]
    await coord.set_hidden("b", False)
    await coord.set_hidden("a", False)
    assert await top(coord, T0 + 1) == ["a", "b", "c", "d"]
    assert (await coord.rank(B, ALL, "c")).rank == 3  # type: ignore[union-attr]


async def test_a_hidden_newcomer_and_other_boards(coord: Coordinator) -> None:
    await coord.set_hidden("flagged", True)  # flagged before they ever scored
    await coord.push_scores("rate", ALL, [up("flagged", 99), up("x", 1)])
    await coord.push_scores("weekly", "2027-W05", [up("flagged", 99), up("x", 1)])
    for board, period in (("rate", ALL), ("weekly", "2027-W05")):
        assert await top(coord, T0, board, period) == ["x"]
        assert (await coord.rank(board, period, "x")).rank == 1  # type: ignore[union-attr]
        assert (await coord.rank(board, period, "flagged")).rank == 1  # type: ignore[union-attr]


# ---- weekly rollover ----------------------------------------------------------------------------------


async def test_claim_rollover_is_true_exactly_once_per_period(coord_factory: CoordBackend) -> None:
    coord = await coord_factory.make()
    assert await coord.claim_rollover("2027-W01") is True
    assert await coord.claim_rollover("2027-W01") is False
    assert await coord.claim_rollover("2027-W02") is True
    racers = [coord, await coord_factory.make()] if coord_factory.shared else [coord]
    results = await asyncio.gather(*(racers[i % len(racers)].claim_rollover("2027-W03") for i in range(20)))
    assert results.count(True) == 1


async def test_claim_rollover_and_boards_survive_a_restart(coord_factory: CoordBackend) -> None:
    first = await coord_factory.make()
    assert await first.claim_rollover("2027-W10") is True
    await first.push_scores(B, ALL, [up("a", 10), up("b", 20)])
    await first.push_scores("weekly", "2027-W10", [up("a", 3)])
    await first.set_hidden("b", True)
    await first.close()

    second = await coord_factory.make()  # a new process on the same state
    assert await second.claim_rollover("2027-W10") is False
    assert await second.claim_rollover("2027-W11") is True
    assert await top(second, T0) == ["a"]
    assert (await second.rank(B, ALL, "b")) == BoardEntry(1, "b", 20.0, T0)
    assert await second.periods("weekly") == ["2027-W10"]

    await second.close()  # and the same instance opened again
    await second.open()
    assert await second.claim_rollover("2027-W11") is False
    assert await top(second, T0) == ["a"]
    assert rows(await second.around(B, ALL, "a", 3)) == [(1, "a")]


# ---- fan-out and presence ---------------------------------------------------------------------------


async def test_publish_reaches_every_subscriber(coord: Coordinator) -> None:
    heard: list[tuple[str, dict[str, Any]]] = []

    def broken(channel: str, message: dict[str, Any]) -> None:
        raise RuntimeError("a listener that fails must not stop the others")

    coord.subscribe(broken)
    coord.subscribe(lambda channel, message: heard.append((channel, message)))
    await coord.publish("broadcast", {"message": "hello", "level": "info", "n": [1, 2]})
    await eventually(lambda: len(heard) >= 1)
    assert heard == [("broadcast", {"message": "hello", "level": "info", "n": [1, 2]})]


async def test_online_count_sums_current_reports(coord: Coordinator) -> None:
    assert await coord.online_count(T0) == 0
    await coord.report_online("r1", 3, T0, 30.0)
    await coord.report_online("r2", 5, T0 + 10, 30.0)
    assert await coord.online_count(T0 + 20) == 8
    assert await coord.online_count(T0 + 30) == 5  # r1's report lapsed
    await coord.report_online("r1", 4, T0 + 31, 30.0)
    assert await coord.online_count(T0 + 35) == 9
    assert await coord.online_count(T0 + 100) == 0


async def test_replica_loads_are_the_current_reports(coord: Coordinator) -> None:
    assert await coord.replica_loads(T0) == {}
    await coord.report_load("r1", ReplicaLoad(30, 12), T0, 15.0)
    await coord.report_load("r2", ReplicaLoad(0, 0), T0 + 10, 15.0)
    assert await coord.replica_loads(T0 + 5) == {"r1": ReplicaLoad(30, 12), "r2": ReplicaLoad(0, 0)}
    await coord.report_load("r1", ReplicaLoad(25, 10), T0 + 12, 15.0)  # a report replaces the last
    assert await coord.replica_loads(T0 + 20) == {"r1": ReplicaLoad(25, 10), "r2": ReplicaLoad(0, 0)}
    assert await coord.replica_loads(T0 + 25) == {"r1": ReplicaLoad(25, 10)}  # r2's report lapsed
    full = ReplicaLoad(3, 1, draining=True, pool="green", at=T0 + 26)
    await coord.report_load("r1", full, T0 + 26, 15.0)
    assert await coord.replica_loads(T0 + 27) == {"r1": full}
    assert await coord.replica_loads(T0 + 100) == {}
    assert await coord.online_count(T0 + 27) == 0  # presence of players is a separate report


# ---- leases and heartbeats ---------------------------------------------------------------------


async def test_leases_claim_hand_over_take_over_and_heartbeats(coord: Coordinator) -> None:
    me, gone = coord.replica_id, "replica-that-left"
    assert await coord.claim_lease("farm-1", 60.0) == me
    assert await coord.acquire_lease("farm-1", 60.0) is True
    assert await coord.hand_over_lease("farm-1", gone, 60.0) is True
    assert await coord.claim_lease("farm-1", 60.0) == gone
    assert await coord.hand_over_lease("farm-1", me, 60.0) is False  # not ours any more
    renewal = await coord.renew_leases(["farm-1", "farm-2"], 60.0)
    assert (renewal.lost, renewal.retaken) == (["farm-1"], ["farm-2"])
    assert await coord.alive(gone) is False
    assert await coord.take_over_lease("farm-1", gone, 60.0) == me  # its holder has no heartbeat
    await coord.beat(60.0)
    assert await coord.alive(me) is True
    await coord.end_beat()
    assert await coord.alive(me) is False
    await coord.release_lease("farm-1")
    assert await coord.lease_owner("farm-1") is None
    assert await coord.take_over_lease("farm-1", gone, 60.0) == me  # a free lease is taken too


# ---- Redis only: many replicas on one server --------------------------------------------------------


async def test_redis_replicas_read_each_others_loads(redis_factory: CoordBackend) -> None:
    a = await redis_factory.make()
    b = await redis_factory.make()
    await a.report_load(a.replica_id, ReplicaLoad(40, 20), T0, 15.0)
    await b.report_load(b.replica_id, ReplicaLoad(0, 0), T0 + 1, 15.0)
    expected = {a.replica_id: ReplicaLoad(40, 20), b.replica_id: ReplicaLoad(0, 0)}
    assert await a.replica_loads(T0 + 2) == expected == await b.replica_loads(T0 + 2)


async def test_redis_replicas_share_boards_cursors_and_fan_out(redis_factory: CoordBackend) -> None:
    a = await redis_factory.make()
    b = await redis_factory.make()
    heard_a: list[dict[str, Any]] = []
    heard_b: list[dict[str, Any]] = []
    a.subscribe(lambda channel, message: heard_a.append(message))
    b.subscribe(lambda channel, message: heard_b.append(message))
    await a.publish("broadcast", {"from": "a"})
    await b.publish("broadcast", {"from": "b"})
    await eventually(lambda: len(heard_a) == 2 and len(heard_b) == 2)
    assert sorted(m["from"] for m in heard_b) == ["a", "b"]
    # point to point: only the addressed replica hears it
    direct: list[tuple[str, dict[str, Any]]] = []
    b.subscribe(lambda channel, message: direct.append((channel, message)) if channel.startswith("replica:") else None)
    await a.send(b.replica_id, {"op": "act"})
    await eventually(lambda: len(direct) == 1)
    assert direct == [(f"replica:{b.replica_id}", {"op": "act"})]
    assert all(m != {"op": "act"} for m in heard_a)

    await a.push_scores(B, ALL, [up(f"p{i}", 100 - i) for i in range(15)])
    assert (await b.rank(B, ALL, "p3")).rank == 4  # type: ignore[union-attr]
    page1 = await a.page(B, ALL, 5, None, T0)
    await b.push_scores(B, ALL, [up("p14", 1000, T0 + 1)])
    page2 = await follow(b, page1.next_cursor, T0 + 1, limit=5)  # the next request lands elsewhere
    assert [e.player_id for e in page2.entries] == [f"p{i}" for i in range(5, 10)]
    await b.set_hidden("p0", True)
    assert (await a.rank(B, ALL, "p1")).rank == 2  # type: ignore[union-attr]  # p14 leads, p0 hidden


async def test_redis_leases_have_one_owner(redis_factory: CoordBackend) -> None:
    a = await redis_factory.make()
    b = await redis_factory.make()
    assert await a.acquire_lease("farm-1", 5.0) is True
    assert await a.acquire_lease("farm-1", 5.0) is True  # renewing our own
    assert await b.acquire_lease("farm-1", 5.0) is False
    assert await b.lease_owner("farm-1") == a.replica_id
    renewal = await b.renew_leases(["farm-1", "farm-2"], 5.0)  # farm-2 was free: b takes it
    assert (renewal.lost, renewal.retaken) == (["farm-1"], ["farm-2"])
    assert await a.lease_owner("farm-2") == b.replica_id
    await b.release_lease("farm-1")  # not b's to release
    assert await a.lease_owner("farm-1") == a.replica_id
    await a.release_lease("farm-1")
    assert await a.lease_owner("farm-1") is None
    assert await b.acquire_lease("farm-1", 0.05) is True
    await asyncio.sleep(0.2)  # lapsed
    assert await a.acquire_lease("farm-1", 5.0) is True


async def test_redis_a_slow_owner_keeps_its_farm_and_a_gone_one_loses_it_at_once(redis_factory: CoordBackend) -> None:
    """One script tells slow from gone: the silent holder keeps its lease while its heartbeat
    is current, and loses it the moment the heartbeat is gone, long before the lease's TTL."""
    owner = await redis_factory.make()
    asker = await redis_factory.make()
    other = await redis_factory.make()
    assert await owner.claim_lease("farm-1", 60.0) == owner.replica_id
    assert await asker.claim_lease("farm-1", 60.0) == owner.replica_id  # one round trip names the owner
    await owner.beat(60.0)
    assert await asker.alive(owner.replica_id) is True
    assert await asker.take_over_lease("farm-1", owner.replica_id, 60.0) == owner.replica_id  # slow: kept
    await owner.end_beat()
    assert await asker.alive(owner.replica_id) is False
    # another replica's name does not let us take a farm whose holder is someone else
    assert await asker.take_over_lease("farm-1", other.replica_id, 60.0) == owner.replica_id
    assert await asker.take_over_lease("farm-1", owner.replica_id, 60.0) == asker.replica_id  # gone: ours now
    assert await other.take_over_lease("farm-1", owner.replica_id, 60.0) == asker.replica_id  # only one wins
    renewal = await owner.renew_leases(["farm-1"], 60.0)
    assert (renewal.lost, renewal.retaken) == (["farm-1"], [])
    await owner.beat(0.05)
    await asyncio.sleep(0.2)  # a heartbeat lapses by itself
    assert await asker.alive(owner.replica_id) is False


async def test_redis_a_lease_is_handed_over_only_by_its_holder(redis_factory: CoordBackend) -> None:
    a = await redis_factory.make()
    b = await redis_factory.make()
    assert await a.claim_lease("farm-1", 60.0) == a.replica_id
    assert await b.hand_over_lease("farm-1", b.replica_id, 60.0) is False  # not b's to give
    assert await a.hand_over_lease("farm-1", b.replica_id, 60.0) is True
    assert await a.claim_lease("farm-1", 60.0) == b.replica_id
    renewal = await b.renew_leases(["farm-1"], 60.0)
    assert (renewal.lost, renewal.retaken) == ([], [])  # b renews it as its own, never lapsed


async def test_redis_pages_deeper_than_the_frozen_rows(redis_factory: CoordBackend) -> None:
    coord = await redis_factory.make(view_rows=5, view_ttl_s=60.0)
    names = [f"p{i:02d}" for i in range(23)]
    await coord.push_scores(B, ALL, [up(p, 1000 - i) for i, p in enumerate(names)])
    await coord.set_hidden("p07", True)
    visible = [p for p in names if p != "p07"]
    pages = [await coord.page(B, ALL, 4, None, T0)]
    while pages[-1].next_cursor:
        pages.append(await follow(coord, pages[-1].next_cursor, T0 + len(pages), limit=4))
    seen = [e.player_id for p in pages for e in p.entries]
    assert seen == visible and [e.rank for p in pages for e in p.entries] == list(range(1, 23))
    # back through every page: the same rows
    back = [pages[-1]]
    while back[-1].prev_cursor:
        back.append(await follow(coord, back[-1].prev_cursor, T0 + 30, limit=4))
    assert [full(p) for p in reversed(back)] == [full(p) for p in pages]
    # expired deep in the board: continue after the last row shown, then page back from there
    await coord.push_scores(B, ALL, [up("top", 5000, T0 + 40)])
    cont = await follow(coord, pages[3].next_cursor, T0 + 100, limit=4)
    assert [e.player_id for e in cont.entries] == visible[16:20]
    assert [e.rank for e in cont.entries] == [18, 19, 20, 21]
    before = await follow(coord, cont.prev_cursor, T0 + 101, limit=4)
    assert [e.player_id for e in before.entries] == visible[12:16]
    assert [e.rank for e in before.entries] == [14, 15, 16, 17]


async def test_redis_unreachable_is_coordination_unavailable() -> None:
    coord = RedisCoordinator(f"redis://127.0.0.1:{free_port()}/0", pool_size=2, timeout_s=0.3)
    await coord.open()  # serving degraded, not crashing
    try:
        for call in (
            coord.hit("k", 1, 1.0, T0),
            coord.push_scores(B, ALL, [up("a", 1)]),
            coord.page(B, ALL, 10, None, T0),
            coord.rank(B, ALL, "a"),
            coord.claim_rollover("2027-W01"),
            coord.publish("broadcast", {}),
            coord.ping(),
        ):
            with pytest.raises(CoordinationUnavailable):
                await call
    finally:
        await coord.close()


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to kill and restart (always stopped afterwards)."""
    server = RedisServer(work_dir=tmp_path / "redis")
    try:
        try:
            server.start()
        except (RuntimeError, OSError) as exc:
            unavailable(f"cannot start redis-server: {exc}")
        yield server
    finally:
        server.cleanup()


async def test_redis_listener_and_pool_recover_after_a_redis_restart(own_redis: RedisServer) -> None:
    server = own_redis
    coord = RedisCoordinator(server.url, pool_size=3, timeout_s=0.5)
    try:
        await coord.open()
        heard: list[dict[str, Any]] = []
        coord.subscribe(lambda channel, message: heard.append(message))
        assert coord.listening
        server.kill()
        with pytest.raises(CoordinationUnavailable):
            await coord.hit("k", 5, 60.0, T0)
        await eventually(lambda: not coord.listening)
        server.start()
        await eventually(lambda: coord.listening, within=10.0)
        assert (await coord.hit("k", 5, 60.0, T0)).remaining == 4
        await coord.publish("broadcast", {"back": True})
        await eventually(lambda: heard == [{"back": True}])
    finally:
        await coord.close()


def test_open_coordinator_selects_the_adapter(tmp_path: Any) -> None:
    plain = Settings(env="test", data_dir=tmp_path)
    assert isinstance(open_coordinator(plain, 300), LocalCoordinator)
    with_redis = plain.model_copy(update={"redis_uri": "redis://127.0.0.1:1/0", "redis_pool_size": 7})
    chosen = open_coordinator(with_redis, 300)
    assert isinstance(chosen, RedisCoordinator)
    assert chosen.pool_size == 7 and chosen.view_ttl_s == 300


# ---- the Redis ordering key ---------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=True)
keys = st.tuples(finite, finite, finite, st.text(max_size=6))


@given(keys, keys)
def test_redis_members_sort_bytewise_like_the_ordering_key(x: Any, y: Any) -> None:
    """Redis orders equal-score members by their bytes; that must be Python's tuple order."""
    ex, ey = encode_key(x).encode(), encode_key(y).encode()
    assert (ex < ey) == (x < y)
    assert (ex == ey) == (x == y)
    assert decode_key(encode_key(x)) == x


@given(st.lists(keys, max_size=20))
def test_redis_members_encoded_and_decoded_in_bulk_are_the_ones_encoded_one_by_one(batch: Any) -> None:
    updates = [ScoreUpdate(pid, -neg_score, -neg_tiebreak, at) for neg_score, neg_tiebreak, at, pid in batch]
    members = encode_keys(updates)
    assert members == [encode_key((-u.score, -u.tiebreak, u.at, u.player_id)) for u in updates]
    numbers = decode_numbers("".join(m[:48] for m in members)).tolist()
    assert numbers == [list(decode_key(m)[:3]) for m in members]


# ---- what Redis is asked, counted (the cost budget in docs/scaling.md) ----------------------------


def _counted(metrics: Metrics, name: str, purpose: str) -> float:
    value = metrics.registry.get_sample_value(name, {"purpose": purpose})
    return value or 0.0


async def test_redis_counts_commands_and_round_trips_by_purpose(redis_factory: CoordBackend) -> None:
    coord = await redis_factory.make()
    metrics = Metrics()
    coord.bind_metrics(metrics)
    players = [f"p{i:04d}" for i in range(2500)]

    await coord.push_scores(B, ALL, [up(p, float(i)) for i, p in enumerate(players)])
    await coord.ranks(B, ALL, players)
    await coord.hit_many([LimitHit(f"action:{p}", 60, 60.0) for p in players[:30]], T0)
    await coord.hit("shear:p0001", 10, 60.0, T0)
    await coord.acquire_lease("farm-1", 10.0)
    await coord.publish("revoked", {"sessions": []})
    await coord.ping()

    trips = "llamawool_redis_round_trips_total"
    commands = "llamawool_redis_commands_total"
    # Three script calls of 1000 each are one pipeline: one round trip per batch, not per farm.
    assert _counted(metrics, trips, "boards") == 2 and _counted(metrics, commands, "boards") == 5000
    assert _counted(metrics, trips, "limits") == 2 and _counted(metrics, commands, "limits") == 31
    assert _counted(metrics, trips, "leases") == 1 and _counted(metrics, trips, "revocations") == 1
    assert _counted(metrics, trips, "health") == 1 and _counted(metrics, trips, "bus") == 0
    durations = metrics.registry.get_sample_value(
        "llamawool_coordination_duration_seconds_count", {"operation": "ranks"}
    )
    assert durations == 1


async def test_a_pipeline_of_scripts_survives_redis_forgetting_its_scripts(redis_factory: CoordBackend) -> None:
    coord = await redis_factory.make()
    assert isinstance(coord, RedisCoordinator)
    await coord.push_scores(B, ALL, [up(f"p{i}", float(i)) for i in range(1500)])
    await coord._r.script_flush()  # what a Redis restart without persistence of scripts does

    await coord.push_scores(B, ALL, [up(f"q{i}", float(i)) for i in range(1500)])
    ranks = await coord.ranks(B, ALL, ["p1499", "q1499", "p0"])

    assert [ranks[p].rank for p in ("p1499", "q1499", "p0")] == [1, 2, 2999]  # q0 ties p0 and comes after


async def test_hits_made_at_once_share_one_round_trip_and_one_window(redis_factory: CoordBackend) -> None:
    """Two replicas, fifty players' attempts each at once on one key: one round trip
    per replica, and the shared window still allows exactly the limit."""
    replicas = [await redis_factory.make(), await redis_factory.make()]
    meters = [Metrics(), Metrics()]
    batchers = []
    for coord, metrics in zip(replicas, meters, strict=True):
        coord.bind_metrics(metrics)
        batchers.append(BatchedHits(coord, lambda: T0))

    results = await asyncio.gather(*(batchers[i % 2].hit("action:busy", 60, 60.0) for i in range(100)))

    assert sum(r.allowed for r in results) == 60
    assert sorted(r.remaining for r in results if r.allowed) == list(range(60))
    assert [_counted(m, "llamawool_redis_round_trips_total", "limits") for m in meters] == [1, 1]
    assert [_counted(m, "llamawool_redis_commands_total", "limits") for m in meters] == [50, 50]


async def test_every_hit_of_a_failed_batch_hears_why() -> None:
    coord = RedisCoordinator(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    await coord.open()
    try:
        batcher = BatchedHits(coord, lambda: T0)
        results = await asyncio.gather(*(batcher.hit(f"k{i}", 5, 60.0) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, CoordinationUnavailable) for r in results), results
    finally:
        await coord.close()


async def test_every_redis_script_is_counted_under_a_purpose(redis_factory: CoordBackend) -> None:
    coord = await redis_factory.make()
    assert isinstance(coord, RedisCoordinator)
    assert set(coord._scripts) <= set(_PURPOSE)
    assert set(_PURPOSE.values()) <= {"limits", "boards", "bus", "leases", "presence", "revocations", "health"}
