"""The WebSocket session at /api/v1/ws.

Authentication (header, `?token=` or a first `auth` message within the
timeout), then `welcome`, then ticks and events pushed by the engine while the
client sends actions that go through the same engine entry point as REST.
Outbound messages go through a bounded queue per session; one task per app
writes every session's queue while its socket keeps up, and a backlogged
socket gets a writer task of its own, so a slow client never blocks the tick
or the others; when its queue is full, ticks (which supersede each other) are
dropped first.

A drain (SIGTERM) sends every socket away with 1012, but first lets the
action being handled finish and its result reach the socket, within
`drain_flush_s`: an action that committed is answered, or (past the bound)
findable by its idempotency key. Actions that arrive once the drain began are
refused unapplied.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import weakref
from collections import deque
from collections.abc import Iterator
from typing import Any

import orjson
import structlog
from aiohttp import WSMsgType, web
from pydantic import BaseModel, TypeAdapter, ValidationError

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
    Error,
    ErrorData,
    Pong,
    PongData,
    Result,
    Subscribed,
    Unsubscribed,
    Welcome,
    WelcomeData,
    encode,
)
from .routes_auth import player_view
from .routes_farm import VIOLATION_CODES
from .schemas import (
    FarmView,
    PlayerView,
    WsAction,
    WsBuyBuilding,
    WsBuyUpgrade,
    WsClaimDailyReward,
    WsEnvelope,
    WsPrestige,
    WsShear,
)

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


class _Outbox:
    """Writes queued messages for every session of one app from a single task.

    A tick hands one message to each of thousands of sessions; waking one
    writer task per session would cost a task switch per message. Here a
    session with something to send is marked ready, and one task writes them
    all. A socket whose kernel buffer is not empty (a slow client) is handed to
    a writer task of its own, so it can never hold the others up.
    """

    YIELD_EVERY = 512  # sessions written between chances for other callbacks to run

    def __init__(self) -> None:
        self._ready: dict[WsSession, None] = {}  # insertion-ordered set
        self._task: asyncio.Task[None] | None = None

    def mark(self, session: WsSession) -> None:
        self._ready[session] = None
        loop = asyncio.get_running_loop()
        task = self._task
        if task is None or task.done() or task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name="ws-outbox")

    def pending(self, session: WsSession) -> bool:
        return session in self._ready

    def discard(self, session: WsSession) -> None:
        self._ready.pop(session, None)

    async def _run(self) -> None:
        try:
            while self._ready:
                batch, self._ready = self._ready, {}
                for i, session in enumerate(batch):
                    await session._drain()
                    if i % self.YIELD_EVERY == self.YIELD_EVERY - 1:
                        await asyncio.sleep(0)
        finally:
            self._task = None


_OUTBOXES: weakref.WeakKeyDictionary[AppContext, _Outbox] = weakref.WeakKeyDictionary()


def _outbox(c: AppContext) -> _Outbox:
    box = _OUTBOXES.get(c)
    if box is None:
        box = _OUTBOXES[c] = _Outbox()
    return box


class WsSession:
    """One socket. Implements the engine's `Sink`.

    Outbound messages wait in a bounded queue; the app's outbox writes them
    while the socket keeps up, and a writer task of the session's own takes
    over while the socket is backlogged.
    """

    def __init__(self, c: AppContext, ws: web.WebSocketResponse, transport: asyncio.Transport | None = None) -> None:
        self.c = c
        self.ws = ws
        self.player_id: str | None = None
        self.session_id: str | None = None  # the auth session (refresh-token family) of its token
        self._queue: deque[str] = deque()
        self._limit = c.settings.ws_send_queue
        self._transport = transport
        self._outbox = _outbox(c)
        self._started = False
        self._broken = False  # a write failed: the socket is gone
        self._slow: asyncio.Task[None] | None = None  # the writer while backlogged
        self._sent = asyncio.Event()  # set while nothing waits in the queue
        self._sent.set()
        self._idle = asyncio.Event()  # set while no message of the client's is being handled
        self._idle.set()
        self._stopped = False  # the writer is gone: nothing more is queued
        self._handshake: asyncio.Event | None = None  # set once a close we started is over
        self.closing = False  # being closed: no new action is applied, queued results still go out
        self.opened_at = time.monotonic()  # rebalancing moves the oldest sockets first
        self.limit_errors: deque[float] = deque()

    # -- Sink --
    def send(self, message: str) -> None:
        if self._stopped or self._broken:
            return
        if self.closing and message.startswith('{"type":"tick"'):
            return  # the client is being sent away; its next welcome carries the farm
        if len(self._queue) >= self._limit:
            # Drop the oldest tick: a newer one carries everything it did.
            for i, queued in enumerate(self._queue):
                if queued.startswith('{"type":"tick"'):
                    del self._queue[i]
                    break
            else:
                self._queue.popleft()
        self._queue.append(message)
        self._sent.clear()
        if self._started and self._slow is None:
            self._outbox.mark(self)

    def send_message(self, message: BaseModel) -> None:
        self.send(encode(message))

    def error(self, code: str, message: str, msg_id: Any = None, **extra: Any) -> None:
        fields: dict[str, Any] = {"code": code, "message": message}
        if msg_id is not None:
            fields["id"] = msg_id
        # Not validated again: the id is echoed as the client sent it, the extra fields come from our errors.
        data = ErrorData.model_construct(**fields, **extra)
        self.send_message(Error(type="error", id=msg_id, data=data))

    def _backlogged(self) -> bool:
        t = self._transport
        return t is None or t.get_write_buffer_size() > 0

    async def _drain(self) -> None:
        """Called by the outbox: write while the socket takes data without waiting."""
        queue = self._queue
        while queue and self._started and self._slow is None and not self._broken:
            if self._backlogged():
                self._slow = asyncio.create_task(self._write_loop())
                return
            try:
                # With nothing buffered the transport is not paused, so this
                # completes without suspending.
                await self.ws.send_str(queue.popleft())
            except (ConnectionError, RuntimeError):
                self._broken = True
                queue.clear()
        if not queue:
            self._sent.set()

    async def _write_loop(self) -> None:
        try:
            while self._queue:
                await self.ws.send_str(self._queue.popleft())
        except (ConnectionError, RuntimeError):
            self._broken = True
            self._queue.clear()
        except asyncio.CancelledError:
            return
        finally:
            self._slow = None
            if not self._queue:
                self._sent.set()

    def start_writer(self) -> None:
        self._started = True
        if self._queue:
            self._outbox.mark(self)

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Around each message of the client's: a drain waits for the one in hand."""
        self._idle.clear()
        try:
            yield
        finally:
            self._idle.set()

    async def flush_and_stop_writer(self, wait_s: float = 0.0) -> None:
        """Stop writing, first waiting up to `wait_s` for the queue (results, errors)
        to reach the socket; a socket that does not read does not hold us longer."""
        if self._started and not self._broken and wait_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._sent.wait()
        self._stopped = True
        self._started = False
        self._outbox.discard(self)
        if self._slow is not None:
            self._slow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._slow

    async def close(self, code: int, reason: str) -> None:
        """Close with `code` once what is queued has gone out (within `drain_flush_s`)."""
        self.closing = True
        await self.flush_and_stop_writer(self.c.settings.drain_flush_s)
        await self._close_socket(code, reason)

    async def send_away(self, code: int, reason: str) -> None:
        """A drain: refuse new actions, let the one being applied finish and its result
        reach the socket, then close. All within `drain_flush_s`: past it the result may
        be lost, never the action (its idempotency key finds it)."""
        self.closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.c.settings.drain_flush_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._idle.wait()
        if self._started and not self._broken:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._sent.wait()
        await self.flush_and_stop_writer()
        await self._close_socket(code, reason)

    async def _close_socket(self, code: int, reason: str) -> None:
        self._handshake = done = asyncio.Event()
        try:
            with contextlib.suppress(Exception):
                await self.ws.close(code=code, message=reason.encode())
        finally:
            done.set()

    async def closed(self) -> None:
        """Until the close handshake this session started is over (aiohttp bounds it).
        The handler waits for it: returning drops the connection, and a client whose
        echo of our close frame then fails reports 1006 instead of our code."""
        if self._handshake is not None:
            await self._handshake.wait()


