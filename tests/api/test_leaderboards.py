"""Leaderboards through the real server: pages, cursors, the caller's rank, the weekly
board across restarts, and the live top 10 over the WebSocket.

The apps here run without the tick loop and the background feed: the test pushes
a batch with `engine.boards.push()` whenever scores should reach the boards, and
time moves only when the FakeClock is advanced.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from llamawool.coord import Cursor
from llamawool.game import iso_week
from tests.conftest import API, MakeClient, engine_of, new_guest
from tests.helpers import FakeClock

from .fairplay import push, ws_connect, ws_request
from .support import act, bearer, expect_problem, get_farm, ok_json, receive_json, receive_until, shear

BOARD = f"{API}/leaderboards"
VIEW_REFRESH_S = 5.0  # the default leaderboard_view_refresh_s: first pages reuse a view this young


async def board(client: TestClient, name: str = "lifetime", **query: Any) -> dict[str, Any]:
    return await ok_json(await client.get(f"{BOARD}/{name}", params={k: str(v) for k, v in query.items()}))


async def me(client: TestClient, headers: dict[str, str], name: str = "lifetime", **query: Any) -> dict[str, Any]:
    params = {k: str(v) for k, v in query.items()}
    return await ok_json(await client.get(f"{BOARD}/{name}/me", headers=headers, params=params))


async def players_with_wool(client: TestClient, wool: list[int]) -> list[dict[str, Any]]:
    """One guest per amount, each having sheared exactly that much (lifetime value = wool on a frozen clock)."""
    out = []
    for amount in wool:
        guest = await new_guest(client)
        left = amount
        while left > 0:
            step = min(20, left)
            await shear(client, guest["headers"], step)
            left -= step
        if amount == 0:
            await get_farm(client, guest["headers"])  # the farm exists (and scores 0)
        out.append(guest)
    return out


def ids(entries: list[dict[str, Any]]) -> list[str]:
    return [e["player_id"] for e in entries]


def pid(guest: dict[str, Any]) -> str:
    return str(guest["player"]["id"])


# ---- the public board --------------------------------------------------------------------


async def test_scores_appear_after_a_push_ranked_best_first(frozen: TestClient, clock: FakeClock) -> None:
    a, b, c = await players_with_wool(frozen, [5, 15, 10])
    await push(frozen)
    page = await board(frozen)
    assert page["board"] == "lifetime" and page["period"] == "all"
    assert ids(page["entries"]) == [pid(b), pid(c), pid(a)]
    assert [e["rank"] for e in page["entries"]] == [1, 2, 3]
    assert [e["score"] for e in page["entries"]] == [15.0, 10.0, 5.0]
    assert [e["username"] for e in page["entries"]] == [g["player"]["username"] for g in (b, c, a)]
    assert page["total"] == 3 and page["next_cursor"] is None and page["prev_cursor"] is None
    assert page["stale"] is False

    # new scores move ranks without a restart: the caller's own view at once,
    # the public first page once its frozen view is older than the refresh interval
    await shear(frozen, a["headers"], 20)  # a: 25
    assert (await me(frozen, a["headers"]))["rank"] == 1
    await push(frozen)
    clock.advance(VIEW_REFRESH_S)
    page = await board(frozen)
    assert ids(page["entries"]) == [pid(a), pid(b), pid(c)]
    assert [e["rank"] for e in page["entries"]] == [1, 2, 3]


async def test_other_boards_rank_their_own_score(frozen: TestClient) -> None:
    a, b = await players_with_wool(frozen, [10, 10])
    await act(frozen, "/farm/buildings/barn/purchase", b["headers"], {"quantity": 1})
    await push(frozen)
    rate = await board(frozen, "rate")
    assert ids(rate["entries"]) == [pid(b), pid(a)]  # the barn produces
    assert rate["entries"][0]["score"] > rate["entries"][1]["score"] > 0
    prestige = await board(frozen, "prestige")
    assert [e["score"] for e in prestige["entries"]] == [0.0, 0.0]  # soul shears
    weekly = await board(frozen, "weekly")
    assert sorted(e["score"] for e in weekly["entries"]) == [10.0, 10.0]


async def test_equal_scores_rank_by_who_reached_them_first_and_unchanged_scores_stay(
    frozen: TestClient, clock: FakeClock
) -> None:
    one, two = await players_with_wool(frozen, [0, 0])
    # the first to reach the score has the larger id, so an id tiebreak would get it wrong
    first, second = (one, two) if pid(one) > pid(two) else (two, one)
    for guest in (first, second):
        await shear(frozen, guest["headers"], 10)
        await act(frozen, "/farm/buildings/barn/purchase", guest["headers"], {"quantity": 1})
        await push(frozen)
        clock.advance(10)
    page = await board(frozen, "rate")
    assert ids(page["entries"]) == [pid(first), pid(second)]
    assert page["entries"][0]["score"] == page["entries"][1]["score"]
    assert page["entries"][0]["reached_at"] < page["entries"][1]["reached_at"]
    # pushes of the same scores later move no one
    for _ in range(3):
        await push(frozen)
        clock.advance(VIEW_REFRESH_S)
    again = await board(frozen, "rate")
    assert again["entries"] == page["entries"]
    assert (await me(frozen, second["headers"], "rate"))["rank"] == 2


async def test_paging_forward_then_back_returns_the_same_rows_while_scores_move(
    frozen: TestClient, clock: FakeClock
) -> None:
    """The documented guarantee: pages read through one cursor chain come from one
    frozen view of the board, so scores that change between pages neither repeat
    nor skip rows; a fresh first page shows the new order."""
    players = await players_with_wool(frozen, [30, 25, 20, 15, 10])
    await push(frozen)
    first = await board(frozen, limit=2)
    assert [e["rank"] for e in first["entries"]] == [1, 2]
    assert ids(first["entries"]) == [pid(p) for p in players[:2]]
    assert first["prev_cursor"] is None and first["next_cursor"] is not None
    assert first["total"] == 5

    last = players[-1]  # 10 -> 40 (30 shear tokens left): the live leader now
    await shear(frozen, last["headers"], 20)
    await shear(frozen, last["headers"], 20)
    await push(frozen)
    clock.advance(1)

    second = await board(frozen, limit=2, cursor=first["next_cursor"])
    assert [e["rank"] for e in second["entries"]] == [3, 4]
    assert ids(second["entries"]) == [pid(p) for p in players[2:4]]
    assert second["prev_cursor"] is not None and second["next_cursor"] is not None
    third = await board(frozen, limit=2, cursor=second["next_cursor"])
    assert [(e["rank"], e["player_id"], e["score"]) for e in third["entries"]] == [(5, pid(last), 10.0)]
    assert third["next_cursor"] is None
    back = await board(frozen, limit=2, cursor=second["prev_cursor"])
    assert back["entries"] == first["entries"]

    clock.advance(VIEW_REFRESH_S)
    fresh = await board(frozen, limit=2)
    assert fresh["entries"][0]["player_id"] == pid(last)
    assert fresh["entries"][0]["score"] == 40.0


async def test_board_query_errors(frozen: TestClient) -> None:
    await players_with_wool(frozen, [3])
    await push(frozen)
    await expect_problem(await frozen.get(f"{BOARD}/richest"), 404, "NOT_FOUND")
    guest = await new_guest(frozen)
    await expect_problem(await frozen.get(f"{BOARD}/richest/me", headers=guest["headers"]), 404, "NOT_FOUND")
    body = await expect_problem(await frozen.get(f"{BOARD}/lifetime?cursor=not-a-cursor"), 422, "VALIDATION_ERROR")
    assert "cursor" in str(body["errors"])
    expired = Cursor("no-such-view", 10).encode()  # a view that no longer exists, no position to resume from
    await expect_problem(await frozen.get(f"{BOARD}/lifetime?cursor={expired}"), 422, "VALIDATION_ERROR")
    body = await expect_problem(await frozen.get(f"{BOARD}/lifetime?limit=101"), 422, "VALIDATION_ERROR")
    assert "limit" in str(body["errors"])
    await expect_problem(await frozen.get(f"{BOARD}/lifetime?limit=0"), 422, "VALIDATION_ERROR")
    await expect_problem(await frozen.get(f"{BOARD}/lifetime?limit=ten"), 422, "VALIDATION_ERROR")
    assert len((await board(frozen, limit=100))["entries"]) == 1
    await expect_problem(await frozen.get(f"{BOARD}/lifetime?period=2027-W02"), 422, "VALIDATION_ERROR")
    await expect_problem(await frozen.get(f"{BOARD}/weekly?period=last-week"), 422, "VALIDATION_ERROR")
    await expect_problem(await frozen.get(f"{BOARD}/lifetime/me"), 401, "AUTH_REQUIRED")


# ---- the caller's rank ----------------------------------------------------------------------


async def test_me_for_the_leader_and_the_runner_up_always_includes_the_leader(frozen: TestClient) -> None:
    first, second, third, fourth = await players_with_wool(frozen, [40, 30, 20, 10])
    await push(frozen)
    order = [pid(p) for p in (first, second, third, fourth)]

    top = await me(frozen, first["headers"], radius=1)
    assert top["rank"] == 1 and top["score"] == 40.0 and top["hidden"] is False
    assert [(e["rank"], e["player_id"]) for e in top["entries"]] == [(1, order[0]), (2, order[1])]

    runner_up = await me(frozen, second["headers"], radius=1)
    assert runner_up["rank"] == 2
    assert [(e["rank"], e["player_id"]) for e in runner_up["entries"]] == [(1, order[0]), (2, order[1]), (3, order[2])]

    wide = await me(frozen, second["headers"], radius=5)
    assert [(e["rank"], e["player_id"]) for e in wide["entries"]] == list(enumerate(order, start=1))

    bottom = await me(frozen, fourth["headers"], radius=2)
    assert bottom["rank"] == 4
    assert [(e["rank"], e["player_id"]) for e in bottom["entries"]] == [(2, order[1]), (3, order[2]), (4, order[3])]

    alone = await me(frozen, third["headers"], radius=0)
    assert [(e["rank"], e["player_id"]) for e in alone["entries"]] == [(3, order[2])]


async def test_a_board_emptied_and_refilled_has_no_stale_ranks(frozen: TestClient, clock: FakeClock) -> None:
    gone = await players_with_wool(frozen, [40, 30, 20])
    await push(frozen)
    assert (await board(frozen))["total"] == 3
    for guest in gone:
        resp = await frozen.delete(f"{API}/players/me", headers=guest["headers"])
        assert resp.status == 204, await resp.text()
    await push(frozen)
    clock.advance(VIEW_REFRESH_S)
    emptied = await board(frozen)
    assert emptied["entries"] == [] and emptied["total"] == 0

    low, high = await players_with_wool(frozen, [5, 8])
    await push(frozen)
    clock.advance(VIEW_REFRESH_S)
    refilled = await board(frozen)
    assert [(e["rank"], e["player_id"]) for e in refilled["entries"]] == [(1, pid(high)), (2, pid(low))]
    assert refilled["total"] == 2
    assert (await me(frozen, high["headers"]))["rank"] == 1
    assert (await me(frozen, low["headers"]))["rank"] == 2


# ---- the weekly board -------------------------------------------------------------------------

SUNDAY_2359 = dt.datetime(2027, 1, 17, 23, 59, tzinfo=dt.UTC).timestamp()
MONDAY_0001 = dt.datetime(2027, 1, 18, 0, 1, tzinfo=dt.UTC).timestamp()
MONDAY_0005 = dt.datetime(2027, 1, 18, 0, 5, tzinfo=dt.UTC).timestamp()


def rollovers(client: TestClient) -> float:
    value = engine_of(client).metrics.registry.get_sample_value("llamawool_leaderboard_rollovers_total")
    return float(value or 0.0)


async def test_weekly_board_names_its_iso_week(frozen: TestClient, clock: FakeClock) -> None:
    (guest,) = await players_with_wool(frozen, [12])
    await push(frozen)
    week = iso_week(clock())
    current = await board(frozen, "weekly")
    assert current["period"] == week
    assert [(e["player_id"], e["score"]) for e in current["entries"]] == [(pid(guest), 12.0)]
    assert (await board(frozen, "weekly", period=week))["entries"] == current["entries"]
    assert (await board(frozen, "weekly", period="2020-W01"))["entries"] == []
    mine = await me(frozen, guest["headers"], "weekly")
    assert mine["period"] == week and mine["rank"] == 1
    periods = await ok_json(await frozen.get(f"{BOARD}/weekly/periods"))
    assert periods["periods"] == [week]


async def test_weekly_reset_fires_exactly_once_across_restarts_over_monday(make_client: MakeClient) -> None:
    clock = FakeClock(SUNDAY_2359)
    sunday_week, monday_week = iso_week(SUNDAY_2359), iso_week(MONDAY_0001)
    assert sunday_week != monday_week

    app1 = await make_client(clock=clock, tick=False)
    (guest,) = await players_with_wool(app1, [20])
    await push(app1)
    assert (await board(app1, "weekly"))["period"] == sunday_week
    await app1.close()  # a clean stop: final push and snapshots

    clock.now = MONDAY_0001
    app2 = await make_client(clock=clock, tick=False)
    assert rollovers(app2) == 0
    await push(app2)
    assert rollovers(app2) == 1
    await push(app2)
    assert await engine_of(app2).boards.check_rollover(clock()) is False
    assert rollovers(app2) == 1
    metrics = await app2.get("/metrics")
    assert "llamawool_leaderboard_rollovers_total 1.0" in await metrics.text()
    await app2.close()

    clock.now = MONDAY_0005
    app3 = await make_client(clock=clock, tick=False)
    await push(app3)
    assert await engine_of(app3).boards.check_rollover(clock()) is False
    assert rollovers(app3) == 0

    # the past week stays readable, the new one starts from what was produced since Monday
    past = await board(app3, "weekly", period=sunday_week)
    assert [(e["player_id"], e["score"]) for e in past["entries"]] == [(pid(guest), 20.0)]
    mine = await me(app3, guest["headers"], "weekly")
    assert mine["period"] == monday_week and mine["rank"] == 1
    assert 0.0 <= mine["score"] < 20.0
    assert (await board(app3, "weekly", period=sunday_week))["entries"] == past["entries"]
    periods = await ok_json(await app3.get(f"{BOARD}/weekly/periods"))
    assert periods["periods"] == [monday_week, sunday_week]
    lifetime = await me(app3, guest["headers"])
    assert lifetime["score"] >= 20.0  # the all-time board does not reset


# ---- live over the WebSocket ----------------------------------------------------------------------


async def drain_until_pong(ws: aiohttp.ClientWebSocketResponse, ping_id: str) -> list[dict[str, Any]]:
    """Everything the server queued before it answered this ping."""
    await ws.send_json({"type": "ping", "id": ping_id})
    seen = []
    while True:
        msg = await receive_json(ws)
        if msg["type"] == "pong" and msg.get("id") == ping_id:
            return seen
        seen.append(msg)


def events(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m["data"] for m in messages if m["type"] == "event" and m["data"]["type"] == kind]


async def test_subscribe_sends_the_top_10_and_rank_changed_when_overtaken(frozen: TestClient, clock: FakeClock) -> None:
    watcher, rival, *others = await players_with_wool(frozen, [20, 10, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    await push(frozen)
    ws = await ws_connect(frozen, watcher["access_token"])
    try:
        reply = await ws_request(ws, {"type": "subscribe", "id": "s1", "data": {"board": "lifetime"}})
        assert reply == {"type": "result", "id": "s1", "data": {"subscribed": "lifetime"}}
        top = await receive_until(ws, lambda m: m["type"] == "event" and m["data"]["type"] == "leaderboard")
        data = top["data"]
        assert data["board"] == "lifetime" and data["period"] == "all"
        assert len(data["entries"]) == 10  # eleven players, the top ten
        assert [e["rank"] for e in data["entries"]] == list(range(1, 11))
        assert ids(data["entries"])[:2] == [pid(watcher), pid(rival)]
        assert pid(others[0]) not in ids(data["entries"])  # 1 wool: eleventh

        await push(frozen)  # nothing moved: no top, no rank change
        assert events(await drain_until_pong(ws, "p1"), "leaderboard") == []

        await shear(frozen, rival["headers"], 20)
        await shear(frozen, rival["headers"], 10)  # rival: 40 > 20
        clock.advance(VIEW_REFRESH_S)  # the live top is read through the board's frozen first-page view
        await push(frozen)
        seen = await drain_until_pong(ws, "p2")
        changed = [e for e in events(seen, "rank_changed") if e["board"] == "lifetime"]
        assert [(e["rank"], e["previous_rank"]) for e in changed] == [(2, 1)]
        assert changed[0]["score"] > 20.0  # the watcher's own score, still producing
        tops = events(seen, "leaderboard")
        assert len(tops) == 1 and ids(tops[0]["entries"])[:2] == [pid(rival), pid(watcher)]

        reply = await ws_request(ws, {"type": "unsubscribe", "id": "u1", "data": {"board": "lifetime"}})
        assert reply["data"] == {"unsubscribed": "lifetime"}
        await shear(frozen, others[0]["headers"], 20)
        await shear(frozen, others[0]["headers"], 20)  # 40 (its bucket held 39): ahead of the watcher
        clock.advance(VIEW_REFRESH_S)
        await push(frozen)
        seen = await drain_until_pong(ws, "p3")
        assert events(seen, "leaderboard") == []
        assert [e["rank"] for e in events(seen, "rank_changed") if e["board"] == "lifetime"] == [3]

        bad = await ws_request(ws, {"type": "subscribe", "id": "s2", "data": {"board": "richest"}})
        assert bad["type"] == "error" and bad["data"]["code"] == "VALIDATION_ERROR"
    finally:
        await ws.close()


async def test_board_pages_are_public_but_me_needs_a_token(frozen: TestClient) -> None:
    (guest,) = await players_with_wool(frozen, [2])
    await push(frozen)
    public = await frozen.get(f"{BOARD}/lifetime")
    assert public.status == 200
    assert public.headers["Cache-Control"].startswith("public")
    resp = await frozen.get(f"{BOARD}/lifetime/me", headers=bearer(guest["access_token"]))
    assert (await ok_json(resp))["rank"] == 1


async def test_the_feed_stops_even_when_a_call_swallows_its_cancellation(frozen: TestClient) -> None:
    """redis-py (Python 3.11) now and then swallows a cancellation that lands mid-call:
    stopping the feed (shutdown, drain) must not wait forever for it."""
    feed = engine_of(frozen).boards
    inside = asyncio.Event()
    real = feed.coord

    class Swallowing:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        async def report_online(self, replica: str, count: int, now: float, ttl_s: float) -> None:
            inside.set()
            with contextlib.suppress(asyncio.CancelledError):  # what the library does
                await asyncio.Event().wait()

    feed.coord = Swallowing()  # type: ignore[assignment]
    stopping: asyncio.Task[None] = asyncio.create_task(asyncio.sleep(0))
    try:
        feed.start()
        loop = feed._task
        await inside.wait()

        stopping = asyncio.create_task(feed.stop())
        await asyncio.wait({stopping}, timeout=3.0)  # (wait_for would cancel it, which hides a hang)

        assert stopping.done() and loop is not None and loop.done()
    finally:
        if not stopping.done():
            stopping.cancel()  # cancels the awaited loop too
        feed.coord = real  # the app's own shutdown pushes once more
