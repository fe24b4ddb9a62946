"""A local base image for the image test, where no registry can be pulled from.

The Dockerfile's default base (python:3.11-slim-trixie) lives on a registry the
development machines cannot reach. What it needs from a base is CPython 3.11
with its venv module as `python3` on a Debian userland, and Debian's own
packages give exactly that: `debootstrap --variant=minbase
--include=python3,python3-venv bookworm` from the machine's configured Debian
mirror, imported into podman's store with `podman import`.

Building it takes a few minutes, so it is built once and kept: the tag is a
hash of the recipe (the debootstrap arguments and the mirror), and a run that
finds the tag reuses it. A file lock keeps two test runs from building it at
once. `LLAMAWOOL_TEST_IMAGE_BASE` names a base to use instead (CI, which can
pull the official one).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

BASE_VARIABLE = "LLAMAWOOL_TEST_IMAGE_BASE"
SUITE = "bookworm"
DEBOOTSTRAP_ARGS = ("--variant=minbase", "--include=python3,python3-venv")
# The package lists and downloaded .debs are the build's, not the image's.
TAR_EXCLUDES = ("./var/lib/apt/lists/*", "./var/cache/apt/*")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# A root file system of about 275 MB: /var/tmp, not a /tmp that may be memory-backed.
WORK = Path("/var/tmp")  # noqa: S108 - shared by test runs on purpose: the cache lock lives here
LOCK = WORK / "llamawool-image-base.lock"


class BaseImageError(RuntimeError):
    """The base could not be built here (no debootstrap, no mirror): the test cannot run."""


def debian_mirror(sources: Path = Path("/etc/apt")) -> str:
    """The mirror this machine's apt uses for the plain `bookworm` suite (deb822 or one-line form)."""
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.sources"))]
    files += sorted((sources / "sources.list.d").glob("*.list"))
    for file in files:
        try:
            text = file.read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.+)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                return fields.get("URIs", DEFAULT_MIRROR).split()[0]
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    return DEFAULT_MIRROR


def base_tag(mirror: str) -> str:
    """The cache key: everything that decides what the base holds."""
    recipe = ["debootstrap", *DEBOOTSTRAP_ARGS, SUITE, mirror, "tar", *TAR_EXCLUDES]
    digest = hashlib.sha256("\0".join(recipe).encode()).hexdigest()[:16]
    return f"localhost/llamawool-test-base:{digest}"


@contextlib.contextmanager
def build_lock() -> Iterator[None]:
    WORK.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def image_exists(podman: list[str], tag: str) -> bool:
    return subprocess.run([*podman, "image", "exists", tag], capture_output=True, timeout=60).returncode == 0


def local_base(podman: list[str]) -> str:
    """The base image's name: `LLAMAWOOL_TEST_IMAGE_BASE`, else the cached Debian base, built on first use."""
    if named := os.environ.get(BASE_VARIABLE):
        return named
    mirror = debian_mirror()
    tag = base_tag(mirror)
    with build_lock():
        if not image_exists(podman, tag):
            build_base(podman, tag, mirror)
    return tag


def build_base(podman: list[str], tag: str, mirror: str) -> None:
    debootstrap = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin")
    if debootstrap is None:
        raise BaseImageError("debootstrap is not installed: `make image-deps` installs it")
    root = Path(tempfile.mkdtemp(prefix="llamawool-base-", dir=WORK))
    try:
        result = subprocess.run(
            [debootstrap, *DEBOOTSTRAP_ARGS, SUITE, str(root), mirror],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if result.returncode != 0:
            raise BaseImageError(f"debootstrap from {mirror} failed: {(result.stdout + result.stderr)[-2000:]}")
        excludes = [f"--exclude={pattern}" for pattern in TAR_EXCLUDES]
        tar = subprocess.Popen(["tar", "-C", str(root), *excludes, "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [*podman, "import", "-", tag], stdin=tar.stdout, capture_output=True, text=True, timeout=600
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait(60) != 0 or imported.returncode != 0:
            raise BaseImageError(f"podman import failed: {imported.stderr[-2000:]}")
    finally:
        remove_root(root)


def remove_root(root: Path) -> None:
    """Remove the bootstrap folder without ever crossing into a file system mounted inside it
    (debootstrap mounts /proc and may bind /dev there; an interrupted run can leave them)."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, timeout=30, check=False)
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], capture_output=True, timeout=600, check=False)
