"""Settings: defaults < config file < `LLAMAWOOL_*` environment variables.

Validated once at start; a bad value stops the server with a message naming
the field. The game's own numbers live in `config/game.toml` (balance tables)
and `config/game-config.json` (the seed ConfigMap's block).
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .game import BalanceError, Rules, parse_balance, parse_game_config

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG_DIR = PACKAGE_DIR.parent / "config"
DEV_JWT_SECRET = "llamawool-dev-secret-do-not-use-in-production"  # noqa: S105 - the refused default
MIN_PRODUCTION_SECRET_LEN = 32
# Reachable from the internet through an Ingress: a real secret and a known client address.
PUBLIC_ENVS = ("staging", "production")


class SettingsError(ValueError):
    """Settings are invalid; the message names the field."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    env: Literal["development", "test", "staging", "production"] = "development"
    region: str = "local"
    host: str = "127.0.0.1"
    port: int = Field(3000, ge=0, le=65535)
    data_dir: Path = Path("data")
    config_dir: Path = DEFAULT_CONFIG_DIR
    game_config_file: Path | None = Field(None, description="the ConfigMap's game-config.json; default config_dir/")
    balance_file: Path | None = Field(None, description="balance tables; default config_dir/game.toml")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    jwt_secret: str = DEV_JWT_SECRET
    jwt_secret_file: Path | None = None
    password_min_length: int = Field(8, ge=8, le=64, description="ASVS 6.2.1: at least 8 (15 recommended)")
    password_blocklist: bool | None = Field(
        None,
        description="refuse the most common passwords and the account's own name or email; "
        "default: on in staging and production, off in development and test",
    )
    access_token_ttl_s: int = Field(900, gt=0)
    refresh_token_ttl_s: int = Field(30 * 24 * 3600, gt=0)
    revocation_poll_s: float = Field(
        2.0, gt=0, description="how often a replica reads the sessions ended on other replicas"
    )
    events_max_multiplier: float = Field(10.0, gt=1, description="the largest multiplier a live event may have")
    events_poll_s: float = Field(
        5.0, gt=0, description="how often a replica re-reads the live-event schedule (changes are also announced)"
    )

    tick_interval_s: float = Field(1.0, gt=0, le=60)
    loop_lag_sample_s: float = Field(
        0.25, gt=0, le=10, description="how often the event loop's lag is sampled (llamawool_event_loop_lag_*)"
    )
    tick_slices: int = Field(
        10, ge=1, le=100, description="phases a tick's sending is spread over: every farm keeps one tick per interval"
    )
    commit_max_batch: int = Field(512, gt=0)
    snapshot_history: int = Field(50, gt=0, description="newest snapshots kept per farm")
    snapshot_daily_days: int = Field(30, ge=0, description="plus the first snapshot of each day for this many days")
    idempotency_ttl_s: float = Field(86400, gt=0, description="how long an Idempotency-Key is remembered")
    save_secret: str | None = Field(None, description="HMAC key for cloud saves; derived from the JWT secret if unset")

    leaderboard_push_s: float = Field(5.0, gt=0, le=10, description="how often online farms' scores are pushed")
    leaderboard_view_refresh_s: float = Field(5.0, ge=0, description="first pages reuse a frozen view this young")
    leaderboard_max_page: int = Field(100, gt=0)

    # anti-cheat limits beyond the ConfigMap's antiCheat block (all per window)
    shear_requests_per_minute: int = Field(1200, gt=0)
    login_failures_per_window: int = Field(10, gt=0, description="failed logins per IP+login per window")
    login_failure_window_s: float = Field(900, gt=0)
    guests_per_ip_per_hour: int = Field(
        120, gt=0, description="new guests per client address; carrier-grade NAT shares one (docs/decisions.md)"
    )
    registrations_per_ip_per_hour: int = Field(20, gt=0)
    data_exports_per_hour: int = Field(4, gt=0, description="`GET /players/me/export` per player per hour")
    violation_window_s: float = Field(3600, gt=0)
    flag_decay_s: float = Field(86400, gt=0)
    ws_violations_before_close: int = Field(10, gt=0, description="limit errors on one socket within a minute")
    trusted_proxies: list[str] = Field(default_factory=list, description="CIDRs whose X-Forwarded-For is believed")
    clients_connect_directly: bool = Field(
        False,
        description="no proxy in front: the peer address is the client's (staging and production "
        "refuse to start unless this or trusted_proxies is set)",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="origins (scheme://host[:port]) whose pages may call the API; empty: same-origin only",
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    migrate_on_start: bool = Field(
        True,
        description="run pending schema migrations when the store opens; false: refuse to start until "
        "`python -m llamawool migrate up` has run",
    )

    max_body_bytes: int = Field(64 * 1024, gt=0)
    ws_max_message_bytes: int = Field(4096, gt=0)
    ws_auth_timeout_s: float = Field(5.0, gt=0)
    ws_heartbeat_s: float = Field(30.0, gt=0)
    ws_send_queue: int = Field(64, gt=0)
    drain_grace_s: float = Field(25.0, gt=0)
    drain_flush_s: float = Field(
        5.0, gt=0, description="how long a socket sent away by a drain waits for its in-flight action's result"
    )
    gc_young_threshold: int = Field(
        50_000, ge=700, description="new objects between young garbage collections (Python's default: 700)"
    )

    lease_ttl_s: float = Field(10.0, gt=0, description="farm ownership lease (replicas)")
    rpc_timeout_s: float = Field(3.0, gt=0, description="how long to wait for a farm's owner to answer")
    heartbeat_s: float = Field(1.0, gt=0, description="how often a replica renews its heartbeat (replicas)")
    heartbeat_ttl_s: float = Field(
        5.0, gt=0, description="a replica whose heartbeat is this old is gone: its farms are taken over at once"
    )
    owner_max_inflight: int = Field(
        256, gt=0, description="requests from peers an owner serves at once; beyond, it answers busy (503)"
    )
    busy_retry_after_s: int = Field(1, gt=0, description="Retry-After of a 503 because a farm's owner is busy")

    # rebalancing sockets over replicas (llamawool/api/rebalance.py)
    rebalance_interval_s: float = Field(
        3.0, gt=0, description="how often a replica reports its sockets and sheds what it holds above its share"
    )
    rebalance_tolerance: float = Field(
        0.1, ge=0, description="a replica sheds only when it holds more than fair share x (1 + this)"
    )
    rebalance_min_excess: int = Field(2, ge=1, description="sockets above fair share before any is shed")
    rebalance_step: float = Field(
        0.35, ge=0, le=1, description="fraction of the excess shed per interval; 0 turns shedding off"
    )
    rebalance_pool: str = Field(
        "",
        description="replicas rebalance only with replicas of the same pool (those behind one load balancer; "
        "the chart gives each blue-green colour its own)",
    )
    rebalance_warmup_s: float = Field(
        20.0, ge=0, description="a replica sheds nothing this long after it starts (its peers' reports settle)"
    )

    mongodb_uri: str | None = Field(None, description="MongoDB replaces SQLite when set (MONGODB_URI)")
    mongodb_pool_size: int = Field(50, gt=0, description="connections per replica")
    mongodb_timeout_s: float = Field(
        5.0, gt=0, description="connect, socket and write-concern timeouts; the transaction retry budget"
    )
    mongodb_select_timeout_s: float = Field(
        1.0, gt=0, description="how long an operation waits for a reachable primary before it fails (503)"
    )
    redis_uri: str | None = Field(None, description="Redis replaces in-process coordination when set (REDIS_URI)")
    redis_pool_size: int = Field(32, ge=2, description="connections per replica (one holds the fan-out listener)")
    redis_timeout_s: float = Field(2.0, gt=0, description="connect, command and pool-wait timeout")

    @model_validator(mode="after")
    def _public_needs_a_real_secret(self) -> Settings:
        """Staging is as public as production (the pipeline's smoke test goes through
        its Ingress): a token signed with the published development secret, or a
        guessable short one, would open any account there too."""
        if self.env in PUBLIC_ENVS:
            secret = self.resolved_jwt_secret()
            if secret == DEV_JWT_SECRET or len(secret) < MIN_PRODUCTION_SECRET_LEN:
                raise ValueError(
                    f"jwt_secret: {self.env} refuses to start with the default or a short secret "
                    f"(set JWT_SECRET or LLAMAWOOL_JWT_SECRET_FILE, at least {MIN_PRODUCTION_SECRET_LEN} characters)"
                )
        return self

    @model_validator(mode="after")
    def _public_knows_its_clients_addresses(self) -> Settings:
        """Behind an ingress with no trusted proxy every client has the ingress's
        address: per-IP limits become one budget for the whole region and a
        stranger's failed logins lock the owner out. A public server must be told
        which it is."""
        if self.env in PUBLIC_ENVS and not self.trusted_proxies and not self.clients_connect_directly:
            raise ValueError(
                f"trusted_proxies: {self.env} refuses to start without knowing where client addresses come from: "
                "set LLAMAWOOL_TRUSTED_PROXIES to the ingress controller's CIDRs, or "
                "LLAMAWOOL_CLIENTS_CONNECT_DIRECTLY=true when nothing proxies the server"
            )
        if self.trusted_proxies and self.clients_connect_directly:
            raise ValueError("clients_connect_directly: contradicts trusted_proxies (set one of them)")
        return self

    def blocks_weak_passwords(self) -> bool:
        if self.password_blocklist is not None:
            return self.password_blocklist
        return self.env in PUBLIC_ENVS

    def resolved_jwt_secret(self) -> str:
        if self.jwt_secret_file is not None:
            try:
                return self.jwt_secret_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"jwt_secret_file: cannot read {self.jwt_secret_file}: {exc.strerror}") from None
        return self.jwt_secret

    @model_validator(mode="after")
    def _heartbeat_outlives_its_renewal(self) -> Settings:
        if self.heartbeat_ttl_s <= 2 * self.heartbeat_s:
            raise ValueError("heartbeat_ttl_s: must exceed twice heartbeat_s, or a busy tick reads as a dead replica")
        return self

    @model_validator(mode="after")
    def _proxies_are_networks(self) -> Settings:
        import ipaddress

        for cidr in self.trusted_proxies:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {cidr!r} is not an IP network") from None
        return self

    @model_validator(mode="after")
    def _origins_are_origins(self) -> Settings:
        import re

        for origin in self.cors_origins:
            # an exact origin, as browsers send it: no wildcard, path or trailing slash
            if not re.fullmatch(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?", origin):
                raise ValueError(f"cors_origins: {origin!r} is not an origin such as https://play.example.com")
        return self

    def resolved_save_secret(self) -> bytes:
        import hashlib
        import hmac

        if self.save_secret:
            return self.save_secret.encode()
        return hmac.new(self.resolved_jwt_secret().encode(), b"llamawool-saves", hashlib.sha256).digest()

    @property
    def game_config_path(self) -> Path:
        return self.game_config_file or self.config_dir / "game-config.json"

    @property
    def balance_path(self) -> Path:
        return self.balance_file or self.config_dir / "game.toml"


# Names the deployment files use, beside the LLAMAWOOL_* spelling.
ENV_ALIASES = {"JWT_SECRET": "jwt_secret", "MONGODB_URI": "mongodb_uri", "REDIS_URI": "redis_uri", "PORT": "port"}


def settings_from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    environ = dict(os.environ if environ is None else environ)
    out: dict[str, Any] = {}
    for name, field in ENV_ALIASES.items():
        if environ.get(name):
            out[field] = environ[name]
    for name, value in environ.items():
        if name.startswith("LLAMAWOOL_"):
            key = name.removeprefix("LLAMAWOOL_").lower()
            if key in ("trusted_proxies", "cors_origins"):
                out[key] = [v.strip() for v in value.split(",") if v.strip()]
            elif key in Settings.model_fields:
                out[key] = value
    return out


def load_settings(
    overrides: dict[str, Any] | None = None,
    settings_file: Path | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Defaults < settings file (TOML or JSON) < environment < explicit overrides (CLI flags)."""
    merged: dict[str, Any] = {}
    if settings_file is not None:
        merged.update(_read_file(settings_file))
    merged.update(settings_from_env(environ))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise SettingsError(
            "; ".join(f"settings: {'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        ) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected an object at the top level")
    return data


def load_rules(settings: Settings | None = None) -> Rules:
    """Read and validate the balance tables and the ConfigMap block."""
    settings = settings or Settings()
    balance = _read_file(settings.balance_path)
    config = _read_file(settings.game_config_path)
    try:
        return Rules(
            parse_balance(balance, str(settings.balance_path)),
            parse_game_config(config, str(settings.game_config_path)),
        )
    except BalanceError as exc:
        raise SettingsError(str(exc)) from None
