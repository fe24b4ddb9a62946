"""`helm` and `kubectl` for deploy/blue-green/blue-green.sh on the stage of tests/e2e/blue_green_stage.py.

Test scaffolding, standard library only: it answers exactly the calls the
script makes, from the stage's real state (BLUE_GREEN_STAGE is its URL), and
refuses anything else, so a script that starts calling something new fails
here instead of passing unseen.

  helm upgrade --install R CHART -n NS ... --set/--set-string blueGreen.* --wait --timeout T
  kubectl -n NS get service R -o jsonpath=...            the live colour
  kubectl -n NS get deployment R-COLOUR -o jsonpath=...  that colour's image
  kubectl -n NS rollout status deployment/R-COLOUR --timeout T
                                                         every replica's real /ready answers 200
  kubectl -n NS port-forward service/NAME PORT:http      a TCP forward to one replica of NAME
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, NoReturn

STAGE = os.environ["BLUE_GREEN_STAGE"]
RELEASE = "llamawool"


def fail(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    sys.exit(1)


def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(STAGE + path, data=data, method=method)  # noqa: S310 - the stage on loopback
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:  # noqa: S310 - the stage on loopback
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]] if duration[-1] in units else float(duration)


def state() -> dict[str, Any]:
    status, body = call("GET", "/state")
    assert status == 200, body
    result: dict[str, Any] = body
    return result


def colour_of(name: str) -> str:
    """A Deployment or preview Service `llamawool-COLOUR`, or the main Service `llamawool`."""
    if name == RELEASE:
        active = state()["active"]
        if active is None:
            fail(f'Error from server (NotFound): services "{name}" not found')
        return str(active)
    prefix, _, colour = name.rpartition("-")
    if prefix != RELEASE or colour not in ("blue", "green"):
        fail(f"unexpected name {name}")
    return colour


def helm(args: list[str]) -> None:
    if args[:2] != ["upgrade", "--install"] or "--wait" not in args or "--timeout" not in args:
        fail(f"unexpected helm call: {args}")
    sets: dict[str, str] = {}
    for flag, value in itertools.pairwise(args):
        if flag in ("--set", "--set-string"):
            key, _, v = value.partition("=")
            sets[key] = v
    if sets.get("blueGreen.enabled") != "true":
        fail("Error: blue-green values not set")
    tags = {
        c: sets[f"blueGreen.{c}.tag"] if sets[f"blueGreen.{c}.enabled"] == "true" else None for c in ("blue", "green")
    }
    timeout = seconds(args[args.index("--timeout") + 1])
    status, body = call("POST", "/apply", {"active": sets["blueGreen.active"], "tags": tags, "timeout_s": timeout})
    if status != 200:
        fail(f"Error: UPGRADE FAILED: {body['error']}")
    print(f'Release "{RELEASE}" has been upgraded. Happy Helming!')


def kubectl(args: list[str]) -> None:
    if args[:1] != ["-n"]:
        fail(f"unexpected kubectl call: {args}")
    verb, rest = args[2], args[3:]
    if verb == "get" and rest[0] in ("service", "deployment"):
        colour = colour_of(rest[1])
        found = state()["colours"].get(colour)
        if rest[0] == "deployment":
            if found is None:
                fail(f'Error from server (NotFound): deployments.apps "{rest[1]}" not found')
            print(f"llamawool:{found['tag']}", end="")
        else:
            print(colour, end="")
    elif verb == "rollout" and rest[0] == "status":
        rollout(colour_of(rest[1].removeprefix("deployment/")), seconds(rest[rest.index("--timeout") + 1]))
    elif verb == "port-forward":
        colour = colour_of(rest[0].removeprefix("service/"))
        local = int(rest[1].split(":")[0])
        asyncio.run(forward(local, state()["colours"][colour]["ports"][0]))
    else:
        fail(f"unexpected kubectl call: {args}")


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def rollout(colour: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        found = state()["colours"].get(colour)
        if found is not None and all(ready(p) for p in found["ports"]):
            print(f'deployment "{RELEASE}-{colour}" successfully rolled out')
            return
        if time.monotonic() > deadline:
            fail(f"error: timed out waiting for the condition on deployments/{RELEASE}-{colour}")
        time.sleep(0.2)


async def forward(local: int, target: int) -> None:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            writer.close()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        up_writer.close()
        writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", local)
    print(f"Forwarding from 127.0.0.1:{local} -> {target}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    {"helm": helm, "kubectl": kubectl}[sys.argv[1]](sys.argv[2:])
