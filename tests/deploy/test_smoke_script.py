"""deploy/scripts/smoke.py, the release gate CI, blue-green and the restore drill run, against a real server."""

from __future__ import annotations

import asyncio
import sys

from aiohttp.test_utils import TestClient

from tests.helpers import free_port

from .conftest import DEPLOY

SMOKE = DEPLOY / "scripts" / "smoke.py"


async def smoke(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(SMOKE), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_smoke_passes_against_a_live_server(client: TestClient) -> None:
    url = str(client.make_url("")).rstrip("/")
    code, out = await smoke("--url", url)
    assert code == 0, out
    for step in (
        "/health ok",
        "/ready ok",
        "/api/v1/auth/guest",
        "/api/v1/farm/shear",
        "101 Switching Protocols",
        "/metrics ok",
    ):
        assert step in out, out


async def test_public_smoke_leaves_the_internal_endpoints_alone(client: TestClient) -> None:
    code, out = await smoke("--url", str(client.make_url("")).rstrip("/"), "--public")
    assert code == 0, out
    assert "/health" not in out and "/metrics" not in out


async def test_smoke_fails_when_nothing_answers() -> None:
    code, out = await smoke("--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert code == 1 and "FAIL" in out, out
