"""The farm: state, production, buildings, upgrades, shear, prestige, reports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from ..anticheat import ActionKind, limit_headers
from ..engine import IdempotentRequest, farm_view
from ..game import Action, BuyBuilding, BuyUpgrade, ClaimDailyReward, FarmState, GameError, Prestige, Rules, Shear
from .context import ctx
from .errors import ApiError
from .http import idempotency_key, json_response, principal, raw_json_response, read_body, route
from .schemas import (
    ActionResponse,
    BuyBuildingRequest,
    BuyUpgradeRequest,
    DailyRewardRequest,
    FarmView,
    PrestigeRequest,
    ShearRequest,
)

M = TypeVar("M", bound=BaseModel)
# Refusals that a well-behaved client never causes count as anti-cheat violations;
# INSUFFICIENT_RESOURCES and REQUIREMENT_NOT_MET happen to honest, slightly stale clients.
VIOLATION_CODES = frozenset({"VALIDATION_ERROR", "INVALID_JSON", "NOT_FOUND"})


def _etag(revision: int) -> dict[str, str]:
    return {"ETag": f'"{revision}"'}


async def _act(
    request: web.Request,
    kind: ActionKind,
    model: type[M],
    make: Callable[[M], Action],
) -> web.Response:
    """The path of every REST action: authenticated (by the route wrapper), then
    metered (every attempt counts, applied or refused), then validated, then the
    engine's single entry point. Malformed or impossible actions are violations."""
    c = ctx(request)
    who = principal(request)
    limit = await c.anticheat.check_action(who.player_id, kind)
    try:
        body = await read_body(request, model)
        action = make(body)
        key = idempotency_key(request)
        reply = await c.engine.submit(who.player_id, action, IdempotentRequest.of(key, action) if key else None)
    except ApiError as exc:
        if exc.code in VIOLATION_CODES:
            await c.anticheat.violation(who.player_id, "malformed_action", exc.detail[:200])
        raise
    except GameError as exc:
        if exc.code in VIOLATION_CODES:
            await c.anticheat.violation(who.player_id, "impossible_action", exc.detail[:200])
        raise
    headers = {**_etag(reply.revision), **limit_headers(limit)}
    if reply.replayed:
        headers["Idempotent-Replayed"] = "true"
    return raw_json_response(reply.body, reply.status, headers)


async def _preview(request: web.Request, compute: Callable[[Rules, FarmState, float], dict[str, Any]]) -> web.Response:
    """What an action would do now (a read: it changes nothing), with the revision it was read at."""
    c = ctx(request)
    state, now = await c.engine.touch(principal(request).player_id)
    body = compute(c.rules, state, now)
    body.update(revision=state.revision, server_time=now)
    return json_response(body, headers=_etag(state.revision))


@route("GET", "/farm", summary="The whole farm at server time", tag="farm", response=FarmView)
async def get_farm(request: web.Request) -> web.Response:
    c = ctx(request)
    view = await c.engine.view(principal(request).player_id)
    return json_response(view, headers=_etag(view["revision"]))


@route("GET", "/farm/production", summary="Rates per tier with the multiplier breakdown", tag="farm")
async def get_production(request: web.Request) -> web.Response:
    c = ctx(request)
    state, now = await c.engine.touch(principal(request).player_id)
    rules = c.rules
    tiers = []
    for t in rules.production(state):
        tiers.append(
            {
                "tier": t.tier,
                "rate": t.rate,
                "base": t.base,
                "buildings": t.buildings,
                "tier_mult": t.tier_mult,
                "all_mult": t.all_mult,
                "prestige_mult": t.prestige_mult,
                "achievement_mult": t.achievement_mult,
                "auto_clicker": t.auto_clicker,
            }
        )
    body = {
        "revision": state.revision,
        "server_time": now,
        "tiers": tiers,
        "value_per_second": rules.value_of([t.rate for t in rules.production(state)]),
        "click_power": rules.click_power(state),
        "offline_efficiency": rules.offline_efficiency(state),
        "offline_cap_s": rules.offline_cap_s(state),
    }
    return json_response(body, headers=_etag(state.revision))


@route("GET", "/farm/buildings", summary="Buildings with level, next cost, max affordable, requirements", tag="farm")
async def get_buildings(request: web.Request) -> web.Response:
    c = ctx(request)
    state, now = await c.engine.touch(principal(request).player_id)
    rules = c.rules
    balances = rules.balances_at(state, now)
    out = []
    for b in rules.buildings.values():
        level = state.buildings.get(b.key, 0)
        have = balances[rules.tier_index[b.cost_tier]]
        out.append(
            {
                "key": b.key,
                "name": b.name,
                "level": level,
                "max_level": rules.max_level,
                "cost_tier": b.cost_tier,
                "next_cost": rules.bulk_cost(b, level, 1) if level < rules.max_level else None,
                "cost_10": rules.bulk_cost(b, level, min(10, rules.max_level - level)),
                "max_affordable": rules.max_affordable(b, level, have),
                "produces": dict(b.produces),
                "requires": dict(b.requires),
                "unlocked": rules.building_requirements_met(state, b),
            }
        )
    return json_response(
        {"revision": state.revision, "server_time": now, "buildings": out}, headers=_etag(state.revision)
    )


