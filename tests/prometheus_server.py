"""Real Prometheus and Alertmanager (Debian's packages) for tests, run from the files we ship.

`make monitoring-deps` (part of `make test`) installs `prometheus` (with promtool)
and `prometheus-alertmanager` (with amtool). The configurations are the shipped
ones with only what a test must change: the targets and receivers' addresses,
and the timings (scrape and evaluation every second, an alert's `for` and
Alertmanager's group waits cut to seconds), so that an alert fires in seconds
rather than minutes. Expressions, labels, routes and inhibit rules stay as shipped.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO, die_with_parent, free_port

DEPLOY = REPO / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules" / "llamawool.rules.yml"
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.test.yml"))
RULE_TESTS_MAIN = DEPLOY / "prometheus" / "tests" / "llamawool.rules.test.yml"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"


def monitoring_tool(name: str) -> str:
    """promtool, amtool, prometheus or prometheus-alertmanager, from Debian's packages."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make monitoring-deps`", pytrace=False)
    return found


def prometheus_config(
    llamawool_targets: list[str], alertmanager: str, self_target: str, rules_dir: Path, every_s: int = 1
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with this test's targets, rules folder and intervals."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval=f"{every_s}s", evaluation_interval=f"{every_s}s")
    config["rule_files"] = [str(rules_dir / "*.yml")]
    [manager] = config["alerting"]["alertmanagers"]
    manager["static_configs"][0]["targets"] = [alertmanager]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["llamawool"]["scrape_interval"] = f"{every_s}s"
    jobs["llamawool"]["static_configs"][0]["targets"] = llamawool_targets
    jobs["prometheus"]["static_configs"][0]["targets"] = [self_target]
    return config


def rules_with_short_for(for_s: int) -> dict[str, Any]:
    """The shipped rules, each alert's `for` cut to `for_s` seconds (all else as shipped)."""
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = f"{for_s}s"
    return rules


def alertmanager_config(webhook_base: str, every_s: int = 1) -> dict[str, Any]:
    """deploy/alertmanager/alertmanager.yml with each webhook sent to `webhook_base/<receiver>`
    and its waits cut to `every_s` seconds."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    routes = [config["route"], *config["route"].get("routes", [])]
    for route in routes:
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                route[key] = f"{every_s}s"
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{webhook_base}/{receiver['name']}"
    return config


class _Daemon:
    """A server binary in the foreground on a loopback port, ready when /-/ready says so."""

    name = ""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> _Daemon:
        self.work.mkdir(parents=True, exist_ok=True)
        log = self.work / f"{self.name}.log"
        self.proc = subprocess.Popen(
            [*die_with_parent(), *self.command()], stdout=subprocess.DEVNULL, stderr=log.open("ab")
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {timeout}s: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class PrometheusServer(_Daemon):
    """`prometheus` with a config file and its own data folder."""

    name = "prometheus"

    def __init__(self, work: Path, config: dict[str, Any] | None = None) -> None:
        super().__init__(work)
        self.config = config

    def command(self) -> list[str]:
        conf = self.work / "prometheus.yml"
        conf.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return [
            monitoring_tool("prometheus"),
            f"--config.file={conf}",
            f"--storage.tsdb.path={self.work / 'data'}",
            f"--web.listen-address={self.address}",
        ]


class AlertmanagerServer(_Daemon):
    """`prometheus-alertmanager` with a config file, its own data folder and no HA peers."""

    name = "alertmanager"

    def __init__(self, work: Path, config: dict[str, Any]) -> None:
        super().__init__(work)
        self.config = config

    def command(self) -> list[str]:
        conf = self.work / "alertmanager.yml"
        conf.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return [
            monitoring_tool("prometheus-alertmanager"),
            f"--config.file={conf}",
            f"--storage.path={self.work / 'data'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",
        ]
