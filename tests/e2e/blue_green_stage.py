"""A stage for deploy/blue-green/blue-green.sh on real processes: two colours of replicas behind nginx.

The script drives Helm and kubectl. Here those two are small stand-ins
(tests/e2e/blue_green_shim.py) that talk to this stage over HTTP, as the real
tools talk to the Kubernetes API server; the stage does what the chart and
the cluster would do with what the script asked for:

  helm upgrade ... --set blueGreen.active=C --set blueGreen.<colour>.tag=T
      start the colours that should run (two `python -m llamawool serve` each on
      one MongoDB-wire server and one Redis, each colour its own
      LLAMAWOOL_REBALANCE_POOL as the chart sets it), wait for their real /ready
      (helm --wait), point nginx's upstreams at colour C (the shipped config
      re-rendered, then reloaded: SIGHUP, what `nginx -s reload` sends) and
      SIGTERM the colours that should not run (they drain);
  kubectl get service / deployment
      the live colour (nginx's upstreams) and each colour's tag.

An image tag stands for a build: `releases` maps each tag to the environment
its replicas start with, so a "broken release" is a real replica that starts,
answers /ready and then fails the smoke test. Every decision (which colour is
idle, whether the gate passed, when to switch and when to switch back) stays
in the script.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.e2e.cluster import Cluster, Nginx
from tests.helpers import REPO, ServerProcess, free_port

COLOURS = ("blue", "green")
REPLICAS_PER_COLOUR = 2
SHIM = Path(__file__).with_name("blue_green_shim.py")
SCRIPT = REPO / "deploy" / "blue-green" / "blue-green.sh"


class Colour:
    def __init__(self, tag: str, replicas: list[ServerProcess]) -> None:
        self.tag = tag
        self.replicas = replicas

    @property
    def ports(self) -> list[int]:
        return [r.port for r in self.replicas]


class Stage:
    def __init__(self, work: Path, env: dict[str, str], releases: dict[str, dict[str, str]]) -> None:
        self.work = work
        self.cluster = Cluster(work, replicas=0, env=env)
        self.releases = releases
        self.colours: dict[str, Colour] = {}
        self.active: str | None = None
        self.nginx: Nginx | None = None
        self.started = 0
        self._lock = asyncio.Lock()
        self._runner: web.AppRunner | None = None
        self.api_port = free_port()
        self.bin = work / "bin"

    @property
    def url(self) -> str:
        assert self.nginx is not None
        return self.nginx.url

    async def start(self) -> Stage:
        await asyncio.to_thread(self.cluster.start_backends)
        app = web.Application()
        app.router.add_get("/state", self._state)
        app.router.add_post("/apply", self._apply)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.api_port).start()
        self.bin.mkdir(parents=True, exist_ok=True)
        for tool in ("helm", "kubectl"):
            path = self.bin / tool
            path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{SHIM}" {tool} "$@"\n')
            path.chmod(0o755)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for colour in self.colours.values():
            self.cluster.replicas += colour.replicas
        self.cluster.nginx = self.nginx
        await asyncio.to_thread(self.cluster.stop)

    def state(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "colours": {name: {"tag": c.tag, "ports": c.ports} for name, c in self.colours.items()},
        }

    async def run(self, *args: str, **env: str) -> tuple[int, str]:
        """blue-green.sh with the stand-ins first on PATH; its exit code and output."""
        full_env = {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "BLUE_GREEN_STAGE": f"http://127.0.0.1:{self.api_port}",
            "PYTHON": sys.executable,
            "TIMEOUT": "30s",
            "RETIRE_AFTER": "0",
            "SMOKE_PORT": str(free_port()),
            "SMOKE_RETRIES": "5",
            "SMOKE_RETRY_DELAY": "0.3",
            **env,
        }
        proc = await asyncio.create_subprocess_exec(
            "bash", str(SCRIPT), *args, env=full_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 120)
        except TimeoutError:
            proc.kill()
            raise
        return proc.returncode or 0, out.decode()

    # ---- what the stand-ins ask for ----

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def _apply(self, request: web.Request) -> web.Response:
        body = await request.json()
        async with self._lock:
            try:
                await self.apply(body["active"], body["tags"], float(body["timeout_s"]))
            except StageError as exc:
                return web.json_response({"error": str(exc)}, status=422)
        return web.json_response(self.state())

    async def apply(self, active: str, tags: dict[str, str | None], timeout_s: float) -> None:
        """What the chart renders from these values, made real: start, switch, then stop."""
        if tags.get(active) is None:
            raise StageError(f"the Service would select {active}, which is not enabled")
        for name in COLOURS:  # a colour whose tag changes is replaced (it is never the live one here)
            colour, tag = self.colours.get(name), tags.get(name)
            if colour is not None and tag is not None and colour.tag != tag:
                if name == self.active:
                    raise StageError(f"the stage does not roll the live colour {name} in place")
                await self._stop_colour(name)
        starting = [n for n in COLOURS if tags.get(n) is not None and n not in self.colours]
        await asyncio.gather(*(self._start_colour(n, str(tags[n]), timeout_s) for n in starting))
        if active != self.active or (self.nginx and self.nginx.upstream_ports != self.colours[active].ports):
            await asyncio.to_thread(self._route_to, active)
        await asyncio.gather(*(self._stop_colour(n) for n in COLOURS if tags.get(n) is None and n in self.colours))

    async def _start_colour(self, name: str, tag: str, timeout_s: float) -> None:
        if tag not in self.releases:
            raise StageError(f"no image {tag}")
        env = {**self.cluster.replica_env(), **self.releases[tag], "LLAMAWOOL_REBALANCE_POOL": name}
        replicas = []
        for _ in range(REPLICAS_PER_COLOUR):
            self.started += 1
            replicas.append(ServerProcess(self.work / f"{name}-{self.started}", env=env))
        self.colours[name] = Colour(tag, replicas)
        for r in replicas:  # boot in parallel, then wait for each one's /ready (helm --wait)
            r.start_async()
        try:
            for r in replicas:
                await asyncio.to_thread(r.wait_ready, timeout_s)
        except RuntimeError as exc:
            raise StageError(f"{name} ({tag}) not ready: {exc}") from None

    def _route_to(self, name: str) -> None:
        """The Service's selector: nginx's upstreams on this colour's replicas, reloaded."""
        ports = self.colours[name].ports
        if self.nginx is None:
            self.nginx = Nginx(self.work / "nginx", ports).start()
        else:
            self.nginx.set_upstreams(ports)
        self.active = name

    async def _stop_colour(self, name: str) -> None:
        colour = self.colours.pop(name)
        await asyncio.gather(*(asyncio.to_thread(_drain, r) for r in colour.replicas))


def _drain(replica: ServerProcess) -> None:
    """SIGTERM, as Kubernetes stops a pod: the replica drains (sockets closed with 1012) and exits."""
    if replica.proc is not None and replica.proc.poll() is None:
        replica.terminate(30)


class StageError(Exception):
    """What Helm would answer with `Error: UPGRADE FAILED: ...`."""
