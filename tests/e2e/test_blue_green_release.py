"""deploy/blue-green/blue-green.sh on real processes: two colours of replicas behind the shipped nginx.

The script itself makes every decision; `helm` and `kubectl` are stand-ins
that make real what it asks for (tests/e2e/blue_green_stage.py): replicas
started per colour on one MongoDB-wire server and one Redis, each colour its
own rebalancing pool, the switch an nginx reload onto the other colour's
replicas. Players act all the while, half their shears over REST with an
Idempotency-Key, half over their socket with an idempotency key, each retried
with its key until answered.

1. `deploy 1.0.0`: the first release installs blue; players join.
2. `deploy 1.1.0-tiny-bodies`: green starts and is ready but its bodies limit
   refuses the smoke test's POST (413): the gate fails, green is removed,
   traffic never left blue (a player sent there would have got 413s).
3. `deploy 1.1.0`: green passes the gate, the script switches nginx to it
   (reload) and smoke-tests again. REST now reaches green only; sockets opened
   on blue stay there (a reload closes no connection); late joiners' sockets
   land on green.
4. `rollback`: nginx back to blue; REST reaches blue only.
5. `retire`: green drains; its sockets close with 1012 and reconnect to blue.

Then: no REST answer was a 5xx, every acknowledged shear is in its farm exactly
once, every socket is connected (on blue).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.blue_green_stage import Stage
from tests.e2e.test_rebalance import CLOSE_RESTART, ENV, Crowd, farm_shears, play, sockets_on, until
from tests.helpers import ServerProcess

pytestmark = pytest.mark.slow

RELEASES = {  # image tag -> how its replicas start
    "1.0.0": {},
    "1.1.0": {},
    "1.1.0-tiny-bodies": {"LLAMAWOOL_MAX_BODY_BYTES": "4"},  # ready, but refuses every POST body
}
SHEAR = 'route="/api/v1/farm/shear"'


async def shears_served(http: aiohttp.ClientSession, replicas: list[ServerProcess]) -> int:
    """POST /farm/shear requests these replicas answered (their own /metrics, any status)."""
    total = 0.0
    for r in replicas:
        async with http.get(r.url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            text = await resp.text()
        total += sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("http_requests_total{") and SHEAR in line
        )
    return int(total)


async def only_these_serve(
    http: aiohttp.ClientSession, live: list[ServerProcess], idle: list[ServerProcess], what: str
) -> None:
    """REST shears reach `live` and no longer `idle` (after a short settle for requests in flight)."""
    before = await shears_served(http, live)
    await until(lambda: _grew(http, live, before), 10, f"shears to reach {what}")
    await asyncio.sleep(1)  # requests already inside nginx's old worker finish
    idle_before, live_before = await shears_served(http, idle), await shears_served(http, live)
    await asyncio.sleep(2)  # a stretch of play
    assert await shears_served(http, idle) == idle_before, f"REST still reached the colour that is not {what}"
    assert await shears_served(http, live) > live_before


async def _grew(http: aiohttp.ClientSession, replicas: list[ServerProcess], before: int) -> bool:
    return await shears_served(http, replicas) > before


async def test_blue_green_switch_and_rollback_under_play(tmp_path: Path) -> None:
    started = time.monotonic()
    stage = await Stage(tmp_path, ENV, RELEASES).start()
    try:
        code, out = await stage.run("deploy", "1.0.0")
        assert code == 0, out
        assert stage.active == "blue"
        blue = stage.colours["blue"].replicas
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            crowd = Crowd(stage.url, http)
            stop = asyncio.Event()
            actors: list[asyncio.Task[None]] = []
            try:
                early = await crowd.join(12)
                await until(lambda: crowd.all_on(blue), 20, "every socket on blue")
                actors += [asyncio.create_task(play(crowd, p, stop)) for p in early]

                # A release that is ready but fails the smoke test never takes traffic.
                code, out = await stage.run("deploy", "1.1.0-tiny-bodies")
                assert code == 1, out
                assert "HTTP 413" in out and "traffic never left blue" in out, out
                assert stage.active == "blue" and set(stage.colours) == {"blue"}

                # A good one: gated, then switched with an nginx reload while everyone plays.
                code, out = await stage.run("deploy", "1.1.0")
                assert code == 0, out
                assert "switching the Service to green" in out and "live on green (1.1.0)" in out, out
                assert stage.active == "green"
                green = stage.colours["green"].replicas
                await only_these_serve(http, green, blue, "green")
                late = await crowd.join(8)
                actors += [asyncio.create_task(play(crowd, p, stop)) for p in late]
                await until(lambda: crowd.all_on(blue + green), 20, "every socket connected")
                assert sum(await sockets_on(http, green)) == len(late), "late joiners' sockets should be on green"

                code, out = await stage.run("rollback")
                assert code == 0, out
                assert "rolled back: live on blue (1.0.0)" in out, out
                assert stage.active == "blue"
                await only_these_serve(http, blue, green, "blue")

                code, out = await stage.run("retire")
                assert code == 0, out
                assert set(stage.colours) == {"blue"}
                assert [r.proc.returncode for r in green if r.proc] == [0, 0], "green did not drain cleanly"
                await until(lambda: crowd.all_on(blue), 20, "every socket back on blue")
                await asyncio.sleep(1)  # play on after the retirement
            finally:
                stop.set()
                await asyncio.gather(*actors, return_exceptions=True)
                await crowd.stop()

            errors = [e for p in crowd.players for e in p.errors]
            assert not errors, errors[:5]
            fivexx = [s for p in crowd.players for s in p.server_errors]
            assert not fivexx, f"players got 5xx answers: {fivexx}"
            reload_closed = [p.closes for p in early if any(not why.startswith("rebalancing") for _, why in p.closes)]
            assert not reload_closed, f"sockets on blue closed by a reload: {reload_closed}"
            moved = [p for p in late if any(code == CLOSE_RESTART for code, _ in p.closes)]
            assert len(moved) == len(late), "every socket on green reconnects when green is retired"
            acked = sum(p.sheared for p in crowd.players)
            for i, p in enumerate(crowd.players):
                assert await farm_shears(crowd, p) == p.sheared, f"player {i}: an acknowledged shear was lost"
            unavailable = sum(p.unavailable for p in crowd.players)
            reconnects = sum(p.welcomes - 1 for p in crowd.players)
            print(
                f"\nblue-green: {acked} shears acknowledged by {len(crowd.players)} players, all found; "
                f"0 REST 5xx; {unavailable} socket actions answered UNAVAILABLE and retried; "
                f"{reconnects} socket reconnects ({len(moved)} from retired green); "
                f"{time.monotonic() - started:.1f}s"
            )
    finally:
        await stage.stop()
