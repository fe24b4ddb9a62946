"""The offline validators: kubernetes-validate, yamllint, hadolint, checkov, shellcheck, JSON schemas.

kubernetes-validate knows the built-in kinds only: the custom resources
(VerticalPodAutoscaler, ServiceMonitor, PrometheusRule) are checked here
structurally instead, and every PromQL expression is parsed.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.helpers import REPO

from .conftest import CHECKOV, DEPLOY, one, tool

Rendered = dict[str, list[dict[str, Any]]]

# The Kubernetes releases the manifests must be valid for: the oldest the chart
# supports that the validator knows, and the newest it knows.
KUBERNETES_VERSIONS = ("1.35.0", "1.37.0")
CUSTOM_KINDS = {"VerticalPodAutoscaler", "ServiceMonitor", "PrometheusRule"}
# Each deliberate checkov skip, annotated in templates/_helpers.tpl with its reason.
CHECKOV_SKIPS = {"CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_40", "CKV_K8S_43"}
# The Dockerfile's one skip, annotated in it: its base is a build argument (the default pinned, checked below).
CHECKOV_SKIPS |= {"CKV_DOCKER_7"}
SHELL_SCRIPTS = sorted(DEPLOY.rglob("*.sh"))
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_manifests_are_valid_kubernetes(rendered: Rendered, version: str) -> None:
    import kubernetes_validate

    checked = set()
    for name, docs in rendered.items():
        for doc in docs:
            if doc["kind"] in CUSTOM_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = f"{name}: {doc['kind']}/{doc['metadata']['name']} (k8s {version})"
                pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")
            checked.add(doc["kind"])
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "Ingress",
        "NetworkPolicy",
        "CronJob",
        "PersistentVolumeClaim",
        "ServiceAccount",
    } <= checked


def test_published_manifests_pass_the_kubernetes_validate_cli() -> None:
    """The plain-YAML files operators apply, through the command itself; only the custom kinds go unchecked."""
    published = sorted((DEPLOY / "rendered").glob("*.yaml"))
    assert published
    result = run(tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSIONS[0], "--quiet", *published)
    assert result.returncode == 0, result.stdout + result.stderr
    for line in (result.stdout + result.stderr).splitlines():
        assert line.startswith("WARN") and any(f"kind {k} " in line for k in CUSTOM_KINDS), line


def test_custom_resources_have_the_shape_their_operators_expect(rendered: Rendered) -> None:
    import promql_parser

    docs = rendered["production"]
    deployment = one(docs, "Deployment")
    vpa = one(docs, "VerticalPodAutoscaler")
    assert vpa["apiVersion"] == "autoscaling.k8s.io/v1"
    assert vpa["spec"]["targetRef"]["name"] == deployment["metadata"]["name"]

    monitor = one(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])

    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert len({a["alert"] for a in alerts}) == len(alerts)
    for alert in alerts:
        assert set(alert) == {"alert", "expr", "for", "labels", "annotations"}, alert["alert"]
        promql_parser.parse(alert["expr"])  # raises on a syntax error
        assert re.fullmatch(r"\d+[smh]", alert["for"])
        assert alert["labels"]["severity"] in {"critical", "warning"}
        assert {"summary", "description", "runbook_url"} <= alert["annotations"].keys()
        assert alert["annotations"]["runbook_url"].endswith("#" + alert["alert"].lower())


def test_the_alerts_cover_what_operators_need(rendered: Rendered) -> None:
    rule = one(rendered["production"], "PrometheusRule")
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    needs = {
        "5xx rate": ("LlamawoolHighErrorRate", 'status=~"5.."'),
        "p95 latency": ("LlamawoolHighLatency", "histogram_quantile(0.95"),
        "pods not ready": ("LlamawoolPodsNotReady", "kube_deployment_status_replicas_available"),
        "MongoDB errors": ("LlamawoolStorageErrors", "llamawool_store_errors_total"),
        "Redis errors": ("LlamawoolCoordinationErrors", "llamawool_coordination_errors_total"),
        "tick overrun": ("LlamawoolTickOverruns", "llamawool_tick_overruns_total"),
        "anti-cheat flag spikes": ("LlamawoolAntiCheatFlagSpike", "llamawool_anticheat_flags_total"),
        "WebSocket saturation": ("LlamawoolWebSocketSaturation", "websocket_connections_active"),
        "backups past the RPO": ("LlamawoolBackupStale", "kube_cronjob_status_last_successful_time"),
    }
    for need, (alert, needle) in needs.items():
        assert alert in alerts, f"no alert for {need}"
        assert needle in alerts[alert], f"{alert} does not watch {needle}"


def test_rendered_files_are_current(render: ModuleType) -> None:
    """deploy/rendered/ and compose's rules are what `make manifests` writes today."""
    stale = [
        str(path.relative_to(REPO))
        for path, text in render.outputs().items()
        if not path.exists() or path.read_text() != text
    ]
    assert not stale, f"out of date: {stale}; run `make manifests`"


