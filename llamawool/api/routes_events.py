"""Live events (admin role): schedule, list and cancel timed production multipliers.

A change is stored, audited, applied on this replica at once, and announced to
the others over the coordination bus (each re-reads the store; their periodic
read is the guarantee). See docs/events.md for the rules.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..game.events import LiveEvent
from .context import AppContext, ctx
from .errors import ApiError, field_error
from .http import json_response, principal, read_body, read_query, route
from .routes_admin import _audit, _audited_change

log = structlog.get_logger("llamawool.api")
START_SLACK_S = 60.0  # a start this far in the past is taken as "now" (clock skew, a slow form)
MAX_LEAD_S = 366 * 24 * 3600.0  # how far ahead an event may be scheduled
MAX_DURATION_S = 31 * 24 * 3600.0  # how long one event may run


class EventRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[str, StringConstraints(min_length=1, max_length=80, strip_whitespace=True)]
    multiplier: float = Field(gt=1.0, allow_inf_nan=False, description="production × this while it runs")
    tiers: list[Annotated[str, StringConstraints(min_length=1, max_length=32)]] | None = Field(
        None, max_length=64, description="tier keys it multiplies; null for every tier"
    )
    starts_at: float = Field(allow_inf_nan=False, description="server time (unix seconds)")
    ends_at: float = Field(allow_inf_nan=False, description="server time (unix seconds), after starts_at")


class EventsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_past: bool = Field(False, description="also list ended and cancelled events")


def _validated(c: AppContext, body: EventRequest, now: float) -> tuple[float, tuple[str, ...] | None]:
    """The start (a recent past one is clamped to now) and the tiers, or a 422 naming the field."""
    if body.multiplier > c.settings.events_max_multiplier:
        raise field_error("multiplier", f"must be at most {c.settings.events_max_multiplier:g}")
    tiers: tuple[str, ...] | None = None
    if body.tiers is not None:
        unknown = [t for t in body.tiers if t not in c.rules.tier_index]
        if unknown:
            raise field_error("tiers", f"unknown tier(s) {', '.join(unknown)}")
        if not body.tiers:
            raise field_error("tiers", "must name at least one tier, or be null for every tier")
        tiers = tuple(dict.fromkeys(body.tiers))
    if body.starts_at < now - START_SLACK_S:
        raise field_error("starts_at", f"is in the past (server time is {now:.3f})")
    if body.starts_at > now + MAX_LEAD_S:
        raise field_error("starts_at", "is more than a year ahead")
    starts_at = max(body.starts_at, now)
    if body.ends_at <= starts_at:
        raise field_error("ends_at", "must be after starts_at (and after the server's now)")
    if body.ends_at - starts_at > MAX_DURATION_S:
        raise field_error("ends_at", f"an event runs at most {MAX_DURATION_S / 86400:g} days")
    return starts_at, tiers


async def _changed(c: AppContext) -> None:
    """Apply here now, and tell the other replicas to re-read."""
    await c.engine.live_events.reload()
    try:
        await c.bus.publish("live_events", {"at": c.engine.clock()})
    except Exception as exc:  # the other replicas' periodic read picks it up
        log.warning("live_events.not_announced", error=str(exc))


@route(
    "POST",
    "/admin/events",
    summary="Schedule a live event: a production multiplier between two server times",
    access="admin",
    tag="admin",
    body=EventRequest,
    status=201,
)
async def admin_schedule_event(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_body(request, EventRequest)
    now = c.engine.clock()
    starts_at, tiers = _validated(c, body, now)
    event = LiveEvent(
        id=uuid.uuid4().hex,
        name=body.name,
        multiplier=float(body.multiplier),
        tiers=tiers,
        starts_at=float(starts_at),
        ends_at=float(body.ends_at),
        created_at=now,
        created_by=principal(request).player_id,
    )

    async def schedule() -> dict[str, Any]:
        await c.store.add_event(event)
        await _changed(c)
        return {}

    await _audited_change(
        c,
        request,
        "event.schedule",
        event.id,
        schedule,
        name=event.name,
        multiplier=event.multiplier,
        tiers=list(tiers) if tiers is not None else None,
        starts_at=event.starts_at,
        ends_at=event.ends_at,
    )
    return json_response({"event": event.view(now)}, status=201)


@route("GET", "/admin/events", summary="Live events by start time", access="admin", tag="admin", query=EventsQuery)
async def admin_list_events(request: web.Request) -> web.Response:
    c = ctx(request)
    q = read_query(request, EventsQuery)
    await _audit(c, request, "event.list", None, include_past=q.include_past)
    now = c.engine.clock()
    events = await c.store.list_events()
    views = [e.view(now) for e in events]
    if not q.include_past:
        views = [v for v in views if v["status"] in ("scheduled", "running")]
    return json_response({"events": views})


@route(
    "DELETE",
    "/admin/events/{event_id}",
    summary="Cancel a live event: a future one never applies, a running one ends now",
    access="admin",
    tag="admin",
    params={"event_id": "the event's id"},
    extra_statuses=(404, 409),
)
async def admin_cancel_event(request: web.Request) -> web.Response:
    c = ctx(request)
    event_id = request.match_info["event_id"]
    now = c.engine.clock()
    cancelled: list[LiveEvent] = []

    async def cancel() -> dict[str, Any]:
        event = await c.store.cancel_event(event_id, now)
        if event is None:
            known = {e.id: e for e in await c.store.list_events()}.get(event_id)
            if known is None:
                raise ApiError("NOT_FOUND", f"no event {event_id!r}")
            raise ApiError("CONFLICT", f"event {event_id!r} is already {known.view(now)['status']}")
        cancelled.append(event)
        await _changed(c)
        return {"name": event.name}

    await _audited_change(c, request, "event.cancel", event_id, cancel, at=now)
    return json_response({"event": cancelled[0].view(now)})


def config_events(c: AppContext) -> list[dict[str, object]]:
    """The running and upcoming events, for `/config`."""
    return c.engine.live_events.current(c.engine.clock())
