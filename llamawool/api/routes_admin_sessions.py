"""Support staff and a player's sessions (admin role): list them, end them.

A session is a refresh-token family: the tokens one sign-in rotated through.
Support sees when it started, when it last refreshed, when it runs out and
whether it has ended; never a token or its hash (the hash is what a refresh
is checked against). Ending sessions goes through `Auth`, the same path as a
password change: the refresh tokens are revoked in the store and the access
tokens refused on every replica, so the player's sockets close (4401) and the
next refresh fails.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from .context import ctx
from .errors import ApiError
from .http import json_response, read_body, route
from .routes_admin import _audit, _audited_change, _player
from .session_views import session_views


class EndSessionsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    session_id: str | None = Field(
        None, min_length=1, max_length=64, description="one session to end; absent or null: every session"
    )


@route(
    "GET",
    "/admin/players/{player}/sessions",
    summary="A player's sessions (sign-ins): started, last refreshed, expiry, status; never a token",
    access="admin",
    tag="admin",
    params={"player": "id, username or email"},
)
async def admin_list_sessions(request: web.Request) -> web.Response:
    c = ctx(request)
    player = await _player(c, request.match_info["player"])
    await _audit(c, request, "player.sessions", player.id)
    tokens = await c.store.list_player_tokens(player.id)
    return json_response({"player_id": player.id, "sessions": session_views(tokens, time.time())})


@route(
    "POST",
    "/admin/players/{player}/sessions/end",
    summary="End one of a player's sessions, or all of them (refresh refused, sockets closed)",
    access="admin",
    tag="admin",
    body=EndSessionsRequest,
    params={"player": "id, username or email"},
)
async def admin_end_sessions(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_body(request, EndSessionsRequest)
    player = await _player(c, request.match_info["player"])

    async def end() -> dict[str, Any]:
        sessions = session_views(await c.store.list_player_tokens(player.id), time.time())
        if body.session_id is None:
            await c.auth.end_all_sessions(player.id)
            return {"ended": [s["id"] for s in sessions if s["status"] == "active"]}
        if body.session_id not in {s["id"] for s in sessions}:
            raise ApiError("NOT_FOUND", f"player {player.id} has no session {body.session_id!r}")
        await c.store.revoke_family(body.session_id)
        await c.auth.end_sessions([body.session_id])
        return {"ended": [body.session_id]}

    details = {} if body.session_id is None else {"session_id": body.session_id}
    outcome = await _audited_change(c, request, "player.end_sessions", player.id, end, **details)
    return json_response({"player_id": player.id, "ended": outcome["ended"]})
