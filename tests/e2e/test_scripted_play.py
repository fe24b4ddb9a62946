"""A scripted client plays a real `python -m llamawool serve` end to end.

Guest login, shearing, barns, Auto Shears, an upgrade, a WebSocket session
with ticks at the configured rate, a disconnect, and the offline report on
return. The balance file is a copy of the real one with a 1 s online window,
so the absence is real time, not a faked clock.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import REPO, ServerProcess

pytestmark = pytest.mark.slow
API = "/api/v1"


async def shear_until(s: aiohttp.ClientSession, url: str, h: dict[str, str], basic: float) -> dict[str, Any]:
    """Shear (the bucket refills 20/s) until the farm holds `basic` wool."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with s.post(url + API + "/farm/shear", json={"count": 20}, headers=h) as r:
            assert r.status == 200, await r.text()
            body: dict[str, Any] = await r.json()
        if body["farm"]["balances"]["basic"] >= basic:
            return body["farm"]
        await asyncio.sleep(0.5)  # the bucket refills with real time; this is the game's pace
    raise AssertionError(f"never reached {basic} basic wool")


async def buy(s: aiohttp.ClientSession, url: str, h: dict[str, str], path: str, body: dict[str, Any]) -> dict[str, Any]:
    async with s.post(url + API + path, json=body, headers=h) as r:
        assert r.status == 200, await r.text()
        out: dict[str, Any] = await r.json()
        return out


async def test_a_scripted_client_plays_through_the_whole_loop(tmp_path: Path) -> None:
    balance = (REPO / "config" / "game.toml").read_text().replace("online_window_s = 120", "online_window_s = 1")
    (tmp_path / "game.toml").write_text(balance)
    server = ServerProcess(
        tmp_path / "data",
        env={"LLAMAWOOL_BALANCE_FILE": str(tmp_path / "game.toml"), "LLAMAWOOL_TICK_INTERVAL_S": "0.5"},
    ).start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(server.url + API + "/auth/guest", json={"device_id": "scripted-client-01"}) as r:
                assert r.status == 201
                token = (await r.json())["access_token"]
            h = {"Authorization": f"Bearer {token}"}

            farm = await shear_until(s, server.url, h, 70)
            bought = await buy(s, server.url, h, "/farm/buildings/barn/purchase", {"quantity": 5})
            assert bought["result"]["cost"] == pytest.approx(67.4238125)
            assert bought["farm"]["buildings"]["barn"] == 5
            assert bought["farm"]["rates"]["basic"] > farm["rates"]["basic"]

            await shear_until(s, server.url, h, 100)
            shears = await buy(s, server.url, h, "/farm/buildings/shears/purchase", {"quantity": 1})
            assert shears["farm"]["buildings"]["shears"] == 1
            assert shears["farm"]["rates"]["silver"] > 0

            await shear_until(s, server.url, h, 100)
            upgrade = await buy(s, server.url, h, "/farm/upgrades/sharp_shears/purchase", {})
            assert "sharp_shears" in upgrade["farm"]["upgrades"]
            assert upgrade["farm"]["click_power"] == pytest.approx(2 * shears["farm"]["click_power"])

            ws_url = server.url.replace("http", "ws") + API + f"/ws?token={token}"
            async with s.ws_connect(ws_url) as ws:
                welcome = await ws.receive_json(timeout=10)
                assert welcome["type"] == "welcome"
                assert welcome["data"]["tick_interval_s"] == 0.5
                ticks = []
                while len(ticks) < 5:
                    msg = await ws.receive_json(timeout=10)
                    if msg["type"] == "tick":
                        ticks.append(msg["data"])
                spacing = [b["server_time"] - a["server_time"] for a, b in itertools.pairwise(ticks)]
                assert all(0.3 < gap < 1.0 for gap in spacing), spacing
                assert ticks[-1]["balances"]["basic"] > ticks[0]["balances"]["basic"]

            # Away: no socket, no request. After the 1 s window the farm goes offline.
            await asyncio.sleep(4.0)
            async with s.ws_connect(ws_url) as ws:
                welcome = await ws.receive_json(timeout=10)
            report = welcome["data"]["offline_report"]
            assert report is not None
            assert report["elapsed_s"] > 2.0
            assert report["efficiency"] == 0.5
            assert report["gains"]["basic"] == pytest.approx(
                ticks[-1].get("rates", upgrade["farm"]["rates"])["basic"] * 0.5 * report["credited_s"], rel=1e-6
            )
            async with s.get(server.url + API + "/farm/offline-report", headers=h) as r:
                assert r.status == 200
                assert (await r.json())["returned_at"] == report["returned_at"]
    finally:
        server.kill()
