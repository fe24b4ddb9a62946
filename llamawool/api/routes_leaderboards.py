"""Leaderboards: public pages with cursors, and the caller's own rank."""

from __future__ import annotations

from typing import Annotated, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..coord import BOARDS, Cursor
from ..engine.boards import ALL_TIME, period_of
from .context import AppContext, ctx
from .errors import ApiError, field_error
from .http import json_response, principal, read_query, route

Q = TypeVar("Q", bound=BaseModel)
Week = Annotated[str, StringConstraints(pattern=r"^\d{4}-W\d{2}$")]
BOARD_PARAM: dict[str, str | tuple[str, dict[str, object]]] = {
    "board": ("lifetime, prestige, rate or weekly", {"type": "string", "enum": list(BOARDS)})
}


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(10, ge=1, le=100)
    cursor: Annotated[str, StringConstraints(max_length=512)] | None = None
    period: Week | None = Field(None, description="weekly board only: an ISO week such as 2026-W47")


class MeQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    radius: int = Field(5, ge=0, le=50)
    period: Week | None = None


def _board(request: web.Request) -> str:
    board = request.match_info["board"]
    if board not in BOARDS:
        raise ApiError("NOT_FOUND", f"unknown board {board!r}; boards are {', '.join(BOARDS)}")
    return board


def _period(c: AppContext, board: str, requested: str | None) -> str:
    if requested is not None and board != "weekly":
        raise field_error(
            "period", "applies to the weekly board only", detail="period applies to the weekly board only"
        )
    return requested or period_of(board, c.engine.clock())


@route(
    "GET",
    "/leaderboards/{board}",
    query=PageQuery,
    summary="A board's top entries; follow next_cursor for the following page",
    access="public",
    tag="leaderboards",
    params=BOARD_PARAM,
)
async def get_board(request: web.Request) -> web.Response:
    c = ctx(request)
    board = _board(request)
    q = read_query(request, PageQuery)
    period = _period(c, board, q.period)
    cursor = Cursor.decode(q.cursor) if q.cursor else None
    page = await c.boards.page(board, period, q.limit, cursor, c.engine.clock())
    body = {
        "board": board,
        "period": period,
        "entries": await c.engine.boards.named(page.entries),
        "next_cursor": page.next_cursor,
        "prev_cursor": page.prev_cursor,
        "total": page.total,
        "as_of": page.as_of,
        "stale": c.engine.boards.stale,
    }
    return json_response(body, headers={"Cache-Control": "public, max-age=5"})


@route(
    "GET",
    "/leaderboards/{board}/me",
    query=MeQuery,
    summary="Your rank on a board and the entries around you",
    tag="leaderboards",
    params=BOARD_PARAM,
)
async def get_my_rank(request: web.Request) -> web.Response:
    c = ctx(request)
    board = _board(request)
    q = read_query(request, MeQuery)
    period = _period(c, board, q.period)
    who = principal(request)
    if q.period is None:
        await c.engine.touch(who.player_id)
        # make sure the caller's newest score is on the board before ranking them
        state = c.engine.resident_state(who.player_id)
        if state is not None:
            await c.engine.boards.push_state(state, c.engine.clock())
    me = await c.boards.rank(board, period, who.player_id)
    around = await c.boards.around(board, period, who.player_id, q.radius)
    player = await c.store.get_player(who.player_id)
    body = {
        "board": board,
        "period": period,
        "rank": me.rank if me else None,
        "score": me.score if me else None,
        "hidden": bool(player and player.flagged_at is not None),
        "entries": await c.engine.boards.named(around),
    }
    return json_response(body)


@route(
    "GET",
    "/leaderboards/{board}/periods",
    summary="Periods with entries, newest first (weekly: ISO weeks; others: all)",
    access="public",
    tag="leaderboards",
    params=BOARD_PARAM,
)
async def get_periods(request: web.Request) -> web.Response:
    c = ctx(request)
    board = _board(request)
    periods = await c.boards.periods(board) if board == "weekly" else [ALL_TIME]
    return json_response({"board": board, "periods": periods})
