"""The CI/CD workflow cannot run here; keep it honest instead.

Every make target, file, script flag and values file its steps name exists in
this repository, each production region has its values file and host, and the
jobs run in the seed's order (lint/test/scan -> build -> staging -> smoke ->
production).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from tests.helpers import REPO
from tests.image_base import BASE_VARIABLE
from tests.mongo_server import TEST_URI_VARIABLE

from .conftest import CHART, DEPLOY

WORKFLOW = REPO / ".github" / "workflows" / "pipeline.yml"


def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def run_steps() -> list[tuple[str, dict[str, Any], str]]:
    """(job, matrix entry or {}, script) for every `run:` step, once per matrix entry."""
    out = []
    for name, job in workflow()["jobs"].items():
        entries = job.get("strategy", {}).get("matrix", {}).get("include", [{}])
        for step in job["steps"]:
            if "run" in step:
                for entry in entries:
                    script = step["run"]
                    for key, value in entry.items():
                        script = script.replace(f"${{{{ matrix.{key} }}}}", value)
                    for var, value in step.get("env", {}).items():
                        for key, val in entry.items():
                            if value == f"${{{{ matrix.{key} }}}}":
                                script = script.replace(f"${var}", val)
                    out.append((name, entry, script))
    return out


def test_jobs_follow_the_seed_pipeline() -> None:
    jobs = workflow()["jobs"]
    needs = {
        name: set([job["needs"]] if isinstance(job.get("needs"), str) else job.get("needs", []))
        for name, job in jobs.items()
    }
    assert needs["build"] == {"lint", "test", "scan"}
    assert needs["deploy-staging"] == {"build"}
    assert needs["smoke-staging"] == {"deploy-staging"}
    assert needs["deploy-production"] == {"build", "smoke-staging"}
    assert jobs["deploy-production"]["environment"] == "production"
    assert "main" in jobs["build"]["if"]
    # Tests run with Redis and MongoDB; the image is scanned and built for two architectures.
    assert jobs["test"]["services"]["redis"]["image"].startswith("redis:7")
    assert any("mongo:7" in s.get("run", "") for s in jobs["test"]["steps"])
    assert any("trivy" in s.get("uses", "") for s in jobs["scan"]["steps"])
    build = next(s for s in jobs["build"]["steps"] if "build-push-action" in s.get("uses", ""))
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64" and build["with"]["push"] is True


def test_every_make_target_and_file_a_step_names_exists() -> None:
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    checked = set()
    for job, _entry, script in run_steps():
        for line in script.splitlines():
            if m := re.match(r"\s*make ([\w -]+)$", line):
                for target in m.group(1).split():
                    assert target in targets, f"{job}: make {target} is not a Makefile target"
                    checked.add(target)
        for path in re.findall(r"(?<![\w/$])((?:deploy|tests|llamawool|config)/[\w./-]+)", script):
            assert (REPO / path).exists(), f"{job}: {path} does not exist"
            checked.add(path)
    assert {"lint", "types", "test", "deploy/scripts/smoke.py", "deploy/helm/llamawool"} <= checked
    assert any(p.startswith("deploy/helm/llamawool/values-region-") for p in checked)


def test_script_flags_and_subcommands_exist() -> None:
    smoke_help = subprocess.run(
        [sys.executable, str(DEPLOY / "scripts" / "smoke.py"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    cli = (REPO / "llamawool" / "cli.py").read_text()
    blue_green = (DEPLOY / "blue-green" / "blue-green.sh").read_text()
    for job, _entry, script in run_steps():
        for call in re.findall(r"smoke\.py([^\n]*)", script):
            for flag in re.findall(r"(--[\w-]+)", call):
                assert flag in smoke_help, f"{job}: smoke.py has no {flag}"
        for command in re.findall(r"-m llamawool (\w+)", script):
            assert f'add_parser("{command}"' in cli, f"{job}: llamawool has no {command} command"
        for sub in re.findall(r"blue-green\.sh (\w+)", script):
            assert f"\n  {sub})" in blue_green, f"{job}: blue-green.sh has no {sub}"


def test_each_production_region_has_its_values_and_host() -> None:
    entries = workflow()["jobs"]["deploy-production"]["strategy"]["matrix"]["include"]
    regions = {e["region"] for e in entries}
    files = {p.stem.removeprefix("values-region-") for p in CHART.glob("values-region-*.yaml")}
    assert regions == files
    header = WORKFLOW.read_text().split("name: pipeline", 1)[0]
    for entry in entries:
        values = yaml.safe_load((CHART / f"values-region-{entry['region']}.yaml").read_text())
        assert entry["host"] in values["ingress"]["hosts"]
        assert entry["kubeconfig"] in header, f"{entry['kubeconfig']} is not documented in the workflow's header"


def test_kubeconfig_secrets_never_reach_the_shell_unquoted() -> None:
    """Secrets and outside input go through env:, not `${{ }}` pasted into scripts."""
    for job, _entry, script in run_steps():
        for expr in re.findall(r"\$\{\{(.*?)\}\}", script):
            assert "secrets." not in expr and "github.event" not in expr, f"{job}: {expr}"


def test_workflow_documents_its_settings_in_the_operations_guide() -> None:
    operations = (REPO / "docs" / "operations.md").read_text()
    for name in ("KUBE_CONFIG_STAGING", "STAGING_URL", "DEPLOY_STRATEGY"):
        assert name in operations, name
    assert Path(WORKFLOW).name in operations


def test_the_test_job_runs_the_mongo_suites_on_its_mongodb() -> None:
    """CI's real MongoDB 7 replaces SecantusDB in the contract and cluster suites: the URI the
    suites get names the port the container publishes and the replica set the step initiates,
    whose member is announced at an address the runner reaches."""
    job = workflow()["jobs"]["test"]
    started = next(s["run"] for s in job["steps"] if "mongo:7" in s.get("run", ""))
    make_test = next(s for s in job["steps"] if re.fullmatch(r"make test\s*", s.get("run", "")))
    uri = make_test["env"][TEST_URI_VARIABLE]
    host_port = re.search(r"-p (\d+):27017", started)
    replica_set = re.search(r"--replSet (\w+)", started)
    assert host_port and replica_set
    assert uri == f"mongodb://127.0.0.1:{host_port.group(1)}/?replicaSet={replica_set.group(1)}"
    member = re.search(r'rs\.initiate\(\{_id: "(\w+)", members: \[\{_id: 0, host: "([\w.:]+)"\}\]\}\)', started)
    assert member and member.groups() == (replica_set.group(1), f"127.0.0.1:{host_port.group(1)}"), started
    assert make_test["env"]["CI"] == "true"
    # The image test pulls the Dockerfile's own default base there.
    default_base = re.search(r"^ARG BASE_IMAGE=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert default_base and make_test["env"][BASE_VARIABLE].endswith(f"/library/{default_base.group(1)}")


def test_the_test_uri_is_documented() -> None:
    assert TEST_URI_VARIABLE == "LLAMAWOOL_TEST_MONGODB_URI"
    assert TEST_URI_VARIABLE in (REPO / "docs" / "operations.md").read_text()


def test_nothing_needs_root_on_a_hosted_runner() -> None:
    """The runner's user is not root: every apt-get, in the steps and in the Makefile targets
    they reach, goes through sudo (the Makefile's APT_GET adds it when not root), and the
    chaos suite's tmpfs is mounted through sudo and owned by the user running the tests."""
    for job, _entry, script in run_steps():
        for line in script.splitlines():
            for call in re.findall(r"(?:^|&&|\|\||;)\s*(\S+\s+)?apt-get\b", line):
                assert call.strip() == "sudo", f"{job}: apt-get without sudo: {line.strip()}"
    makefile = (REPO / "Makefile").read_text()
    recipes = [line for line in makefile.splitlines() if line.startswith("\t")]
    assert not [line for line in recipes if re.search(r"(?<![\w$(])apt-get\b", line)], "use $(APT_GET) in recipes"
    assert re.search(r"^APT_GET := \$\(if \$\(filter 0,\$\(shell id -u\)\),,sudo \)", makefile, re.M)
    from tests.chaos import test_chaos

    with mock.patch.object(test_chaos.os, "geteuid", return_value=1001):
        command = test_chaos.tmpfs_mount(Path("/x"), 16)
    assert command[:3] == ["sudo", "-n", "mount"] and f"uid={os.getuid()}" in command[command.index("-o") + 1]
