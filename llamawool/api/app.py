"""The app factory: wires settings, rules, store, engine and routes in one place."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import web, web_response

from ..anticheat import AntiCheat, RateLimited, limit_headers
from ..auth import Auth
from ..coord import BadCursor, CoordinationUnavailable, Coordinator, open_coordinator
from ..engine import Engine
from ..engine.errors import FarmConflict, IdempotencyMismatch, OwnerBusy, OwnerUnreachable, PlayerGone, RemoteError
from ..game import GameError, Rules
from ..observability import Metrics, watch_gc, watch_loop_lag
from ..settings import Settings, load_rules
from ..store import MeteredStore, StorageUnavailable, Store, open_store
from . import (  # noqa: F401 - importing registers the routes
    routes_admin,
    routes_admin_sessions,
    routes_auth,
    routes_events,
    routes_farm,
    routes_leaderboards,
    routes_meta,
    routes_players,
    routes_saves,
    ws,
)
from .context import CTX, REBALANCER, AppContext
from .errors import ApiError, field_error, problem_response, unavailable
from .http import API_PREFIX, PRINCIPAL, ROUTE, ROUTES, Handler, Route, authenticate
from .rebalance import Rebalancer
from .routes_meta import OPS_ROUTES, asyncapi, openapi
from .ws_keepalive import run as keep_sockets_alive

log = structlog.get_logger("llamawool.api")
WEB_DIR = Path(__file__).resolve().parent.parent / "web"

_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "AUTH_REQUIRED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def _wrap(r: Route) -> Handler:
    """Authenticate per the route's access level before the handler runs."""

    async def handler(request: web.Request) -> web.StreamResponse:
        request[ROUTE] = r
        if r.access != "public":
            who = authenticate(request, request.app[CTX].auth.decode_access, r.access)
            if who is not None:
                request[PRINCIPAL] = who
        return await r.handler(request)

    handler.__name__ = r.handler.__name__
    return handler


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes problem+json; a stack trace never leaves the process."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    c = request.app[CTX]
    started = time.perf_counter()
    route_name = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    status = 500
    try:
        try:
            resp = await handler(request)
        except GameError as exc:
            raise ApiError(exc.code, exc.detail, **exc.extra) from None
        except StorageUnavailable:
            raise _unavailable(request, "storage did not answer", retry_after=5) from None
        except OwnerBusy as exc:
            cause = "the replica that holds this farm is busy"
            raise _unavailable(request, cause, retry_after=math.ceil(exc.retry_after_s)) from None
        except (OwnerUnreachable, RemoteError):
            raise _unavailable(request, "the replica that holds this farm did not answer", retry_after=2) from None
        except FarmConflict:
            raise _unavailable(request, "the farm moved to another replica", retry_after=1) from None
        except PlayerGone:
            raise ApiError("INVALID_TOKEN", "the account no longer exists") from None
        except RateLimited as exc:
            raise ApiError(
                "RATE_LIMITED",
                f"too many {exc.scope} requests; retry in {exc.retry_after}s",
                headers=limit_headers(exc.result),
                retry_after=exc.retry_after,
            ) from None
        except BadCursor as exc:
            raise field_error("cursor", str(exc), detail=str(exc)) from None
        except CoordinationUnavailable:
            raise ApiError(
                "UNAVAILABLE", "coordination is unavailable; retry shortly", headers={"Retry-After": "5"}
            ) from None
        except IdempotencyMismatch:
            raise ApiError("CONFLICT", "this Idempotency-Key was used for a different request") from None
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = _HTTP_CODES.get(exc.status, "BAD_REQUEST")
            detail = exc.reason
            if exc.status == 413:
                detail = f"request bodies are limited to {c.settings.max_body_bytes} bytes"
            elif exc.status == 405:
                detail = f"{request.method} is not allowed on {request.path}"
            elif exc.status == 404:
                detail = f"no route {request.path}"
            raise ApiError(code, detail, status=exc.status, headers=_allow(exc)) from None
    except ApiError as err:
        status = err.status
        resp = problem_response(err, request_id)
    except Exception:
        log.exception("http.unhandled", path=request.path, method=request.method, request_id=request_id)
        status = 500
        resp = problem_response(ApiError("INTERNAL", "an internal error occurred; it has been logged"), request_id)
    else:
        status = resp.status
    resp.headers["X-Request-Id"] = request_id
    if "Cache-Control" not in resp.headers and request.headers.get("Authorization"):
        resp.headers["Cache-Control"] = "private, no-store"
    elapsed = time.perf_counter() - started
    if route_name != "/api/v1/ws":
        c.metrics.http_requests.labels(request.method, route_name, str(status)).inc()
        c.metrics.http_duration.labels(request.method, route_name).observe(elapsed)
    return resp


