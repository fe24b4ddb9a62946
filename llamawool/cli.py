"""Command line: `python -m llamawool serve | openapi | asyncapi | check-config | admin | backup | restore | migrate`.

`migrate status` / `migrate up` read and upgrade the configured store's schema;
`migrate --from URI --to URI` copies every record between stores."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import structlog

from .observability import configure_logging
from .settings import Settings, SettingsError, load_rules, load_settings

if TYPE_CHECKING:
    from .store import Store


# After SIGTERM the listener stays open this long (at most a fifth of the grace
# period) while /ready answers 503 and new WebSockets are refused, so a load
# balancer that probes readiness stops routing here before connections are
# refused. Kubernetes' preStop pause does the same job before the signal.
READY_FAIL_WINDOW_S = 1.0


def tune_gc(settings: Settings) -> None:
    """Fewer, cheaper garbage collections for a long-running server.

    Python collects its youngest generation every 700 new container objects; a
    server at load crosses that many times a second, so objects that live a
    request or a tick (a second or so) survive two collections and reach the
    oldest generation, whose collections then walk the whole heap: 50 to 250 ms
    with every farm and socket of a 2,000-player replica, every 15 s or so,
    during which nothing else runs (the soak's p99). A higher young threshold
    lets those objects die young; freezing what exists once the server has
    started (modules, configuration, the loaded engine) keeps it out of every
    later full collection. Reference counting still frees frozen objects; only
    cycles among them would wait for an unfreeze, and start-up builds none."""
    import gc

    gc.set_threshold(settings.gc_young_threshold, 10, 10)
    gc.freeze()
    structlog.get_logger("llamawool.cli").info(
        "server.gc_tuned", young_threshold=settings.gc_young_threshold, frozen=gc.get_freeze_count()
    )


async def serve(settings: Settings) -> None:
    from aiohttp import web

    from .api import create_app, drain

    log = structlog.get_logger("llamawool.cli")
    app = create_app(settings)
    # In-flight requests get half the grace period; the rest is kept for the
    # final commit and snapshots (engine.stop in the app's cleanup).
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=settings.drain_grace_s / 2)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    tune_gc(settings)
    bound = [s.getsockname() for s in ((runner.server and site._server.sockets) or [])]  # type: ignore[union-attr]
    log.info("server.listening", addresses=[f"{a[0]}:{a[1]}" for a in bound], data_dir=str(settings.data_dir))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("server.draining", grace_s=settings.drain_grace_s)
    try:
        async with asyncio.timeout(settings.drain_grace_s):
            # /ready fails and new sockets are refused at once; open sockets get 1012.
            closing = asyncio.ensure_future(drain(app))
            await asyncio.sleep(min(READY_FAIL_WINDOW_S, settings.drain_grace_s / 5))
            await closing
            await runner.cleanup()  # stops accepting, finishes requests, writes every snapshot
    except TimeoutError:
        log.error("server.drain_timeout", grace_s=settings.drain_grace_s)
    log.info("server.drained")


async def create_admin(settings: Settings, username: str, email: str, password_env: str) -> int:
    import getpass
    import os
    import time
    import uuid

    from pydantic import TypeAdapter, ValidationError

    from .api.schemas import Email, Password, Username
    from .auth import Auth
    from .passwords import password_problem
    from .store import PlayerChanges, PlayerRecord, open_store

    password = os.environ.get(password_env) or getpass.getpass("admin password: ")
    try:
        TypeAdapter(Username).validate_python(username)
        email = TypeAdapter(Email).validate_python(email)
        TypeAdapter(Password).validate_python(password)
    except ValidationError as exc:
        sys.stderr.write(f"llamawool: {exc.errors()[0]['msg']}\n")
        return 2
    # an admin's password always passes the blocklist, whatever the environment
    weak = password_problem(
        password, min_length=settings.password_min_length, blocklist=True, username=username, email=email
    )
    if weak is not None:
        sys.stderr.write(f"llamawool: the password {weak}\n")
        return 2
    store = open_store(settings)
    await store.open()
    try:
        auth = Auth(store, settings)
        password_hash = await auth.hash_password(password)
        player = await store.find_player(username=username) or await store.find_player(email=email)
        if player is None:
            player = PlayerRecord(
                id=uuid.uuid4().hex,
                username=username,
                email=email,
                password_hash=password_hash,
                role="admin",
                is_guest=False,
                created_at=time.time(),
            )
            await store.create_player(player)
            verb = "created"
        else:
            admin: PlayerChanges = {
                "role": "admin",
                "is_guest": False,
                "email": email,
                "username": username,
                "password_hash": password_hash,
            }
            await auth.change_credentials(player.id, admin)  # a new password: every session ends
            verb = "promoted"
        sys.stdout.write(f"admin {username} {verb} (id {player.id})\n")
        return 0
    finally:
        await store.close()


async def erase_player(settings: Settings, args: argparse.Namespace) -> int:
    """`admin erase-player`: erase accounts by id and record their tombstones, as
    `DELETE /players/me` does (docs/privacy.md); for erasures a lost database took with
    it (ids from the `player.erased` log lines) or requests made to support. Run it
    with the servers stopped: a running server's sessions end only when their access
    tokens expire."""
    import time

    from .store import StoreError, open_store, store_from_uri

    try:
        store = store_from_uri(args.uri, settings) if args.uri else open_store(settings)
    except ValueError as exc:
        sys.stderr.write(f"llamawool: {exc}\n")
        return 2
    try:
        await store.open()
        try:
            for player_id in args.player:
                held = await store.get_player(player_id) is not None
                await store.delete_player(player_id, args.at if args.at is not None else time.time())
                sys.stdout.write(f"erased {player_id}{'' if held else ' (not held here: tombstone recorded)'}\n")
        finally:
            await store.close()
    except StoreError as exc:
        sys.stderr.write(f"llamawool admin erase-player: {exc}\n")
        return 1
    return 0


async def schema_tool(settings: Settings, args: argparse.Namespace) -> int:
    """`migrate status` (exit 0: this code can run on the database as it is; 1: steps are
    pending or the database is too new) and `migrate up` (run the pending steps)."""
    from .store import SQLiteStore, StoreError, open_store, store_from_uri

    try:
        store = store_from_uri(args.uri, settings, "inspect") if args.uri else open_store(settings, "inspect")
    except ValueError as exc:
        sys.stderr.write(f"llamawool: {exc}\n")
        return 2
    if args.action == "status" and isinstance(store, SQLiteStore) and not store.path.exists():
        sys.stderr.write(f"llamawool migrate status: no database at {store.path}\n")  # and status creates none
        return 1
    try:
        await store.open()
        try:
            if args.action == "up":
                ran = await store.upgrade_schema()
                for name in ran:
                    sys.stdout.write(f"applied: {name}\n")
            status = await store.schema_status()
        finally:
            await store.close()
    except StoreError as exc:
        sys.stderr.write(f"llamawool migrate {args.action}: {exc}\n")
        return 1
    sys.stdout.write(status.describe() + "\n")
    return 1 if status.pending or status.too_new else 0


async def data_tool(settings: Settings, args: argparse.Namespace) -> int:
    """`backup`, `restore` and `migrate` (format and guarantees: `store/portable.py`)."""
    from .store import SQLiteStore, StoreError, open_store, store_from_uri
    from .store.portable import BackupError, VerifyError, backup, migrate, restore

    def chosen(uri: str | None) -> Store:
        return store_from_uri(uri, settings) if uri else open_store(settings)

    out = sys.stdout.write
    try:
        if args.command == "migrate":
            stores = [store_from_uri(args.source, settings), store_from_uri(args.target, settings)]
        else:
            stores = [chosen(args.uri)]
        # restore --erasures-from: backup files, or stores (whose tombstones are read)
        sources: list[Path | Store] = []
        for source in getattr(args, "erasures_from", None) or []:
            if "://" not in source:
                sources.append(Path(source))
                continue
            # read only: a source on an older schema is not upgraded (it then holds no tombstones)
            tombstones = store_from_uri(source, settings, "inspect")
            if isinstance(tombstones, SQLiteStore) and not tombstones.path.exists():
                raise ValueError(f"--erasures-from {source}: no database at {tombstones.path}")
            sources.append(tombstones)
    except ValueError as exc:
        sys.stderr.write(f"llamawool: {exc}\n")
        return 2
    opened: list[Store] = []
    try:
        for store in [*stores, *(s for s in sources if not isinstance(s, Path))]:
            await store.open()
            opened.append(store)
        if args.command == "backup":
            d = await backup(stores[0], args.out)
            out(f"backup of {stores[0].name} written to {args.out}: {d.describe()}\n")
        elif args.command == "restore":
            d = await restore(stores[0], args.in_file, erasures_from=sources)
            out(f"restored {args.in_file} into {stores[0].name} and verified: {d.describe()}\n")
        else:
            d = await migrate(stores[0], stores[1])
            out(f"migrated {stores[0].name} -> {stores[1].name} and verified counts and checksum: {d.describe()}\n")
        return 0
    except (BackupError, VerifyError, StoreError) as exc:
        sys.stderr.write(f"llamawool {args.command}: {exc}\n")
        return 1
    finally:
        for store in opened:
            await store.close()


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
    sub.add_parser("asyncapi", help="print the AsyncAPI document of the WebSocket")
    p_admin = sub.add_parser("admin", help="operator tasks")
    admin_sub = p_admin.add_subparsers(dest="admin_command", required=True)
    p_create = admin_sub.add_parser("create-admin", help="create an admin account (or promote an existing one)")
    p_create.add_argument("--username", required=True)
    p_create.add_argument("--email", required=True)
    p_create.add_argument(
        "--password-env",
        default="LLAMAWOOL_ADMIN_PASSWORD",
        help="environment variable holding the password (default LLAMAWOOL_ADMIN_PASSWORD); prompted if unset",
    )
    p_create.add_argument("--data-dir", type=Path)
    p_create.add_argument("--settings", type=Path)
    p_erase = admin_sub.add_parser(
        "erase-player", help="erase accounts by id and record their tombstones (as DELETE /players/me does)"
    )
    p_erase.add_argument("--player", action="append", required=True, help="a player id; repeatable")
    p_erase.add_argument("--at", type=float, help="the erasure time (Unix seconds; default now)")
    p_erase.add_argument("--uri", help="sqlite:///PATH or mongodb://... instead of the configured store")
    p_erase.add_argument("--data-dir", type=Path)
    p_erase.add_argument("--settings", type=Path)
    where = "the store the settings select (MONGODB_URI, else SQLite in the data folder), or --uri"
    p_backup = sub.add_parser("backup", help=f"write a portable, compressed backup of {where}")
    p_backup.add_argument("--out", type=Path, required=True, help="the backup file to write (gzip JSON lines)")
    p_restore = sub.add_parser("restore", help=f"load a backup into {where}; safe to re-run")
    p_restore.add_argument("--in", dest="in_file", type=Path, required=True, help="the backup file to read")
    p_restore.add_argument(
        "--erasures-from",
        action="append",
        metavar="FILE_OR_URI",
        help="also re-apply the tombstones (erased accounts) of this backup file or store (the newest backup, "
        "or the live database the restore replaces); repeatable. The backup's and the target's always apply",
    )
    for p in (p_backup, p_restore):
        p.add_argument("--uri", help="sqlite:///PATH or mongodb://... instead of the configured store")
        p.add_argument("--data-dir", type=Path)
        p.add_argument("--settings", type=Path)
    p_migrate = sub.add_parser(
        "migrate",
        help=f"`status` / `up`: the schema version of {where}, and its pending migrations run; "
        "`--from URI --to URI`: copy every record between stores, then verify (safe to re-run)",
    )
    p_migrate.add_argument("action", nargs="?", choices=("status", "up"), help="the schema commands")
    p_migrate.add_argument("--uri", help="status / up: sqlite:///PATH or mongodb://... instead of the configured store")
    p_migrate.add_argument("--data-dir", type=Path)
    p_migrate.add_argument("--from", dest="source", help="copy: sqlite:///PATH or mongodb://...")
    p_migrate.add_argument("--to", dest="target", help="copy: sqlite:///PATH or mongodb://...")
    p_migrate.add_argument("--settings", type=Path)
    args = parser.parse_args(argv)
    if args.command == "migrate":
        copying = args.source is not None or args.target is not None
        if args.action and copying:
            parser.error(f"migrate {args.action} takes no --from/--to (those copy between stores)")
        if not args.action and (args.source is None or args.target is None):
            parser.error("migrate needs `status`, `up`, or both --from and --to")

    try:
        if args.command == "openapi":
            from .api.openapi import openapi_document

            sys.stdout.write(orjson.dumps(openapi_document(), option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        if args.command == "asyncapi":
            from .api.asyncapi import asyncapi_document

            sys.stdout.write(orjson.dumps(asyncapi_document(), option=orjson.OPT_INDENT_2).decode() + "\n")
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
    if args.command == "admin":
        from .store import SchemaError

        try:
            if args.admin_command == "erase-player":
                return asyncio.run(erase_player(settings, args))
            return asyncio.run(create_admin(settings, args.username, args.email, args.password_env))
        except SchemaError as exc:
            sys.stderr.write(f"llamawool admin: {exc}\n")
            return 1
    if args.command == "migrate" and args.action:
        return asyncio.run(schema_tool(settings, args))
    if args.command in ("backup", "restore", "migrate"):
        return asyncio.run(data_tool(settings, args))
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - Windows
        pass
    from .store import SchemaError

    try:
        with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(settings))
    except SchemaError as exc:  # a database this code must not open as it is: say what to do
        structlog.get_logger("llamawool.cli").error("server.schema_refused", error=str(exc))
        sys.stderr.write(f"llamawool: cannot start: {exc}\n")
        return 1
    return 0