def _token_from_request(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.query.get("token")


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
        heartbeat=s.ws_heartbeat_s,
        # Frames up to 16x the protocol limit are read and answered with an
        # error; beyond that aiohttp closes with 1009.
        max_msg_size=s.ws_max_message_bytes * 16,
        compress=False,
    )
    await ws.prepare(request)
    session = WsSession(c, ws, request.transport)
    c.sessions.add(session)
    c.metrics.ws_active.set(len(c.sessions))
    try:
        await _run(c, request, session)
    finally:
        session.closing = True
        c.sessions.discard(session)
        c.metrics.ws_active.set(len(c.sessions))
        c.engine.boards.unsubscribe(session)
        if session.player_id is not None:
            c.engine.detach(session.player_id, session)
        await session.flush_and_stop_writer()
        await session.closed()
        if not ws.closed:
            await ws.close()
    return ws


async def _run(c: AppContext, request: web.Request, session: WsSession) -> None:
    ws = session.ws
    token = _token_from_request(request)
    if token is None:
        token = await _await_auth_message(ws, c.settings.ws_auth_timeout_s)
    if token is None:
        await ws.close(code=CLOSE_AUTH, message=b"authentication required")
        return
    try:
        who: Principal = c.auth.decode_access(token)
    except AuthError as exc:
        await ws.close(code=CLOSE_AUTH, message=exc.detail.encode()[:120])
        return
    player = await c.store.get_player(who.player_id)
    if player is None:
        await ws.close(code=CLOSE_AUTH, message=b"account no longer exists")
        return
    session.player_id = who.player_id
    session.session_id = who.session_id
    session.start_writer()
    try:
        state, now = await c.engine.attach(who.player_id, session)
    except (StorageUnavailable, OwnerBusy, OwnerUnreachable, RemoteError, FarmConflict):
        await session.close(1011, "farm unavailable, retry")
        return
    from ..engine import farm_view

    report = state.offline_report if state.report_unseen else None
    welcome = WelcomeData(
        player=PlayerView.model_validate(player_view(player)),
        farm=FarmView.model_validate(farm_view(c.rules, state, now)),
        server_time=now,
        tick_interval_s=c.settings.tick_interval_s,
        offline_report=report,
    )
    session.send_message(Welcome(type="welcome", data=welcome))
    if state.report_unseen:
        with contextlib.suppress(StorageUnavailable):
            await c.engine.mark_report_seen(who.player_id)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            with session.handling():
                await _handle_text(c, session, who, msg.data)
        elif msg.type == WSMsgType.BINARY:
            session.error("UNSUPPORTED_FRAME", "binary frames are not supported; send JSON text")
        elif msg.type == WSMsgType.ERROR:
            break


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
    session.limit_errors.append(now)
    while session.limit_errors and session.limit_errors[0] <= now - 60.0:
        session.limit_errors.popleft()
    if len(session.limit_errors) >= c.settings.ws_violations_before_close:
        await session.close(CLOSE_VIOLATIONS, "too many limit violations")


def _json_safe(extra: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if k not in ("code", "message", "id")}


__all__ = ["CLOSE_AUTH", "CLOSE_RESTART", "CLOSE_VIOLATIONS", "CODES", "WsSession", "websocket"]
