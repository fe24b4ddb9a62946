"""deploy/alertmanager/alertmanager.yml under amtool (Debian's `prometheus-alertmanager` package).

The live half (an alert from a real Prometheus reaching a webhook through a real
Alertmanager with this file) is tests/e2e/test_monitoring.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.prometheus_server import ALERTMANAGER_CONFIG, RULES, monitoring_tool


def amtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [monitoring_tool("amtool"), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def test_amtool_accepts_the_config() -> None:
    result = amtool("check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_amtool_rejects_a_route_to_a_missing_receiver(tmp_path: Path) -> None:
    """The check above is a real one: a route naming no receiver fails it."""
    broken = tmp_path / "alertmanager.yml"
    broken.write_text(ALERTMANAGER_CONFIG.read_text().replace("receiver: llamawool-critical", "receiver: nobody"))
    result = amtool("check-config", broken)
    assert result.returncode != 0
    assert "nobody" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=LlamawoolDown", "severity=critical"], "llamawool-critical"),
        (["alertname=LlamawoolHighLatency", "severity=warning"], "llamawool-warning"),
        (["alertname=Unknown"], "llamawool-warning"),
    ],
)
def test_alerts_route_by_severity(labels: list[str], receiver: str) -> None:
    result = amtool("config", "routes", "test", "--config.file", ALERTMANAGER_CONFIG, *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [receiver]


def test_every_severity_the_rules_use_has_a_route_and_the_inhibit_rule_names_real_alerts() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    routed = {m for route in config["route"]["routes"] for m in route["matchers"]}
    assert {f'severity="{r["labels"]["severity"]}"' for r in rules} <= routed
    by_name = {r["alert"]: r for r in rules}
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            name = matcher.removeprefix('alertname="').removesuffix('"')
            assert name in by_name, f"the inhibit rule names no alert: {matcher}"
        # LlamawoolDown carries `namespace` as a rule label (absent() keeps none).
        source = by_name[inhibit["source_matchers"][0].removeprefix('alertname="').removesuffix('"')]
        assert set(inhibit["equal"]) <= set(source["labels"])


def test_the_receivers_are_placeholders() -> None:
    """Nothing ships a real endpoint: every webhook points at a .invalid host until an operator sets it."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    urls = [h["url"] for r in config["receivers"] for h in r.get("webhook_configs", [])]
    assert urls and all(".invalid/" in u for u in urls)