def _unavailable(request: web.Request, cause: str, *, retry_after: int) -> ApiError:
    r = request.get(ROUTE)
    detail, extra = unavailable(
        cause,
        writes=request.method not in ("GET", "HEAD"),
        retry_key="Idempotency-Key" if r is not None and r.idempotent_key else None,
    )
    return ApiError("UNAVAILABLE", detail, headers={"Retry-After": str(retry_after)}, **extra)


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


SERVER_NAME = "llamawool"
# aiohttp answers requests it cannot parse (a bad request line, oversized headers)
# itself, before any app code or on_response_prepare runs, and names itself there
# ("Server: Python/3.11 aiohttp/3.x"): make that default the server's plain name too.
web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]

# CORS for the origins in settings.cors_origins (none by default: same-origin only).
# Tokens travel in the Authorization header, never in cookies: no credentials mode.
CORS_ALLOW_METHODS = "GET, POST, PATCH, DELETE"
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, If-Match, X-Request-Id"
CORS_EXPOSE_HEADERS = (
    "ETag, Retry-After, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, X-Request-Id, Idempotent-Replayed"
)
CORS_MAX_AGE_S = "600"


def _cors_origin(request: web.Request) -> str | None:
    """The request's Origin when it is one of the configured ones."""
    origin = request.headers.get("Origin")
    return origin if origin is not None and origin in request.app[CTX].settings.cors_origins else None


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer a listed origin's preflight here: before routing (no route has OPTIONS)
    and before authentication (a browser's preflight carries no Authorization)."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers and _cors_origin(request):
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": CORS_ALLOW_METHODS,
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": CORS_MAX_AGE_S,
            },
        )
    return await handler(request)


# The reference client is same-origin modules and a stylesheet: nothing inline to allow.
PAGE_CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


async def _response_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if request.app[CTX].settings.cors_origins:
        # the answer depends on Origin: a shared cache must not hand one origin's copy to another
        vary = response.headers.get("Vary")
        response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"
        origin = _cors_origin(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    rules: Rules | None = None,
    clock: Callable[[], float] = time.time,
    tick: bool = True,
    coord: Coordinator | None = None,
) -> web.Application:
    rules = rules or load_rules(settings)
    metrics = Metrics(settings.region)
    store = MeteredStore(store or open_store(settings), metrics.store_ops)
    coord = coord or open_coordinator(settings, rules.config.cache.leaderboardTTL)
    coord.bind_metrics(metrics)
    engine = Engine(rules, store, settings, metrics, clock, coord=coord)
    auth = Auth(store, settings)
    anticheat = AntiCheat(coord, store, settings, rules, metrics, clock)
    trusted = [ipaddress.ip_network(c, strict=False) for c in settings.trusted_proxies]
    app = web.Application(middlewares=[cors_middleware, problem_middleware], client_max_size=settings.max_body_bytes)
    app[CTX] = AppContext(settings, rules, store, engine, auth, metrics, coord, anticheat, trusted)
    rebalancer = app[REBALANCER] = Rebalancer(app[CTX])
    coord.subscribe(lambda channel, message: _on_fanout(app, channel, message))

    async def announce(sessions: list[str], until: float) -> None:
        await coord.publish("revoked", {"sessions": sessions, "until": until})

    auth.announce = announce
    auth.on_revoked.append(lambda sessions: _close_revoked(app, sessions))

    for r in ROUTES:
        app.router.add_route(r.method, API_PREFIX + r.path, _wrap(r))
    app.router.add_get(API_PREFIX + "/openapi.json", openapi)
    app.router.add_get(API_PREFIX + "/asyncapi.json", asyncapi)
    for path, handler in OPS_ROUTES:
        app.router.add_get(path, handler)
    if WEB_DIR.is_dir() and (WEB_DIR / "index.html").exists():
        app.router.add_get("/", _index)
        app.router.add_get("/admin", _admin_console)
        app.router.add_static("/static/", WEB_DIR, show_index=False)

    background: list[asyncio.Task[None]] = []
    undo: list[Callable[[], None]] = []

    async def startup(app: web.Application) -> None:
        await store.open()
        await coord.open()
        await auth.sync_revocations()
        await engine.start(tick=tick)
        background.append(asyncio.create_task(watch_loop_lag(metrics, settings.loop_lag_sample_s)))
        undo.append(watch_gc(metrics))
        background.append(asyncio.create_task(auth.watch_revocations()))
        background.append(asyncio.create_task(keep_sockets_alive(app[CTX])))
        if tick:
            background.append(asyncio.create_task(_sweep_flags(anticheat)))
            background.append(asyncio.create_task(rebalancer.run()))
        log.info(
            "server.started",
            store=store.name,
            coord=coord.name,
            replica=coord.replica_id,
            region=settings.region,
            env=settings.env,
        )

    async def cleanup(app: web.Application) -> None:
        await drain(app)
        for task in background:
            task.cancel()
        while undo:
            undo.pop()()
        await engine.stop()
        await coord.close()
        await store.close()
        log.info("server.stopped")

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.on_response_prepare.append(_response_headers)
    return app


