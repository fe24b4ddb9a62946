"""The admin console (/admin) in a real browser, under its content security policy.

An admin made with the CLI signs in and runs the support workflow against a real
server: looks a player up, clears their flag, restores a save, ends their
sessions (their next refresh fails), sends a broadcast (a player's open game
shows it) and reads the audit log of all that. A player who signs in on /admin
sees nothing of it: the page refuses, and the server answers 403 to every admin
call even when the page is fooled into thinking the player is an admin.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import REPO, ServerProcess

from .test_browser import PASSWORD, Tab, browser, screenshot  # noqa: F401 - browser is a fixture

pytestmark = pytest.mark.slow

ADMIN = "opsadmin"


class Http:
    """The server's REST API from the test (a player's side of things)."""

    def __init__(self, server: ServerProcess) -> None:
        self.base = server.url + "/api/v1"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
        req = urllib.request.Request(self.base + path, method=method)  # noqa: S310 - loopback
        if body is not None:
            req.add_header("Content-Type", "application/json")
            req.data = json.dumps(body).encode()
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if method == "POST" and path.startswith("/farm/"):
            req.add_header("Idempotency-Key", uuid.uuid4().hex)
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
            raw = resp.read()
            return json.loads(raw) if raw else None

    def status(self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None) -> int:
        try:
            self.call(method, path, body, token)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 200

    def register(self, name: str) -> dict[str, Any]:
        body = {"email": f"{name}@example.com", "password": PASSWORD, "username": name}
        return dict(self.call("POST", "/auth/register", body))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with an admin account made by the CLI, as an operator would."""
    s = ServerProcess(tmp_path_factory.mktemp("console") / "data").start()
    argv = [sys.executable, "-m", "llamawool", "admin", "create-admin"]
    argv += ["--username", ADMIN, "--email", f"{ADMIN}@example.com", "--data-dir", str(s.data_dir)]
    env = {**s.env, "LLAMAWOOL_ADMIN_PASSWORD": PASSWORD}
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"admin {ADMIN} created" in done.stdout
    yield s
    s.kill()


@pytest.fixture
def console(browser: Any, server: ServerProcess) -> Iterator[Tab]:  # noqa: F811 - the fixture
    """The console in its own browser context, its CSP enforced; dialogs are accepted."""
    tab = Tab(browser, server.url + "/admin", enforce_csp=True)
    tab.page.on("dialog", lambda dialog: dialog.accept())  # "restore this save?" and the like
    yield tab
    tab.close()


def sign_in(tab: Tab, login: str) -> None:
    response = tab.page.goto(tab.url)
    assert response is not None and response.status == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    tab.page.fill("#sign-in-form input[name=login]", login)
    tab.page.fill("#sign-in-form input[name=password]", PASSWORD)
    tab.page.click("#sign-in-form button[type=submit]")


def wait_text(tab: Tab, selector: str, needle: str, timeout_s: float = 10.0) -> None:
    tab.page.locator(selector, has_text=needle).first.wait_for(timeout=timeout_s * 1000)


def flag(server: ServerProcess, player_id: str) -> None:
    """What the anti-cheat does to a player over its limits, written straight to the store."""
    db = sqlite3.connect(server.data_dir / "llamawool.sqlite3", timeout=10)
    try:
        db.execute(
            "UPDATE players SET flagged_at = ?, flag_reason = ? WHERE id = ?",
            (time.time(), "too many refused actions", player_id),
        )
        db.commit()
    finally:
        db.close()


def test_the_support_workflow(browser: Any, server: ServerProcess, console: Tab) -> None:  # noqa: F811
    http = Http(server)
    player = http.register(f"wooly{uuid.uuid4().hex[:6]}")
    name, token = player["player"]["username"], player["access_token"]
    http.call("POST", "/farm/shear", {"count": 5}, token)
    first = http.call("GET", "/farm/saves/latest", token=token)["revision"]
    http.call("POST", "/farm/shear", {"count": 5}, token)
    latest = http.call("GET", "/farm/saves/latest", token=token)["revision"]
    assert latest > first
    flag(server, player["player"]["id"])

    # someone playing, to hear the broadcast
    game = Tab(browser, server.url + "/").open()
    try:
        sign_in(console, ADMIN)
        console.page.wait_for_selector("#console:not([hidden])")
        assert console.page.is_hidden("#sign-in")
        wait_text(console, "#audit", "audit.read")

        # look the player up: account, flag, farm, saves, sessions
        console.page.fill("#lookup-form input[name=player]", name)
        console.page.click("#lookup-form button[type=submit]")
        wait_text(console, "#player-fields", player["player"]["id"])
        assert "yes" in console.text("#player-fields dd:nth-of-type(7)")  # Flagged
        assert "too many refused actions" in console.text("#player-fields")
        saves = console.page.locator("#saves tr")
        assert saves.count() >= 2
        assert console.page.locator("#sessions tr", has_text="active").count() == 1

        # clear the flag
        console.page.click("#clear-flag")
        wait_text(console, "#notice", "Flag cleared.")
        wait_text(console, "#player-fields dd:nth-of-type(7)", "no")

        # restore the older save: a new revision with that farm
        console.page.locator("#saves tr", has=console.page.locator(f"td:text-is('{first}')")).locator(
            "button", has_text="Restore"
        ).click()
        wait_text(console, "#notice", f"Save {first} restored as revision")
        restored = http.call("GET", "/farm", token=token)
        assert restored["revision"] > latest

        # end the player's sessions: the next refresh fails
        console.page.click("#end-sessions")
        wait_text(console, "#notice", "1 session(s) ended.")
        wait_text(console, "#sessions", "ended")
        assert console.page.locator("#sessions tr", has_text="active").count() == 0
        refresh = {"refresh_token": player["refresh_token"]}
        assert http.status("POST", "/auth/refresh", refresh) == 401

        # a broadcast reaches the player's open game
        message = f"Shearing contest at noon {uuid.uuid4().hex[:6]}"
        console.page.fill("#broadcast-form input[name=message]", message)
        console.page.click("#broadcast-form button[type=submit]")
        wait_text(console, "#notice", "Broadcast sent.")
        game.page.locator("#toasts", has_text=message).wait_for(timeout=10_000)

        # the audit log shows all of it, newest first
        console.page.click("#audit-reload")
        wait_text(console, "#audit", "broadcast")
        audit = console.text("#audit")
        for action in ("player.lookup", "player.clear_flag", "farm.restore", "player.end_sessions", "broadcast"):
            assert action in audit, (action, audit)
        assert message in audit
        screenshot(console.page, "admin-console.png")
        assert console.errors == []
        assert game.errors == []
    finally:
        game.close()


