"""Settings and config files are validated at start, naming the bad field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llamawool.settings import DEV_JWT_SECRET, SettingsError, load_rules, load_settings
from tests.helpers import REPO


def test_production_refuses_the_default_secret() -> None:
    with pytest.raises(SettingsError, match="jwt_secret"):
        load_settings(environ={"LLAMAWOOL_ENV": "production"})


def test_production_refuses_a_short_secret() -> None:
    with pytest.raises(SettingsError, match="jwt_secret"):
        load_settings(environ={"LLAMAWOOL_ENV": "production", "JWT_SECRET": "short"})


def test_production_accepts_a_long_secret_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x" * 48 + "\n")
    s = load_settings(environ={"LLAMAWOOL_ENV": "production", "LLAMAWOOL_JWT_SECRET_FILE": str(secret)})
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
