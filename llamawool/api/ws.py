"""The WebSocket session at /api/v1/ws.

Authentication (header, `?token=` or a first `auth` message within the
timeout), then `welcome`, then ticks and events pushed by the engine while the
client sends actions that go through the same engine entry point as REST.
Outbound messages go through the socket's `WsSession` (ws_session.py): written
at once while the socket keeps up, queued (bounded, ticks dropped first) behind
a writer of its own while it does not, so a slow client never blocks the tick
or the others.

A drain (SIGTERM) sends every socket away with 1012, but first lets the
action being handled finish and its result reach the socket, within
`drain_flush_s`: an action that committed is answered, or (past the bound)
findable by its idempotency key. Actions that arrive once the drain began are
refused unapplied.

A socket lives for hours, so what it keeps is kept small: the welcome (the
player's record, the farm's view) is built in a helper whose locals die once it
is sent; the handler keeps only the principal.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from typing import Any
from urllib.parse import parse_qsl

import orjson
import structlog
from aiohttp import WSMsgType, web
from pydantic import TypeAdapter, ValidationError

from ..anticheat import ActionKind, RateLimited
from ..auth import AuthError, Principal
from ..coord import BOARDS
from ..engine import IdempotentRequest
from ..engine.errors import FarmConflict, IdempotencyMismatch, OwnerBusy, OwnerUnreachable, PlayerGone, RemoteError
from ..game import Action, BuyBuilding, BuyUpgrade, ClaimDailyReward, GameError, Prestige, Shear
from ..store import StorageUnavailable
from .context import REBALANCER, AppContext, ctx
from .errors import CODES, unavailable
from .http import route
from .messages import (
    BoardData,
    Pong,
    PongData,
    Result,
    Subscribed,
    Unsubscribed,
)
from .routes_auth import player_view
from .routes_farm import VIOLATION_CODES
from .schemas import (
    WsAction,
    WsBuyBuilding,
    WsBuyUpgrade,
    WsClaimDailyReward,
    WsEnvelope,
    WsPrestige,
    WsShear,
)
from .ws_keepalive import keepalive
from .ws_session import WsSession

log = structlog.get_logger("llamawool.ws")

CLOSE_AUTH = 4401
CLOSE_VIOLATIONS = 4408
CLOSE_RESTART = 1012

_ACTION = TypeAdapter(WsAction)


def _to_action(a: WsShear | WsBuyBuilding | WsBuyUpgrade | WsPrestige | WsClaimDailyReward) -> Action:
    match a:
        case WsShear():
            return Shear(a.count)
        case WsBuyBuilding():
            return BuyBuilding(a.key, a.quantity)
        case WsBuyUpgrade():
            return BuyUpgrade(a.key)
        case WsPrestige():
            return Prestige(a.confirm, a.expected_gain)
        case WsClaimDailyReward():
            return ClaimDailyReward()
    raise AssertionError(a)


def _token_from_request(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    # Parsed here rather than through `request.query`, which the request would keep
    # (a dict of the query) for as long as the socket lives.
    for name, value in parse_qsl(request.rel_url.raw_query_string):
        if name == "token":
            return value
    return None


async def _await_auth_message(ws: web.WebSocketResponse, wait_s: float) -> str | None:
    try:
        msg = await ws.receive(timeout=wait_s)
    except TimeoutError:
        return None
    if msg.type != WSMsgType.TEXT:
        return None
    try:
        obj = orjson.loads(msg.data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("type") != "auth":
        return None
    data = obj.get("data")
    token = data.get("token") if isinstance(data, dict) else obj.get("token")
    return token if isinstance(token, str) else None


@route(
    "GET",
    "/ws",
    summary="The WebSocket (see docs/protocol.md)",
    access="public",
    tag="realtime",
    status=101,
    extra_statuses=(400,),  # not a WebSocket upgrade request
)
async def websocket(request: web.Request) -> web.StreamResponse:
    c = ctx(request)
    if c.draining:
        return web.Response(status=503, headers={"Retry-After": "1"}, text="draining")
    if request.app[REBALANCER].full():
        # The load balancer tries the next replica (proxy_next_upstream http_503).
        return web.Response(
            status=503, headers={"Retry-After": "1"}, text="rebalancing: a replica with room will take it"
        )
    s = c.settings
    ws = web.WebSocketResponse(
        # Pings are the app's keep-alive's (ws_keepalive.py), not a timer per socket:
        # every frame, pings and pongs too, reaches the loop below.
        autoping=False,
        # Frames up to 16x the protocol limit are read and answered with an
        # error; beyond that aiohttp closes with 1009.
        max_msg_size=s.ws_max_message_bytes * 16,
        compress=False,
    )
    await ws.prepare(request)
    session = WsSession(c, ws, request.transport)
    c.sessions.add(session)
    alive = keepalive(c)
    alive.add(session)
    c.metrics.ws_active.set(len(c.sessions))
    try:
        # The loop is here rather than in a function of its own: a frame less for
        # every socket's whole life.
        who = await _authenticate(c, request, ws)
        if who is not None and await _welcome(c, session, who):
            async for msg in ws:
                session.heard()
                if msg.type == WSMsgType.TEXT:
                    with session.handling():
                        await _handle_text(c, session, who, msg.data)
                elif msg.type == WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    session.error("UNSUPPORTED_FRAME", "binary frames are not supported; send JSON text")
                elif msg.type == WSMsgType.ERROR:
                    break
    finally:
        session.closing = True
        c.sessions.discard(session)
        alive.discard(session)
        c.metrics.ws_active.set(len(c.sessions))
        c.engine.boards.unsubscribe(session)
        if session.player_id is not None:
            c.engine.detach(session.player_id, session)
        await session.flush_and_stop_writer()
        await session.closed()
        if not ws.closed:
            await ws.close()
    return ws


async def _authenticate(c: AppContext, request: web.Request, ws: web.WebSocketResponse) -> Principal | None:
    """The token's principal, or None once the socket is closed with 4401."""
    token = _token_from_request(request)
    if token is None:
        token = await _await_auth_message(ws, c.settings.ws_auth_timeout_s)
    if token is None:
        await ws.close(code=CLOSE_AUTH, message=b"authentication required")
        return None
    try:
        return c.auth.decode_access(token)
    except AuthError as exc:
        await ws.close(code=CLOSE_AUTH, message=exc.detail.encode()[:120])
        return None


