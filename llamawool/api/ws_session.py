"""One socket's outbound side: the engine's `Sink` for a WebSocket.

A message is written as one frame straight onto the transport while the socket
keeps up (nothing queued, nothing left in the kernel's send buffer): no task, no
coroutine, no queue. A tick fans out to every socket, and queueing each message
for a writer task, then aiohttp's `send_str` (two coroutines per message), cost
a quarter of the write path's CPU. A socket whose send buffer is not empty (a
slow client) queues instead,
bounded at `ws_send_queue`, dropping the oldest ticks first when full (a newer
tick carries everything an older one did), and gets a writer task of its own
that waits on that socket alone: a slow client never blocks the tick or the
others. Messages leave in the order they were sent.

A drain waits for the message of the client's being handled (`handling`) and
for the queue to reach the socket (`until_sent`), within a bound the caller
sets; a session being closed skips ticks (its next welcome carries the farm).

The keep-alive (ws_keepalive.py) visits the session: `heard` marks a frame from
the client, `beat` pings a silent client and drops one that does not answer.

Each of thousands of live sessions costs memory, so what most never use (the
queue, the waiters of a drain) is created only when first needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web
from pydantic import BaseModel

from .messages import Error, ErrorData, encode

if TYPE_CHECKING:
    from .context import AppContext

_TICK = b'{"type":"tick"'
_PING = bytes((0x80 | WSMsgType.PING, 0))  # RFC 6455 5.5.2: a control frame, sendable between any two frames
# Keep-alive visits come every half heartbeat (ws_keepalive.py): silent through this
# many, the client has said nothing for a whole heartbeat and is pinged; one more
# and the ping went unanswered for half a heartbeat.
_PING_AFTER = 3
# RFC 6455 section 5.2: FIN + text opcode, then the payload length (servers do not mask).
_TEXT = 0x80 | WSMsgType.TEXT
_SHORT_HEADERS = [bytes((_TEXT, n)) for n in range(126)]
_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack


def text_frame(payload: bytes) -> bytes:
    """A whole unfragmented text frame, as aiohttp writes one."""
    n = len(payload)
    if n < 126:
        return _SHORT_HEADERS[n] + payload
    if n < 65536:
        return _HEADER_16(_TEXT, 126, n) + payload
    return _HEADER_64(_TEXT, 127, n) + payload


class WsSession:
    """One socket. Implements the engine's `Sink`."""

    __slots__ = (
        "_busy",
        "_handshake",
        "_idle",
        "_queue",
        "_sent",
        "_silent",
        "_slow",
        "_started",
        "_state",
        "_transport",
        "c",
        "closing",
        "limit_errors",
        "opened_at",
        "player_id",
        "session_id",
        "ws",
    )

    # _state: why nothing more is written. A write failed (the socket is gone), or the
    # writer was stopped (the socket is being closed).
    _OPEN, _BROKEN, _STOPPED = 0, 1, 2

    def __init__(self, c: AppContext, ws: web.WebSocketResponse, transport: asyncio.Transport | None = None) -> None:
        self.c = c
        self.ws = ws
        self.player_id: str | None = None
        self.session_id: str | None = None  # the auth session (refresh-token family) of its token
        self._transport = transport
        self._state = self._OPEN
        self._started = False  # authenticated: messages may go out
        self._queue: deque[bytes] | None = None  # messages waiting for the socket, oldest first
        self._slow: asyncio.Task[None] | None = None  # the writer while backlogged
        self._sent: asyncio.Event | None = None  # a drain waits for the queue to go out
        self._busy = False  # a message of the client's is being handled
        self._idle: asyncio.Event | None = None  # a drain waits for it to finish
        self._handshake: asyncio.Event | None = None  # set once a close we started is over
        self._silent = 0  # keep-alive visits since the client last sent a frame
        self.closing = False  # being closed: no new action is applied, queued results still go out
        self.opened_at = time.monotonic()  # rebalancing moves the oldest sockets first
        self.limit_errors: deque[float] | None = None  # when it hit a limit (ws.py counts them)

    # -- Sink --
    def send(self, message: str) -> None:
        if self._state:
            return
        if self.closing and message.startswith('{"type":"tick"'):
            return  # the client is being sent away; its next welcome carries the farm
        if not self._queue and self._slow is None and self._started:
            t = self._transport
            if t is not None and not t.get_write_buffer_size():
                if self.ws.closed or t.is_closing():
                    self._state = self._BROKEN
                    return
                # With nothing buffered the frame goes to the kernel at once.
                t.write(text_frame(message.encode()))
                return
        self._enqueue(message.encode())

    def _enqueue(self, payload: bytes) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self.c.settings.ws_send_queue:
            # Drop the oldest tick: a newer one carries everything it did.
            for i, queued in enumerate(queue):
                if queued.startswith(_TICK):
                    del queue[i]
                    break
            else:
                queue.popleft()
        queue.append(payload)
        if self._started and self._slow is None:
            self._slow = asyncio.get_running_loop().create_task(self._write_loop(queue))

    def send_message(self, message: BaseModel) -> None:
        self.send(encode(message))

    def error(self, code: str, message: str, msg_id: Any = None, **extra: Any) -> None:
        fields: dict[str, Any] = {"code": code, "message": message}
        if msg_id is not None:
            fields["id"] = msg_id
        # Not validated again: the id is echoed as the client sent it, the extra fields come from our errors.
        data = ErrorData.model_construct(**fields, **extra)
        self.send_message(Error(type="error", id=msg_id, data=data))

    async def _write_loop(self, queue: deque[bytes]) -> None:
        """The writer of a backlogged socket: aiohttp waits for the transport to drain."""
        try:
            while queue and not self._state:
                await self.ws.send_frame(queue.popleft(), WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            self._state = self._BROKEN
        except asyncio.CancelledError:
            return
        finally:
            self._slow = None
            if self._state:
                queue.clear()
            if not queue:
                self._queue = None
                if self._sent is not None:
                    self._sent.set()
                    self._sent = None

    def start_writer(self) -> None:
        self._started = True
        queue = self._queue
        if queue and self._slow is None and not self._state:
            self._slow = asyncio.get_running_loop().create_task(self._write_loop(queue))

    # -- keep-alive --
    def heard(self) -> None:
        """The client sent a frame: it is alive."""
        self._silent = 0

    def beat(self) -> None:
        """A visit of the keep-alive (every half heartbeat)."""
        if self._busy:
            # We are the ones not reading while a message of its is handled: its pong may
            # be waiting, unread.
            self._silent = 0
            return
        self._silent += 1
        if self._silent < _PING_AFTER:
            return
        t = self._transport
        if t is None or t.is_closing() or self.ws.closed:
            return
        if self._silent == _PING_AFTER:
            t.write(_PING)
        else:
            t.abort()  # no answer: the peer is gone; the handler sees the connection lost

    async def until_sent(self) -> None:
        """Until nothing waits in the queue (it is in the socket's send buffer)."""
        if not self._queue or self._state or not self._started:
            return
        if self._sent is None:
            self._sent = asyncio.Event()
        await self._sent.wait()

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Around each message of the client's: a drain waits for the one in hand."""
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
            if self._idle is not None:
                self._idle.set()
                self._idle = None

    async def until_idle(self) -> None:
        """Until no message of the client's is being handled."""
        if not self._busy:
            return
        if self._idle is None:
            self._idle = asyncio.Event()
        await self._idle.wait()

    async def flush_and_stop_writer(self, wait_s: float = 0.0) -> None:
        """Stop writing, first waiting up to `wait_s` for the queue (results, errors)
        to reach the socket; a socket that does not read does not hold us longer."""
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self.until_sent()
        if not self._state:
            self._state = self._STOPPED
        self._started = False
        slow = self._slow
        if slow is not None:
            slow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slow
        self._queue = None

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
                await self.until_idle()
                await self.until_sent()
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