def test_yamllint(rendered_files: dict[str, Path]) -> None:
    # Relative paths, so that the config's `ignore` patterns (relative to the repository) apply.
    paths = ["deploy", ".github", ".yamllint.yaml", *rendered_files.values()]
    result = run(tool("yamllint"), "--strict", "-c", REPO / ".yamllint.yaml", *paths)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_dockerfile() -> None:
    result = run(tool("hadolint"), "--no-color", REPO / "Dockerfile")
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_builds_the_image_the_issue_asks_for() -> None:
    """What Docker cannot check here, read off the file: stages, user, healthcheck, command."""
    text = (REPO / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
    assert [stage for _, stage in froms] == ["build", "runtime"]
    # One base for both stages: the official slim image unless a build argument names another.
    assert all(image == "${BASE_IMAGE}" for image, _ in froms)
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-trixie$", text, re.M)
    runtime = text.split("AS runtime", 1)[1]
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert "apt-get" not in text and "gcc" not in text  # no compilers anywhere
    assert "-c constraints.txt" in text  # the lock file
    assert re.search(r"^USER 1001:1001$", runtime, re.M)
    assert "useradd --system --uid 1001" in runtime
    assert re.search(r"^EXPOSE 3000$", runtime, re.M)
    healthcheck = re.search(r"^HEALTHCHECK .*\n\s+CMD (.*)$", runtime, re.M)
    assert healthcheck and "urllib.request" in healthcheck.group(1) and "/health" in healthcheck.group(1)
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "curl" not in instructions and "wget" not in instructions
    assert runtime.rstrip().endswith('CMD ["python", "-m", "llamawool", "serve"]')
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") + 1 :][:4] == ["!pyproject.toml", "!constraints.txt", "!llamawool/", "!config/"]


def test_checkov_finds_nothing_to_fix(rendered_files: dict[str, Path]) -> None:
    """One checkov run over the Dockerfile and every rendered target: zero failed checks."""
    assert CHECKOV.exists(), "checkov is not installed: run `make deploy-deps`"
    files = [REPO / "Dockerfile", *rendered_files.values()]
    args: list[str | Path] = [
        CHECKOV,
        "--skip-download",
        "--framework",
        "dockerfile",
        "kubernetes",
        "-o",
        "json",
        "--compact",
    ]
    for f in files:
        args += ["-f", f]
    result = run(*args, timeout=240)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"dockerfile", "kubernetes"}, result.stderr[-2000:]
    failed = [(c["check_id"], c["resource"]) for r in reports for c in r["results"]["failed_checks"]]
    assert not failed, failed
    skipped = {c["check_id"] for r in reports for c in r["results"]["skipped_checks"]}
    assert skipped <= CHECKOV_SKIPS, skipped - CHECKOV_SKIPS
    assert sum(r["summary"]["passed"] for r in reports) > 200


def test_every_checkov_skip_is_annotated_with_its_reason(rendered: Rendered) -> None:
    seen = set()
    for docs in rendered.values():
        for doc in docs:
            for key, value in (doc["metadata"].get("annotations") or {}).items():
                if key.startswith("checkov.io/skip"):
                    check, _, reason = value.partition("=")
                    assert check in CHECKOV_SKIPS and len(reason) > 40, value
                    seen.add(check)
    for check, reason in re.findall(r"^# checkov:skip=(\w+):(.*)$", (REPO / "Dockerfile").read_text(), re.M):
        assert check in CHECKOV_SKIPS and len(reason) > 40, (check, reason)
        seen.add(check)
    assert seen == CHECKOV_SKIPS


def test_shell_scripts_pass_shellcheck() -> None:
    assert SHELL_SCRIPTS, "no scripts found"
    result = run(tool("shellcheck"), "--severity=style", *SHELL_SCRIPTS)
    assert result.returncode == 0, result.stdout + result.stderr
    for script in SHELL_SCRIPTS:
        assert script.stat().st_mode & 0o111, f"{script} is not executable"


def test_compose_file_matches_the_compose_spec() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", DEPLOY / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflows_match_the_github_workflow_schema() -> None:
    assert WORKFLOWS
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_dashboard_and_provisioning_are_well_formed() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "llamawool.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in (
        "request rate",
        "latency",
        "error rate",
        "online players",
        "websocket",
        "tick",
        "offline credits",
        "anti-cheat",
        "mongodb",
        "redis",
    ):
        assert topic in titles, f"no panel for {topic}"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "llamawool.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    # The chart ships the same file for Grafana's sidecar.
    linked = DEPLOY / "helm" / "llamawool" / "files" / "dashboards" / "llamawool.json"
    assert linked.resolve() == (DEPLOY / "grafana" / "dashboards" / "llamawool.json").resolve()