async def _welcome(c: AppContext, session: WsSession, who: Principal) -> bool:
    """Attach the socket to its farm and send `welcome`; False once the socket is closed.

    The player's record, the farm's state and view are this function's locals:
    they die once it returns, not when the socket closes."""
    ws = session.ws
    player = await c.store.get_player(who.player_id)
    if player is None:
        await ws.close(code=CLOSE_AUTH, message=b"account no longer exists")
        return False
    session.player_id = who.player_id
    session.session_id = who.session_id
    session.start_writer()
    try:
        state, now = await c.engine.attach(who.player_id, session)
    except (StorageUnavailable, OwnerBusy, OwnerUnreachable, RemoteError, FarmConflict):
        await session.close(1011, "farm unavailable, retry")
        return False
    from ..engine import farm_view

    report = state.offline_report if state.report_unseen else None
    # Written as REST writes the farm, without building the message's models: they only
    # checked our own data (tests check the welcome against the AsyncAPI document), and
    # their transient objects, one set per connection, fragmented the heap (0.4 KiB of
    # RSS per socket after a burst of 2,000 connections).
    welcome = {
        "player": player_view(player),
        "farm": farm_view(c.rules, state, now),
        "server_time": now,
        "tick_interval_s": c.settings.tick_interval_s,
        "offline_report": report.to_dict() if report is not None else None,
    }
    session.send(orjson.dumps({"type": "welcome", "data": welcome}).decode())
    if state.report_unseen:
        with contextlib.suppress(StorageUnavailable):
            await c.engine.mark_report_seen(who.player_id)
    return True


async def _handle_text(c: AppContext, session: WsSession, who: Principal, text: str) -> None:
    c.metrics.ws_messages.labels(direction="in", type="text").inc()
    if len(text.encode()) > c.settings.ws_max_message_bytes:
        session.error("MESSAGE_TOO_LARGE", f"messages are limited to {c.settings.ws_max_message_bytes} bytes")
        return
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        session.error("INVALID_JSON", f"message is not valid JSON: {exc}")
        return
    if not isinstance(raw, dict):
        session.error("VALIDATION_ERROR", "a message is one JSON object {type, id?, data?}")
        return
    msg_id = raw.get("id") if isinstance(raw.get("id"), str | int) else None
    try:
        env = WsEnvelope.model_validate(raw)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        session.error("VALIDATION_ERROR", fields, msg_id)
        return
    if env.type == "ping":
        session.send_message(Pong(type="pong", id=env.id, data=PongData(server_time=c.engine.clock())))
    elif env.type == "action":
        await _handle_action(c, session, who, env)
    elif env.type == "auth":
        session.error("VALIDATION_ERROR", "already authenticated", env.id)
    elif env.type in ("subscribe", "unsubscribe"):
        await _handle_subscription(c, session, env)
    else:
        session.error("VALIDATION_ERROR", f"unknown message type {env.type!r}", env.id)


