"""Render the Helm chart offline (helm-python-sdk: Helm v4's SDK, no helm binary).

`make manifests` runs this file: it writes the production manifests to
deploy/rendered/ for operators who apply plain YAML, and the alert rules for
docker-compose's Prometheus to deploy/prometheus/rules/. `--check` only
compares, so a test can keep both current. tests/deploy imports the functions.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
CHART = DEPLOY / "helm" / "llamawool"
RENDERED = DEPLOY / "rendered"
COMPOSE_RULES = DEPLOY / "prometheus" / "rules" / "llamawool.rules.yml"
RELEASE = "llamawool"

# Install order, as `helm install` applies kinds.
KIND_ORDER = [
    "Namespace",
    "NetworkPolicy",
    "ServiceAccount",
    "Secret",
    "ConfigMap",
    "PersistentVolumeClaim",
    "Service",
    "Deployment",
    "HorizontalPodAutoscaler",
    "VerticalPodAutoscaler",
    "PodDisruptionBudget",
    "CronJob",
    "Ingress",
    "ServiceMonitor",
    "PrometheusRule",
]


@dataclass(frozen=True)
class Target:
    """One way the chart is installed: its values files (in -f order) and namespace."""

    name: str
    values_files: tuple[str, ...]
    namespace: str


ENVIRONMENTS = {
    "development": Target("development", ("values-development.yaml",), "llamawool-development"),
    "staging": Target("staging", ("values-staging.yaml",), "llamawool-staging"),
    "production": Target("production", ("values-production.yaml",), "llamawool-production"),
}
REGIONS = {
    f"production-{p.stem.removeprefix('values-region-')}": Target(
        f"production-{p.stem.removeprefix('values-region-')}",
        ("values-production.yaml", p.name),
        "llamawool-production",
    )
    for p in sorted(CHART.glob("values-region-*.yaml"))
}
BLUE_GREEN = Target(
    "production-blue-green",
    ("values-production.yaml", "../../blue-green/values-blue-green.yaml"),
    "llamawool-production",
)
TARGETS = {**ENVIRONMENTS, **REGIONS, BLUE_GREEN.name: BLUE_GREEN}
# What `make manifests` writes (file name under deploy/rendered/ -> target).
PUBLISHED = {"production.yaml": ENVIRONMENTS["production"], "production-blue-green.yaml": BLUE_GREEN}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's `-f a.yaml -f b.yaml`: maps merge deeply, anything else is replaced, null deletes."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def values_for(target: Target) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in target.values_files:
        loaded = yaml.safe_load((CHART / name).read_text()) or {}
        values = merge(values, loaded)
    return values


def render(target: Target, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The target's manifests as objects, in install order."""
    import helm_python as helm

    values = merge(values_for(target), extra or {})
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)
        files = chart.render(values, name=RELEASE, namespace=target.namespace, is_install=True)
    docs: list[dict[str, Any]] = []
    for path in sorted(files):
        if not path.endswith(".yaml"):
            continue  # NOTES.txt
        docs.extend(d for d in yaml.safe_load_all(files[path]) if d)
    return sorted(docs, key=_install_order)


def _install_order(doc: dict[str, Any]) -> tuple[int, str]:
    kind = doc.get("kind", "")
    rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
    return rank, doc.get("metadata", {}).get("name", "")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (config files, scripts, the dashboard) as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value and not any(line != line.rstrip() for line in value.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=120)


def to_yaml(docs: list[dict[str, Any]], header: str) -> str:
    body = "---\n".join(dump(d) for d in docs)
    return header + "---\n" + body


def compose_rules() -> str:
    """The PrometheusRule's groups as a plain rules file, scoped like compose's scrape job.

    Every group the chart can render is in it (backups on), so this one file is what
    promtool's unit tests (deploy/prometheus/tests/) and the cluster test's Prometheus load.
    """
    docs = render(ENVIRONMENTS["development"], {"backup": {"enabled": True}})
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    header = (
        "# Generated by `make manifests` from deploy/helm/llamawool/templates/prometheusrule.yaml\n"
        "# (values-development.yaml with backup.enabled, namespace llamawool-development): do not edit by hand.\n"
    )
    return header + dump({"groups": rule["spec"]["groups"]})


def outputs() -> dict[Path, str]:
    out: dict[Path, str] = {}
    for file_name, target in PUBLISHED.items():
        header = (
            f"# Generated by `make manifests` from deploy/helm/llamawool with {', '.join(target.values_files)}\n"
            f"# (release {RELEASE}, namespace {target.namespace}): do not edit by hand.\n"
            "# Apply: kubectl create namespace llamawool-production; create the Secrets (docs/operations.md);\n"
            f"#        kubectl apply -f deploy/rendered/{file_name}\n"
            "# VerticalPodAutoscaler, ServiceMonitor and PrometheusRule need their CRDs installed.\n"
        )
        out[RENDERED / file_name] = to_yaml(render(target), header)
    out[COMPOSE_RULES] = compose_rules()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        verb = "out of date" if args.check else "written"
        print(f"{path.relative_to(REPO)}: {verb}", file=sys.stderr if args.check else sys.stdout)
    if args.check and stale:
        print("run `make manifests` and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
