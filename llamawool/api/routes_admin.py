"""Operator tools (admin role): look up, clear a flag, restore, broadcast, audit.

Every admin call is written to the audit log before it acts, reading the log
included. A change (a restore, a cleared flag) is recorded `pending` before it
is made and `completed` or `failed` after, under one `ref`: a process that dies
in between leaves the pending record, never a change nobody recorded.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..engine import farm_view
from ..store import AuditRecord, PlayerRecord
from .context import AppContext, ctx
from .errors import ApiError
from .http import json_response, principal, read_body, read_query, route
from .routes_auth import player_view
from .session_views import session_views


class RestoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # as the player routes: true is not a revision
    # the stores keep revisions as 64-bit integers (a larger one was a 500 from SQLite)
    revision: int = Field(ge=1, le=2**63 - 1)


class BroadcastRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    message: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    level: Literal["info", "warning", "maintenance"] = "info"


class EmptyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(100, ge=1, le=1000, description="how many entries, newest first")


async def _audit(c: AppContext, request: web.Request, action: str, target: str | None, **details: Any) -> None:
    await c.store.add_audit(AuditRecord(time.time(), principal(request).player_id, action, target, details))


async def _audited_change(
    c: AppContext,
    request: web.Request,
    action: str,
    target: str,
    change: Callable[[], Awaitable[dict[str, Any]]],
    **details: Any,
) -> dict[str, Any]:
    """Record the change as pending, make it, then record how it ended (the
    change's own details on success). Returns those details."""
    ref = uuid.uuid4().hex
    await _audit(c, request, action, target, status="pending", ref=ref, **details)
    try:
        outcome = await change()
    except Exception as exc:
        # best effort: the pending record already says the change was attempted
        with contextlib.suppress(Exception):
            error = exc.code if isinstance(exc, ApiError) else type(exc).__name__
            await _audit(c, request, action, target, status="failed", ref=ref, error=error, **details)
        raise
    await _audit(c, request, action, target, status="completed", ref=ref, **details, **outcome)
    return outcome


async def _player(c: AppContext, ident: str) -> PlayerRecord:
    player = await c.store.get_player(ident)
    if player is None:
        player = await c.store.find_player(username=ident)
    if player is None and "@" in ident:
        player = await c.store.find_player(email=ident.lower())
    if player is None:
        raise ApiError("NOT_FOUND", f"no player {ident!r} (id, username or email)")
    return player


def _admin_view(p: PlayerRecord) -> dict[str, Any]:
    view = player_view(p)
    view.update(
        flagged=p.flagged_at is not None,
        flagged_at=p.flagged_at,
        flag_reason=p.flag_reason,
        last_violation_at=p.last_violation_at,
        violations_total=p.violations_total,
        device_id=p.device_id,
    )
    return view


@route(
    "GET",
    "/admin/players/{player}",
    summary="Look up a player (id, username or email) with flags, farm, saves and sessions",
    access="admin",
    tag="admin",
    params={"player": "id, username or email"},
)
async def admin_get_player(request: web.Request) -> web.Response:
    c = ctx(request)
    player = await _player(c, request.match_info["player"])
    await _audit(c, request, "player.lookup", player.id)
    stored = await c.store.load_farm(player.id)
    farm = None
    state = c.engine.resident_state(player.id)
    if state is not None:
        farm = farm_view(c.rules, state, c.engine.clock())
    elif stored is not None:
        farm = {"revision": stored.revision, "doc": stored.doc, "last_active": stored.last_active}
    snaps = await c.store.list_snapshots(player.id, 20)
    tokens = await c.store.list_player_tokens(player.id)
    return json_response(
        {
            "player": _admin_view(player),
            "farm": farm,
            "sessions": session_views(tokens, time.time()),
            "saves": [{"revision": s.revision, "taken_at": s.taken_at, "farm_value": s.farm_value} for s in snaps],
        }
    )


@route(
    "POST",
    "/admin/players/{player}/clear-flag",
    summary="Clear a player's anti-cheat flag",
    access="admin",
    tag="admin",
    body=EmptyRequest,
    params={"player": "id, username or email"},
)
async def admin_clear_flag(request: web.Request) -> web.Response:
    c = ctx(request)
    await read_body(request, EmptyRequest)
    player = await _player(c, request.match_info["player"])

    async def clear() -> dict[str, Any]:
        return {"cleared": await c.anticheat.clear_flag(player.id)}

    outcome = await _audited_change(c, request, "player.clear_flag", player.id, clear)
    return json_response({"player_id": player.id, "cleared": outcome["cleared"]})


@route(
    "POST",
    "/admin/players/{player}/restore",
    summary="Restore a snapshot as a new revision (history is kept)",
    access="admin",
    tag="admin",
    body=RestoreRequest,
    params={"player": "id, username or email"},
)
async def admin_restore(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_body(request, RestoreRequest)
    player = await _player(c, request.match_info["player"])

    async def restore() -> dict[str, Any]:
        try:
            state = await c.engine.restore(player.id, body.revision)
        except KeyError:
            raise ApiError("NOT_FOUND", f"no snapshot at revision {body.revision}") from None
        return {"new_revision": state.revision}

    outcome = await _audited_change(c, request, "farm.restore", player.id, restore, from_revision=body.revision)
    return json_response({"player_id": player.id, "restored_from": body.revision, "revision": outcome["new_revision"]})


@route(
    "POST",
    "/admin/broadcast",
    summary="Send a notice to every connected client on every replica",
    access="admin",
    tag="admin",
    body=BroadcastRequest,
)
async def admin_broadcast(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_body(request, BroadcastRequest)
    await _audit(c, request, "broadcast", None, message=body.message, level=body.level)
    await c.bus.publish("broadcast", {"message": body.message, "level": body.level, "at": time.time()})
    return json_response({"sent": True})


@route("GET", "/admin/audit", summary="The newest admin actions", access="admin", tag="admin", query=AuditQuery)
async def admin_audit(request: web.Request) -> web.Response:
    c = ctx(request)
    # (str.isdigit() then int() answered 500 to "²" and to 5,000-digit numbers)
    q = read_query(request, AuditQuery)
    # Who read the log is itself in it (before the read: a read that fails was attempted).
    await _audit(c, request, "audit.read", None, limit=q.limit)
    records = await c.store.list_audit(q.limit)
    return json_response(
        {
            "entries": [
                {"at": r.at, "admin_id": r.admin_id, "action": r.action, "target": r.target, "details": r.details}
                for r in records
            ]
        }
    )
