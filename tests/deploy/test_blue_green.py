"""deploy/blue-green/blue-green.sh against a pretend cluster and a real server.

`helm` and `kubectl` are stand-ins that keep the cluster's state in a JSON
file: which colour the Service selects and which tag each colour's
Deployment runs, exactly as the chart would render them from the --set
values the script passes. The smoke test is the real one, against a real
in-process server (or a dead port, to make it fail).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import free_port

from .conftest import DEPLOY

SCRIPT = DEPLOY / "blue-green" / "blue-green.sh"

FAKE = r"""
import json, os, sys

state_path = os.environ["FAKE_CLUSTER"]
with open(state_path) as f:
    state = json.load(f)
tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
state["calls"].append([tool, *args])

def save():
    with open(state_path, "w") as f:
        json.dump(state, f)

if tool == "helm":
    assert args[0] == "upgrade" and "--install" in args and "--wait" in args, args
    sets = {}
    for flag, value in zip(args, args[1:]):
        if flag in ("--set", "--set-string"):
            key, _, v = value.partition("=")
            sets[key] = v
    if state.get("fail_helm_for") and sets.get(f"blueGreen.{state['fail_helm_for']}.enabled") == "true":
        save(); sys.exit("helm: timed out waiting for the condition")
    assert sets["blueGreen.enabled"] == "true"
    state["deployments"] = {
        c: f"ghcr.io/llamawool/llamawool:{sets['blueGreen.' + c + '.tag']}"
        for c in ("blue", "green") if sets[f"blueGreen.{c}.enabled"] == "true"
    }
    state["service"] = sets["blueGreen.active"]
    assert state["service"] in state["deployments"], "the Service would select no pods"
    save(); sys.exit(0)

# kubectl -n NS VERB ...
verb, rest = args[2], args[3:]
if verb == "get" and rest[0] == "service":
    save()
    if state["service"] is None:
        sys.exit("Error from server (NotFound)")
    print(state["service"], end="")
elif verb == "get" and rest[0] == "deployment":
    colour = rest[1].rsplit("-", 1)[1]
    save()
    if colour not in state["deployments"]:
        sys.exit("Error from server (NotFound)")
    print(state["deployments"][colour], end="")
elif verb == "rollout":
    colour = rest[1].rsplit("-", 1)[1]
    save()
    sys.exit(1 if colour == state.get("fail_rollout") else 0)
else:
    save(); sys.exit(f"unexpected kubectl call: {args}")
"""


class Cluster:
    def __init__(self, tmp_path: Path) -> None:
        self.state_path = tmp_path / "cluster.json"
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        for tool in ("helm", "kubectl"):
            path = self.bin / tool
            path.write_text(f"#!{sys.executable}\n{FAKE}")
            path.chmod(0o755)
        self.write({"service": None, "deployments": {}, "calls": []})

    def read(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_path.read_text())
        return state

    def write(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state))

    def set(self, **changes: Any) -> None:
        self.write({**self.read(), **changes})

    def live(self) -> tuple[str | None, dict[str, str]]:
        state = self.read()
        return state["service"], {c: image.rsplit(":", 1)[1] for c, image in state["deployments"].items()}

    async def run(self, *args: str, smoke_url: str) -> tuple[int, str]:
        env = {
            **os.environ,
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "FAKE_CLUSTER": str(self.state_path),
            "SMOKE_URL": smoke_url,
            "RETIRE_AFTER": "0",
            "SMOKE_RETRY_DELAY": "0.1",
            "PYTHON": sys.executable,
        }
        proc = await asyncio.create_subprocess_exec(
            "bash", str(SCRIPT), *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode or 0, out.decode()


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    return Cluster(tmp_path)


async def test_release_goes_to_the_idle_colour_then_takes_traffic(cluster: Cluster, client: TestClient) -> None:
    good = str(client.make_url("")).rstrip("/")
    code, out = await cluster.run("deploy", "1.0.0", smoke_url=good)
    assert code == 0, out
    assert cluster.live() == ("blue", {"blue": "1.0.0"})

    code, out = await cluster.run("deploy", "1.1.0", smoke_url=good)
    assert code == 0, out
    assert cluster.live() == ("green", {"blue": "1.0.0", "green": "1.1.0"})
    # Green was up, rolled out and smoke-tested before the Service moved to it.
    calls = cluster.read()["calls"]
    first_switch = next(i for i, c in enumerate(calls) if c[0] == "helm" and "blueGreen.active=green" in c)
    rollout = next(
        i for i, c in enumerate(calls) if c[0] == "kubectl" and "rollout" in c and "deployment/llamawool-green" in c
    )
    green_up = next(i for i, c in enumerate(calls) if c[0] == "helm" and "blueGreen.green.tag=1.1.0" in c)
    assert green_up < rollout < first_switch
    assert "smoke test passed" in out

    code, out = await cluster.run("rollback", smoke_url=good)
    assert code == 0, out
    assert cluster.live() == ("blue", {"blue": "1.0.0", "green": "1.1.0"})

    code, out = await cluster.run("retire", smoke_url=good)
    assert code == 0, out
    assert cluster.live() == ("blue", {"blue": "1.0.0"})


async def test_a_failed_smoke_test_never_moves_traffic(cluster: Cluster, client: TestClient) -> None:
    good = str(client.make_url("")).rstrip("/")
    assert (await cluster.run("deploy", "1.0.0", smoke_url=good))[0] == 0
    code, out = await cluster.run("deploy", "2.0.0-broken", smoke_url=f"http://127.0.0.1:{free_port()}")
    assert code == 1, out
    assert "traffic never left blue" in out
    assert cluster.live() == ("blue", {"blue": "1.0.0"})  # the broken colour is gone again


async def test_a_failed_rollout_never_moves_traffic(cluster: Cluster, client: TestClient) -> None:
    good = str(client.make_url("")).rstrip("/")
    assert (await cluster.run("deploy", "1.0.0", smoke_url=good))[0] == 0
    cluster.set(fail_rollout="green")
    code, out = await cluster.run("deploy", "2.0.0", smoke_url=good)
    assert code == 1, out
    assert cluster.live() == ("blue", {"blue": "1.0.0"})
    assert not [c for c in cluster.read()["calls"] if c[0] == "helm" and "blueGreen.active=green" in c]


async def test_rollback_needs_the_previous_colour(cluster: Cluster, client: TestClient) -> None:
    good = str(client.make_url("")).rstrip("/")
    assert (await cluster.run("deploy", "1.0.0", smoke_url=good))[0] == 0
    code, out = await cluster.run("rollback", smoke_url=good)
    assert code == 1 and "nothing to roll back to" in out
    assert cluster.live() == ("blue", {"blue": "1.0.0"})
