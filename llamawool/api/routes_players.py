"""The caller's own profile: read, change, erase."""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from ..anticheat import limit_headers
from ..store import AuditRecord, DuplicateKey, PlayerChanges
from .context import ctx
from .errors import ApiError
from .http import json_response, principal, read_body, route
from .player_export import PlayerExport, gather
from .routes_auth import player_view
from .schemas import PlayerPatch, PlayerView

log = structlog.get_logger("llamawool.players")


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
    player_id = principal(request).player_id
    changes: PlayerChanges = {}
    if body.username is not None:
        changes["username"] = body.username
    if body.settings is not None:
        changes["settings"] = dict(body.settings)
    try:
        # only the fields sent: a concurrent write of any other field stands
        if changes and not await c.store.update_player_fields(player_id, changes):
            raise ApiError("INVALID_TOKEN", "the account no longer exists")
    except DuplicateKey as exc:
        raise ApiError("CONFLICT", f"{exc.field} is already taken", field=exc.field) from None
    c.engine.boards.forget_name(player_id)
    player = await _me(request)
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
    erased_at = time.time()
    # the tombstone is written with the erasure: no restore brings the account back
    await c.store.delete_player(player.id, erased_at)
    await c.store.add_audit(AuditRecord(erased_at, player.id, "player.erased", player.id, {}))
    # the record that outlives a lost database: `admin erase-player` re-applies it (docs/privacy.md)
    log.info("player.erased", player_id=player.id, erased_at=erased_at)
    return web.Response(status=204)


@route(
    "GET",
    "/players/me/export",
    summary="Everything held about you, as one JSON document (no secrets); a few times an hour",
    tag="players",
    response=PlayerExport,
    extra_statuses=(429,),
)
async def export_me(request: web.Request) -> web.Response:
    c = ctx(request)
    player = await _me(request)
    # heavy (every save, session and replay answer): limited per player, audited
    limit = await c.anticheat.check_export(player.id)
    farm = await c.engine.view(player.id)
    document = await gather(c, player, farm)
    await c.store.add_audit(AuditRecord(document["exported_at"], player.id, "player.export", player.id, {}))
    headers = {
        "Cache-Control": "private, no-store",
        "Content-Disposition": 'attachment; filename="llamawool-export.json"',
        **limit_headers(limit),
    }
    return json_response(document, headers=headers)