@route(
    "POST",
    "/farm/buildings/{key}/purchase",
    summary='Buy building levels: quantity 1..100 or "max"',
    tag="farm",
    body=BuyBuildingRequest,
    response=ActionResponse,
    idempotency=True,
    params={"key": "building key"},
)
async def buy_building(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    return await _act(request, "action", BuyBuildingRequest, lambda b: BuyBuilding(key, b.quantity))


@route("GET", "/farm/upgrades", summary="Upgrades with cost, effects, requirements, owned", tag="farm")
async def get_upgrades(request: web.Request) -> web.Response:
    c = ctx(request)
    state, now = await c.engine.touch(principal(request).player_id)
    rules = c.rules
    out = []
    for u in rules.upgrades.values():
        out.append(
            {
                "key": u.key,
                "name": u.name,
                "cost": {"tier": u.cost.tier, "amount": u.cost.amount},
                "effects": [e.model_dump(exclude_none=True) for e in u.effects],
                "owned": u.key in state.upgrades,
                "missing_requirements": rules.upgrade_missing(state, u),
            }
        )
    return json_response(
        {"revision": state.revision, "server_time": now, "upgrades": out}, headers=_etag(state.revision)
    )


@route(
    "POST",
    "/farm/upgrades/{key}/purchase",
    summary="Buy an upgrade (each once)",
    tag="farm",
    body=BuyUpgradeRequest,
    response=ActionResponse,
    idempotency=True,
    params={"key": "upgrade key"},
)
async def buy_upgrade(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    return await _act(request, "action", BuyUpgradeRequest, lambda _: BuyUpgrade(key))


@route(
    "POST",
    "/farm/shear",
    summary="Shear count times (1..20); the token bucket drops the excess",
    tag="farm",
    body=ShearRequest,
    response=ActionResponse,
    idempotency=True,
)
async def shear(request: web.Request) -> web.Response:
    return await _act(request, "shear", ShearRequest, lambda b: Shear(b.count))


@route(
    "GET",
    "/farm/daily-reward",
    summary="The daily return reward: today's streak and reward, or when the next claim opens",
    tag="farm",
)
async def daily_reward_status(request: web.Request) -> web.Response:
    return await _preview(request, lambda rules, state, now: rules.daily_status(state, now))


@route(
    "POST",
    "/farm/daily-reward/claim",
    summary="Claim the daily return reward (once per server day, UTC); 409 CONFLICT if already claimed",
    tag="farm",
    body=DailyRewardRequest,
    response=ActionResponse,
    idempotency=True,
)
async def claim_daily_reward(request: web.Request) -> web.Response:
    return await _act(request, "action", DailyRewardRequest, lambda _: ClaimDailyReward())


@route("GET", "/farm/prestige", summary="Prestige preview: gain and whether it is allowed", tag="farm")
async def prestige_preview(request: web.Request) -> web.Response:
    return await _preview(request, lambda rules, state, now: rules.prestige_preview(state, now))


@route(
    "POST",
    "/farm/prestige",
    summary="Prestige: confirm true, and optionally the gain you expect (409 when it differs)",
    tag="farm",
    body=PrestigeRequest,
    response=ActionResponse,
    idempotency=True,
)
async def prestige(request: web.Request) -> web.Response:
    return await _act(request, "action", PrestigeRequest, lambda b: Prestige(b.confirm, b.expected_gain))


@route("GET", "/farm/offline-report", summary='The last "while you were away" report', tag="farm")
async def offline_report(request: web.Request) -> web.Response:
    c = ctx(request)
    state, _ = await c.engine.touch(principal(request).player_id)
    if state.offline_report is None:
        raise ApiError("NOT_FOUND", "no offline report yet: this farm has not been away")
    return json_response(state.offline_report.to_dict(), headers=_etag(state.revision))


@route("GET", "/farm/achievements", summary="All achievements, with unlock time or progress", tag="farm")
async def achievements(request: web.Request) -> web.Response:
    c = ctx(request)
    state, now = await c.engine.touch(principal(request).player_id)
    rules = c.rules
    view = farm_view(rules, state, now)
    live = {"lifetime_value": view["lifetime_value"], "play_hours": view["play_time_s"] / 3600.0}
    out = []
    for a in rules.achievements.values():
        current = live.get(a.metric, rules.metric(state, a.metric))
        out.append(
            {
                "key": a.key,
                "name": a.name,
                "metric": a.metric,
                "threshold": a.threshold,
                "unlocked_at": state.achievements.get(a.key),
                "progress": min(1.0, current / a.threshold),
            }
        )
    return json_response(
        {"revision": state.revision, "bonus": rules.achievement_mult(state), "achievements": out},
        headers=_etag(state.revision),
    )
