"""Coordination shared by many replicas, on Redis 7 (`redis.asyncio`, a `BlockingConnectionPool`).

Every multi-step change runs as one Lua script, so replicas never see half of it.

Keys (all under `prefix`, default ``llamawool:``):

- ``rl:{key}``, ``vio:{player}`` - sliding logs (sorted sets scored by time) with a PEXPIRE
  of the window; a limit check prunes, counts and adds in one script.
- ``b:{board}:{period}`` - the board: a sorted set whose scores are all 0, so Redis orders
  it by member bytes. A member is the ordering key encoded to sort bytewise exactly as
  the tuple ``(-score, -tiebreak, reached_at, player_id)`` does in Python: three doubles
  as 16 hex digits each (sign-flipped IEEE 754, big-endian) followed by the player id.
  `ZRANK` is then the exact rank, ties and all, in O(log n), with no read-time sorting.
- ``m:{board}:{period}`` - player -> their current member (to replace it and to find it).
- ``h:{board}:{period}`` - the members of this board's hidden players, ordered the same way:
  how many hidden players rank ahead of a member is one `ZLEXCOUNT`, so a visible rank
  is O(log n) however many players are flagged.
- ``hidden`` (flagged players), ``gen`` (bumped when the hidden set or membership
  changes so cached first pages are not reused), ``boards`` / ``p:{board}`` (which
  boards and periods exist), ``roll:{period}`` (SET NX marker), ``fanout`` and
  ``replica:{id}`` (pub/sub channels: everyone, one replica), ``lease:{farm}`` (the
  owner's replica id, PX = lease TTL), ``hb:{replica}`` (a replica's heartbeat, PX =
  heartbeat TTL), ``online`` / ``online:exp`` (presence reports),
  ``load`` / ``load:exp`` (each replica's sockets and farms, for rebalancing).
- ``v:{view}`` / ``vm:{view}`` - a frozen view for cursor paging: a copy of the top
  `view_rows` visible members (``ZRANGESTORE``) and its metadata, both expiring with the
  leaderboard TTL. ``l:{board}:{period}`` points at the newest view, which first pages
  reuse while it is younger than `view_refresh_s`.

Paging guarantee (the same as the embedded adapter on boards up to `view_rows` long):
every page read through one cursor chain comes from the view the chain started on, so
paging forward and back returns the same rows while scores move. Deeper than
`view_rows`, the view is extended from the live board as pages are asked for (and those
rows are frozen from then on); a player whose score crosses that frontier meanwhile can
be shown twice or not at all. A cursor whose view expired continues after the last row
it showed, on the newest view, without repeating rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import struct
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt
import orjson
import redis.asyncio as aioredis
import redis.exceptions as rex
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .base import (
    BadCursor,
    BoardEntry,
    BoardPage,
    CoordinationUnavailable,
    Cursor,
    LimitHit,
    LimitResult,
    Listener,
    Renewal,
    ReplicaLoad,
    ScoreUpdate,
)

if TYPE_CHECKING:
    from ..observability import Metrics

log = structlog.get_logger("llamawool.coord")

Key = tuple[float, float, float, str]

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rex.ConnectionError,  # includes "No connection available." from the blocking pool
    rex.TimeoutError,
    rex.BusyLoadingError,
    rex.ReadOnlyError,  # a replica promoted away under us
    OSError,
    asyncio.TimeoutError,
)

P = ParamSpec("P")
R = TypeVar("R")


def _guard(
    fn: Callable[Concatenate[RedisCoordinator, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[RedisCoordinator, P], Coroutine[Any, Any, R]]:
    """Redis that cannot be reached (or answers too late) becomes `CoordinationUnavailable`;
    every call's duration goes to `llamawool_coordination_duration_seconds{operation}`
    (the method's name: a fixed set)."""
    operation = fn.__name__.lstrip("_")

    @functools.wraps(fn)
    async def wrapper(self: RedisCoordinator, /, *args: P.args, **kwargs: P.kwargs) -> R:
        started = time.perf_counter()
        try:
            return await fn(self, *args, **kwargs)
        except _UNAVAILABLE as exc:
            raise CoordinationUnavailable(f"redis: {exc or type(exc).__name__}") from exc
        finally:
            if self._metrics is not None:
                self._metrics.coordination_duration.labels(operation=operation).observe(time.perf_counter() - started)

    return wrapper


# ---- ordering keys as bytewise-sortable members --------------------------------------------

_SIGN = 1 << 63
_ALL = (1 << 64) - 1
_FLOAT_HEX = 16
_PREFIX = 3 * _FLOAT_HEX  # the three numbers; the player id follows
_SCORE_PREFIX = 2 * _FLOAT_HEX  # score and tiebreak: an "unchanged score" compares these


def _enc(x: float) -> str:
    x = float(x) + 0.0  # -0.0 == 0.0 in Python's ordering: give them one encoding
    if math.isnan(x):
        raise ValueError("a leaderboard number cannot be NaN")
    (u,) = struct.unpack(">Q", struct.pack(">d", x))
    u = (u ^ _ALL) if u & _SIGN else (u | _SIGN)
    return f"{u:016x}"


def _dec(h: str) -> float:
    u = int(h, 16)
    u = (u ^ _SIGN) if u & _SIGN else (u ^ _ALL)
    return float(struct.unpack(">d", struct.pack(">Q", u))[0])


def encode_key(key: Key) -> str:
    return _enc(key[0]) + _enc(key[1]) + _enc(key[2]) + key[3]


def decode_key(member: str) -> Key:
    return (
        _dec(member[0:16]),
        _dec(member[16:32]),
        _dec(member[32:48]),
        member[_PREFIX:],
    )


def _bits(xs: npt.NDArray[np.float64]) -> npt.NDArray[np.uint64]:
    """`_enc` of many numbers at once, as the unsigned integers whose hex it writes."""
    xs = xs + 0.0  # -0.0 becomes 0.0, as in _enc
    if np.isnan(xs).any():
        raise ValueError("a leaderboard number cannot be NaN")
    u = xs.view(np.uint64)
    flipped: npt.NDArray[np.uint64] = np.where(u >> np.uint64(63), ~u, u | np.uint64(_SIGN))
    return flipped


def encode_keys(updates: list[ScoreUpdate]) -> list[str]:
    """`encode_key` of each update's ordering key (-score, -tiebreak, at, player), in one numpy pass."""
    numbers = np.array([(-u.score, -u.tiebreak, u.at) for u in updates], dtype=np.float64).reshape(-1, 3)
    prefixes = _bits(numbers).astype(">u8").tobytes().hex()
    return [prefixes[i * _PREFIX : (i + 1) * _PREFIX] + u.player_id for i, u in enumerate(updates)]


def decode_numbers(prefixes: str) -> npt.NDArray[np.float64]:
    """The three numbers of members' ordering keys (`decode_key` without the player), one row per
    member, from their first `_PREFIX` characters run together."""
    raw = bytes.fromhex(prefixes)
    u = np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 3)
    restored = np.where(u >> np.uint64(63), u ^ np.uint64(_SIGN), ~u)
    numbers: npt.NDArray[np.float64] = restored.view(np.float64)
    return numbers


