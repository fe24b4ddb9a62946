"""The deployment files against what the server really serves.

Probe paths and ports, the metric names in alerts, dashboard, HPA and
prometheus-adapter (checked against a scrape of /metrics from an in-process
server), the settings the manifests set, the routes the Ingress exposes, and a
runbook for every alert.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient

from llamawool.settings import Settings
from tests.helpers import REPO

from .conftest import DEPLOY, by_kind, one

Rendered = dict[str, list[dict[str, Any]]]

# Series that come from Prometheus itself or kube-state-metrics, not from the server.
EXTERNAL_METRICS = {
    "up",
    "kube_deployment_spec_replicas",
    "kube_deployment_status_replicas_available",
    "kube_cronjob_status_last_successful_time",
    "kube_cronjob_created",
}
SETTINGS_ALIASES = {"JWT_SECRET", "MONGODB_URI", "REDIS_URI", "PORT"}


async def exported_names(client: TestClient) -> set[str]:
    """Every sample name /metrics can carry, from its TYPE lines (labelled metrics have no samples yet)."""
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def selectors(expr: str) -> set[str]:
    import promql_parser

    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    assert found, f"no metric in {expr}"
    return found


def alert_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "llamawool.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            metric = re.fullmatch(r"label_values\((\w+), \w+\)", var["definition"])
            assert metric, var["definition"]
            queries.append(metric.group(1))
    return queries


async def test_every_metric_the_operations_files_use_is_exported(client: TestClient, rendered: Rendered) -> None:
    exported = await exported_names(client)
    used: dict[str, set[str]] = {}
    for rule in alert_rules(rendered["production"]):
        used[f"alert {rule['alert']}"] = selectors(rule["expr"])
    for i, query in enumerate(dashboard_queries()):
        used[f"dashboard query {i}"] = selectors(query)
    for doc in by_kind(rendered["production"], "HorizontalPodAutoscaler"):
        used["HPA"] = {m["pods"]["metric"]["name"] for m in doc["spec"]["metrics"] if m["type"] == "Pods"}
    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())
    used["prometheus-adapter"] = {selectors(r["seriesQuery"]).pop() for r in adapter["rules"]["custom"]}
    missing = {
        where: names - exported - EXTERNAL_METRICS
        for where, names in used.items()
        if names - exported - EXTERNAL_METRICS
    }
    assert not missing, f"not exported by the server: {missing}"
    # The issue's dashboard and alert topics really are backed by server metrics.
    every = set().union(*used.values())
    for name in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "llamawool_players_online",
        "websocket_connections_active",
        "llamawool_tick_duration_seconds_bucket",
        "llamawool_offline_credits_total",
        "llamawool_anticheat_flags_total",
        "llamawool_store_commit_duration_seconds_bucket",
        "llamawool_coordination_duration_seconds_bucket",
    ):
        assert name in every and name in exported, name


async def test_probes_answer_where_the_manifests_point(client: TestClient, rendered: Rendered) -> None:
    for name, docs in rendered.items():
        for deployment in by_kind(docs, "Deployment"):
            c = deployment["spec"]["template"]["spec"]["containers"][0]
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert int(env["LLAMAWOOL_PORT"]) == ports["http"] == Settings().port, name
            for probe in ("livenessProbe", "readinessProbe"):
                get = c[probe]["httpGet"]
                assert get["port"] in ports
                resp = await client.get(get["path"])
                assert resp.status == 200, f"{name} {probe} {get['path']}: {resp.status}"
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            assert int(annotations["prometheus.io/port"]) == ports["http"]
            assert (await client.get(annotations["prometheus.io/path"])).status == 200
    for monitor in by_kind(rendered["production"], "ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            assert (await client.get(endpoint["path"])).status == 200


def test_every_place_uses_the_servers_port() -> None:
    port = Settings().port
    assert re.search(rf"^EXPOSE {port}$", (REPO / "Dockerfile").read_text(), re.M)
    assert f"LLAMAWOOL_PORT={port}" in (REPO / "Dockerfile").read_text()
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    apps = sorted(s for s in compose["services"] if s.startswith("app-"))
    assert len(apps) == 2
    nginx = (DEPLOY / "nginx" / "llamawool.conf").read_text()
    for group in ("llamawool", "llamawool_ws"):  # requests, and WebSockets (rebalancing)
        block = nginx[nginx.index(f"upstream {group} {{") :].split("}", 1)[0]
        assert sorted(re.findall(r"^\s*server (\S+):(\d+)", block, re.M)) == [(a, str(port)) for a in apps]
    # Rebalancing: new sockets go to the replica with the fewest, a full one's 503 to the next,
    # and that 503 does not mark the replica failed for other requests.
    ws_group = nginx[nginx.index("upstream llamawool_ws {") :].split("}", 1)[0]
    assert "least_conn;" in ws_group and ws_group.count("max_fails=0") == len(apps)
    ws_location = nginx[nginx.index("location = /api/v1/ws") :].split("}", 1)[0]
    assert "proxy_pass http://llamawool_ws;" in ws_location
    assert "http_503" in re.search(r"proxy_next_upstream ([^;]+);", ws_location)[1].split()  # type: ignore[index]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "llamawool")
    assert job["metrics_path"] == "/metrics"
    assert sorted(job["static_configs"][0]["targets"]) == [f"{a}:{port}" for a in apps]
    values = yaml.safe_load((DEPLOY / "helm" / "llamawool" / "values.yaml").read_text())
    assert values["containerPort"] == values["service"]["port"] == port


def test_compose_and_compose_rules_agree() -> None:
    """The generated rules select namespace and job; compose's scrape job provides both."""
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "llamawool")
    namespace = job["static_configs"][0]["labels"]["namespace"]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules" / "llamawool.rules.yml").read_text())
    server_exprs = [
        r["expr"] for g in rules["groups"] for r in g["rules"] if "llamawool_" in r["expr"] or "http_" in r["expr"]
    ]
    assert server_exprs
    for expr in server_exprs:
        assert f'namespace="{namespace}"' in expr and 'job=~"llamawool(-blue|-green)?"' in expr
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in mounts
    assert prometheus["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_every_setting_the_deployment_sets_exists(rendered: Rendered) -> None:
    """A misspelt LLAMAWOOL_* variable is silently ignored by the server: catch it here."""
    names: set[str] = set()
    for docs in rendered.values():
        for doc in docs:
            spec = doc.get("spec", {})
            pod = spec.get("template", spec.get("jobTemplate", {}).get("spec", {}).get("template", {})).get("spec", {})
            for c in pod.get("containers", []):
                names |= {e["name"] for e in c.get("env", [])}
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    names |= set(compose["x-app"]["environment"])
    names |= set(re.findall(r"\b(LLAMAWOOL_[A-Z0-9_]+)=", (REPO / "Dockerfile").read_text()))
    for path in [*DEPLOY.rglob("*.sh"), *(REPO / ".github" / "workflows").glob("*.yml")]:
        names |= set(re.findall(r"\b(LLAMAWOOL_[A-Z0-9_]+)=", path.read_text()))
    unknown = {
        n
        for n in names
        if n.startswith("LLAMAWOOL_") and n.removeprefix("LLAMAWOOL_").lower() not in Settings.model_fields
    }
    assert not unknown, unknown
    assert {n for n in names if not n.startswith("LLAMAWOOL_")} <= SETTINGS_ALIASES
    assert {"MONGODB_URI", "REDIS_URI", "JWT_SECRET"} <= set(compose["x-app"]["environment"])


def _pod_envs(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Each Deployment's and CronJob's container env (plain values; a Secret's value stands in as '<secret>')."""
    out = {}
    for doc in docs:
        spec = doc.get("spec", {})
        pod = spec.get("template", spec.get("jobTemplate", {}).get("spec", {}).get("template", {})).get("spec", {})
        for c in pod.get("containers", []):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = {e["name"]: e.get("value", "<secret>") for e in c["env"]}
    return out


def test_every_pod_of_every_target_starts_with_the_settings_it_is_given(rendered: Rendered) -> None:
    """Staging and production refuse to start without knowing where client addresses come
    from (and with a weak secret): the manifests must give every pod, the backup job's
    too, what it needs, and production must believe the ingress controller's X-Forwarded-For."""
    from llamawool.settings import load_settings

    for name, docs in rendered.items():
        for pod, env in _pod_envs(docs).items():
            # the mounted secret file stands for a real one; the URIs are Secrets the test cannot read
            environ = {k: v for k, v in env.items() if v != "<secret>" and k != "LLAMAWOOL_JWT_SECRET_FILE"}
            environ["JWT_SECRET"] = "s" * 48
            settings = load_settings(environ=environ)
            if settings.env in ("staging", "production"):
                assert settings.trusted_proxies, f"{name} {pod}: every client would have the ingress's address"


def test_a_public_environment_without_trusted_proxies_does_not_render(render: Any) -> None:
    import helm_python as helm

    for target in ("production", "staging"):
        with pytest.raises(helm.HelmError, match="trustedProxies"):
            render.render(render.TARGETS[target], {"trustedProxies": []})
    direct = render.render(render.TARGETS["production"], {"trustedProxies": [], "clientsConnectDirectly": True})
    env = _pod_envs(direct)
    assert all(e.get("LLAMAWOOL_CLIENTS_CONNECT_DIRECTLY") == "true" for e in env.values()), env
    assert render.render(render.TARGETS["development"], {"trustedProxies": []})  # development may leave it out


async def test_ingress_routes_public_paths_only(client: TestClient, rendered: Rendered) -> None:
    ingress = one(rendered["production"], "Ingress")
    paths = [(p["path"], p["pathType"]) for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]

    def routed(url: str) -> bool:
        return any(
            url == p if kind == "Exact" else url == p or url.startswith(p.rstrip("/") + "/") for p, kind in paths
        )

    for url in ("/api/v1/config", "/api/v1/ws", "/api/v1/openapi.json"):
        assert routed(url), url
        assert (await client.get(url)).status != 404, url
    for url in ("/health", "/ready", "/metrics"):
        assert not routed(url), f"{url} must stay inside the cluster"
    for path, kind in paths:
        if kind == "Exact":
            assert (await client.get(path)).status == 200, path


async def test_the_region_setting_labels_the_metrics(make_client: Any) -> None:
    """values-region-*.yaml set LLAMAWOOL_REGION; Prometheus sees it on llamawool_build_info."""
    client = await make_client(region="europe-west1")
    text = await (await client.get("/metrics")).text()
    assert re.search(r'^llamawool_build_info\{[^}]*region="europe-west1"[^}]*\} 1\.0$', text, re.M), text[:500]


def test_every_alert_has_a_runbook(rendered: Rendered) -> None:
    operations = (REPO / "docs" / "operations.md").read_text()
    headings = set(re.findall(r"^### (\w+)$", operations, re.M))
    alerts = {r["alert"] for docs in rendered.values() for r in alert_rules(docs)}
    assert alerts and not alerts - headings, f"no runbook for {alerts - headings}"
