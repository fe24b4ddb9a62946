"""The caller's own profile: read, change, erase."""

from __future__ import annotations

from aiohttp import web

from ..store import DuplicateKey
from .context import ctx
from .errors import ApiError
from .http import json_response, principal, read_body, route
from .routes_auth import player_view
from .schemas import PlayerPatch, PlayerView


async def _me(request: web.Request):  # type: ignore[no-untyped-def]
    c = ctx(request)
    player = await c.store.get_player(principal(request).player_id)
    if player is None:
        raise ApiError("INVALID_TOKEN", "the account no longer exists")
    return player


@route("GET", "/players/me", summary="Your profile and settings", tag="players", response=PlayerView)
async def get_me(request: web.Request) -> web.Response:
    player = await _me(request)
    return json_response(player_view(player), headers={"Cache-Control": "private, no-store"})


@route(
    "PATCH",
    "/players/me",
    summary="Change your username or settings",
    tag="players",
    body=PlayerPatch,
    response=PlayerView,
)
async def patch_me(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_body(request, PlayerPatch)
    player = await _me(request)
    if body.username is not None:
        player.username = body.username
    if body.settings is not None:
        player.settings = dict(body.settings)
    try:
        await c.store.update_player(player)
    except DuplicateKey as exc:
        raise ApiError("CONFLICT", f"{exc.field} is already taken", field=exc.field) from None
    c.engine.boards.forget_name(player.id)
    return json_response(player_view(player), headers={"Cache-Control": "private, no-store"})


@route("DELETE", "/players/me", summary="Erase your account and all its data", tag="players", status=204)
async def delete_me(request: web.Request) -> web.Response:
    c = ctx(request)
    player = await _me(request)
    await c.auth.end_all_sessions(player.id)  # its tokens are refused everywhere from here on
    for session in list(c.sessions):
        if session.player_id == player.id:
            await session.close(4401, "account deleted")
    c.engine.forget(player.id)
    # Off every board too (out of memory first, so no push re-adds it); if
    # coordination is down this answers 503 before the account is erased.
    await c.boards.remove_player(player.id)
    await c.store.delete_player(player.id)
    return web.Response(status=204)
