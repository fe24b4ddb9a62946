"""The Helm chart: strict lint, the values schema, and what it renders for every target.

The numbers are the seed's (shared/seed/deployment-scaling.md): its
game-service manifests for the chart's defaults, its per-environment Helm
values and scaling settings for values-<environment>.yaml.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.helpers import REPO

from .conftest import CHART, by_kind, one

Rendered = dict[str, list[dict[str, Any]]]

# environment -> (min replicas, max replicas, CPU target %, requests, limits, pull policy)
SEED_ENVIRONMENTS = {
    "development": (1, 3, 80, {"cpu": "100m", "memory": "128Mi"}, {"cpu": "200m", "memory": "256Mi"}, "Always"),
    "staging": (2, 10, 70, {"cpu": "200m", "memory": "256Mi"}, {"cpu": "500m", "memory": "512Mi"}, "Always"),
    "production": (3, 50, 60, {"cpu": "500m", "memory": "512Mi"}, {"cpu": "1000m", "memory": "1Gi"}, "IfNotPresent"),
}
SEED_BEHAVIOR = {
    "scaleUp": {
        "stabilizationWindowSeconds": 60,
        "policies": [
            {"type": "Percent", "value": 100, "periodSeconds": 60},
            {"type": "Pods", "value": 2, "periodSeconds": 60},
        ],
        "selectPolicy": "Max",
    },
    "scaleDown": {
        "stabilizationWindowSeconds": 300,
        "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
        "selectPolicy": "Min",
    },
}
OPTIONAL_KINDS = {
    "verticalPodAutoscaler": "VerticalPodAutoscaler",
    "ingress": "Ingress",
    "networkPolicy": "NetworkPolicy",
}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def chart_values(render: ModuleType, target: str) -> dict[str, Any]:
    base = yaml.safe_load((CHART / "values.yaml").read_text())
    return render.merge(base, render.values_for(render.TARGETS[target]))


def test_every_target_passes_strict_lint(render: ModuleType) -> None:
    import helm_python as helm

    for name, target in render.TARGETS.items():
        report = helm.lint(str(CHART), render.values_for(target), strict=True, namespace=target.namespace)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems and not report["errors"], f"{name}: {report}"


@pytest.mark.parametrize(
    "bad",
    [
        {"environment": "prod"},
        {"replicaCount": 0},
        {"image": {"digest": "latest"}},
        {"extraEnv": [{"name": "PATH", "value": "/usr/bin"}]},
        {"autoscaling": {"targetCPUUtilizationPercentage": 170}},
        {"drain": {"graceSeconds": 0}},
        {"ingress": {"paths": [{"path": "api", "pathType": "Prefix"}]}},
        {"secrets": {"jwt": {"name": "x", "key": ""}}},
        {"replicaCount": 3, "replicas": 3},
    ],
    ids=lambda v: json.dumps(v)[:40],
)
def test_values_schema_rejects_mistakes(bad: dict[str, Any]) -> None:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(chart.merge_values({}))  # the defaults pass
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(chart.merge_values(bad))


def test_chart_defaults_are_the_seed_game_service(render: ModuleType) -> None:
    docs = render.render(render.Target("defaults", (), "llamawool"))
    c = container(one(docs, "Deployment"))
    assert c["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"cpu": "500m", "memory": "512Mi"},
    }
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 20)
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"]
        for m in hpa["metrics"]
        if m["type"] == "Resource"
    }
    assert targets == {"cpu": 70, "memory": 80}


@pytest.mark.parametrize("environment", SEED_ENVIRONMENTS)
def test_each_environment_carries_the_seed_numbers(rendered: Rendered, environment: str) -> None:
    low, high, cpu, requests, limits, pull = SEED_ENVIRONMENTS[environment]
    docs = rendered[environment]
    c = container(one(docs, "Deployment"))
    assert c["resources"] == {"requests": requests, "limits": limits}
    assert c["imagePullPolicy"] == pull
    assert env_of(c)["LLAMAWOOL_ENV"] == environment
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (low, high)
    resource = {m["resource"]["name"]: m["resource"]["target"] for m in hpa["metrics"] if m["type"] == "Resource"}
    assert resource == {
        "cpu": {"type": "Utilization", "averageUtilization": cpu},
        "memory": {"type": "Utilization", "averageUtilization": 80},
    }
    assert hpa["behavior"] == SEED_BEHAVIOR


def test_replicas_come_from_values_when_autoscaling_is_off(render: ModuleType) -> None:
    for environment, (low, *_rest) in SEED_ENVIRONMENTS.items():
        docs = render.render(render.TARGETS[environment], {"autoscaling": {"enabled": False}})
        assert one(docs, "Deployment")["spec"]["replicas"] == low
        assert not by_kind(docs, "HorizontalPodAutoscaler")
    # With the HPA on, the Deployment leaves replicas to it (an upgrade must not reset them).
    assert "replicas" not in one(render.render(render.TARGETS["production"]), "Deployment")["spec"]


def test_deployment_rolls_drains_and_runs_locked_down(rendered: Rendered, render: ModuleType) -> None:
    values = chart_values(render, "production")
    deployment = one(rendered["production"], "Deployment")
    spec = deployment["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = spec["template"]["spec"]
    c = container(deployment)
    assert c["args"] == ["python", "-m", "llamawool", "serve"]
    assert c["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["initialDelaySeconds"] == 30 and c["readinessProbe"]["periodSeconds"] == 5

    # preStop pause, then the server's own drain, then SIGKILL only after both.
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = int(env_of(c)["LLAMAWOOL_DRAIN_GRACE_S"])
    assert pre_stop > 0 and grace == values["drain"]["graceSeconds"] == 25
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace

    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["runAsUser"] == 1001 and sc["runAsGroup"] == 1001
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    assert pod["automountServiceAccountToken"] is False

    # Writable: only /data and /tmp (emptyDirs); the config is read-only at /app/config.
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["/app/config"]["readOnly"] is True
    assert volumes[mounts["/app/config"]["name"]]["configMap"]["name"] == "llamawool-config"
    assert env_of(c)["LLAMAWOOL_CONFIG_DIR"] == "/app/config"
    writable = {p for p, m in mounts.items() if not m.get("readOnly")}
    assert writable == {"/data", "/tmp"}  # noqa: S108 - the container's own emptyDir
    assert all("emptyDir" in volumes[mounts[p]["name"]] for p in writable)
    assert env_of(c)["LLAMAWOOL_DATA_DIR"] == "/data"

    # Spread: another node preferred, zones and nodes balanced; the seed's tolerations.
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    keys = {t["topologyKey"] for t in pod["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert {t["key"]: t["tolerationSeconds"] for t in pod["tolerations"]} == {
        "node.kubernetes.io/not-ready": 300,
        "node.kubernetes.io/unreachable": 300,
    }
    # The pods roll when the game config changes.
    assert "checksum/config" in spec["template"]["metadata"]["annotations"]


def test_configmap_is_the_repository_config_byte_for_byte(rendered: Rendered) -> None:
    """One source of truth: the chart links config/, and the rendered data must equal it."""
    game_config = (REPO / "config" / "game-config.json").read_text()
    balance = (REPO / "config" / "game.toml").read_text()
    for name, docs in rendered.items():
        data = next(d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config"))["data"]
        assert data["game-config.json"].rstrip("\n") == game_config.rstrip("\n"), name
        assert json.loads(data["game-config.json"]) == json.loads(game_config)
        assert data["game.toml"].rstrip("\n") == balance.rstrip("\n"), name
        assert set(json.loads(data["game-config.json"])) == {"production", "antiCheat", "cache"}


def test_secrets_are_referenced_never_rendered(rendered: Rendered) -> None:
    for name, docs in rendered.items():
        assert not by_kind(docs, "Secret"), f"{name} renders a Secret"
    c = container(one(rendered["production"], "Deployment"))
    env = env_of(c)
    assert env["MONGODB_URI"] == {"secretKeyRef": {"name": "llamawool-database", "key": "mongodb-uri"}}
    assert env["REDIS_URI"] == {"secretKeyRef": {"name": "llamawool-cache", "key": "redis-uri"}}
    assert "JWT_SECRET" not in env  # mounted as a file instead
    jwt_file = env["LLAMAWOOL_JWT_SECRET_FILE"]
    mount = next(m for m in c["volumeMounts"] if jwt_file.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    pod = one(rendered["production"], "Deployment")["spec"]["template"]["spec"]
    secret = next(v for v in pod["volumes"] if v["name"] == mount["name"])["secret"]
    assert secret["secretName"] == "llamawool-auth"


def test_hpa_scales_on_online_players_per_pod(rendered: Rendered) -> None:
    hpa = one(rendered["production"], "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llamawool"}
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods == [
        {"metric": {"name": "llamawool_players_online"}, "target": {"type": "AverageValue", "averageValue": "1000"}}
    ]
    # The prometheus-adapter rule serves exactly that metric name.
    adapter = yaml.safe_load((REPO / "deploy" / "prometheus-adapter" / "values.yaml").read_text())
    names = [r["name"]["as"] for r in adapter["rules"]["custom"]]
    assert "llamawool_players_online" in names
    rule = adapter["rules"]["custom"][names.index("llamawool_players_online")]
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_vpa_recommends_within_the_seed_bounds(rendered: Rendered) -> None:
    vpa = one(rendered["production"], "VerticalPodAutoscaler")["spec"]
    assert vpa["targetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llamawool"}
    assert vpa["updatePolicy"] == {"updateMode": "Off"}
    policy = vpa["resourcePolicy"]["containerPolicies"][0]
    assert policy["containerName"] == container(one(rendered["production"], "Deployment"))["name"]
    assert policy["minAllowed"] == {"cpu": "50m", "memory": "128Mi"}
    assert policy["maxAllowed"] == {"cpu": "2000m", "memory": "2Gi"}
    assert policy["controlledResources"] == ["cpu", "memory"]


def test_pdb_and_service_select_the_deployments_pods(rendered: Rendered) -> None:
    docs = rendered["production"]
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    service = one(docs, "Service")["spec"]
    assert service["selector"].items() <= labels.items()
    assert service["ports"] == [{"name": "http", "port": 3000, "targetPort": "http", "protocol": "TCP"}]


def test_ingress_has_tls_websocket_timeouts_and_only_public_paths(rendered: Rendered) -> None:
    ingress = one(rendered["production"], "Ingress")
    notes = ingress["metadata"]["annotations"]
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(notes["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    # Rebalancing (docs/replicas.md): round robin, and a full replica's 503 sends the socket on.
    assert notes["nginx.ingress.kubernetes.io/load-balance"] == "round_robin"
    assert "http_503" in notes["nginx.ingress.kubernetes.io/proxy-next-upstream"].split()
    assert ingress["spec"]["tls"] == [{"secretName": "llamawool-tls", "hosts": ["api.llamawool.com"]}]
    paths = [p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert "/api" in paths
    # Seed: development runs without TLS.
    assert "tls" not in one(rendered["development"], "Ingress")["spec"]


def test_network_policy_allows_only_what_the_server_needs(rendered: Rendered) -> None:
    policy = one(rendered["production"], "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert [p["port"] for p in policy["ingress"][0]["ports"]] == ["http"]
    namespaces = {
        f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for f in policy["ingress"][0]["from"]
    }
    assert namespaces == {"ingress-nginx", "monitoring"}
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 27017, 6379}


@pytest.mark.parametrize("part", sorted(OPTIONAL_KINDS))
def test_optional_parts_switch_off(render: ModuleType, rendered: Rendered, part: str) -> None:
    kind = OPTIONAL_KINDS[part]
    assert by_kind(rendered["production"], kind)
    docs = render.render(render.TARGETS["production"], {part: {"enabled": False}})
    assert not by_kind(docs, kind)


def test_monitoring_parts_switch_off(render: ModuleType) -> None:
    off = {
        "metrics": {
            "serviceMonitor": {"enabled": False},
            "prometheusRule": {"enabled": False},
            "dashboard": {"enabled": False},
        }
    }
    docs = render.render(render.TARGETS["production"], off)
    assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PrometheusRule")
    assert [d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")] == ["llamawool-config"]


def test_backup_cronjob_meets_the_rpo_and_retention(rendered: Rendered, render: ModuleType) -> None:
    docs = rendered["production"]
    cron = one(docs, "CronJob")
    assert cron["spec"]["schedule"] == "*/15 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    script = c["args"][0]
    # The script itself runs in tests/deploy/test_backup_cronjob.py; in the pod it writes to /backups.
    assert 'dir="${BACKUP_DIR:-/backups}"' in script and '-m llamawool backup --out "$out.partial"' in script
    assert f"-mmin +{30 * 24 * 60} " in script  # retention: 30 days
    volumes = {v["name"]: v for v in pod["volumes"]}
    backups = next(m for m in c["volumeMounts"] if m["mountPath"] == "/backups")
    claim = volumes[backups["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    # The backup reads the same store as the server, with the same settings.
    server_env = env_of(container(one(docs, "Deployment")))
    backup_env = env_of(c)
    for name in ("MONGODB_URI", "LLAMAWOOL_ENV", "LLAMAWOOL_JWT_SECRET_FILE", "LLAMAWOOL_CONFIG_DIR"):
        assert backup_env[name] == server_env[name]
    assert not {"BACKUP_DIR", "PYTHON"} & backup_env.keys()  # the test's overrides only
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    # No backups where there is no shared database to back up.
    assert not by_kind(rendered["development"], "CronJob")


def test_blue_green_runs_two_colours_behind_one_service(render: ModuleType) -> None:
    extra = {
        "blueGreen": {
            "active": "green",
            "blue": {"enabled": True, "tag": "1.0.0"},
            "green": {"enabled": True, "tag": "1.1.0"},
        }
    }
    docs = render.render(render.TARGETS["production-blue-green"], extra)
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    assert set(deployments) == {"llamawool-blue", "llamawool-green"}
    assert container(deployments["llamawool-blue"])["image"].endswith(":1.0.0")
    assert container(deployments["llamawool-green"])["image"].endswith(":1.1.0")
    services = {s["metadata"]["name"]: s["spec"]["selector"] for s in by_kind(docs, "Service")}
    assert services["llamawool"]["llamawool.io/color"] == "green"
    assert services["llamawool-blue"]["llamawool.io/color"] == "blue"
    for name, deployment in deployments.items():
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert services[name].items() <= pod_labels.items()
        # the idle colour's empty pods must not make the live one shed its sockets
        assert env_of(container(deployment))["LLAMAWOOL_REBALANCE_POOL"] == pod_labels["llamawool.io/color"]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler")} == set(deployments)
    assert {p["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget")} == set(deployments)
    monitor = one(docs, "ServiceMonitor")["spec"]["selector"]
    assert monitor["matchExpressions"] == [{"key": "llamawool.io/color", "operator": "Exists"}]


def test_region_files_set_the_region_and_its_host(rendered: Rendered) -> None:
    regions = [name for name in rendered if name.startswith("production-") and name != "production-blue-green"]
    assert len(regions) >= 2
    for name in regions:
        region = name.removeprefix("production-")
        c = container(one(rendered[name], "Deployment"))
        assert env_of(c)["LLAMAWOOL_REGION"] == region
        hosts = one(rendered[name], "Ingress")["spec"]["rules"]
        assert len(hosts) == 2 and hosts[0]["host"] == "api.llamawool.com"
        assert c["resources"] == {
            "requests": SEED_ENVIRONMENTS["production"][3],
            "limits": SEED_ENVIRONMENTS["production"][4],
        }
