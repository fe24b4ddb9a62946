"""Our image, built and run with podman, for the image test.

`podman` runs containers as root here without a daemon. Two settings make it
work in this sandbox, and `LLAMAWOOL_TEST_PODMAN_OPTS` replaces them where
they do not fit (a hosted CI runner's rootless podman): runc, because crun
fails on this kernel's cgroup layout, and the cgroupfs manager, because no
systemd runs here. Every container gets ulimits of 1024, since podman's
defaults exceed the sandbox's hard limits.

The build reaches the package index the way this machine's pip does: the
effective `pip config list` is written to a pip.conf that, with every local
file it names (CA bundle, wheel folders, file:// indexes), is mounted into the
build's RUN steps only (`podman build -v`), so nothing of it lands in a layer.
`--format docker` keeps the HEALTHCHECK, which the OCI format drops.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from tests.helpers import REPO

OPTS_VARIABLE = "LLAMAWOOL_TEST_PODMAN_OPTS"
DEFAULT_OPTS = "--runtime runc --cgroup-manager cgroupfs"
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
# pip settings a build needs to reach the index as this machine does.
PIP_KEYS = ("index-url", "extra-index-url", "find-links", "cert", "client-cert", "trusted-host", "timeout", "retries")


class PodmanUnavailable(RuntimeError):
    """podman is missing or cannot run containers here: the test cannot run (it skips, or fails in CI)."""


def podman() -> list[str]:
    """The podman command with this machine's global options."""
    exe = shutil.which("podman")
    if exe is None:
        raise PodmanUnavailable("podman is not installed: `make image-deps` installs it (apt-get install podman)")
    opts = os.environ.get(OPTS_VARIABLE)
    command = [exe, *shlex.split(DEFAULT_OPTS if opts is None else opts)]
    result = subprocess.run([*command, "info"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise PodmanUnavailable(f"`{shlex.join([*command, 'info'])}` failed: {result.stderr[-1000:]}")
    return command


def pip_settings() -> dict[str, str]:
    """The pip settings in force on this machine (config files and PIP_* variables), by key."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=True
    )
    out: dict[str, str] = {}
    # Lines read `scope.key='value'`; a PIP_* variable (scope `:env:`) wins over the files.
    lines = sorted(result.stdout.splitlines(), key=lambda line: line.startswith(":env:"))
    for line in lines:
        if (m := re.match(r"^(.*)\.([\w-]+)='(.*)'$", line)) and m.group(2) in PIP_KEYS:
            out[m.group(2)] = m.group(3)
    return out


def local_paths(settings: dict[str, str]) -> list[Path]:
    """Every existing local file or folder the settings name (paths or file:// URLs). A local
    index's pages link to files beside its simple/ folder, so its parent is taken."""
    paths = []
    for value in settings.values():
        for word in value.split():
            path = Path(urllib.parse.urlsplit(word).path) if word.startswith("file://") else Path(word)
            path = path.parent if word.startswith("file://") and path.name == "simple" else path
            if path.is_absolute() and path.exists() and path not in paths:
                paths.append(path)
    return paths


def pip_mounts(work: Path) -> list[str]:
    """`podman build` volume options that give the RUN steps this machine's pip configuration."""
    settings = pip_settings()
    conf = work / "pip.conf"
    conf.write_text("[global]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items()))
    mounts = ["-v", f"{conf}:/etc/pip.conf:ro"]
    for path in local_paths(settings):
        mounts += ["-v", f"{path}:{path}:ro"]
    return mounts


def build_image(podman: list[str], base: str, work: Path, tag: str = "localhost/llamawool:test") -> str:
    """Build the repository's Dockerfile on `base`; returns the image id (runs use the id,
    so a concurrent build of another tree under the same tag cannot swap it)."""
    work.mkdir(parents=True, exist_ok=True)
    iidfile = work / "image.id"
    before = subprocess.run([*podman, "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True)
    result = subprocess.run(
        [
            *podman,
            "build",
            "--format",
            "docker",
            "--network",
            "host",
            "--build-arg",
            f"BASE_IMAGE={base}",
            *pip_mounts(work),
            "--iidfile",
            str(iidfile),
            "-t",
            tag,
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    (work / "build.log").write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"podman build failed:\n{(result.stdout + result.stderr)[-3000:]}"
    image = iidfile.read_text().strip()
    replaced = before.stdout.strip() if before.returncode == 0 else ""
    if replaced and replaced not in image:
        # The tag moved: the image it named would only take up space (kept while a container uses it).
        subprocess.run([*podman, "rmi", replaced], capture_output=True, timeout=120, check=False)
    return image


def image_inspect(podman: list[str], image: str) -> dict[str, Any]:
    """`podman image inspect`: the OCI config under "Config", the HEALTHCHECK beside it."""
    out = subprocess.run(
        [*podman, "image", "inspect", image], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    inspected: dict[str, Any] = json.loads(out)[0]
    return inspected


class Container:
    """One detached container of our image on the host network (its own LLAMAWOOL_PORT).

    It runs as the image's USER (no --user): the test checks the image, not the flags."""

    def __init__(self, podman: list[str], image: str, name: str, port: int, env: dict[str, str]) -> None:
        self.podman = podman
        self.image = image
        self.name = name
        self.port = port
        self.env = {**env, "LLAMAWOOL_PORT": str(port)}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Container:
        env = [arg for key, value in self.env.items() for arg in ("-e", f"{key}={value}")]
        options = ["-d", "--name", self.name, "--network", "host", "--read-only", *ULIMITS, *env]
        self.podman_run("run", *options, self.image)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"container {self.name} exited: {self.logs()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"container {self.name} not ready within {timeout}s: {self.logs()[-3000:]}")

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.podman_run("exec", self.name, *command, check=False)

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK command, run once now."""
        return self.podman_run("healthcheck", "run", self.name, check=False)

    def stop(self, grace_s: int) -> float:
        """`podman stop -t`: the image's STOPSIGNAL, then SIGKILL after `grace_s`; returns seconds taken."""
        began = time.monotonic()
        self.podman_run("stop", "-t", str(grace_s), self.name, timeout=grace_s + 60)
        return time.monotonic() - began

    def state(self) -> dict[str, Any]:
        out = self.podman_run("inspect", self.name).stdout
        state: dict[str, Any] = json.loads(out)[0]["State"]
        return state

    def running(self) -> bool:
        return bool(self.state()["Running"])

    def logs(self) -> str:
        result = self.podman_run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        self.podman_run("rm", "-f", "-v", self.name, check=False)

    def podman_run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.podman, *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {args[0]} {self.name} failed: {result.stderr[-2000:]}")
        return result
