"""A live server on a real TCP port, run by a thread of the test process.

Synchronous clients (schemathesis drives `requests`) need a server that is
not on the test's own event loop; a thread with its own loop is that server,
and the test can still reach its store (to give a player the admin role).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections import Counter
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import requests
from aiohttp import web

from llamawool.api import create_app
from llamawool.api.app import context
from llamawool.settings import DEFAULT_CONFIG_DIR, Settings
from tests.helpers import free_port

API = "/api/v1"


def relaxed_game_config(folder: Path, actions_per_minute: int = 100_000) -> Path:
    """The shipped game config with the per-player action limit raised, so a fuzzer's
    many requests reach the logic behind the limit (429 stays documented and possible)."""
    config = json.loads((DEFAULT_CONFIG_DIR / "game-config.json").read_text())
    config["antiCheat"]["maxActionsPerMinute"] = actions_per_minute
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "game-config.json"
    path.write_text(json.dumps(config))
    return path


class LiveServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings.model_copy(update={"port": settings.port or free_port()})
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-server", daemon=True)
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def app(self) -> web.Application:
        assert self.runner is not None
        return self.runner.app

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def start(self) -> LiveServer:
        self.thread.start()

        async def up() -> None:
            self.runner = web.AppRunner(create_app(self.settings), access_log=None)
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.settings.port).start()

        self.run(up())
        return self

    def stop(self) -> None:
        if self.runner is not None:
            self.run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    # ---- players --------------------------------------------------------------------

    def guest(self) -> dict[str, Any]:
        resp = requests.post(f"{self.url}{API}/auth/guest", json={"device_id": f"dev-{uuid.uuid4().hex}"}, timeout=10)
        assert resp.status_code in (200, 201), resp.text
        body: dict[str, Any] = resp.json()
        return body

    def admin(self) -> dict[str, Any]:
        """A guest given the admin role in the store, with an access token carrying it."""
        body = self.guest()

        async def promote() -> str:
            c = context(self.app)
            player = await c.store.get_player(body["player"]["id"])
            assert player is not None
            player.role = "admin"
            await c.store.update_player_fields(player.id, {"role": "admin"})
            return c.auth.access_token(player)

        body["access_token"] = self.run(promote())
        return body


class FuzzStats:
    """What the fuzzer sent and what came back, printed at the end of the run."""

    def __init__(self) -> None:
        self.cases = 0
        self.statuses: Counter[int] = Counter()
        self.operations: Counter[str] = Counter()
        self.methods: Counter[str] = Counter()
        self.slowest_s = 0.0

    def record(self, operation: str, method: str, status: int, elapsed_s: float) -> None:
        self.cases += 1
        self.statuses[status] += 1
        self.operations[operation] += 1
        self.methods[method.upper()] += 1
        self.slowest_s = max(self.slowest_s, elapsed_s)

    def summary(self) -> str:
        by_class = Counter(f"{s // 100}xx" for s in self.statuses.elements())
        return (
            f"API fuzz: {self.cases} cases over {len(self.operations)} operations "
            f"(methods sent: {dict(sorted(self.methods.items()))}); "
            f"responses {dict(sorted(by_class.items()))}; 5xx: {by_class.get('5xx', 0)}; "
            f"slowest response {self.slowest_s:.3f}s"
        )


FUZZ_STATS = FuzzStats()
REPORT_LINES: list[str] = []  # other figures the run measured, printed at its end


class MatrixTally:
    """The authorisation matrix's cells, by route access level, credential and status."""

    def __init__(self) -> None:
        self.cells: Counter[tuple[str, str, int]] = Counter()
        self.routes: set[str] = set()

    def summary(self) -> str:
        by: dict[str, Counter[int]] = {}
        for (access, credential, status), n in sorted(self.cells.items()):
            by.setdefault(f"{access}/{credential}", Counter())[status] += n
        parts = "; ".join(f"{k}: {dict(v)}" for k, v in by.items())
        return f"Authz matrix: {len(self.routes)} routes x 7 credentials = {sum(self.cells.values())} cells; {parts}"


MATRIX = MatrixTally()
