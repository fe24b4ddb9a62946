"""The live-event banner of the reference web client, in Chromium (see test_browser.py).

An admin schedules an event over the API while a player's page is open: the banner
appears at once with "starts in", switches to "ends in" at the start with the time
left counting down on the server's clock, and disappears when the event is cancelled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_browser
from tests.e2e.test_browser import Tab
from tests.helpers import REPO, ServerProcess

pytestmark = pytest.mark.slow
ADMIN_PASSWORD = "banner admin password"  # a test account
browser = test_browser.browser  # the module's Chromium (a fixture)


@pytest.fixture
def events_server(tmp_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path / "data").start()
    yield s
    s.kill()


def call(server: ServerProcess, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
    req = urllib.request.Request(server.url + "/api/v1" + path, method=method)  # noqa: S310 - loopback
    if body is not None:
        req.add_header("Content-Type", "application/json")
        req.data = json.dumps(body).encode()
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def admin_token(server: ServerProcess) -> str:
    env = {**os.environ, "LLAMAWOOL_ENV": "test", "LLAMAWOOL_ADMIN_PASSWORD": ADMIN_PASSWORD}
    argv = [sys.executable, "-m", "llamawool", "admin", "create-admin", "--username", "banner_ops"]
    argv += ["--email", "ops@banner.example", "--data-dir", str(server.data_dir)]
    out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return str(call(server, "POST", "/auth/login", {"login": "banner_ops", "password": ADMIN_PASSWORD})["access_token"])


def test_the_event_banner_counts_down_and_goes_when_cancelled(browser: Any, events_server: ServerProcess) -> None:
    token = admin_token(events_server)
    tab = Tab(browser, events_server.url + "/")
    try:
        tab.open()
        assert tab.page.is_hidden("#event-banner")
        start = time.time() + 3.0
        body = {"name": "Double wool weekend", "multiplier": 2, "starts_at": start, "ends_at": start + 3600}
        event = call(events_server, "POST", "/admin/events", body, token)["event"]
        tab.page.wait_for_selector("#event-banner .event-line.upcoming", timeout=5000)
        assert "Double wool weekend · ×2 all wool · starts in" in tab.text("#event-banner")
        tab.page.wait_for_selector("#event-banner .event-line.running", timeout=8000)
        first = tab.text("#event-banner")
        assert "ends in 59 min" in first, first
        tab.wait_for("/ends in 59 min [0-9]+ s/.test(document.querySelector('#event-banner').textContent)")
        # the doubled rate, carried by the tick after the start
        tab.wait_for("document.querySelector('#tiers [data-tier=basic]').textContent.includes('+0.20/s')")
        call(events_server, "DELETE", f"/admin/events/{event['id']}", token=token)
        tab.page.wait_for_selector("#event-banner", state="hidden", timeout=5000)
        assert tab.errors == []
    finally:
        tab.close()