def _entry(rank: int, key: Key) -> BoardEntry:
    return BoardEntry(rank, key[3], -key[0] + 0.0, key[2])


# ---- scripts ------------------------------------------------------------------------------------

# KEYS[1] log; ARGV: cutoff (prune scores <= it), now, limit, pexpire ms, unique member, record 1/0
# -> {allowed 1/0, hits in window, oldest hit's score or false}
_LIMIT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[3]) then
  local o = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, n, o[2] or false}
end
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  n = n + 1
end
local o = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {1, n, o[2] or false}
"""

# KEYS[1] log; ARGV: cutoff, now, pexpire ms, unique member -> hits in window
_VIOLATION = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: board, members, hidden members of this board, hidden players, periods of this board, all
# boards; ARGV: period, "board:period", then members (each ends with its player's id: one argument
# per player, not two, is less to pack). An unchanged score (same score and tiebreak) keeps its
# member, so it keeps its reached_at and its place.
_PUSH = """
local changed = 0
for i = 3, #ARGV do
  local mem = ARGV[i]
  local pid = string.sub(mem, PREFIX + 1)
  local old = redis.call('HGET', KEYS[2], pid)
  if not (old and string.sub(old, 1, SCORE_PREFIX) == string.sub(mem, 1, SCORE_PREFIX)) then
    if old then
      redis.call('ZREM', KEYS[1], old)
      redis.call('ZREM', KEYS[3], old)
    end
    redis.call('ZADD', KEYS[1], 0, mem)
    redis.call('HSET', KEYS[2], pid, mem)
    if redis.call('SISMEMBER', KEYS[4], pid) == 1 then redis.call('ZADD', KEYS[3], 0, mem) end
    changed = changed + 1
  end
end
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('SADD', KEYS[6], ARGV[2])
return changed
""".replace("SCORE_PREFIX", str(_SCORE_PREFIX)).replace("PREFIX", str(_PREFIX))

# KEYS: board, members, hidden members of this board; ARGV: player, radius (0: the rank alone)
# -> false, or {visible rank, how many above, members above (best first), own member, members below}
# The rank counts visible players ahead (a hidden player still sees their own rank): O(log n).
_RANK = """
local m = redis.call('HGET', KEYS[2], ARGV[1])
if not m then return false end
local r = redis.call('ZRANK', KEYS[1], m)
local hidden_before = redis.call('ZLEXCOUNT', KEYS[3], '-', '(' .. m)
local H = redis.call('ZCARD', KEYS[3])
local radius = tonumber(ARGV[2])
local above, below = {}, {}
local function visible(mem)
  return not redis.call('ZSCORE', KEYS[3], mem)
