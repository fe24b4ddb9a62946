"""Settings and config files are validated at start, naming the bad field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llamawool.settings import DEV_JWT_SECRET, SettingsError, load_rules, load_settings
from tests.helpers import REPO

# What a public environment needs besides its secret: where client addresses come from.
BEHIND_INGRESS = {"LLAMAWOOL_TRUSTED_PROXIES": "10.0.0.0/8"}


@pytest.mark.parametrize("env", ["staging", "production"])
def test_public_environments_refuse_the_default_secret(env: str) -> None:
    with pytest.raises(SettingsError, match=f"jwt_secret: {env} refuses"):
        load_settings(environ={"LLAMAWOOL_ENV": env, **BEHIND_INGRESS})


@pytest.mark.parametrize("env", ["staging", "production"])
def test_public_environments_refuse_a_short_secret(env: str) -> None:
    with pytest.raises(SettingsError, match=f"jwt_secret: {env} refuses"):
        load_settings(environ={"LLAMAWOOL_ENV": env, "JWT_SECRET": "x" * 31, **BEHIND_INGRESS})


def test_development_and_test_keep_the_development_secret() -> None:
    for env in ("development", "test"):
        assert load_settings(environ={"LLAMAWOOL_ENV": env}).resolved_jwt_secret() == DEV_JWT_SECRET


@pytest.mark.parametrize("env", ["staging", "production"])
def test_public_environments_refuse_to_guess_where_client_addresses_come_from(env: str) -> None:
    """Behind an ingress with no trusted proxy every client would share its address."""
    secret = {"LLAMAWOOL_ENV": env, "JWT_SECRET": "x" * 32}
    with pytest.raises(SettingsError, match=f"trusted_proxies: {env} refuses to start"):
        load_settings(environ=secret)
    assert load_settings(environ={**secret, **BEHIND_INGRESS}).trusted_proxies == ["10.0.0.0/8"]
    direct = load_settings(environ={**secret, "LLAMAWOOL_CLIENTS_CONNECT_DIRECTLY": "true"})
    assert direct.clients_connect_directly and direct.trusted_proxies == []
    with pytest.raises(SettingsError, match="clients_connect_directly: contradicts"):
        load_settings(environ={**secret, **BEHIND_INGRESS, "LLAMAWOOL_CLIENTS_CONNECT_DIRECTLY": "true"})


def test_production_accepts_a_long_secret_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x" * 48 + "\n")
    s = load_settings(
        environ={"LLAMAWOOL_ENV": "production", "LLAMAWOOL_JWT_SECRET_FILE": str(secret), **BEHIND_INGRESS}
    )
    assert s.resolved_jwt_secret() == "x" * 48
    assert s.resolved_jwt_secret() != DEV_JWT_SECRET


def test_environment_overrides_and_aliases() -> None:
    s = load_settings(environ={"PORT": "4000", "LLAMAWOOL_TICK_INTERVAL_S": "0.5", "REDIS_URI": "redis://x:1/0"})
    assert (s.port, s.tick_interval_s, s.redis_uri) == (4000, 0.5, "redis://x:1/0")


def test_a_bad_setting_names_its_field() -> None:
    with pytest.raises(SettingsError, match="tick_interval_s"):
        load_settings(environ={"LLAMAWOOL_TICK_INTERVAL_S": "-1"})


def test_a_heartbeat_must_outlive_its_renewal() -> None:
    """A heartbeat renewed every second with a 1.5 s TTL would read as a dead replica after
    one slow tick, and its farms would be taken over while it is alive."""
    with pytest.raises(SettingsError, match="heartbeat_ttl_s"):
        load_settings(environ={"LLAMAWOOL_HEARTBEAT_S": "1", "LLAMAWOOL_HEARTBEAT_TTL_S": "1.5"})
    s = load_settings(environ={"LLAMAWOOL_HEARTBEAT_S": "0.5", "LLAMAWOOL_HEARTBEAT_TTL_S": "3"})
    assert (s.heartbeat_s, s.heartbeat_ttl_s) == (0.5, 3.0)


def test_a_bad_game_config_names_its_field(tmp_path: Path) -> None:
    config = json.loads((REPO / "config" / "game-config.json").read_text())
    config["antiCheat"]["maxActionsPerMinute"] = 0
    path = tmp_path / "game-config.json"
    path.write_text(json.dumps(config))
    settings = load_settings({"game_config_file": path}, environ={})
    with pytest.raises(SettingsError, match=r"antiCheat\.maxActionsPerMinute"):
        load_rules(settings)


def test_the_server_refuses_to_start_on_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "game-config.json"
    path.write_text('{"production": {}}')
    proc = subprocess.run(
        [sys.executable, "-m", "llamawool", "serve", "--config", str(path), "--data-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "production.baseProductionRate" in proc.stderr


def test_a_public_server_behind_an_unknown_proxy_does_not_start(tmp_path: Path) -> None:
    """`serve` itself, as the container runs it: exit 2 with the field named, before listening."""
    import os

    env = {**os.environ, "LLAMAWOOL_ENV": "production", "JWT_SECRET": "s" * 40, "LLAMAWOOL_DATA_DIR": str(tmp_path)}
    env.pop("LLAMAWOOL_TRUSTED_PROXIES", None)
    env.pop("LLAMAWOOL_CLIENTS_CONNECT_DIRECTLY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "llamawool", "serve", "--port", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "trusted_proxies: production refuses to start" in proc.stderr