def test_the_events_panel_schedules_and_cancels(server: ServerProcess, console: Tab) -> None:
    http = Http(server)
    admin_token = http.call("POST", "/auth/login", {"login": ADMIN, "password": PASSWORD})["access_token"]
    sign_in(console, ADMIN)
    console.page.wait_for_selector("#console:not([hidden])")
    start = time.gmtime(time.time() + 3600)
    end = time.gmtime(time.time() + 7200)
    name = f"Double wool {uuid.uuid4().hex[:6]}"
    wait_text(console, "#tier-keys", "Tier keys: ")
    tier = console.text("#tier-keys").split(": ")[1].split(", ")[0]
    console.page.fill("#event-form input[name=name]", name)
    console.page.fill("#event-form input[name=tiers]", tier)
    console.page.fill("#event-form input[name=multiplier]", "2")
    console.page.fill("#event-form input[name=starts_at]", time.strftime("%Y-%m-%dT%H:%M:%S", start))
    console.page.fill("#event-form input[name=ends_at]", time.strftime("%Y-%m-%dT%H:%M:%S", end))
    console.page.click("#event-form button[type=submit]")
    wait_text(console, "#notice", f"Event “{name}” scheduled.")
    row = console.page.locator("#events tr", has_text=name)
    row.wait_for()
    assert "scheduled" in row.inner_text()
    # typed in UTC, as the page shows every time
    listed = http.call("GET", "/admin/events?include_past=true", token=admin_token)["events"]
    event = next(e for e in listed if e["name"] == name)
    assert event["status"] == "scheduled" and event["multiplier"] == 2 and event["tiers"] == [tier]
    assert abs(event["starts_at"] - time.time() - 3600) < 60 and abs(event["ends_at"] - event["starts_at"] - 3600) < 1

    row.locator("button", has_text="Cancel").click()
    wait_text(console, "#notice", f"Event “{name}” cancelled.")
    wait_text(console, "#events", "cancelled")
    listed = http.call("GET", "/admin/events?include_past=true", token=admin_token)["events"]
    assert next(e for e in listed if e["name"] == name)["status"] == "cancelled"
    assert console.errors == []


def test_a_player_sees_nothing_of_the_console(browser: Any, server: ServerProcess) -> None:  # noqa: F811
    http = Http(server)
    player = http.register(f"pat{uuid.uuid4().hex[:6]}")
    tab = Tab(browser, server.url + "/admin", enforce_csp=True)
    admin_answers: list[int] = []
    tab.page.on("response", lambda r: admin_answers.append(r.status) if "/api/v1/admin/" in r.url else None)
    try:
        sign_in(tab, player["player"]["username"])
        tab.page.wait_for_selector("#refused:not([hidden])")
        assert tab.page.is_hidden("#console")
        assert tab.page.is_visible("#sign-in")
        assert admin_answers == []  # the page asked the server for nothing
    finally:
        tab.close()

    # a page fooled into taking the player for an admin still shows nothing: the server refuses
    fooled = Tab(browser, server.url + "/admin", enforce_csp=True)
    session = {**player, "player": {**player["player"], "role": "admin"}}
    fooled.context.add_init_script(
        f"localStorage.setItem('llamawool.admin-session', {json.dumps(json.dumps(session))})"
    )
    fooled.page.on("response", lambda r: admin_answers.append(r.status) if "/api/v1/admin/" in r.url else None)
    try:
        fooled.page.goto(fooled.url)
        fooled.page.wait_for_selector("#refused:not([hidden])")
        assert fooled.page.is_hidden("#console")
        # every admin call refused
        assert admin_answers and set(admin_answers) == {403}, admin_answers
        for table in ("#saves", "#sessions", "#events", "#audit"):
            assert fooled.page.locator(f"{table} tr").count() == 0
    finally:
        fooled.close()
