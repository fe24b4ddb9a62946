"""Structured JSON logs (structlog) and Prometheus metrics with bounded labels.

Each server gets its own `CollectorRegistry` so several servers can run in one
test process. No metric carries a per-player label.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import sys
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

# A field is a secret when its name says so, whatever the rest of the name
# (`new_password`, `refresh_token`, `X-Api-Key`, `jwt_secret_file`, `Authorization`):
# matched by pattern, not a list of exact names a new log call can miss.
_SECRET_KEY = re.compile(r"passw|secret|token|authoriz|cookie|credential|api[_-]?key|private[_-]?key", re.IGNORECASE)

# A JWT (base64url parts joined by dots, the first an encoded '{"'): a credential wherever
# it shows up, such as a client's input quoted in a refusal's detail, even cut short.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_.-]*")
# The userinfo of a URL (`mongodb://user:password@host`), in a `*_uri` / `*_url` field or
# quoted in an error message: the host stays, the credentials go.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def _scrub(key: object, value: Any) -> Any:
    if isinstance(key, str) and _SECRET_KEY.search(key):
        return "[redacted]"
    if isinstance(value, str):
        if "eyJ" in value:
            value = _JWT.sub("[redacted-jwt]", value)
        if "@" in value and "://" in value:
            value = _USERINFO.sub(r"\g<scheme>[redacted]@", value)
        return value
    if isinstance(value, dict):
        return {k: _scrub(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(None, v) for v in value]
    return value


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Never let a secret reach a log line, whoever logged it (nested fields too)."""
    for key in list(event):
        event[key] = _scrub(key, event[key])
    return event


# Tracebacks as dicts, without each frame's local variables: structlog's default
# (show_locals=True) would print the repr of `settings` (the JWT secret), of a
# request body (a password) or of a `token` in any frame an exception unwinds.
_TRACEBACKS = structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))