end
if radius > 0 and r > 0 then
  -- never a negative stop index: ZRANGE 0 -1 would mean the whole board
  local got = redis.call('ZRANGE', KEYS[1], math.max(0, r - radius - H), r - 1)
  for i = #got, 1, -1 do
    if #above >= radius then break end
    if visible(got[i]) then above[#above + 1] = got[i] end
  end
end
if radius > 0 then
  local got = redis.call('ZRANGE', KEYS[1], r + 1, r + radius + H)
  for i = 1, #got do
    if #below >= radius then break end
    if visible(got[i]) then below[#below + 1] = got[i] end
  end
end
local out = {r - hidden_before + 1, #above}
for i = #above, 1, -1 do out[#out + 1] = above[i] end
out[#out + 1] = m
for i = 1, #below do out[#out + 1] = below[i] end
return out
"""

# KEYS: board, members, hidden members of this board; ARGV: players
# -> two strings, cheap to parse however many players were asked: their visible ranks joined by
# ',' (0: not on the board), and the first PREFIX characters of their members (the three
# numbers) run together ('0' x PREFIX for a player not on the board)
_RANKS = """
local ranks, numbers = {}, {}
for i = 1, #ARGV do
  local m = redis.call('HGET', KEYS[2], ARGV[i])
  if m then
    ranks[i] = redis.call('ZRANK', KEYS[1], m) - redis.call('ZLEXCOUNT', KEYS[3], '-', '(' .. m) + 1
    numbers[i] = string.sub(m, 1, PREFIX)
  else
    ranks[i] = 0
    numbers[i] = NONE
  end
end
return {table.concat(ranks, ','), table.concat(numbers)}
""".replace("PREFIX", str(_PREFIX)).replace("NONE", "'" + "0" * _PREFIX + "'")

# KEYS: board, members, hidden members of this board, gen, latest-view pointer
# ARGV: 1 prefix, 2 cursor view, 3 cursor offset, 4 cursor's after-member or '', 5 limit, 6 now,
#       7 view ttl s, 8 view pexpire ms, 9 first-page refresh s, 10 rows frozen per view,
#       11 id for a new top view, 12 id for a new view seeded after a row, 13 has cursor 1/0,
#       14 "board:period" (a view serves only the board it was taken of)
# -> {'bad'} or {'ok', view, offset of the first row, total, view created_at, members...}
_PAGE = """
local P = ARGV[1]
local board, members, hb, genkey, latest = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now, ttl, pttl, refresh = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8], tonumber(ARGV[9])
local limit, K = tonumber(ARGV[5]), tonumber(ARGV[10])

local function visible(mem)
  return not redis.call('ZSCORE', hb, mem)
end

local function alive(vid)
  if vid == '' then return false end
  local meta = redis.call('HMGET', P .. 'vm:' .. vid, 'at', 'bp')
  return meta[1] and meta[2] == ARGV[14] and now - tonumber(meta[1]) <= ttl
end

local function new_top_view(vid)
  local vkey, mkey = P .. 'v:' .. vid, P .. 'vm:' .. vid
  local H = redis.call('ZCARD', hb)
  local total = redis.call('ZCARD', board) - H
  local hi = '-'
  if total > 0 then
    redis.call('ZRANGESTORE', vkey, board, 0, K + H - 1)
    for _, hm in ipairs(redis.call('ZRANGE', hb, 0, -1)) do redis.call('ZREM', vkey, hm) end
    redis.call('ZREMRANGEBYRANK', vkey, K, -1)
    redis.call('PEXPIRE', vkey, pttl)
    hi = '(' .. redis.call('ZRANGE', vkey, -1, -1)[1]
  end
  redis.call('HSET', mkey, 'at', ARGV[6], 'bp', ARGV[14], 'base', 0, 'total', total, 'lo', '', 'hi', hi)
  redis.call('PEXPIRE', mkey, pttl)
end

local function top_view()
  local gen = redis.call('GET', genkey) or '0'
  local l = redis.call('HMGET', latest, 'vid', 'at', 'gen')
  if l[1] and l[3] == gen and now - tonumber(l[2]) < refresh and alive(l[1]) then return l[1] end
  new_top_view(ARGV[11])
  redis.call('HSET', latest, 'vid', ARGV[11], 'at', ARGV[6], 'gen', gen)
  redis.call('PEXPIRE', latest, pttl)
  return ARGV[11]
end

-- a view that starts right after `after` on the live board (its rows are filled in as read)
local function seeded_view(vid, after)
  local base = redis.call('ZLEXCOUNT', board, '-', '[' .. after) - redis.call('ZLEXCOUNT', hb, '-', '[' .. after)
  local total = redis.call('ZCARD', board) - redis.call('ZCARD', hb)
  local mkey = P .. 'vm:' .. vid
  redis.call('HSET', mkey, 'at', ARGV[6], 'bp', ARGV[14], 'base', base, 'total', total,
    'lo', '[' .. after, 'hi', '(' .. after)
  redis.call('PEXPIRE', mkey, pttl)
  return base
end

-- up to `n` visible members from the live board in [from, to] by member order; and whether the
-- board ran out first
local function take(from, to, rev, n)
  local H = redis.call('ZCARD', hb)
  local got
  if rev then
    got = redis.call('ZRANGE', board, from, to, 'BYLEX', 'REV', 'LIMIT', 0, n + H)
  else
    got = redis.call('ZRANGE', board, from, to, 'BYLEX', 'LIMIT', 0, n + H)
  end
  local out = {}
  for i = 1, #got do
    if #out >= n then break end
    if visible(got[i]) then out[#out + 1] = got[i] end
  end
  return out, #out < n and #got < n + H
end

local function read(vid, offset)
  local vkey, mkey = P .. 'v:' .. vid, P .. 'vm:' .. vid
  local meta = redis.call('HMGET', mkey, 'base', 'total', 'lo', 'hi', 'at')
  local base, total, lo, hi = tonumber(meta[1]), tonumber(meta[2]), meta[3], meta[4]
  local have = redis.call('ZCARD', vkey)
  local grew = false
  local want = math.min(offset + limit, total)
  if limit > 0 and want > base + have and hi ~= '' then
    local got, exhausted = take(hi, '+', false, want - base - have)
    for _, mem in ipairs(got) do redis.call('ZADD', vkey, 0, mem) end
    if #got > 0 then hi = '(' .. got[#got]; grew = true end
    have = have + #got
    if exhausted then total = base + have end
    redis.call('HSET', mkey, 'hi', hi, 'total', total)
  end
  if limit > 0 and offset < base and lo ~= '' then
    local got = take(lo, '-', true, base - offset)
    for _, mem in ipairs(got) do redis.call('ZADD', vkey, 0, mem) end
    if #got > 0 then lo = '(' .. got[#got]; grew = true end
    base = base - #got
    have = have + #got
    redis.call('HSET', mkey, 'lo', lo, 'base', base)
  end
  if grew and redis.call('PTTL', vkey) < 0 then
    local left = redis.call('PTTL', mkey)
    if left > 0 then redis.call('PEXPIRE', vkey, left) end
  end
  local first = math.max(offset, base)
  local stop = math.min(offset + limit, base + have) - 1
  local out = {'ok', vid, first, total, meta[5]}
  if limit > 0 and stop >= first then
    for _, mem in ipairs(redis.call('ZRANGE', vkey, first - base, stop - base)) do out[#out + 1] = mem end
  end
  return out
end

local vid, offset, after = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local has_cursor = ARGV[13] == '1'
if has_cursor and alive(vid) then
  return read(vid, offset)
end
if has_cursor and after ~= '' then
  -- the chain's view expired: continue after its last row on the newest view
  vid = top_view()
  local pos = redis.call('ZLEXCOUNT', P .. 'v:' .. vid, '-', '[' .. after)
  local rows = redis.call('ZCARD', P .. 'v:' .. vid)
  local total = tonumber(redis.call('HGET', P .. 'vm:' .. vid, 'total'))
  if pos < rows or rows >= total then return read(vid, pos) end
  return read(ARGV[12], seeded_view(ARGV[12], after))
end
if has_cursor and offset ~= 0 then return {'bad'} end
return read(top_view(), 0)
"""

# KEYS: all boards, hidden players, gen; ARGV: prefix, player, 1 to hide / 0 to show.
# The player's members join (or leave) each board's hidden index.
_HIDE = """
for _, bp in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local m = redis.call('HGET', ARGV[1] .. 'm:' .. bp, ARGV[2])
  if m then
    if ARGV[3] == '1' then
      redis.call('ZADD', ARGV[1] .. 'h:' .. bp, 0, m)
    else
      redis.call('ZREM', ARGV[1] .. 'h:' .. bp, m)
    end
  end
end
if ARGV[3] == '1' then redis.call('SADD', KEYS[2], ARGV[2]) else redis.call('SREM', KEYS[2], ARGV[2]) end
redis.call('INCR', KEYS[3])
return 1
"""

# KEYS: all boards, hidden players, gen; ARGV: prefix, player
_REMOVE = """
for _, bp in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local mk = ARGV[1] .. 'm:' .. bp
  local old = redis.call('HGET', mk, ARGV[2])
  if old then
    redis.call('ZREM', ARGV[1] .. 'b:' .. bp, old)
    redis.call('ZREM', ARGV[1] .. 'h:' .. bp, old)
    redis.call('HDEL', mk, ARGV[2])
  end
end
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('INCR', KEYS[3])
return 1
"""

# KEYS: counts hash, expiry zset; ARGV: now -> players served by replicas whose report is current
_ONLINE = """
for _, r in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])) do
  redis.call('HDEL', KEYS[1], r)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local s = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do s = s + tonumber(v) end
return s
"""

# KEYS: loads hash, expiry zset; ARGV: now -> [replica, load JSON, ...] of reports still current
_LOADS = """
for _, r in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])) do
  redis.call('HDEL', KEYS[1], r)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS[1] lease; ARGV: replica, pexpire ms -> the holder after the call (ARGV[1] when ours)
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""

