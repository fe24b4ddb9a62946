"""Cloud saves: snapshot history, signed downloads, plausibility-checked uploads."""

from __future__ import annotations

import re
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..engine.errors import SaveRejected, SaveStale
from ..engine.saves import SAVE_FORMAT, SAVE_VERSION, signed_save
from ..game.saves import ClaimedFarm
from ..store import Snapshot
from .context import AppContext, ctx
from .errors import ApiError, field_error
from .http import json_response, principal, raw_json_response, read_body, route

_ETAG = re.compile(r'^\s*"([0-9]{1,18})"\s*$')
REVISION = re.compile(r"^[0-9]{1,18}$")  # ASCII only: str.isdigit() also takes "²", which int() refuses
HISTORY_LIMIT = 100


class SaveFarm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    balances: dict[Annotated[str, StringConstraints(max_length=32)], float] = Field(max_length=32)
    buildings: dict[Annotated[str, StringConstraints(max_length=32)], Annotated[int, Field(ge=0)]] = Field(
        max_length=32
    )
    upgrades: list[Annotated[str, StringConstraints(max_length=64)]] = Field(max_length=64)
    soul_shears: int = Field(ge=0)
    prestige_count: int = Field(ge=0)


class SaveUpload(BaseModel):
    """The shape `GET /farm/saves/{revision}` returns; `farm` holds the client's claim."""

    model_config = ConfigDict(extra="ignore")
    format: str = Field(SAVE_FORMAT, pattern=f"^{SAVE_FORMAT}$")
    version: int = Field(SAVE_VERSION, ge=SAVE_VERSION, le=SAVE_VERSION)
    revision: int = Field(ge=1, description="the base save's revision")
    signature: Annotated[str, StringConstraints(min_length=64, max_length=64, pattern=r"^[0-9a-f]+$")]
    farm: SaveFarm


class SaveSummary(BaseModel):
    revision: int
    taken_at: float
    farm_value: float


async def _current(c: AppContext, player_id: str) -> dict[str, object]:
    snap = await c.engine.current_snapshot(player_id)
    return signed_save(c.rules, c.settings.resolved_save_secret(), snap)


@route("GET", "/farm/saves", summary="Snapshot history, newest first", tag="saves")
async def list_saves(request: web.Request) -> web.Response:
    c = ctx(request)
    who = principal(request)
    snaps = await c.store.list_snapshots(who.player_id, HISTORY_LIMIT)
    return json_response(
        {"saves": [{"revision": s.revision, "taken_at": s.taken_at, "farm_value": s.farm_value} for s in snaps]}
    )


@route(
    "GET",
    "/farm/saves/{revision}",
    summary="One signed save; `latest` saves the current revision now",
    tag="saves",
    params={"revision": ("a revision number, or latest", {"type": "string", "pattern": "^([0-9]{1,18}|latest)$"})},
)
async def get_save(request: web.Request) -> web.Response:
    c = ctx(request)
    who = principal(request)
    raw = request.match_info["revision"]
    if raw == "latest":
        body = await _current(c, who.player_id)
    else:
        if not REVISION.match(raw):
            raise field_error(
                "revision", "must be a number or 'latest'", detail="revision must be a number or 'latest'"
            )
        snap: Snapshot | None = await c.store.get_snapshot(who.player_id, int(raw))
        if snap is None:
            raise ApiError("NOT_FOUND", f"no save at revision {raw}")
        body = signed_save(c.rules, c.settings.resolved_save_secret(), snap)
    return json_response(body, headers={"ETag": f'"{body["revision"]}"'})


@route(
    "POST",
    "/farm/saves",
    summary="Upload a save from offline play (If-Match: the base revision); checked for plausibility",
    tag="saves",
    body=SaveUpload,
    extra_statuses=(412, 428),
)
async def upload_save(request: web.Request) -> web.Response:
    c = ctx(request)
    who = principal(request)
    await c.anticheat.check_action(who.player_id)
    header = request.headers.get("If-Match")
    if header is None:
        raise ApiError("PRECONDITION_REQUIRED", 'a save upload needs If-Match: "<base revision>"')
    m = _ETAG.match(header)
    if m is None:
        raise field_error(
            "If-Match", 'must be a strong ETag such as "42"', detail='If-Match must be a strong ETag such as "42"'
        )
    body = await read_body(request, SaveUpload)
    if int(m.group(1)) != body.revision:
        raise field_error("revision", "differs from If-Match")
    claimed = ClaimedFarm(
        balances=dict(body.farm.balances),
        buildings=dict(body.farm.buildings),
        upgrades=list(body.farm.upgrades),
        soul_shears=body.farm.soul_shears,
        prestige_count=body.farm.prestige_count,
    )
    try:
        reply = await c.engine.upload_save(who.player_id, body.revision, body.signature, claimed)
    except SaveStale:
        current = await _current(c, who.player_id)
        raise ApiError(
            "PRECONDITION_FAILED",
            "the farm changed since that save; merge with the server's copy (current) and retry",
            current=current,
            headers={"ETag": f'"{current["revision"]}"'},
        ) from None
    except SaveRejected as exc:
        await c.anticheat.violation(who.player_id, "implausible_save", "; ".join(exc.reasons)[:500])
        raise ApiError(
            "IMPLAUSIBLE_SAVE", "the save was refused: " + "; ".join(exc.reasons), reasons=exc.reasons
        ) from None
    return raw_json_response(reply.body, headers={"ETag": f'"{reply.revision}"'})


__all__ = ["SaveSummary", "SaveUpload"]
