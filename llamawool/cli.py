"""Command line: `python -m llamawool serve | openapi | check-config`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import orjson
import structlog

from .observability import configure_logging
from .settings import Settings, SettingsError, load_rules, load_settings


async def serve(settings: Settings) -> None:
    from aiohttp import web

    from .api import create_app, drain

    log = structlog.get_logger("llamawool.cli")
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=settings.drain_grace_s)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    bound = [s.getsockname() for s in (runner.server and site._server.sockets or [])]  # type: ignore[union-attr]
    log.info("server.listening", addresses=[f"{a[0]}:{a[1]}" for a in bound], data_dir=str(settings.data_dir))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("server.draining", grace_s=settings.drain_grace_s)
    try:
        async with asyncio.timeout(settings.drain_grace_s):
            await drain(app)
            await runner.cleanup()  # stops accepting, finishes requests, writes every snapshot
    except TimeoutError:
        log.error("server.drain_timeout", grace_s=settings.drain_grace_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llamawool", description="Llama Wool Farm game server")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the server")
    p_serve.add_argument("--host")
    p_serve.add_argument("--port", type=int)
    p_serve.add_argument("--data-dir", type=Path)
    p_serve.add_argument("--config", type=Path, help="the game-config.json (ConfigMap) to use")
    p_serve.add_argument("--settings", type=Path, help="a settings file (TOML or JSON)")
    p_check = sub.add_parser("check-config", help="validate settings and game config, then exit")
    p_check.add_argument("--config", type=Path)
    p_check.add_argument("--settings", type=Path)
    sub.add_parser("openapi", help="print the OpenAPI document")
    args = parser.parse_args(argv)

    try:
        if args.command == "openapi":
            from .api.openapi import openapi_document

            sys.stdout.write(orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        overrides = {
            "host": getattr(args, "host", None),
            "port": getattr(args, "port", None),
            "data_dir": getattr(args, "data_dir", None),
            "game_config_file": getattr(args, "config", None),
        }
        settings = load_settings(overrides, getattr(args, "settings", None))
        load_rules(settings)
    except SettingsError as exc:
        sys.stderr.write(f"llamawool: configuration error: {exc}\n")
        return 2
    configure_logging(settings.log_level, settings.log_format, settings.region)
    if args.command == "check-config":
        sys.stdout.write("configuration ok\n")
        return 0
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - Windows
        pass
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(settings))
    return 0
