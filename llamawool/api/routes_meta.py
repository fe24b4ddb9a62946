"""Configuration for clients, health, readiness, metrics and the OpenAPI and AsyncAPI documents."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..coord import CoordinationUnavailable
from ..store import StorageUnavailable
from .asyncapi import asyncapi_document
from .context import ctx
from .http import json_response, route
from .openapi import openapi_document
from .routes_events import config_events
from .schemas import Health


@route("GET", "/config", summary="The rules clients render from", access="public", tag="meta")
async def get_config(request: web.Request) -> web.Response:
    c = ctx(request)
    rules = c.rules
    b = rules.balance
    prod = rules.config.production
    body = {
        "tiers": [t.model_dump() for t in b.tiers],
        "buildings": [x.model_dump() for x in b.buildings.list],
        "max_building_level": b.buildings.max_level,
        "max_bulk_quantity": b.buildings.max_bulk_quantity,
        "upgrades": [u.model_dump(exclude_none=True) for u in b.upgrades],
        "achievements": [a.model_dump() for a in b.achievements],
        "shear": b.shear.model_dump(),
        "offline": {
            "online_window_s": b.offline.online_window_s,
            "base_efficiency": prod.offlineEfficiency,
            "max_offline_hours": prod.maxOfflineHours,
            "cap_limit_hours": b.offline.cap_limit_hours,
        },
        "prestige": b.prestige.model_dump(),
        "daily_reward": b.daily_reward.model_dump(),
        "achievement_bonus": b.achievement_bonus.per_achievement,
        "base_production_rate": prod.baseProductionRate,
        "tick_interval_s": c.settings.tick_interval_s,
        "auto_save_interval_s": prod.autoSaveInterval / 1000,
        "cloud_sync_interval_s": prod.cloudSyncInterval / 1000,
        "max_actions_per_minute": rules.config.antiCheat.maxActionsPerMinute,
        "events": config_events(c),  # running and upcoming live events (docs/events.md)
    }
    # short: a newly scheduled event shows within seconds (sockets hear of it at once)
    return json_response(body, headers={"Cache-Control": "public, max-age=5"})


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    c = ctx(request)
    checks: dict[str, str] = {}
    if c.draining:
        return json_response({"status": "draining", "checks": checks}, status=503, headers={"Retry-After": "1"})
    try:
        await c.store.ping()
        checks["storage"] = "ok"
    except StorageUnavailable as exc:
        checks["storage"] = f"unavailable: {exc}"
        return json_response({"status": "unavailable", "checks": checks}, status=503, headers={"Retry-After": "5"})
    # Coordination down degrades (per-replica limits, stale boards) but does not
    # fail readiness: failing it on every replica would turn a Redis outage into
    # a full outage, while storage keeps every acknowledged action safe.
    try:
        await c.coord.ping()
        checks["coordination"] = f"ok ({c.coord.name})"
        status = "ready"
    except CoordinationUnavailable as exc:
        checks["coordination"] = f"degraded: {exc}"
        status = "degraded"
    return json_response({"status": status, "checks": checks})


async def metrics(request: web.Request) -> web.Response:
    c = ctx(request)
    c.metrics.ws_active.set(len(c.sessions))
    c.metrics.asyncio_tasks.set(len(asyncio.all_tasks()))
    resp = web.Response(body=generate_latest(c.metrics.registry))
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def openapi(request: web.Request) -> web.Response:
    return json_response(openapi_document(), headers={"Cache-Control": "public, max-age=300"})


async def asyncapi(request: web.Request) -> web.Response:
    return json_response(asyncapi_document(), headers={"Cache-Control": "public, max-age=300"})


OPS_ROUTES = [("/health", health), ("/ready", ready), ("/metrics", metrics)]
__all__ = ["OPS_ROUTES", "Health", "asyncapi", "openapi"]