FLAG_SWEEP_S = 60.0


async def _sweep_flags(anticheat: AntiCheat) -> None:
    while True:
        await asyncio.sleep(FLAG_SWEEP_S)
        try:
            await anticheat.sweep()
        except Exception:
            log.exception("anticheat.sweep_failed")


def _on_fanout(app: web.Application, channel: str, message: dict[str, Any]) -> None:
    """Messages every replica hears (admin broadcasts, ended sessions)."""
    c = app[CTX]
    if channel == "broadcast":
        c.engine.broadcast(orjson.dumps({"type": "event", "data": {"type": "broadcast", **message}}).decode())
    elif channel == "live_events":
        c.engine.spawn(c.engine.live_events.reload())
    elif channel == "revoked":
        sessions, until = message.get("sessions"), message.get("until")
        if isinstance(sessions, list) and isinstance(until, int | float):
            c.auth.revoked([s for s in sessions if isinstance(s, str)], float(until))


def _close_revoked(app: web.Application, sessions: set[str]) -> None:
    """Sockets opened with a token of an ended session close (4401) and must authenticate anew."""
    c = app[CTX]
    for session in list(c.sessions):
        if session.session_id is not None and session.session_id in sessions:
            c.engine.spawn(session.close(ws.CLOSE_AUTH, "session ended"))


async def drain(app: web.Application, code: int = ws.CLOSE_RESTART) -> None:
    """Readiness fails at once; the peers hear that this replica no longer takes its
    share, and open sockets are told to reconnect elsewhere, each after the action
    it is applying is answered (within `drain_flush_s`).

    All sockets close concurrently: one slow client must not hold back the
    1012 of everyone else, nor eat the grace period one close at a time.
    """
    c = app[CTX]
    c.draining = True
    c.engine.begin_drain()
    sessions = list(c.sessions)
    await asyncio.gather(
        app[REBALANCER].withdraw(),  # peers stop counting this replica in their fair share
        *(s.send_away(code, "server restarting: reconnect") for s in sessions),
        return_exceptions=True,
    )


def _page(path: Path) -> web.FileResponse:
    return web.FileResponse(path, headers={"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_CSP})


async def _index(request: web.Request) -> web.FileResponse:
    return _page(WEB_DIR / "index.html")


async def _admin_console(request: web.Request) -> web.FileResponse:
    """The admin console's page: public static HTML with no data in it; what it
    shows comes from the admin API, which answers only an admin's token."""
    return _page(WEB_DIR / "admin" / "index.html")


def context(app: web.Application) -> AppContext:
    return app[CTX]


__all__: list[Any] = ["context", "create_app", "drain"]
