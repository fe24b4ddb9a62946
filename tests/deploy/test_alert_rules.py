"""The alert rules under promtool (Debian's `prometheus` package): checked, and unit-tested.

The chart's PrometheusRule template is the rules' one source; `make manifests`
renders it for docker-compose (deploy/prometheus/rules/), and the unit tests in
deploy/prometheus/tests/ run against that file: every alert fires on a failing
series within its `for` and stays silent on a healthy one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.prometheus_server import RULE_TESTS, RULE_TESTS_MAIN, RULES, monitoring_tool

from .conftest import one

Rendered = dict[str, list[dict[str, Any]]]


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [monitoring_tool("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def alerts_of(groups: list[dict[str, Any]]) -> set[str]:
    return {r["alert"] for g in groups for r in g["rules"] if "alert" in r}


def test_promtool_checks_every_rendered_rule_set(rendered: Rendered, tmp_path: Path) -> None:
    files = [RULES]
    for name, docs in rendered.items():
        path = tmp_path / f"{name}.rules.yml"
        path.write_text(yaml.safe_dump({"groups": one(docs, "PrometheusRule")["spec"]["groups"]}))
        files.append(path)
    result = promtool("check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_fires_and_one_that_stays_silent() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = alerts_of(yaml.safe_load(RULES.read_text())["groups"])
    assert alerts - fires == set(), f"no test where these fire: {alerts - fires}"
    assert alerts - silent == set(), f"no test where these stay silent: {alerts - silent}"


def test_the_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_renders_the_same_rules_in_its_namespace(rendered: Rendered) -> None:
    """What the unit tests cover (compose's file) is what production runs, namespace aside."""
    compose = json.dumps(yaml.safe_load(RULES.read_text())["groups"])
    production = json.dumps(one(rendered["production"], "PrometheusRule")["spec"]["groups"])
    assert production == compose.replace("llamawool-development", "llamawool-production")


def test_a_broken_rule_fails_its_unit_tests(tmp_path: Path) -> None:
    """The unit tests watch the rules: LlamawoolDown selecting a misspelt job fires on healthy replicas."""
    shipped = RULES.read_text()
    broken = shipped.replace('absent(up{namespace="llamawool-development", job=~"llamawool', 'absent(up{job=~"lama', 1)
    assert broken != shipped
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(broken)
    (tmp_path / "tests").mkdir()
    unit_tests = shutil.copy(RULE_TESTS_MAIN, tmp_path / "tests")
    result = promtool("test", "rules", unit_tests)
    assert result.returncode != 0
    assert "alertname: LlamawoolDown" in result.stdout + result.stderr
