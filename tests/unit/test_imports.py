"""Every module of the package imports on its own, in a fresh interpreter.

Inside one test process a module is usually imported after others that happen
to break an import cycle for it; a cycle then shows only to the first user that
imports that module first (a script, a worker, a new test). Each module here
gets its own interpreter, so nothing imported earlier can hide a cycle.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import llamawool

# `llamawool.__main__` runs the command line when imported; `llamawool.cli`, all it
# imports, is checked like every other module.
SKIP = {"llamawool.__main__"}


def modules() -> list[str]:
    found = [m.name for m in pkgutil.walk_packages(llamawool.__path__, "llamawool.")]
    return sorted({"llamawool", *found} - SKIP)


def import_alone(module: str) -> tuple[str, int, str]:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120, check=False
    )
    return module, done.returncode, done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def test_the_walk_finds_the_engine_parts() -> None:
    """Guards the test itself: a walk that found nothing would pass vacuously."""
    found = set(modules())
    assert {"llamawool.engine.engine", "llamawool.engine.residents", "llamawool.coord.base"} <= found


def test_every_module_imports_on_its_own() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(import_alone, modules()))
    failed = {module: error for module, code, error in results if code != 0}
    assert not failed, failed