class _CurrentStdout:
    """Writes to whatever `sys.stdout` is now (test runners swap it), never a stale one."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def configure_logging(level: str = "info", fmt: str = "json", region: str = "local") -> None:
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()

    def add_region(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        # A processor, not only a context variable: lines logged from worker threads
        # (the SQLite store's executor, schema migrations) do not see the main
        # thread's context, and every line must name its region (multi-region logs).
        event.setdefault("region", region)
        return event

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_region,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _TRACEBACKS,
            _redact,  # after the traceback is rendered: an exception's message is scrubbed too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.WriteLoggerFactory(_CurrentStdout()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(region=region)
    # aiohttp's own access log is replaced by our middleware's structured line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Metrics:
    """Every metric the server exports (names are part of the operations contract)."""

    def __init__(self, region: str = "local") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.info = Gauge("llamawool_build_info", "Build and placement", ["version", "region"], registry=r)
        self.http_requests = Counter("http_requests_total", "HTTP requests", ["method", "route", "status"], registry=r)
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.ws_active = Gauge("websocket_connections_active", "Open WebSocket connections", registry=r)
        self.ws_messages = Counter("websocket_messages_total", "WebSocket messages", ["direction", "type"], registry=r)
        self.rebalance_closed = Counter(
            "llamawool_rebalance_closed_total",
            "Sockets closed (1012, reason rebalancing) because this replica held more than its fair share",
            registry=r,
        )
        self.rebalance_refused = Counter(
            "llamawool_rebalance_refused_total",
            "New sockets refused (503) because this replica was above its band while a peer had room",
            registry=r,
        )
        self.rebalance_fair_share = Gauge(
            "llamawool_rebalance_fair_share",
            "Sockets per live replica as of this replica's last rebalancing round",
            registry=r,
        )
        self.replicas_live = Gauge(
            "llamawool_replicas_live", "Replicas whose load report is current and that are not draining", registry=r
        )
        self.tick_duration = Histogram(
            "llamawool_tick_duration_seconds",
            "Time to compute one phase of the engine tick and hand out its payloads (phase 0 with the upkeep)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.tick_overruns = Counter(
            "llamawool_tick_overruns_total", "Ticks that started later than one interval after schedule", registry=r
        )
        self.farms_resident = Gauge("llamawool_farms_resident", "Farms held in the engine", registry=r)
        self.players_online = Gauge("llamawool_players_online", "Farms online on this replica", registry=r)
        self.actions = Counter("llamawool_actions_total", "Player actions", ["action", "outcome"], registry=r)
        self.commit_batch = Histogram(
            "llamawool_commit_batch_size",
            "Farms per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.commit_duration = Histogram(
            "llamawool_store_commit_duration_seconds",
            "Duration of one group commit",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r,
        )
        self.store_errors = Counter("llamawool_store_errors_total", "Storage operations that failed", registry=r)
        # The dashboard's Redis latency panel reads this; `operation` is a coordinator
        # method name (hit, push_scores, ranks, acquire_lease, ...), never a key.
        self.coordination_duration = Histogram(
            "llamawool_coordination_duration_seconds",
            "Duration of one coordinator call to the coordination backend (Redis)",
            ["operation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=r,
        )
        # The cost budget (docs/scaling.md "Cost budget"): what each request, socket and
        # tick costs the shared backends, counted by the server itself.
        self.store_ops = Counter(
            "llamawool_store_ops_total",
            "Store round trips by operation (a Store method; a group commit of many farms is one)",
            ["op"],
            registry=r,
        )
        self.redis_commands = Counter(
            "llamawool_redis_commands_total",
            "Redis commands sent, by purpose (a pipeline counts its commands; a script one per item it handles)",
            ["purpose"],
            registry=r,
        )
        self.redis_round_trips = Counter(
            "llamawool_redis_round_trips_total",
            "Round trips to Redis, by purpose (a pipeline or a script is one)",
            ["purpose"],
            registry=r,
        )
        # Ownership across replicas (docs/replicas.md); every label is a fixed set.
        self.remote_watched = Gauge(
            "llamawool_remote_watched_sockets",
            "Sockets on this replica whose farm is owned by another replica (fed through Redis)",
            registry=r,
        )
        self.rpc = Counter(
            "llamawool_rpc_total",
            "Requests this replica sent to a farm's owner, by operation and outcome "
            "(ok, error, timeout, busy, rerouted)",
            ["op", "outcome"],
            registry=r,
        )
        self.forwarded_actions = Counter(
            "llamawool_forwarded_actions_total", "Player actions sent to the replica owning the farm", registry=r
        )
        self.lease_acquisitions = Counter(
            "llamawool_lease_acquisitions_total",
            "Lease claims for farms not resident here (taken, held_elsewhere, taken_over, unavailable)",
            ["outcome"],
            registry=r,
        )
        self.handovers = Counter(
            "llamawool_handovers_total",
            "Farms handed to the replica where their player's socket is (in: taken, out: given)",
            ["direction"],
            registry=r,
        )
        self.offline_credits = Counter(
            "llamawool_offline_credits_total", "Offline absences credited on return", registry=r
        )
        self.offline_credited_seconds = Counter(
            "llamawool_offline_credited_seconds_total", "Seconds of absence credited", registry=r
        )
        self.auth = Counter("llamawool_auth_total", "Authentication attempts", ["kind", "outcome"], registry=r)
        # Leak watch (the soak test reads these): process_resident_memory_bytes, process_open_fds, ...
        ProcessCollector(registry=r)
        self.loop_lag = Histogram(
            "llamawool_event_loop_lag_seconds",
            "How much later than asked a timer ran on the event loop (sampled every 0.25 s)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "llamawool_event_loop_lag_max_seconds",
            f"The longest event-loop lag sampled over the last {LOOP_LAG_MAX_WINDOW_S:.0f} s",
            registry=r,
        )
        self.gc_pause = Histogram(
            "llamawool_gc_pause_seconds",
            "Garbage-collection pauses (the whole process stops), by generation",
            ["generation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=r,
        )
        self.asyncio_tasks = Gauge("llamawool_asyncio_tasks", "asyncio tasks alive (set at each scrape)", registry=r)
        self.info.labels(version=_version(), region=region).set(1)


LOOP_LAG_EVERY_S = 0.25
LOOP_LAG_MAX_WINDOW_S = 10.0  # llamawool_event_loop_lag_max_seconds looks this far back


def watch_gc(metrics: Metrics) -> Callable[[], None]:
    """Time every garbage collection into `llamawool_gc_pause_seconds`; returns the undo."""
    started: list[float] = [0.0]
    by_generation = [metrics.gc_pause.labels(generation=str(g)) for g in range(3)]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            by_generation[min(info["generation"], 2)].observe(time.perf_counter() - started[0])

    gc.callbacks.append(callback)
    return lambda: gc.callbacks.remove(callback)


async def watch_loop_lag(metrics: Metrics, every_s: float = LOOP_LAG_EVERY_S) -> None:
    """Sleep, and record how late the wake-up came: the time every callback on the
    event loop waits behind whatever holds it (a long tick, a burst of sends, a
    garbage collection). Runs until cancelled."""
    loop = asyncio.get_running_loop()
    recent: deque[tuple[float, float]] = deque()  # (when, lag) of the samples in the window

    def longest() -> float:
        since = loop.time() - LOOP_LAG_MAX_WINDOW_S
        return max((lag for at, lag in recent if at >= since), default=0.0)

    metrics.loop_lag_max.set_function(longest)
    while True:
        asked = loop.time() + every_s
        await asyncio.sleep(every_s)
        now = loop.time()
        lag = max(0.0, now - asked)
        metrics.loop_lag.observe(lag)
        recent.append((now, lag))
        while recent[0][0] < now - LOOP_LAG_MAX_WINDOW_S:
            recent.popleft()


def _version() -> str:
    from . import __version__

    return __version__


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
