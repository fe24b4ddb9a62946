"""Durable actions (building purchases and shears) through REST and WebSocket,
and guest logins, on one server process with SQLite; baseline: a bare aiohttp
JSON handler (parse the body, answer JSON) measured with the same tool.

`python -m benchmarks.actions [--quick]`

REST load comes from `wrk` (Debian's package) with a Lua script that rotates
over pre-created players' access tokens and alternates `POST /farm/shear`
({"count": 1}) with `POST /farm/buildings/barn/purchase` ({"quantity": 1}).
Every 200 answer is an action committed to SQLite (synchronous=FULL, WAL)
before it was sent. wrk is a closed loop; the fixed offered load is made with
wrk's `delay()` hook: the thread keeps a schedule of one request every
1/rate seconds (LuaJIT's ffi reads the monotonic clock) and each connection
waits for its slot, so the offered rate holds while latency stays below
connections/rate; the achieved rate is printed beside the latency.
WebSocket actions come from the benchmark's own load generator (another
process): the same two actions as `{"type": "action"}` messages, one in
flight per socket.

Goals (issue 6): >= 2,000 durable actions/s, p99 <= 25 ms at 1,000 actions/s,
>= 0.3 of the bare handler's throughput; guest logins >= 1,000/s.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from .common import (
    LoadGenProcess,
    Server,
    Workdir,
    access_tokens,
    bare_server,
    bench_config,
    finish,
    print_table,
    raise_nofile,
    round_floats,
    seed_players,
    start_profile,
    summarize_profile,
)

LUA_ACTIONS = r"""
-- Rotates over pre-created players; alternates a shear and a barn purchase.
local tokens = {}
for line in io.lines("%(tokens)s") do tokens[#tokens + 1] = line end
local prefix = "%(prefix)s"
local interval_ms = %(interval_ms)s
local counter = 0
local thread_no = 0
local nthreads = %(threads)d

function setup(thread)
  thread:set("thread_no", thread_no)
  thread_no = thread_no + 1
end

function init(args)
  counter = thread_no
end

function request()
  counter = counter + nthreads
  local tok = tokens[(counter %% #tokens) + 1]
  local headers = {["Authorization"] = "Bearer " .. tok, ["Content-Type"] = "application/json"}
  if counter %% 2 == 0 then
    return wrk.format("POST", prefix .. "/farm/shear", headers, '{"count":1}')
  end
  return wrk.format("POST", prefix .. "/farm/buildings/barn/purchase", headers, '{"quantity":1}')
end

-- Pacing: with interval_ms > 0 this thread sends on a fixed schedule (an open
-- loop while connections are free), whatever the latency of earlier answers.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local next_ms = nil

function delay()
  if interval_ms <= 0 then return 0 end
  local t = now_ms()
  if next_ms == nil or next_ms < t - 1000 then next_ms = t end
  next_ms = next_ms + interval_ms
  local d = next_ms - t
  if d < 0 then return 0 end
  return d
end

done = function(summary, latency, requests)
  io.write(string.format(
    "JSON {\"requests\":%%d,\"duration_us\":%%d,\"non2xx\":%%d,\"socket_errors\":%%d,"
    .. "\"p50_us\":%%d,\"p90_us\":%%d,\"p99_us\":%%d,\"max_us\":%%d}\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

LUA_GUESTS = r"""
-- Each request is a new device: a new guest player, its farm made on first use.
local counter = 0
local thread_no = 0
local run = "%(run)s"
local prefix = "%(prefix)s"

function setup(thread)
  thread:set("thread_no", thread_no)
  thread_no = thread_no + 1
end

function request()
  counter = counter + 1
  local body = '{"device_id":"bench-' .. run .. '-' .. thread_no .. '-' .. counter .. '"}'
  return wrk.format("POST", prefix .. "/auth/guest", {["Content-Type"] = "application/json"}, body)
end

done = function(summary, latency, requests)
  io.write(string.format(
    "JSON {\"requests\":%%d,\"duration_us\":%%d,\"non2xx\":%%d,\"socket_errors\":%%d,"
    .. "\"p50_us\":%%d,\"p90_us\":%%d,\"p99_us\":%%d,\"max_us\":%%d}\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def wrk(url: str, script: Path, seconds: float, connections: int, threads: int = 1) -> dict[str, Any]:
    exe = shutil.which("wrk")
    if exe is None:
        raise SystemExit("wrk is not installed: `apt-get install wrk` (the Makefile's bench targets do it)")
    argv = [exe, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    out = subprocess.run([*argv, "-s", str(script), url], capture_output=True, text=True, check=True)
    m = re.search(r"^JSON (\{.*\})$", out.stdout, re.M)
    if m is None:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    r: dict[str, Any] = orjson.loads(m.group(1))
    secs = r["duration_us"] / 1e6
    r["rps"] = r["requests"] / secs
    r["ok_rps"] = (r["requests"] - r["non2xx"]) / secs
    for k in ("p50", "p90", "p99", "max"):
        r[f"{k}_ms"] = r.pop(f"{k}_us") / 1e3
    return r


def write_script(path: Path, template: str, **kw: Any) -> Path:
    path.write_text(template % kw)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.actions")
    p.add_argument("--quick", action="store_true", help="a smoke run: a few seconds per phase")
    p.add_argument("--profile", type=Path, help="py-spy the server during the REST throughput phase")
    a = p.parse_args(argv)
    raise_nofile(65536)
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
    seconds = 2.0 if a.quick else 10.0
    players = 200 if a.quick else 1_000
    conns = 64
    rate = 1000.0
    rate_conns = 50
    ws_sockets = 64 if a.quick else 256
    results: dict[str, dict[str, Any]] = {}
    with Workdir("actions") as work:
        ids = seed_players(work / "server", players, balance=1e100)
        tokens = access_tokens(ids)
        (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
        config = bench_config(work)
        api = "/api/v1"
        full_speed = write_script(
            work / "actions.lua", LUA_ACTIONS, tokens=work / "tokens.txt", prefix=api, interval_ms=0, threads=1
        )
        fixed = write_script(
            work / "actions-fixed.lua",
            LUA_ACTIONS,
            tokens=work / "tokens.txt",
            prefix=api,
            interval_ms=1000.0 / rate,
            threads=1,
        )
        guests = write_script(work / "guests.lua", LUA_GUESTS, run=str(int(time.time())), prefix=api)
        with Server(work / "server", config=config) as server:
            server.start()
            # Warm: every farm loaded (and its day offline credited) before measuring.
            warm = write_script(
                work / "warm.lua", LUA_ACTIONS, tokens=work / "tokens.txt", prefix=api, interval_ms=0, threads=1
            )
            wrk(server.url, warm, 2.0 if a.quick else 4.0, conns)
            assert server.stats is not None and server.proc is not None
            spy = start_profile(server.proc.pid, seconds, a.profile / "actions-rest.txt") if a.profile else None
            server.stats.start()
            results["rest_max"] = wrk(server.url, full_speed, seconds, conns)
            results["rest_max"]["server_cpu"] = server.stats.cpu_fraction()
            if spy is not None:
                spy.wait()
            server.stats.start()
            results["rest_fixed"] = wrk(server.url, fixed, seconds, rate_conns)
            results["rest_fixed"]["server_cpu"] = server.stats.cpu_fraction()
            with LoadGenProcess() as gen:
                conn = gen.call(
                    "connect", url=server.ws_url, tokens=tokens[:ws_sockets], local_addr="127.0.0.4", concurrency=64
                )
                msgs = ['{"action":"shear","count":1}', '{"action":"buy_building","key":"barn","quantity":1}']
                server.stats.start()
                m = gen.call("actions", seconds=seconds, rate=0, messages=msgs, in_flight=1)
                m["server_cpu"] = server.stats.cpu_fraction()
                results["ws_max"] = m
                server.stats.start()
                m = gen.call("actions", seconds=seconds, rate=rate, messages=msgs, in_flight=4)
                m["server_cpu"] = server.stats.cpu_fraction()
                results["ws_fixed"] = m
                print(
                    f"  WS actions at {rate:.0f}/s, slow answers (>25 ms) by 100 ms of the window "
                    f"[s, count, worst ms]: {m['action_stalls']}",
                    file=sys.stderr,
                    flush=True,
                )
                gen.call("close")
                results["ws_max"]["connected"] = conn["connected"]
            spy = start_profile(server.proc.pid, seconds, a.profile / "actions-guests.txt") if a.profile else None
            server.stats.start()
            results["guests"] = wrk(server.url, guests, seconds, conns)
            if spy is not None:
                spy.wait()
            results["guests"]["server_cpu"] = server.stats.cpu_fraction()
        with bare_server(work / "bare", "bare-json") as bare:
            bare.start()
            bare_script = write_script(
                work / "bare.lua", LUA_ACTIONS, tokens=work / "tokens.txt", prefix="/echo", interval_ms=0, threads=1
            )
            assert bare.stats is not None
            bare.stats.start()
            results["bare_max"] = wrk(bare.url, bare_script, seconds, conns)
            results["bare_max"]["server_cpu"] = bare.stats.cpu_fraction()
            bare_fixed = write_script(
                work / "bare-fixed.lua",
                LUA_ACTIONS,
                tokens=work / "tokens.txt",
                prefix="/echo",
                interval_ms=1000.0 / rate,
                threads=1,
            )
            bare.stats.start()
            results["bare_fixed"] = wrk(bare.url, bare_fixed, seconds, rate_conns)
            results["bare_fixed"]["server_cpu"] = bare.stats.cpu_fraction()

    def rest_row(name: str, r: dict[str, Any], load: str) -> list[Any]:
        return [name, load, r["rps"], r["ok_rps"], r["non2xx"], r["p50_ms"], r["p99_ms"], r["max_ms"], r["server_cpu"]]

    def ws_row(name: str, r: dict[str, Any], load: str) -> list[Any]:
        err = r["actions_err"]
        return [
            name,
            load,
            r["actions_per_s"],
            r["actions_ok"] / r["window_s"],
            err,
            r["action_p50_ms"],
            r["action_p99_ms"],
            float("nan"),
            r["server_cpu"],
        ]

    rows = [
        rest_row("REST actions (wrk)", results["rest_max"], f"max, {conns} conns"),
        rest_row("bare JSON handler (wrk)", results["bare_max"], f"max, {conns} conns"),
        rest_row("REST actions (wrk)", results["rest_fixed"], f"~{rate:.0f}/s offered"),
        rest_row("bare JSON handler (wrk)", results["bare_fixed"], f"~{rate:.0f}/s offered"),
        ws_row("WS actions (loadgen)", results["ws_max"], f"max, {ws_sockets} sockets"),
        ws_row("WS actions (loadgen)", results["ws_fixed"], f"{rate:.0f}/s offered"),
        rest_row("guest logins (wrk)", results["guests"], f"max, {conns} conns"),
    ]
    print_table(
        f"actions: durable actions and guest logins, {seconds:.0f} s per phase ({'quick' if a.quick else 'full'})",
        ["load", "offered", "req/s", "2xx/s", "non-2xx", "p50 ms", "p99 ms", "max ms", "server CPU"],
        rows,
    )
    rest = results["rest_max"]
    bare_rps = results["bare_max"]["ok_rps"]
    ratio = rest["ok_rps"] / bare_rps if bare_rps else float("nan")
    ws_err = results["ws_max"]["action_errors"]
    print(f"\nREST durable actions/s vs bare handler: {ratio:.2f}x; WS errors by code: {ws_err or 'none'}")
    if a.profile:
        print("\nprofile of the server during the REST throughput phase:")
        print(summarize_profile(a.profile / "actions-rest.txt"))
        print("\nprofile of the server during guest logins:")
        print(summarize_profile(a.profile / "actions-guests.txt"))
    figures: dict[str, Any] = {
        "rest_actions_per_s": rest["ok_rps"],
        "rest_non2xx": rest["non2xx"],
        "rest_p99_ms_at_max": rest["p99_ms"],
        "rest_fixed_achieved_per_s": results["rest_fixed"]["rps"],
        "rest_fixed_p99_ms": results["rest_fixed"]["p99_ms"],
        "rest_fixed_non2xx": results["rest_fixed"]["non2xx"],
        "bare_per_s": bare_rps,
        "bare_fixed_p99_ms": results["bare_fixed"]["p99_ms"],
        "rest_vs_bare": ratio,
        "ws_actions_per_s": results["ws_max"]["actions_ok"] / results["ws_max"]["window_s"],
        "ws_p99_ms_at_max": results["ws_max"]["action_p99_ms"],
        "ws_fixed_achieved_per_s": results["ws_fixed"]["actions_per_s"],
        "ws_fixed_p99_ms": results["ws_fixed"]["action_p99_ms"],
        "ws_errors": ws_err,
        "guest_logins_per_s": results["guests"]["ok_rps"],
        "guest_p99_ms": results["guests"]["p99_ms"],
        "guest_non2xx": results["guests"]["non2xx"],
    }
    fixed_ok = results["rest_fixed"]["rps"] >= 0.9 * rate and results["rest_fixed"]["non2xx"] == 0
    ws_max, ws_fixed = results["ws_max"], results["ws_fixed"]
    ws_fixed_ok = ws_fixed["actions_per_s"] >= 0.9 * rate and ws_fixed["actions_err"] == 0
    goals = {
        "rest_ge_2000_durable_actions_per_s": rest["ok_rps"] >= 2000 and rest["non2xx"] == 0,
        "ws_ge_2000_durable_actions_per_s": figures["ws_actions_per_s"] >= 2000 and ws_max["actions_err"] == 0,
        "rest_p99_le_25ms_at_1000_per_s": fixed_ok and results["rest_fixed"]["p99_ms"] <= 25.0,
        "ws_p99_le_25ms_at_1000_per_s": ws_fixed_ok and ws_fixed["action_p99_ms"] <= 25.0,
        "rest_ge_0.3_of_bare_handler": ratio >= 0.3,
        "ge_1000_guest_logins_per_s": results["guests"]["ok_rps"] >= 1000 and results["guests"]["non2xx"] == 0,
    }
    return finish("actions", a.quick, round_floats(figures), goals)


if __name__ == "__main__":
    sys.exit(main())