# KEYS: lease, heartbeat of the silent holder; ARGV: replica, silent holder, pexpire ms
# -> the holder after the call: ours when the lease was free, or held by the silent
# replica and its heartbeat is gone. A holder whose heartbeat is current is alive
# (slow, not dead) and keeps its lease.
_TAKE_OVER = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] and not (v == ARGV[2] and redis.call('EXISTS', KEYS[2]) == 0) then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return ARGV[1]
"""

# KEYS[1] lease; ARGV: replica, new holder, pexpire ms -> 1 when the lease moved
_HAND_OVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

# KEYS: leases; ARGV: replica, pexpire ms -> {keys another replica holds now, keys that
# had lapsed (free: taken again, but someone may have served the farm meanwhile)}
_RENEW = """
local lost, retaken = {}, {}
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v and v ~= ARGV[1] then
    lost[#lost + 1] = KEYS[i]
  else
    if not v then retaken[#retaken + 1] = KEYS[i] end
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
  end
end
return {lost, retaken}
"""

# KEYS[1] lease; ARGV[1] replica: delete only our own
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_PUSH_CHUNK = 1000
# What each script is for: the `purpose` of llamawool_redis_{commands,round_trips}_total.
_PURPOSE = {
    "limit": "limits",
    "violation": "limits",
    "push": "boards",
    "rank": "boards",
    "ranks": "boards",
    "page": "boards",
    "remove": "boards",
    "hide": "boards",
    "online": "presence",
    "loads": "presence",
    "claim": "leases",
    "take_over": "leases",
    "hand_over": "leases",
    "acquire": "leases",
    "renew": "leases",
    "release": "leases",
}
# A script call in a pipeline: the script, its keys, its args, and how many items it handles.
_Call = tuple[str, list[str], list[Any], int]


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least one."""
    return max(1, math.ceil(seconds * 1000))


def _pexpire_ms(seconds: float) -> int:
    """Real-time expiry: the logical window plus a second, so no entry leaves Redis too early."""
    return math.ceil(seconds * 1000) + 1000


class RedisCoordinator:
    name = "redis"

    def __init__(
        self,
        uri: str,
        *,
        pool_size: int = 32,
        timeout_s: float = 2.0,
        view_ttl_s: float = 300.0,
        view_refresh_s: float = 5.0,
        view_rows: int = 1000,
        prefix: str = "llamawool:",
    ) -> None:
        if pool_size < 2:
            raise ValueError("pool_size: the fan-out listener holds one connection; give it at least 2")
        self.uri = uri
        self.pool_size = pool_size
        self.timeout_s = timeout_s
        self.view_ttl_s = view_ttl_s
        self.view_refresh_s = view_refresh_s
        self.view_rows = max(1, view_rows)
        self.prefix = prefix
        self.replica_id = uuid.uuid4().hex[:12]
        self._channel = prefix + "fanout"
        self._direct = prefix + "replica:" + self.replica_id
        self._pool: aioredis.BlockingConnectionPool | None = None
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._listeners: list[Listener] = []
        self._listener_task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._metrics: Metrics | None = None

    def bind_metrics(self, metrics: Metrics) -> None:
        """Count commands and round trips by purpose, and time every call, into `metrics`."""
        self._metrics = metrics

    def _count(self, purpose: str, commands: int, round_trips: int = 1) -> None:
        if self._metrics is not None:
            self._metrics.redis_commands.labels(purpose=purpose).inc(commands)
            self._metrics.redis_round_trips.labels(purpose=purpose).inc(round_trips)

    # ---- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and start the fan-out listener; Redis being down is not fatal (it reconnects)."""
        self._pool = aioredis.BlockingConnectionPool.from_url(
            self.uri,
            max_connections=self.pool_size,
            timeout=self.timeout_s,  # waiting for a free connection
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            health_check_interval=15,
            decode_responses=True,
            # One immediate retry for a pooled connection that died while idle (Redis restarted);
            # never on a timeout, where the script may have run.
            retry=Retry(NoBackoff(), 1, supported_errors=(rex.ConnectionError,)),
        )
        self._client = aioredis.Redis(connection_pool=self._pool)
        register = self._client.register_script
        self._scripts = {
            "limit": register(_LIMIT),
            "violation": register(_VIOLATION),
            "push": register(_PUSH),
            "rank": register(_RANK),
            "ranks": register(_RANKS),
            "page": register(_PAGE),
            "remove": register(_REMOVE),
            "hide": register(_HIDE),
            "online": register(_ONLINE),
            "loads": register(_LOADS),
            "claim": register(_CLAIM),
            "take_over": register(_TAKE_OVER),
            "hand_over": register(_HAND_OVER),
            "renew": register(_RENEW),
            "release": register(_RELEASE),
        }
        self._subscribed.clear()
        self._listener_task = asyncio.create_task(self._listen(), name="coord-redis-listener")
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout=max(self.timeout_s, 1.0))
        except TimeoutError:
            log.warning("coord.redis_unreachable", uri=_redact(self.uri), detail="serving degraded; retrying")
            return
        # Every script known to Redis up front (one round trip), so pipelines of them do
        # not meet NOSCRIPT (and pay a load and a resend) the first time each is used.
        with contextlib.suppress(rex.RedisError, OSError):
            async with self._client.pipeline(transaction=False) as pipe:
                for script in self._scripts.values():
                    pipe.script_load(script.script)
                await pipe.execute()

    async def close(self) -> None:
        task, self._listener_task = self._listener_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        pool, self._pool = self._pool, None
        with contextlib.suppress(rex.RedisError, OSError):  # closing a dead connection is not news
            if client is not None:
                await client.aclose()
            if pool is not None:
                await pool.disconnect()

    @property
    def _r(self) -> aioredis.Redis:
        if self._client is None:
            raise CoordinationUnavailable("the redis coordinator is not open")
        return self._client

    async def _run(self, script: str, keys: list[str], args: list[Any], items: int = 1) -> Any:
        """One script, one round trip; counted as `items` commands (the farms or players it handles)."""
        if self._client is None:
            raise CoordinationUnavailable("the redis coordinator is not open")
        self._count(_PURPOSE[script], items)
        return await self._scripts[script](keys=keys, args=args)

    async def _pipelined(self, script: str, calls: Iterable[tuple[list[str], list[Any], int]]) -> list[Any]:
        """Many calls of one script in one round trip: every call is written before the
        first answer is read, on one connection.

        Not one redis-py pipeline: that packs every call, then parses every answer, in one
        stretch of the event loop (tens of ms for a board push at 10,000 farms). Here each
        `_PUSH_CHUNK` items' worth of calls is packed (`calls` may build them lazily) and
        written, and the answers read, with the loop free in between. EVALSHA straight
        away (a registered script's SCRIPT EXISTS would add a round trip); calls that meet
        NOSCRIPT (Redis lost its script cache: a restart) are sent once more after loading
        it, so every script sent this way may run twice: score pushes and reads only."""
        runner = self._scripts[script]
        purpose = _PURPOSE[script]
        sent: list[tuple[list[str], list[Any], int]] = []
        answers = await self._stream(runner.sha, purpose, calls, sent)
        missing = [i for i, a in enumerate(answers) if isinstance(a, rex.NoScriptError)]
        if missing:
            self._count(purpose, 1)
            runner.sha = await self._r.script_load(runner.script)
            again = await self._stream(runner.sha, purpose, [sent[i] for i in missing], [])
            for i, answer in zip(missing, again, strict=True):
                answers[i] = answer
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers

    async def _stream(
        self,
        sha: str,
        purpose: str,
        calls: Iterable[tuple[list[str], list[Any], int]],
        sent: list[tuple[list[str], list[Any], int]],
    ) -> list[Any]:
        """Write `calls` (appending each to `sent`) then read their answers; an answer that is
        an error reply is returned in its place. One round trip, counted."""
        if self._pool is None:
            raise CoordinationUnavailable("the redis coordinator is not open")
        pool = self._pool
        conn = await pool.get_connection()
        try:
            packed: list[bytes] = []
            items = 0
            first = True  # the first write checks an idle connection's health (a PING when due)
            for keys, args, n in calls:
                packed.extend(conn.pack_command("EVALSHA", sha, len(keys), *keys, *args))
                sent.append((keys, args, n))
                items += n
                if items >= _PUSH_CHUNK:
                    await conn.send_packed_command(packed, check_health=first)
                    packed, items, first = [], 0, False
                    await asyncio.sleep(0)
            if packed:
                await conn.send_packed_command(packed, check_health=first)
            self._count(purpose, sum(n for _, _, n in sent))
            answers: list[Any] = []
            items = 0
            for _, _, n in sent:
                try:
                    answers.append(await conn.read_response())
                except rex.ResponseError as exc:  # this call's error; the connection reads on
                    answers.append(exc)
                items += n
                if items >= _PUSH_CHUNK:
                    items = 0
                    await asyncio.sleep(0)
            return answers
        except BaseException:
            # answers may be left unread on it (cancelled, timed out): never reused
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)

    @_guard
    async def ping(self) -> None:
        self._count("health", 1)
        await self._r.ping()

    # ---- limits ----------------------------------------------------------------------

    @_guard
    async def _limit(self, key: str, limit: int, window_s: float, now: float, record: bool) -> LimitResult:
        answer = await self._run("limit", [self.prefix + "rl:" + key], self._limit_args(limit, window_s, now, record))
        return self._limit_result(limit, window_s, now, answer)

    @staticmethod
    def _limit_args(limit: int, window_s: float, now: float, record: bool) -> list[Any]:
        return [repr(now - window_s), repr(now), limit, _pexpire_ms(window_s), uuid.uuid4().hex, "1" if record else "0"]

    @staticmethod
    def _limit_result(limit: int, window_s: float, now: float, answer: list[Any]) -> LimitResult:
        allowed, n, oldest = answer
        if not allowed:
            retry = max(0.0, float(oldest) + window_s - now)
            return LimitResult(False, limit, 0, retry, retry)
        reset = float(oldest) + window_s - now if oldest else window_s
        return LimitResult(True, limit, limit - int(n), reset, 0.0)

    async def hit(self, key: str, limit: int, window_s: float, now: float) -> LimitResult:
        return await self._limit(key, limit, window_s, now, True)

    @_guard
    async def hit_many(self, hits: list[LimitHit], now: float) -> list[LimitResult]:
        if not hits:
            return []
        calls = [([self.prefix + "rl:" + h.key], self._limit_args(h.limit, h.window_s, now, True), 1) for h in hits]
        answers = await self._pipelined("limit", calls)
        return [self._limit_result(h.limit, h.window_s, now, a) for h, a in zip(hits, answers, strict=True)]

    async def peek(self, key: str, limit: int, window_s: float, now: float) -> LimitResult:
        return await self._limit(key, limit, window_s, now, False)

    @_guard
    async def count_violation(self, player_id: str, now: float, window_s: float) -> int:
        n = await self._run(
            "violation",
            [self.prefix + "vio:" + player_id],
            [repr(now - window_s), repr(now), _pexpire_ms(window_s), uuid.uuid4().hex],
        )
        return int(n)

    # ---- leaderboards ------------------------------------------------------------------

    def _bkeys(self, board: str, period: str) -> tuple[str, str, str, str]:
        """The board, its player -> member hash, its hidden members, and "board:period"."""
        bp = f"{board}:{period}"
        p = self.prefix
        return p + "b:" + bp, p + "m:" + bp, p + "h:" + bp, bp

    @_guard
    async def push_scores(self, board: str, period: str, updates: list[ScoreUpdate]) -> None:
        if not updates:
            return
        bkey, mkey, hkey, bp = self._bkeys(board, period)
        p = self.prefix
        keys = [bkey, mkey, hkey, p + "hidden", p + "p:" + board, p + "boards"]

        def calls() -> Iterable[tuple[list[str], list[Any], int]]:
            # encoded as each chunk is sent, not all before the first goes out
            for start in range(0, len(updates), _PUSH_CHUNK):
                chunk = updates[start : start + _PUSH_CHUNK]
                yield keys, [period, bp, *encode_keys(chunk)], len(chunk)

        await self._pipelined("push", calls())

    @_guard
    async def page(self, board: str, period: str, limit: int, cursor: Cursor | None, now: float) -> BoardPage:
        bkey, mkey, hkey, bp = self._bkeys(board, period)
        p = self.prefix
        res = await self._run(
            "page",
            [bkey, mkey, hkey, p + "gen", p + "l:" + bp],
            [
                p,
                cursor.view if cursor else "",
                cursor.offset if cursor else 0,
                encode_key(cursor.after) if cursor and cursor.after else "",
                limit,
                repr(now),
                repr(self.view_ttl_s),
                _pexpire_ms(self.view_ttl_s),
                repr(self.view_refresh_s),
                self.view_rows,
                uuid.uuid4().hex[:12],
                uuid.uuid4().hex[:12],
                "1" if cursor else "0",
                bp,
            ],
        )
        if res[0] != "ok":
            raise BadCursor("this cursor has expired; start again from the top")
        vid, offset, total, at = str(res[1]), int(res[2]), int(res[3]), float(res[4])
        keys = [decode_key(m) for m in res[5:]]
        end = offset + len(keys)
        next_c = Cursor(vid, end, keys[-1]).encode() if keys and end < total else None
        prev_c = Cursor(vid, max(0, offset - limit)).encode() if offset > 0 else None
        entries = [_entry(offset + 1 + i, k) for i, k in enumerate(keys)]
        return BoardPage(board, period, entries, next_c, prev_c, total, at)

    async def _rank(self, board: str, period: str, player_id: str, radius: int) -> list[BoardEntry]:
        bkey, mkey, hkey, _ = self._bkeys(board, period)
        res = await self._run("rank", [bkey, mkey, hkey], [player_id, max(0, radius)])
        if not res:
            return []
        rank, above = int(res[0]), int(res[1])
        return [_entry(rank - above + i, decode_key(m)) for i, m in enumerate(res[2:])]

    @_guard
    async def rank(self, board: str, period: str, player_id: str) -> BoardEntry | None:
        entries = await self._rank(board, period, player_id, 0)
        return entries[0] if entries else None

    @_guard
    async def ranks(self, board: str, period: str, player_ids: list[str]) -> dict[str, BoardEntry]:
        if not player_ids:
            return {}
        bkey, mkey, hkey, _ = self._bkeys(board, period)
        chunks = [player_ids[i : i + _PUSH_CHUNK] for i in range(0, len(player_ids), _PUSH_CHUNK)]
        answers = await self._pipelined("ranks", [([bkey, mkey, hkey], list(c), len(c)) for c in chunks])
        out: dict[str, BoardEntry] = {}
        for n, (chunk, (ranks_text, prefixes)) in enumerate(zip(chunks, answers, strict=True)):
            if n:
                await asyncio.sleep(0)  # thousands of entries are decoded in slices
            numbers = decode_numbers(prefixes)
            scores = (-numbers[:, 0] + 0.0).tolist()  # + 0.0: a score of 0 is 0.0, not -0.0
            reached = numbers[:, 2].tolist()
            for pid, rank, score, at in zip(chunk, map(int, ranks_text.split(",")), scores, reached, strict=True):
                if rank:
                    out[pid] = BoardEntry(rank, pid, score, at)
        return out

    @_guard
    async def around(self, board: str, period: str, player_id: str, radius: int) -> list[BoardEntry]:
        return await self._rank(board, period, player_id, radius)

    @_guard
    async def set_hidden(self, player_id: str, hidden: bool) -> None:
        p = self.prefix  # bumping gen makes the next first page reflect the change
        await self._run("hide", [p + "boards", p + "hidden", p + "gen"], [p, player_id, "1" if hidden else "0"])

    @_guard
    async def remove_player(self, player_id: str) -> None:
        p = self.prefix
        await self._run("remove", [p + "boards", p + "hidden", p + "gen"], [p, player_id])

    @_guard
    async def periods(self, board: str) -> list[str]:
        self._count("boards", 1)
        names = sorted((str(n) for n in await self._r.smembers(self.prefix + "p:" + board)), reverse=True)
        if not names:
            return []
        self._count("boards", len(names))
        async with self._r.pipeline(transaction=False) as pipe:
            for period in names:
                pipe.zcard(self._bkeys(board, period)[0])
            sizes = await pipe.execute()
        return [period for period, size in zip(names, sizes, strict=True) if size]

    @_guard
    async def claim_rollover(self, period: str) -> bool:
        self._count("boards", 1)
        return bool(await self._r.set(self.prefix + "roll:" + period, "1", nx=True))

    # ---- fan-out ---------------------------------------------------------------------

    @_guard
    async def publish(self, channel: str, message: dict[str, Any]) -> None:
        self._count("revocations" if channel == "revoked" else "bus", 1)
        await self._r.publish(self._channel, orjson.dumps({"c": channel, "m": message}))

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _deliver(self, data: str | bytes) -> None:
        try:
            payload = orjson.loads(data)
            channel, raw = str(payload["c"]), orjson.dumps(payload["m"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("coord.bad_fanout_message", size=len(data))
            return
        for listener in list(self._listeners):
            try:
                listener(channel, orjson.loads(raw))
            except Exception:
                log.exception("coord.listener_failed", channel=channel)

    async def _listen(self) -> None:
        """Hear the fan-out channel for as long as the coordinator is open, reconnecting by itself."""
        delay = 0.05
        client = self._r
        while True:
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self._channel, self._direct)
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    if msg["type"] == "subscribe":
                        # the reply names how many channels this connection now hears
                        if self._subscribed.is_set() or int(msg["data"]) < 2:
                            continue
                        self._subscribed.set()
                        if delay > 0.05:
                            log.info("coord.redis_listener_back")
                        delay = 0.05
                    elif msg["type"] == "message":
                        self._deliver(msg["data"])
            except Exception as exc:  # lost connection, timeouts: start over on a fresh one
                self._subscribed.clear()
                log.warning("coord.redis_listener_lost", error=str(exc) or type(exc).__name__, retry_in=delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    @property
    def listening(self) -> bool:
        """Whether the fan-out subscription is established (false while reconnecting)."""
        return self._subscribed.is_set()

    async def wait_listening(self, within_s: float) -> bool:
        try:
            await asyncio.wait_for(self._subscribed.wait(), within_s)
        except TimeoutError:
            return False
        return True

    @_guard
    async def send(self, replica_id: str, message: dict[str, Any]) -> None:
        """Only replica `replica_id` hears it, on channel ``replica:<id>``."""
        channel = f"replica:{replica_id}"
        self._count("bus", 1)
        await self._r.publish(self.prefix + channel, orjson.dumps({"c": channel, "m": message}))

    # ---- farm ownership ----------------------------------------------------------------
    # A lease is a key holding its owner's replica id with a PX expiry. Commits still
    # compare-and-set on the farm's revision, so a replica that lost its lease without
    # noticing cannot overwrite newer state.

    def _lease(self, farm_id: str) -> str:
        return self.prefix + "lease:" + farm_id

    def _beat_key(self, replica: str) -> str:
        return self.prefix + "hb:" + replica

    async def acquire_lease(self, farm_id: str, ttl_s: float) -> bool:
        return await self.claim_lease(farm_id, ttl_s) == self.replica_id

    @_guard
    async def claim_lease(self, farm_id: str, ttl_s: float) -> str:
        return str(await self._run("claim", [self._lease(farm_id)], [self.replica_id, _ms(ttl_s)]))

    @_guard
    async def take_over_lease(self, farm_id: str, silent: str, ttl_s: float) -> str:
        keys = [self._lease(farm_id), self._beat_key(silent)]
        return str(await self._run("take_over", keys, [self.replica_id, silent, _ms(ttl_s)]))

    @_guard
    async def hand_over_lease(self, farm_id: str, to: str, ttl_s: float) -> bool:
        return bool(await self._run("hand_over", [self._lease(farm_id)], [self.replica_id, to, _ms(ttl_s)]))

    @_guard
    async def renew_leases(self, farm_ids: list[str], ttl_s: float) -> Renewal:
        cut = len(self._lease(""))
        out = Renewal([], [])
        for start in range(0, len(farm_ids), _PUSH_CHUNK):
            keys = [self._lease(f) for f in farm_ids[start : start + _PUSH_CHUNK]]
            lost, retaken = await self._run("renew", keys, [self.replica_id, _ms(ttl_s)], len(keys))
            out.lost.extend(str(k)[cut:] for k in lost)
            out.retaken.extend(str(k)[cut:] for k in retaken)
        return out

    @_guard
    async def release_lease(self, farm_id: str) -> None:
        await self._run("release", [self._lease(farm_id)], [self.replica_id])

    @_guard
    async def lease_owner(self, farm_id: str) -> str | None:
        self._count("leases", 1)
        owner = await self._r.get(self._lease(farm_id))
        return None if owner is None else str(owner)

    @_guard
    async def beat(self, ttl_s: float) -> None:
        self._count("leases", 1)  # the replica's heartbeat: its leases are alive
        await self._r.set(self._beat_key(self.replica_id), "1", px=_ms(ttl_s))

    @_guard
    async def end_beat(self) -> None:
        self._count("leases", 1)
        await self._r.delete(self._beat_key(self.replica_id))

    @_guard
    async def alive(self, replica: str) -> bool:
        self._count("leases", 1)
        return bool(await self._r.exists(self._beat_key(replica)))

    # ---- presence --------------------------------------------------------------------

    @_guard
    async def report_online(self, replica: str, count: int, now: float, ttl_s: float) -> None:
        self._count("presence", 4)  # MULTI, HSET, ZADD, EXEC
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(self.prefix + "online", replica, count)
            pipe.zadd(self.prefix + "online:exp", {replica: now + ttl_s})
            await pipe.execute()

    @_guard
    async def online_count(self, now: float) -> int:
        p = self.prefix
        return int(await self._run("online", [p + "online", p + "online:exp"], [repr(now)]))

    @_guard
    async def report_load(self, replica: str, load: ReplicaLoad, now: float, ttl_s: float) -> None:
        raw = orjson.dumps(dataclasses.asdict(load)).decode()
        self._count("presence", 4)  # MULTI, HSET, ZADD, EXEC
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(self.prefix + "load", replica, raw)
            pipe.zadd(self.prefix + "load:exp", {replica: now + ttl_s})
            await pipe.execute()

    @_guard
    async def replica_loads(self, now: float) -> dict[str, ReplicaLoad]:
        p = self.prefix
        flat = await self._run("loads", [p + "load", p + "load:exp"], [repr(now)])
        loads: dict[str, ReplicaLoad] = {}
        for replica, raw in zip(flat[::2], flat[1::2], strict=True):
            loads[str(replica)] = ReplicaLoad(**orjson.loads(raw))
        return loads


def _redact(uri: str) -> str:
    """The URI without its password, for logs."""
    head, sep, tail = uri.rpartition("@")
    if not sep:
        return uri
    scheme, _, _creds = head.partition("://")
    return f"{scheme}://***@{tail}"
