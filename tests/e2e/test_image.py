"""The image we ship, built from the Dockerfile and run the way an orchestrator runs it.

Two containers of our image (podman, host network, read-only root file system,
the image's own USER) share one MongoDB-wire server and one Redis, behind nginx,
as replicas do in production. The test checks what the Dockerfile promises and
only a running container can show: uid 1001, a root file system that refuses
writes outside /data and /tmp, the HEALTHCHECK passing, `/ready`, a played
action through nginx seen by both replicas, and SIGTERM (`podman stop`)
draining the server to exit code 0 inside the grace period.

The base image is the Dockerfile's build argument: a local Debian base built
once and cached (tests/image_base.py), or `LLAMAWOOL_TEST_IMAGE_BASE`. Without
podman the test skips with how to get it, except with CI=true, where it fails.
A warm run takes about a minute; the first one builds the base.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.containers import Container, PodmanUnavailable, build_image, image_inspect, podman
from tests.e2e.cluster import CLUSTER_SECRET, Nginx, unavailable
from tests.helpers import free_port
from tests.image_base import BaseImageError, local_base
from tests.mongo_server import ExternalMongo, SecantusServer, cluster_mongo, start_or_skip
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

API = "/api/v1"
DRAIN_GRACE_S = 10  # the server's own drain budget (LLAMAWOOL_DRAIN_GRACE_S)
STOP_TIMEOUT_S = 20  # podman stop's grace before SIGKILL: terminationGracePeriodSeconds' role


@dataclass
class Deployment:
    podman: list[str]
    image: str
    containers: list[Container]
    nginx: Nginx

    @property
    def url(self) -> str:
        return self.nginx.url


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("image")
    try:
        cmd = podman()
        base = local_base(cmd)
    except (PodmanUnavailable, BaseImageError) as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:
        unavailable(f"cannot run containers here: {problem}")
    image = build_image(cmd, base, work / "build")  # a broken Dockerfile fails here, never skips
    mongo: SecantusServer | ExternalMongo = cluster_mongo(work)
    redis = RedisServer(work_dir=work / "redis")
    run = uuid.uuid4().hex[:8]
    containers: list[Container] = []
    nginx: Nginx | None = None
    try:
        start_or_skip(mongo)
        try:
            redis.start()
        except (RuntimeError, OSError) as exc:
            unavailable(f"cannot start redis-server: {exc}")
        env = {
            "MONGODB_URI": mongo.uri,
            "REDIS_URI": redis.url,
            "JWT_SECRET": CLUSTER_SECRET,
            "LLAMAWOOL_DRAIN_GRACE_S": str(DRAIN_GRACE_S),
            # The image runs as production, which must be told where client addresses
            # come from: here, the test's nginx on loopback.
            "LLAMAWOOL_TRUSTED_PROXIES": "127.0.0.1/32",
        }
        for i in range(2):
            containers.append(Container(cmd, image, f"llamawool-test-{run}-{i}", free_port(), env).start())
        for container in containers:
            container.wait_ready()
        nginx = Nginx(work / "nginx", [c.port for c in containers]).start()
        yield Deployment(cmd, image, containers, nginx)
    finally:
        for container in containers:
            (work / f"{container.name}.log").write_text(container.logs())
            container.remove()
        if nginx is not None:
            nginx.stop()
        redis.stop()
        mongo.stop()


def call(method: str, url: str, body: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310 - loopback
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_the_image_declares_its_user_port_and_healthcheck(deployment: Deployment) -> None:
    inspected = image_inspect(deployment.podman, deployment.image)
    config = inspected["Config"]
    assert config["User"] == "1001:1001"
    assert "3000/tcp" in config["ExposedPorts"]
    assert "/health" in " ".join(inspected["Healthcheck"]["Test"])  # kept by --format docker
    assert config["Cmd"] == ["python", "-m", "llamawool", "serve"]


def test_the_server_runs_as_uid_1001(deployment: Deployment) -> None:
    for container in deployment.containers:
        ids = container.exec("python", "-c", "import os; print(os.getuid(), os.getgid())")
        assert ids.stdout.split() == ["1001", "1001"], ids.stdout + ids.stderr
        # the server process itself, not only what exec starts
        status = container.exec("python", "-c", "print(open('/proc/1/status').read())").stdout
        assert any(line.split()[1:2] == ["1001"] for line in status.splitlines() if line.startswith("Uid:")), status


def test_the_root_file_system_is_read_only_except_data_and_tmp(deployment: Deployment) -> None:
    probe = (
        "import sys\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        open(path, 'w').close()\n"
        "        print(path, 'written')\n"
        "    except OSError as exc:\n"
        "        print(path, 'refused', exc.errno)\n"
    )
    container = deployment.containers[0]
    refused = ["/app/probe", "/opt/venv/probe", "/etc/probe", "/probe"]
    written = ["/data/probe", "/tmp/probe"]  # noqa: S108 - inside the container
    result = container.exec("python", "-c", probe, *refused, *written)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert all(lines[path].startswith("refused") for path in refused), result.stdout + result.stderr
    assert all(lines[path] == "written" for path in written), result.stdout + result.stderr


def test_the_healthcheck_passes_and_both_replicas_are_ready(deployment: Deployment) -> None:
    for container in deployment.containers:
        health = container.healthcheck()
        assert health.returncode == 0, health.stdout + health.stderr
        assert call("GET", container.url + "/ready")[0] == 200


def test_an_action_through_nginx_is_seen_by_both_replicas(deployment: Deployment) -> None:
    status, guest = call("POST", deployment.url + API + "/auth/guest", {"device_id": f"image-{uuid.uuid4().hex}"})
    assert status in (200, 201), guest
    token = guest["access_token"]
    status, sheared = call("POST", deployment.url + API + "/farm/shear", {"count": 3}, token)
    assert status == 200, sheared
    assert sheared["result"]["sheared"] > 0, sheared
    revision = sheared["farm"]["revision"]
    for container in deployment.containers:  # one owns the farm, the other asks it: one state
        status, farm = call("GET", container.url + API + "/farm", token=token)
        assert status == 200 and farm["revision"] >= revision, farm


def test_sigterm_drains_each_container_to_exit_code_0_within_the_grace_period(deployment: Deployment) -> None:
    first, second = deployment.containers
    taken = first.stop(STOP_TIMEOUT_S)
    state = first.state()
    assert state["ExitCode"] == 0 and taken < STOP_TIMEOUT_S, (state, taken, first.logs()[-3000:])
    logs = first.logs()
    assert '"server.draining"' in logs and '"server.drained"' in logs, logs[-3000:]
    # the other replica carries on behind nginx
    status, _ = call("POST", deployment.url + API + "/auth/guest", {"device_id": f"image-{uuid.uuid4().hex}"})
    assert status in (200, 201)
    taken = second.stop(STOP_TIMEOUT_S)
    assert second.state()["ExitCode"] == 0 and taken < STOP_TIMEOUT_S, (second.state(), taken)
