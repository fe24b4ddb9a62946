"""SIGTERM drains a real server process without losing an acknowledged action.

The sequence under test (ARCHITECTURE.md, "Many replicas"): `/ready` fails at
once, new sockets are refused, open ones are closed with 1012 so clients
reconnect elsewhere, every acknowledged action is already committed, and the
process exits inside `drain_grace_s`. Kubernetes relies on all of it: the
Deployment's preStop pause and terminationGracePeriodSeconds are sized from
the same grace period.

One extra socket (the "silent" one) never reads after its welcome: its 1012
must arrive all the same, and it must not hold back anyone else's.

The clients keep sending actions (each with an idempotency key) through the
drain: every action that committed must have been answered on its socket
before the 1012; the ones not answered are retried over REST with their key
after the restart, and none of them may turn out to have been applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.helpers import ServerProcess

pytestmark = pytest.mark.slow

API = "/api/v1"
GRACE_S = 10.0
PLAYERS = 6
WINDOW = 4  # actions a client keeps in flight, so some are mid-commit at SIGTERM
ACKED_BEFORE_SIGTERM = 30
MAX_ACTIONS = 50  # per player: under the ConfigMap's maxActionsPerMinute (60), so none is rate limited
CLOSE_RESTART = 1012
FLUSH_S = 3.0  # how long a socket's in-flight action may take to be answered


@dataclass
class Player:
    token: str
    player_id: str
    ws: aiohttp.ClientWebSocketResponse | None = None
    sent: set[int] = field(default_factory=set)
    acked: dict[int, dict[str, Any]] = field(default_factory=dict)
    refused: set[int] = field(default_factory=set)
    sent_away: bool = False  # the server said it is restarting: send nothing more on this socket
    close_code: int | None = None
    closed_at: float | None = None
    slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(WINDOW))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def last_ack(self) -> dict[str, Any]:
        return max(self.acked.values(), key=lambda farm: farm["revision"])


async def _guest(http: aiohttp.ClientSession, url: str) -> Player:
    async with http.post(f"{url}{API}/auth/guest", json={"device_id": f"drain-{uuid.uuid4().hex}"}) as resp:
        assert resp.status in (200, 201), await resp.text()
        body = await resp.json()
    return Player(token=body["access_token"], player_id=body["player"]["id"])


async def _connect(http: aiohttp.ClientSession, url: str, player: Player) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"{url}{API}/ws", headers=player.headers, heartbeat=None)
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.TEXT and orjson.loads(msg.data)["type"] == "welcome", msg
    return ws


async def _read(player: Player) -> None:
    """Collect acknowledgements until the server closes the socket."""
    assert player.ws is not None
    while (msg := await player.ws.receive()).type == aiohttp.WSMsgType.TEXT:
        obj = orjson.loads(msg.data)
        if obj["type"] == "result":
            player.acked[obj["id"]] = obj["data"]["farm"]
            player.slots.release()
        elif obj["type"] == "error" and obj.get("id") is not None:
            player.refused.add(obj["id"])
            player.sent_away |= obj["data"].get("outcome") == "not_applied"
            player.slots.release()
    # The code in the server's close frame: aiohttp overwrites ws.close_code with 1006
    # when the server drops TCP while the client is still echoing that frame.
    player.close_code = msg.data if msg.type == aiohttp.WSMsgType.CLOSE else player.ws.close_code
    player.closed_at = time.monotonic()


async def _act(player: Player, ids: itertools.count[int]) -> None:
    """A steady stream of shears with up to WINDOW unacknowledged at any moment."""
    assert player.ws is not None
    with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
        # As a client should (protocol.md): once told the server is restarting, it sends
        # nothing more there. (One that keeps sending leaves unread input at the close:
        # the kernel may then reset the connection before the 1012 is read.)
        while not player.ws.closed and not player.sent_away and len(player.sent) < MAX_ACTIONS:
            await player.slots.acquire()
            if player.ws.closed or player.sent_away:
                return
            msg_id = next(ids)
            player.sent.add(msg_id)
            data = {"action": "shear", "idempotency_key": _key(player, msg_id)}
            await player.ws.send_str(orjson.dumps({"type": "action", "id": msg_id, "data": data}).decode())


def _key(player: Player, msg_id: int) -> str:
    return f"drain-{player.player_id}-{msg_id}"


async def _ready_status(http: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with http.get(f"{url}/ready", timeout=aiohttp.ClientTimeout(total=1)) as resp:
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return None


async def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_sigterm_drains_sockets_commits_every_ack_and_exits_within_grace(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {
        "LLAMAWOOL_DRAIN_GRACE_S": str(GRACE_S),
        "LLAMAWOOL_DRAIN_FLUSH_S": str(FLUSH_S),
        "LLAMAWOOL_TICK_INTERVAL_S": "0.2",
        "LLAMAWOOL_REGION": "e2e-west",
    }
    server = ServerProcess(data, env=env).start()
    try:
        async with aiohttp.ClientSession() as http:
            players = [await _guest(http, server.url) for _ in range(PLAYERS)]
            silent = await _guest(http, server.url)
            for p in players:
                p.ws = await _connect(http, server.url, p)
            silent.ws = await _connect(http, server.url, silent)  # and from now on never reads

            ids = itertools.count(1)
            readers = [asyncio.create_task(_read(p)) for p in players]
            streams = [asyncio.create_task(_act(p, ids)) for p in players]
            await _wait_for(
                lambda: all(len(p.acked) >= ACKED_BEFORE_SIGTERM for p in players), 10, "acks from every player"
            )
            assert await _ready_status(http, server.url) == 200

            assert server.proc is not None
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)

            # /ready fails at once (and stays failing), not merely when the listener goes away.
            status = 200
            while status == 200 and time.monotonic() - signalled < 2:
                status = await _ready_status(http, server.url) or 0
            assert status == 503, f"/ready answered {status} after SIGTERM"
            assert time.monotonic() - signalled < 1.0

            # New sockets are refused while draining.
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"{server.url}{API}/ws", headers=players[0].headers)
            assert refused.value.status == 503

            # Every socket is told to reconnect elsewhere, the silent one too.
            await _wait_for(lambda: all(p.closed_at is not None for p in players), 5, "1012 on every socket")
            assert [p.close_code for p in players] == [CLOSE_RESTART] * PLAYERS
            while (msg := await silent.ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
                pass  # the ticks it never read
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == CLOSE_RESTART, msg
            await asyncio.gather(*readers)
            for s in streams:
                s.cancel()
            await asyncio.gather(*streams, return_exceptions=True)

            code = await asyncio.to_thread(server.proc.wait, GRACE_S + 5)
            took = time.monotonic() - signalled
            assert code == 0, server.log_path.read_text()[-2000:]
            assert took < GRACE_S, f"exit took {took:.1f}s, beyond the {GRACE_S}s grace"
        lines = server.logs()
        events = [line.get("event") for line in lines]
        assert "server.draining" in events
        assert "server.drain_timeout" not in events
        assert lines and all(line.get("region") == "e2e-west" for line in lines)  # multi-region: every log line

        # Restart on the same data: everything acknowledged is there, nothing unsent is.
        server = ServerProcess(data, env=env).start()
        async with aiohttp.ClientSession() as http:
            for p in players:
                async with http.get(f"{server.url}{API}/farm", headers=p.headers) as resp:
                    assert resp.status == 200, await resp.text()
                    farm = await resp.json()
                acked = p.last_ack()
                assert farm["revision"] >= acked["revision"], (farm["revision"], acked["revision"])
                assert farm["stats"]["shears"] >= acked["stats"]["shears"], "an acknowledged shear was lost"
                # Every action that committed was answered before the 1012: the unanswered
                # ones, retried with their key, are applied now, never replayed.
                unanswered = sorted(p.sent - set(p.acked) - p.refused)
                replayed = []
                for msg_id in unanswered:
                    headers = {**p.headers, "Idempotency-Key": _key(p, msg_id)}
                    async with http.post(f"{server.url}{API}/farm/shear", json={"count": 1}, headers=headers) as resp:
                        assert resp.status in (200, 409, 429), await resp.text()
                        if resp.headers.get("Idempotent-Replayed") == "true":
                            replayed.append(msg_id)
                assert replayed == [], f"committed during the drain but never answered on the socket: {replayed}"
                assert farm["stats"]["shears"] == acked["stats"]["shears"], "a shear nobody was told about"
    finally:
        server.kill()