async def _handle_subscription(c: AppContext, session: WsSession, env: WsEnvelope) -> None:
    try:
        board = BoardData.model_validate(env.data or {}).board
    except ValidationError:
        session.error("VALIDATION_ERROR", f"data.board must be one of {', '.join(BOARDS)}", env.id)
        return
    if env.type == "subscribe":
        session.send_message(Result(type="result", id=env.id, data=Subscribed(subscribed=board)))
        await c.engine.boards.subscribe(board, session)
    else:
        c.engine.boards.unsubscribe(session, board)
        session.send_message(Result(type="result", id=env.id, data=Unsubscribed(unsubscribed=board)))


async def _handle_action(c: AppContext, session: WsSession, who: Principal, env: WsEnvelope) -> None:
    if session.closing:
        # Known unapplied: it never reached the engine. Another replica will take it.
        session.error(
            "UNAVAILABLE",
            "the server is restarting: this action was not applied; reconnect and send it again",
            env.id,
            outcome="not_applied",
        )
        return
    kind: ActionKind = "shear" if (env.data or {}).get("action") == "shear" else "action"
    try:
        await c.anticheat.check_action(who.player_id, kind)
    except RateLimited as exc:
        session.error("RATE_LIMITED", f"too many {exc.scope} requests; slow down", env.id, retry_after=exc.retry_after)
        await _count_socket_violation(c, session)
        return
    try:
        parsed = _ACTION.validate_python(env.data or {})
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg']}" for e in exc.errors()[:5])
        session.error("VALIDATION_ERROR", fields, env.id)
        await c.anticheat.violation(who.player_id, "malformed_action", fields[:200])
        return
    action = _to_action(parsed)
    # Optional, as REST's Idempotency-Key: a retry after a lost reply applies nothing twice.
    key = parsed.idempotency_key
    try:
        reply = await c.engine.submit(who.player_id, action, IdempotentRequest.of(key, action) if key else None)
    except GameError as exc:
        session.error(exc.code, exc.detail, env.id, **_json_safe(exc.extra))
        if exc.code in VIOLATION_CODES:
            await c.anticheat.violation(who.player_id, "impossible_action", exc.detail[:200])
        return
    except OwnerBusy as exc:
        detail, extra = unavailable(
            "the replica that holds this farm is busy", writes=True, retry_key="data.idempotency_key"
        )
        session.error("UNAVAILABLE", detail, env.id, retry_after=math.ceil(exc.retry_after_s), **extra)
        return
    except (StorageUnavailable, OwnerUnreachable, RemoteError, FarmConflict):
        detail, extra = unavailable(
            "storage or the farm's replica did not answer", writes=True, retry_key="data.idempotency_key"
        )
        session.error("UNAVAILABLE", detail, env.id, retry_after=5, **extra)
        return
    except PlayerGone:
        await session.close(CLOSE_AUTH, "account no longer exists")
        return
    except IdempotencyMismatch:
        session.error("CONFLICT", "this idempotency_key was used for a different request", env.id)
        return
    session.send('{"type":"result","id":' + orjson.dumps(env.id).decode() + ',"data":' + reply.body.decode() + "}")


async def _count_socket_violation(c: AppContext, session: WsSession) -> None:
    """A socket that keeps hitting limits is closed with 4408."""
    now = c.engine.clock()
    errors = session.limit_errors
    if errors is None:
        errors = session.limit_errors = deque()
    errors.append(now)
    while errors and errors[0] <= now - 60.0:
        errors.popleft()
    if len(errors) >= c.settings.ws_violations_before_close:
        await session.close(CLOSE_VIOLATIONS, "too many limit violations")


def _json_safe(extra: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if k not in ("code", "message", "id")}


__all__ = ["CLOSE_AUTH", "CLOSE_RESTART", "CLOSE_VIOLATIONS", "CODES", "WsSession", "websocket"]
