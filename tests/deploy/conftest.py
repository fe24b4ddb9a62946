"""Fixtures for the deployment checks: the chart rendered once per target, the tools' paths.

Everything here is offline. The validators come from requirements/deploy.txt
(in .venv) and requirements/checkov.txt (in .venv/checkov), both installed by
`make deploy-deps`, which `make test` runs first.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import REPO

DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "llamawool"
BIN = Path(sys.executable).parent
CHECKOV = REPO / ".venv" / "checkov" / "bin" / "checkov"


def tool(name: str) -> str:
    """A validator's executable: beside this interpreter (the .venv), else on PATH."""
    local = BIN / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make deploy-deps`")
    return found


def _load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("llamawool_deploy_render", DEPLOY / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def render() -> ModuleType:
    """deploy/render.py, the module `make manifests` runs."""
    try:
        import helm_python  # noqa: F401
    except ImportError:
        pytest.fail("helm-python-sdk is not installed: run `make deploy-deps`")
    return _load_render()


@pytest.fixture(scope="session")
def rendered(render: ModuleType) -> dict[str, list[dict[str, Any]]]:
    """Every target (environment, region, blue-green) rendered once: name -> objects."""
    return {name: render.render(target) for name, target in render.TARGETS.items()}


@pytest.fixture(scope="session")
def rendered_files(
    render: ModuleType, rendered: dict[str, list[dict[str, Any]]], tmp_path_factory: Any
) -> dict[str, Path]:
    """The same, written as multi-document YAML files for the command-line validators."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for name, docs in rendered.items():
        path = out / f"{name}.yaml"
        path.write_text(render.to_yaml(docs, f"# target {name}\n"))
        files[name] = path
    return files


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def restore_drill(backup: Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """deploy/dr/restore-drill.sh on a backup file (its offline half: no kubectl)."""
    return subprocess.run(
        ["bash", str(DEPLOY / "dr" / "restore-drill.sh"), str(backup)],
        cwd=cwd,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
