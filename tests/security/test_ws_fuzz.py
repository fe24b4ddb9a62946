"""WebSocket fuzzing: many connections at once send what a broken or hostile client would.

Seeded random (LLAMAWOOL_WS_FUZZ_SEED picks another seed; the seed is printed)
messages of every kind: random text, truncated JSON, oversized text, binary
frames, deeply nested JSON, wrong types in every field, out-of-order protocol
steps (actions before auth, a second auth, unsubscribing what was never
subscribed, server-only message types). Each message must be answered with an
`error` (or a `result`/`pong` when it happens to be valid) or the socket
closed with a protocol code; never a silence, never a 1011. Meanwhile a
bystander (another player) holds a socket that must keep receiving ticks at
the tick rate with its farm only ever growing. Afterwards the server's open
connections (websocket_connections_active) and asyncio tasks are back to
their baseline.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp.test_utils import TestClient

from llamawool.api.app import context
from tests.conftest import API, MakeClient, new_guest

from .support import REPORT_LINES

WS = f"{API}/ws"
SEED = int(os.environ.get("LLAMAWOOL_WS_FUZZ_SEED", "8"))
CONNECTIONS = 24  # authenticated fuzzing sockets, all at once
HANDSHAKES = 12  # sockets that fuzz the authentication step itself
MESSAGES = 160  # per fuzzing client
BURST = 8  # frames a pipelined client sends before reading the answers
TICK_S = 0.05
REPLY_TIMEOUT_S = 5.0
PROTOCOL_CLOSES = {1000, 1003, 1009, 4401, 4408}
REPLIES = ("error", "result", "pong")
MAX_FRAME = 4096 * 16  # the server reads frames up to 16x the protocol's limit
RESET = frozenset({1006})


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    connections: int = 0
    lost_after_close: int = 0  # sent behind a message that closed the socket
    closed: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)


TALLY = Tally()


# ---- what a broken client sends ------------------------------------------------------------------


def valid(rng: random.Random, n: int) -> dict[str, Any]:
    return rng.choice(
        [
            {"type": "ping", "id": n},
            {"type": "action", "id": f"a{n}", "data": {"action": "shear", "count": rng.randint(1, 20)}},
            {"type": "action", "id": n, "data": {"action": "buy_building", "key": "barn", "quantity": "max"}},
            {"type": "subscribe", "id": n, "data": {"board": rng.choice(["lifetime", "weekly"])}},
            {"type": "unsubscribe", "id": n, "data": {"board": "rate"}},
        ]
    )


def junk_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(9 if depth < 3 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.randint(-(2**63), 2**63 - 1)
    if pick == 3:
        return rng.uniform(-1e308, 1e308)
    if pick == 4:
        return "".join(rng.choice(string.printable + "é€😀\u0000\ufeff") for _ in range(rng.randint(0, 40)))
    if pick == 5:
        return rng.choice(["", "action", "auth", "tick", "welcome", "ping", "x" * 33])
    if pick == 6:
        return [junk_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if pick == 7:
        return {str(junk_value(rng, 3))[:10]: junk_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return {"action": rng.choice(["shear", "buy_building", "buy_upgrade", "prestige", "fly"]), "count": -1}


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def fuzz_message(rng: random.Random, n: int) -> tuple[str, str | bytes]:
    """(kind, frame): a str is sent as a text frame, bytes as a binary frame."""
    kind = rng.choice(
        [
            "valid",
            "random_text",
            "truncated",
            "oversized",
            "binary",
            "deep_array",
            "deep_object",
            "wrong_types",
            "out_of_order",
            "not_an_object",
        ]
    )
    if kind == "valid":
        return kind, orjson.dumps(valid(rng, n)).decode()
    if kind == "random_text":
        return kind, "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 300)))
    if kind == "truncated":
        whole = orjson.dumps(valid(rng, n)).decode()
        return kind, whole[: rng.randint(0, len(whole) - 1)]
    if kind == "oversized":  # past the protocol's 4 KiB: an error; past 64 KiB the socket closes 1009
        size = rng.choice([4097, 8000, 60_000, 4097, 8000, 70_000])
        return kind, orjson.dumps({"type": "ping", "id": n, "data": {"pad": "x" * size}}).decode()
    if kind == "binary":
        return kind, rng.choice([orjson.dumps(valid(rng, n)), rng.randbytes(rng.randint(0, 512))])
    if kind == "deep_array":  # deeper than the JSON parser's limit, within the size limit
        return kind, nested(rng.choice([1100, 2000]))
    if kind == "deep_object":  # deep but parseable, inside `data`
        depth = rng.choice([50, 300, 600])
        data = '{"a":' * depth + "1" + "}" * depth
        return kind, f'{{"type":"ping","id":{n},"data":{data}}}'
    if kind == "wrong_types":
        msg: dict[str, Any] = valid(rng, n)
        msg[rng.choice(["type", "id", "data"])] = junk_value(rng)
        if rng.random() < 0.3:
            msg[str(junk_value(rng, 3))[:8] or "extra"] = junk_value(rng)
        return kind, orjson.dumps(msg, option=orjson.OPT_NON_STR_KEYS).decode()
    if kind == "out_of_order":
        return kind, orjson.dumps(
            rng.choice(
                [
                    {"type": "auth", "id": n, "data": {"token": "forged.token.value"}},
                    {"type": "welcome", "id": n, "data": {}},
                    {"type": "tick", "id": n},
                    {"type": "result", "id": n, "data": {"ok": True}},
                    {"type": "unsubscribe", "id": n, "data": {"board": "weekly"}},
                    {"type": "subscribe", "id": n, "data": {"board": "nope"}},
                    {"type": "action", "id": n, "data": {"action": "prestige", "confirm": True}},
                    {"type": "action", "id": n, "data": {"action": "buy_upgrade", "key": "x" * 65}},
                ]
            )
        ).decode()
    return kind, rng.choice(["[]", "1", '"ping"', "null", "true", "[{}]", "{}", ""])


# ---- one fuzzing socket --------------------------------------------------------------------------


async def next_reply(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any] | int:
    """The next reply (error/result/pong), skipping ticks and events; or the close code."""
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "a message was neither answered nor the socket closed (a hang)"
        msg = await ws.receive(timeout=left)
        if msg.type == aiohttp.WSMsgType.TEXT:
            body: dict[str, Any] = orjson.loads(msg.data)
            if body["type"] in REPLIES:
                return body
            continue
        if msg.type == aiohttp.WSMsgType.CLOSE:
            return int(msg.data)
        if msg.type in (aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
            return int(ws.close_code or 1006)
        raise AssertionError(f"unexpected frame {msg.type}")


async def send(ws: aiohttp.ClientWebSocketResponse, frame: str | bytes) -> None:
    if isinstance(frame, bytes):
        await ws.send_bytes(frame)
    else:
        await ws.send_str(frame)


def answered(reply: dict[str, Any] | int, kind: str = "", also: frozenset[int] = frozenset()) -> None:
    if isinstance(reply, int):
        TALLY.closed[reply] += 1
        assert reply in PROTOCOL_CLOSES | also, f"closed with {reply} (after {kind})"
        return
    TALLY.answered += 1
    if reply["type"] == "error":
        TALLY.codes[reply["data"]["code"]] += 1
        assert reply["data"]["code"] != "INTERNAL", reply


async def fuzz_socket(client: TestClient, token: str, seed: int, pipelined: bool) -> None:
    """Send MESSAGES frames: in bursts of BURST before reading the answers (pipelined) or one
    at a time. A socket the server closes is reopened and the fuzz goes on."""
    rng = random.Random(seed)
    frames = [fuzz_message(rng, n) for n in range(MESSAGES)]
    size = BURST if pipelined else 1
    ws: aiohttp.ClientWebSocketResponse | None = None
    try:
        for start in range(0, len(frames), size):
            batch = frames[start : start + size]
            if ws is None:
                ws = await client.ws_connect(WS, headers={"Authorization": f"Bearer {token}"}, max_msg_size=0)
                assert await next_reply_or_welcome(ws) == "welcome"
                TALLY.connections += 1
            sent = 0
            for kind, frame in batch:
                TALLY.kinds[kind] += 1
                TALLY.sent += 1
                try:
                    await send(ws, frame)
                except ConnectionError:  # already closed by the server: its close is the answer
                    break
                sent += 1
            # A frame over 64 KiB closes the socket (1009) while input sits unread in the
            # server's TCP buffer (the rest of that frame, later frames): closing with unread
            # input resets the connection, and the reset may overtake the close frame, so the
            # client sees 1006. The socket is closed either way.
            also = RESET if any(len(frame) > MAX_FRAME for _, frame in batch[: sent + 1]) else frozenset()
            for i in range(sent):
                reply = await next_reply(ws)
                answered(reply, f"#{i} of {[k for k, _ in batch]}", also)
                if isinstance(reply, int):
                    TALLY.lost_after_close += len(batch) - i - 1
                    break
            else:
                if sent == len(batch):
                    continue
                answered(await next_reply(ws), "a refused send", also)
                TALLY.lost_after_close += len(batch) - sent - 1
            await ws.close()
            ws = None
    finally:
        if ws is not None:
            await ws.close()


async def next_reply_or_welcome(ws: aiohttp.ClientWebSocketResponse) -> str:
    msg = await ws.receive(timeout=REPLY_TIMEOUT_S)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return str(orjson.loads(msg.data)["type"])


HANDSHAKE_STEPS = ("action_first", "binary_first", "junk_first", "bad_token", "refresh_token", "nothing")


async def fuzz_handshake(client: TestClient, token: str, seed: int) -> None:
    """The authentication step out of order or malformed: every one closes 4401."""
    rng = random.Random(seed)
    step = HANDSHAKE_STEPS[seed % len(HANDSHAKE_STEPS)]
    ws = await client.ws_connect(WS)
    TALLY.connections += 1
    TALLY.sent += 1
    TALLY.kinds[f"handshake:{step}"] += 1
    if step == "action_first":
        await ws.send_json({"type": "action", "data": {"action": "shear"}})
    elif step == "binary_first":
        await ws.send_bytes(rng.randbytes(64))
    elif step == "junk_first":
        await ws.send_str(fuzz_message(rng, 0)[1] if rng.random() < 0.5 else "{")
    elif step == "bad_token":
        await ws.send_json({"type": "auth", "data": {"token": rng.choice(["", "a.b.c", "x" * 3000, 7])}})
    elif step == "refresh_token":
        await ws.send_json({"type": "auth", "token": token})
    # "nothing": the server's auth timeout (shortened for this test) closes it
    reply = await next_reply(ws)
    assert reply == 4401, (step, reply)
    TALLY.closed[4401] += 1
    await ws.close()


# ---- the bystander -------------------------------------------------------------------------------


@dataclass
class Watch:
    ticks: int = 0
    max_gap_s: float = 0.0
    last_basic: float = 0.0
    other: list[str] = field(default_factory=list)


async def watch(ws: aiohttp.ClientWebSocketResponse, stop: asyncio.Event, w: Watch) -> None:
    last = time.monotonic()
    while not stop.is_set():
        try:
            msg = await ws.receive(timeout=0.5)
        except TimeoutError:
            w.max_gap_s = max(w.max_gap_s, time.monotonic() - last)
            continue
        assert msg.type == aiohttp.WSMsgType.TEXT, f"the bystander's socket got {msg.type} {msg.data}"
        body = orjson.loads(msg.data)
        if body["type"] == "tick":
            now = time.monotonic()
            w.max_gap_s = max(w.max_gap_s, now - last)
            last = now
            w.ticks += 1
            basic = body["data"]["balances"]["basic"]
            assert basic >= w.last_basic, "the bystander's wool went down"
            w.last_basic = basic
        else:
            w.other.append(body["type"])


# ---- the test ------------------------------------------------------------------------------------


async def server_state(client: TestClient) -> tuple[int, int]:
    """(websocket_connections_active as /metrics reports it, asyncio tasks in this loop)."""
    text = await (await client.get("/metrics")).text()
    m = re.search(r"^websocket_connections_active (\S+)$", text, re.MULTILINE)
    assert m, "websocket_connections_active missing from /metrics"
    return int(float(m.group(1))), len(asyncio.all_tasks())


async def settle(client: TestClient, baseline: tuple[int, int], timeout: float = 10.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        state = await server_state(client)
        if (state[0] <= baseline[0] and state[1] <= baseline[1]) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.05)


async def test_many_sockets_of_garbage_hurt_no_one(make_client: MakeClient) -> None:
    client = await make_client(
        tick_interval_s=TICK_S,
        ws_auth_timeout_s=0.5,
        guests_per_ip_per_hour=10_000,
        # limit errors close a socket only after many: the fuzz should reach its later messages
        ws_violations_before_close=50,
    )
    players = [await new_guest(client) for _ in range(6)]
    bystander = await new_guest(client)
    await asyncio.sleep(TICK_S * 4)
    baseline = await server_state(client)
    assert baseline[0] == 0

    ws = await client.ws_connect(WS, headers=bystander["headers"])
    assert await next_reply_or_welcome(ws) == "welcome"
    stop, seen = asyncio.Event(), Watch()
    watcher = asyncio.create_task(watch(ws, stop, seen))
    started = time.monotonic()

    # several sockets per player (a farm may have many); half pipelined, half lock-step
    jobs = [
        fuzz_socket(client, players[i % len(players)]["access_token"], SEED * 1000 + i, pipelined=i % 2 == 0)
        for i in range(CONNECTIONS)
    ]
    jobs += [
        fuzz_handshake(client, players[i % len(players)]["refresh_token"], SEED * 7 + i) for i in range(HANDSHAKES)
    ]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        watcher.cancel()
    assert not failures, failures[:3]
    elapsed = time.monotonic() - started
    # every message was answered, or closed its socket, or was sent behind one that did
    assert TALLY.sent == TALLY.answered + sum(TALLY.closed.values()) + TALLY.lost_after_close, TALLY

    # the bystander never noticed: ticks all along, at the tick rate, nothing else
    await asyncio.sleep(TICK_S * 4)
    stop.set()
    await watcher
    assert not ws.closed
    assert seen.ticks >= int(elapsed / TICK_S * 0.5), (seen.ticks, elapsed)
    assert seen.max_gap_s < 1.0, seen.max_gap_s
    assert set(seen.other) <= {"event"}, seen.other
    await ws.close()

    # every fuzzing player can still play: a fresh socket is welcomed and a shear is applied
    for p in players[:2]:
        async with client.ws_connect(WS, headers=p["headers"]) as again:
            assert await next_reply_or_welcome(again) == "welcome"

    after = await settle(client, baseline)
    assert after[0] == 0, f"{after[0]} sockets still counted open"
    assert after[1] <= baseline[1], f"asyncio tasks: {baseline[1]} before, {after[1]} after"
    assert not context(client.server.app).sessions
    REPORT_LINES.append(
        f"WS fuzz (seed {SEED}): {CONNECTIONS} clients + {HANDSHAKES} handshakes at once, "
        f"{TALLY.connections} sockets, {TALLY.sent} messages in {elapsed:.1f}s; answered {TALLY.answered}, "
        f"closes {dict(TALLY.closed)}, sent behind a close {TALLY.lost_after_close}; "
        f"kinds {dict(sorted(TALLY.kinds.items()))}; error codes {dict(sorted(TALLY.codes.items()))}; "
        f"bystander: {seen.ticks} ticks, max gap {seen.max_gap_s:.3f}s; "
        f"after: {after[0]} sockets open, {after[1]} tasks (baseline {baseline[1]})"
    )
