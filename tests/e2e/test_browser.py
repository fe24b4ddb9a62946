"""The reference web client (llamawool/web/) in a real browser.

Playwright's Python API drives Debian's `chromium` (never a downloaded browser)
against real servers started as subprocesses. `make test` installs both
(`make e2e-deps`); without them these tests skip, except under CI=true where a
missing browser is a failure.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, ServerProcess, in_ci

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts"
PASSWORD = "correct horse battery"  # the browser tests' accounts
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
HOUR = 3600.0


def _unavailable(what: str) -> None:
    if in_ci():
        pytest.fail(f"{what}: CI must run the browser tests (`make e2e-deps` installs it)")
    pytest.skip(f"{what}; `make test` installs it (via `make e2e-deps`)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    path = shutil.which("chromium")
    if path is None:
        _unavailable("Debian's chromium is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the tests that do not restart it."""
    s = ServerProcess(tmp_path_factory.mktemp("e2e") / "data").start()
    yield s
    s.kill()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server this test may stop, edit the storage of, and start again."""
    s = ServerProcess(tmp_path / "data").start()
    yield s
    s.kill()


class Tab:
    """A browser context (its own localStorage: its own guest) with one page."""

    def __init__(
        self,
        browser: Any,
        url: str,
        viewport: dict[str, int] = DESKTOP,
        device_id: str | None = None,
        enforce_csp: bool = False,
    ):
        self.url = url
        # Playwright's wait_for_function evaluates strings in the page, which the page's
        # CSP forbids; only the CSP test below runs with the policy enforced.
        self.context = browser.new_context(viewport=viewport, bypass_csp=not enforce_csp)
        if device_id is not None:
            self.context.add_init_script(f"localStorage.setItem('llamawool.device_id', {json.dumps(device_id)})")
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.sent: list[dict[str, Any]] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("websocket", self._websocket)

    def _console(self, msg: Any) -> None:
        if msg.type != "error":
            return
        where = (msg.location or {}).get("url", "")
        # Until leaderboards land, the panel's 404 is expected (it says "not available").
        if "Failed to load resource" in msg.text and "/api/v1/leaderboards/" in where:
            return
        self.errors.append(f"console: {msg.text} ({where})")

    def _websocket(self, ws: Any) -> None:
        def sent(payload: str | bytes) -> None:
            if isinstance(payload, str):
                self.sent.append({"at": time.monotonic(), **json.loads(payload)})

        ws.on("framesent", sent)

    def open(self) -> Tab:
        self.page.goto(self.url)
        self.wait_online()
        return self

    def wait_online(self, timeout: float = 15.0) -> None:
        self.page.wait_for_selector("#conn[data-state=online]", timeout=timeout * 1000)
        self.page.wait_for_selector("main:not([aria-busy])", timeout=timeout * 1000)

    def js(self, expr: str) -> Any:
        return self.page.evaluate(expr)

    def wait_for(self, expr: str, timeout: float = 10.0) -> None:
        self.page.wait_for_function(expr, timeout=timeout * 1000)

    def balance(self, tier: str = "basic") -> float:
        value = self.page.get_attribute(f"#tiers [data-tier={tier}] .tier-amount", "data-value")
        assert value is not None
        return float(value)

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector)

    def register(self, name: str, password: str = PASSWORD) -> None:
        """Register through the account dialog, and wait until the page shows the name."""
        self.page.click("#account-btn")
        self.page.get_by_label("Username", exact=True).fill(name)
        self.page.get_by_label("Email", exact=True).fill(f"{name}@example.com")
        self.page.locator("#reg-password").fill(password)
        self.page.get_by_role("button", name="Register and keep this farm").click()
        self.page.wait_for_selector(f"#account-name:text-is('{name}')")

    def shears_confirmed(self) -> int:
        return int(self.js("llamawool.model.farm.stats.shears"))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser: Any, server: ServerProcess) -> Iterator[Tab]:
    t = Tab(browser, server.url + "/")
    yield t
    t.close()


def screenshot(page: Any, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


# ---- storage surgery (the server is stopped while it happens) ----------------------


def edit_farm(data_dir: Path, player_id: str, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite one farm's stored document; the server must be stopped."""
    db = sqlite3.connect(data_dir / "llamawool.sqlite3")
    try:
        row = db.execute("SELECT doc FROM farms WHERE player_id = ?", (player_id,)).fetchone()
        assert row is not None, f"no stored farm for {player_id}"
        doc = json.loads(row[0])
        change(doc)
        db.execute(
            "UPDATE farms SET doc = ?, last_active = ? WHERE player_id = ?",
            (json.dumps(doc).encode(), doc["last_active"], player_id),
        )
        db.commit()
    finally:
        db.close()


def guest_with_farm(server: ServerProcess, device_id: str) -> str:
    """Create a guest and its farm over REST; returns the player id."""

    def call(method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
        req = urllib.request.Request(server.url + "/api/v1" + path, method=method)  # noqa: S310 - loopback
        if body is not None:
            req.add_header("Content-Type", "application/json")
            req.data = json.dumps(body).encode()
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())

    auth = call("POST", "/auth/guest", {"device_id": device_id})
    farm = call("GET", "/farm", token=auth["access_token"])
    return str(farm["player_id"])


# ---- the tests ---------------------------------------------------------------------------


def test_the_page_runs_under_its_content_security_policy(browser: Any, server: ServerProcess) -> None:
    tab = Tab(browser, server.url + "/", enforce_csp=True)
    try:
        response = tab.page.goto(tab.url)
        assert response is not None
        assert "script-src 'self'" in response.headers["content-security-policy"]
        tab.wait_online()
        tab.page.click("#shear-btn")
        tab.page.wait_for_selector("#tiers [data-tier=basic] .tier-amount[data-value]")
        assert tab.errors == []
    finally:
        tab.close()


def test_page_loads_without_console_errors(tab: Tab) -> None:
    tab.open()
    assert tab.page.title() == "Llama Wool Farm"
    assert tab.page.is_visible("#tiers [data-tier=basic]")
    assert "Basic Wool" in tab.text("#tiers")
    assert tab.page.is_visible("[data-building=barn]")
    # Guest login kept a device id and a token pair in localStorage.
    assert tab.js("localStorage.getItem('llamawool.device_id')").startswith("web-")
    assert tab.js("JSON.parse(localStorage.getItem('llamawool.session')).player.is_guest") is True
    tab.page.wait_for_timeout(1500)  # a tick or two and many frames
    # Leaderboards show the player's rank, or degrade gracefully where the server has none.
    tab.wait_for("/Your rank: #|not available/.test(document.querySelector('#board-panel').textContent)")
    # Every control has an accessible name.
    unnamed = tab.js(
        """[...document.querySelectorAll('button, input, [role=tab]')]
             .filter(e => !(e.getAttribute('aria-label') || e.labels?.length || e.textContent.trim()))
             .map(e => e.outerHTML.slice(0, 80))"""
    )
    assert unnamed == []
    assert tab.errors == []


def test_number_formatting(tab: Tab) -> None:
    tab.open()
    got = tab.js(
        """import('/static/format.js').then(f => [0, 0.1, 12.34, 999.4, 999.999, 1234, 1234567,
             7.891e9, 4.56e12, 999999999999, -2500, 1e21].map(n => f.formatNumber(n)))"""
    )
    assert got == [
        "0.00",
        "0.10",
        "12.3",
        "999",
        "1.00K",
        "1.23K",
        "1.23M",
        "7.89B",
        "4.56e12",
        "1.00e12",
        "-2.50K",
        "1.00e21",
    ]


def test_basic_balance_rises_smoothly(tab: Tab) -> None:
    tab.open()
    samples = []
    for _ in range(12):
        samples.append(tab.balance())
        tab.page.wait_for_timeout(120)
    assert samples[-1] > samples[0], samples
    assert all(b >= a for a, b in itertools.pairwise(samples)), "the balance went backwards"
    # It counts up between ticks (one a second), not only when one arrives.
    assert len(set(samples)) >= 6, samples
    assert tab.text("#tiers [data-tier=basic] .tier-rate").endswith("/s")


def test_shearing_adds_wool_in_batches(tab: Tab) -> None:
    tab.open()
    before = tab.balance()
    for _ in range(5):
        tab.page.click("#shear-btn")
    tab.page.keyboard.press("s")  # the keyboard shortcut shears too
    tab.wait_for("llamawool.model.farm.stats.shears >= 6")
    assert tab.balance() >= before + 6

    # A burst far beyond the limit: the client sends at most 20 shears a message,
    # never more than the bucket admits, and tells the player to slow down.
    tab.js("for (let i = 0; i < 90; i++) document.querySelector('#shear-btn').click()")
    assert "Slow down" in tab.text("#shear-slow")
    tab.wait_for("llamawool.model.farm.stats.shears >= 40 && !llamawool.shearer.busy")
    shears = [m for m in tab.sent if m.get("type") == "action" and m["data"]["action"] == "shear"]
    assert all(1 <= m["data"]["count"] <= 20 for m in shears)
    assert all(isinstance(m.get("id"), str) for m in shears), "actions carry ids"
    keys = [m["data"].get("idempotency_key") for m in shears]
    assert all(isinstance(k, str) and k for k in keys) and len(set(keys)) == len(keys), "each its own key"
    confirmed = tab.shears_confirmed()
    assert confirmed == sum(m["data"]["count"] for m in shears), "the server dropped shears the client sent"
    assert confirmed <= 6 + 40 + 5, "the client sent more than the bucket admits"
    first, last = shears[0]["at"], shears[-1]["at"]
    assert len(shears) <= 2 + (last - first) * 5, "shear messages are batched"
    assert tab.errors == []


def test_an_action_whose_reply_is_lost_is_retried_over_rest_with_its_key(tab: Tab) -> None:
    """The socket carries the action, then drops before the reply: the client retries over
    REST with the same key, and the server applies the shear once (or replays it)."""
    tab.open()
    tab.wait_for("!llamawool.shearer.busy")
    before = tab.shears_confirmed()
    keys: list[str] = []
    tab.page.on(
        "request",
        lambda r: keys.append(r.headers.get("idempotency-key", "")) if r.url.endswith("/farm/shear") else None,
    )

    tab.js(
        """() => {
        const conn = llamawool.conn;
        const send = conn.request.bind(conn);
        conn.request = (type, data) => {
          conn.request = send;  // once
          send(type, data).catch(() => {});  // the frame goes out and the server acts on it...
          return Promise.reject(Object.assign(new Error("lost"), { code: "CONNECTION_LOST" }));  // ...the reply is lost
        };
        return llamawool.act({ action: "shear", count: 3 });
      }"""
    )

    sent = [m for m in tab.sent if m.get("type") == "action" and m["data"]["action"] == "shear"]
    assert sent and keys, (sent, keys)
    assert keys == [sent[-1]["data"]["idempotency_key"]], "the REST retry carried the socket action's key"
    tab.page.reload()
    tab.wait_online()
    assert tab.shears_confirmed() == before + 3, "applied exactly once"
    assert tab.errors == []


def test_buying_a_barn_changes_the_rate(tab: Tab) -> None:
    tab.open()
    for _ in range(12):
        tab.page.click("#shear-btn")
    tab.wait_for("llamawool.model.farm.stats.shears >= 12 && llamawool.model.balance('basic') >= 10")
    rate_before = tab.text("#tiers [data-tier=basic] .tier-rate")
    value_rate_before = tab.text("#value-rate")
    assert tab.text("[data-building=barn] .level-n") == "0"
    tab.page.click("[data-building=barn] .btn-buy[data-q='1']")
    tab.page.wait_for_selector("[data-building=barn] .level-n:text-is('1')", timeout=10000)
    tab.wait_for(
        f"document.querySelector('#tiers [data-tier=basic] .tier-rate').textContent !== {json.dumps(rate_before)}"
    )
    assert tab.text("#value-rate") != value_rate_before
    # 0.1 base + 0.5 per barn, times the achievement bonuses: well above the base trickle.
    assert float(tab.page.get_attribute("#value-rate", "data-value") or 0) > 0.5
    assert tab.errors == []


def test_the_daily_reward_is_claimed_once_with_the_button(tab: Tab) -> None:
    tab.open()
    tab.page.wait_for_selector("#daily-btn[aria-disabled=false]", timeout=10000)
    assert tab.text("#daily-btn") == "Claim day 1"
    assert "Day 1 of your streak" in tab.text("#daily-line")
    before = tab.balance()
    tab.page.click("#daily-btn")
    tab.page.wait_for_selector("#daily-btn[aria-disabled=true]", timeout=10000)
    assert tab.text("#daily-btn") == "Claimed today"
    assert "Claimed: streak 1 day" in tab.text("#daily-line")
    tab.wait_for("llamawool.model.farm.stats.daily_rewards === 1")
    # 600 s of the base 0.1/s: +60 wool at once, on top of the trickle
    assert tab.balance() >= before + 59.0
    tab.page.click("#daily-btn", force=True)  # claimed: the button asks nothing more of the server
    sent = [m for m in tab.sent if m.get("type") == "action" and m["data"]["action"] == "claim_daily_reward"]
    assert len(sent) == 1 and sent[0]["data"]["idempotency_key"]
    assert tab.text("#daily-error") == ""
    assert tab.errors == []


def test_a_purchase_on_one_device_shows_on_the_other(browser: Any, server: ServerProcess) -> None:
    device = f"e2e-{uuid.uuid4().hex}"
    phone = Tab(browser, server.url + "/", PHONE, device_id=device).open()
    laptop = Tab(browser, server.url + "/", device_id=device).open()
    try:
        assert phone.js("llamawool.player.id") == laptop.js("llamawool.player.id")
        for _ in range(12):
            laptop.page.click("#shear-btn")
        laptop.wait_for("llamawool.model.farm.stats.shears >= 12 && llamawool.model.balance('basic') >= 10")
        laptop.page.click("[data-building=barn] .btn-buy[data-q='1']")
        # The phone's ticks show a newer revision; it fetches the farm and draws the barn.
        phone.page.wait_for_selector("[data-building=barn] .level-n:text-is('1')", timeout=10000)
        assert phone.errors == [] and laptop.errors == []
    finally:
        phone.close()
        laptop.close()


def test_expired_access_token_is_refreshed(tab: Tab) -> None:
    tab.open()
    player = tab.js("llamawool.player.id")
    old = tab.js("JSON.parse(localStorage.getItem('llamawool.session'))")
    # A token the server refuses: the socket closes with 4401 and the client refreshes.
    tab.js(
        """(() => { const s = JSON.parse(localStorage.getItem('llamawool.session'));
                    s.access_token = 'not-a-valid-token';
                    localStorage.setItem('llamawool.session', JSON.stringify(s)); })()"""
    )
    tab.page.reload()
    tab.wait_online()
    assert tab.js("llamawool.player.id") == player
    new = tab.js("JSON.parse(localStorage.getItem('llamawool.session'))")
    assert new["refresh_token"] != old["refresh_token"], "the refresh token rotated"


def test_register_keeps_the_farm_and_login_brings_it_back(tab: Tab) -> None:
    tab.open()
    guest = tab.js("llamawool.player.id")
    for _ in range(3):
        tab.page.click("#shear-btn")
    tab.wait_for("llamawool.model.farm.stats.shears >= 3 && !llamawool.shearer.busy")

    name = f"llama_{uuid.uuid4().hex[:8]}"
    guest_session = tab.js("JSON.parse(localStorage.getItem('llamawool.session'))")
    welcomes = tab.js("llamawool.welcomes")
    tab.register(name)
    # the upgrade ended the guest's session (its socket closed 4401): the tab carries on in the new one
    tab.wait_for(f"llamawool.welcomes > {welcomes}")
    tab.wait_online()
    assert tab.js("llamawool.player.id") == guest, "registering upgrades the guest in place"
    assert (
        tab.js("JSON.parse(localStorage.getItem('llamawool.session'))")["refresh_token"]
        != (guest_session["refresh_token"])
    )
    assert tab.page.locator(".toast-error").count() == 0, "our own upgrade is not an ended session"
    assert tab.shears_confirmed() >= 3

    tab.page.click("#account-btn")
    tab.page.get_by_role("button", name="Log out").click()
    tab.page.wait_for_selector("#account-name:text-is('Guest')")
    tab.wait_for(f"llamawool.player && llamawool.player.id !== {json.dumps(guest)} && llamawool.welcomes >= 3")
    assert tab.shears_confirmed() == 0, "a fresh guest farm after logging out"
    assert tab.page.locator(".toast-error").count() == 0, "our own logout is not an ended session"

    tab.page.click("#account-btn")
    tab.page.get_by_label("Email or username").fill(name)
    tab.page.locator("#login-password").fill("wrong password!")
    tab.page.get_by_role("button", name="Log in").click()
    tab.page.wait_for_selector("#login-error:text('Wrong login or password')")
    tab.page.locator("#login-password").fill(PASSWORD)
    tab.page.get_by_role("button", name="Log in").click()
    tab.page.wait_for_selector(f"#account-name:text-is('{name}')")
    tab.wait_for(
        f"llamawool.player.id === {json.dumps(guest)} && llamawool.model.farm.player_id === {json.dumps(guest)}"
    )
    assert tab.shears_confirmed() >= 3


def test_changing_the_password_keeps_this_browser_and_signs_out_the_others(browser: Any, server: ServerProcess) -> None:
    here = Tab(browser, server.url + "/").open()
    there = Tab(browser, server.url + "/").open()  # another device
    try:
        name = f"llama_{uuid.uuid4().hex[:8]}"
        here.register(name)
        account = here.js("llamawool.player.id")
        there.page.click("#account-btn")
        there.page.get_by_label("Email or username").fill(name)
        there.page.locator("#login-password").fill(PASSWORD)
        there.page.get_by_role("button", name="Log in").click()
        there.wait_for(
            f"llamawool.player.id === {json.dumps(account)} && llamawool.model.farm.player_id === {json.dumps(account)}"
        )

        here.page.click("#account-btn")
        here.page.locator("#pw-current").fill("not my password")
        here.page.locator("#pw-new").fill("a brand new passphrase")
        here.page.get_by_role("button", name="Change password").click()
        here.page.wait_for_selector("#password-error:text('The current password is wrong')")
        here.page.locator("#pw-current").fill(PASSWORD)
        welcomes = here.js("llamawool.welcomes")
        here.page.get_by_role("button", name="Change password").click()
        here.page.wait_for_selector(".toast:has-text('Password changed')")

        # this browser carries on in its new session: the server closed its old socket, it reconnected
        here.wait_for(f"llamawool.welcomes > {welcomes}")
        here.wait_online()
        assert here.js("llamawool.player.id") == account
        # the other device's session ended: it is back on its own guest farm
        there.wait_for(f"llamawool.player && llamawool.player.id !== {json.dumps(account)}", timeout=15)
        there.page.wait_for_selector(".toast-error:has-text('Your session ended')")
        expected = [e for e in here.errors if "status of 403" in e and e.endswith("/auth/password)")]
        assert len(expected) == 1, here.errors  # the browser logs the refused wrong password, nothing else
        assert [e for e in here.errors if e not in expected] == [], here.errors
        # the other device: at most the refusals of its ended session, which it recovered from
        assert all("status of 401" in e for e in there.errors), there.errors
    finally:
        here.close()
        there.close()


def test_rate_limit_is_shown_as_slow_down(browser: Any, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"LLAMAWOOL_SHEAR_REQUESTS_PER_MINUTE": "3"}).start()
    tab = Tab(browser, server.url + "/")
    try:
        tab.open()
        for _ in range(5):
            tab.page.click("#shear-btn")
            tab.page.wait_for_timeout(300)  # one shear message each
        toast = tab.page.locator(".toast-slow")
        toast.first.wait_for(timeout=10000)
        assert "Slow down" in toast.first.inner_text()
        assert tab.page.locator(".toast-error").count() == 0, "a 429 is not shown as an error"
        assert tab.text("#conn-text") == "Online"
        assert tab.shears_confirmed() == 3
        assert tab.errors == []
    finally:
        tab.close()
        server.kill()


def test_server_restart_mid_session_is_survived(browser: Any, own_server: ServerProcess) -> None:
    tab = Tab(browser, own_server.url + "/").open()
    try:
        for _ in range(3):
            tab.page.click("#shear-btn")
        tab.wait_for("llamawool.model.farm.stats.shears >= 3 && !llamawool.shearer.busy")
        assert tab.js("llamawool.welcomes") == 1

        assert own_server.terminate() == 0  # drains: sockets are closed with 1012
        tab.page.wait_for_selector("#conn[data-state=reconnecting]", timeout=10000)
        assert "econnecting" in tab.text("#conn-text")
        own_server.start()  # same port, same data folder

        tab.wait_online(timeout=30)
        assert tab.js("llamawool.welcomes") == 2
        assert tab.shears_confirmed() >= 3, "the farm survived the restart"
        before = tab.balance()
        tab.page.click("#shear-btn")
        tab.wait_for("llamawool.model.farm.stats.shears >= 4")
        tab.page.wait_for_timeout(1200)
        assert tab.balance() > before + 1, "the page continues: shears land and wool grows"
        assert tab.text("#conn-text") == "Online"
    finally:
        tab.close()


def test_a_rebalancing_close_reconnects_at_once_and_says_why(browser: Any, tmp_path: Path) -> None:
    """1012 with reason "rebalancing": the page says it is moving and is back within ~1 s
    (no exponential backoff: nothing went wrong), with no error shown."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from llamawool.coord import ReplicaLoad
    from llamawool.coord.redis import RedisCoordinator
    from tests.redis_server import RedisServer

    redis = RedisServer(work_dir=tmp_path / "redis").start()

    async def empty_peer() -> None:  # a replica just added: it reports no sockets, for an hour
        peer = RedisCoordinator(redis.url)
        await peer.open()
        await peer.report_load("peer", ReplicaLoad(0), time.time(), HOUR)
        await peer.close()

    env = {
        "REDIS_URI": redis.url,
        "LLAMAWOOL_REBALANCE_INTERVAL_S": "0.5",
        "LLAMAWOOL_REBALANCE_WARMUP_S": "0",
        "LLAMAWOOL_REBALANCE_TOLERANCE": "0",
        "LLAMAWOOL_REBALANCE_MIN_EXCESS": "1",
    }
    server = ServerProcess(tmp_path / "data", env=env).start()
    tab, other = Tab(browser, server.url + "/"), Tab(browser, server.url + "/")
    try:
        tab.open()
        tab.js(
            "window.states = []; const seen = llamawool.onConnState.bind(llamawool);"
            "llamawool.onConnState = (s, d = {}) => { states.push([s, d.reason ?? null, (d.at ?? 0) - Date.now()]);"
            " seen(s, d); }"
        )
        other.open()  # two sockets here: the older (this tab's) is the one to move
        with ThreadPoolExecutor(1) as thread:  # Playwright's own event loop runs in this one
            thread.submit(asyncio.run, empty_peer()).result()  # 2 sockets here against a fair share of 1
        tab.wait_for("llamawool.welcomes >= 2", timeout=10)
        moving = [st for st in tab.js("states") if st[0] == "reconnecting" and st[1]]
        assert moving and moving[0][1] == "moving to a less busy server", tab.js("states")
        assert moving[0][2] <= 1300, "a rebalancing close is not met with a backoff"
        tab.wait_online()
        assert tab.page.locator(".toast-error").count() == 0
        assert tab.errors == [] and other.errors == []
    finally:
        tab.close()
        other.close()
        server.kill()
        redis.stop()


def test_offline_report_after_an_absence(browser: Any, own_server: ServerProcess) -> None:
    tab = Tab(browser, own_server.url + "/").open()
    try:
        player = tab.js("llamawool.player.id")
        tab.page.goto("about:blank")  # leave: the socket closes
        own_server.terminate()

        def two_hours_ago(doc: dict[str, Any]) -> None:
            doc["online"] = False
            doc["anchor_time"] -= 2 * HOUR
            doc["last_active"] -= 2 * HOUR

        edit_farm(own_server.data_dir, player, two_hours_ago)
        own_server.start()

        tab.page.goto(tab.url)  # come back
        tab.wait_online()
        dialog = tab.page.locator("#offline-dialog")
        dialog.wait_for(state="visible", timeout=10000)
        summary = tab.text("#offline-summary")
        assert "You were away for 2 h" in summary, summary
        assert "50% efficiency" in summary
        gains = tab.text("#offline-gains")
        assert "Basic Wool" in gains
        # 0.1/s at 50 % for two hours: a few hundred basic wool.
        assert tab.balance() > 300
        screenshot(tab.page, "offline-report.png", full_page=False)
        tab.page.click("#offline-dialog button:has-text('Collect')")
        dialog.wait_for(state="hidden")
        assert tab.errors == []
    finally:
        tab.close()


def rich_farm(doc: dict[str, Any]) -> None:
    """A farm some hours into a run, for a screenshot that shows the game."""
    now = time.time()
    doc.update(
        online=True,
        anchor_time=now,
        last_active=now,
        balances=[2.35e6, 48210.0, 1520.0, 12.5, 0.05, 0.0, 0.0, 0.0, 0.0, 0.0],
        run_produced=[9.1e6, 8.4e5, 6.2e4, 9.5e3, 0.4, 0.0, 0.0, 0.0, 0.0, 0.0],
        lifetime_value=4.2e7,
        buildings={"barn": 25, "shears": 10, "transport": 8, "factory": 5, "lab": 1},
        upgrades=["sharp_shears", "better_tools", "caffeine_pills", "selective_breeding"],
        soul_shears=2,
        prestige_count=1,
        discovered=["basic", "silver", "golden", "rainbow", "cosmic"],
        achievements={
            key: now - 3600
            for key in (
                "first_wool",
                "wool_collector",
                "wool_tycoon",
                "first_building",
                "industrialist",
                "first_prestige",
                "dedicated_player",
            )
        },
        play_time_s=5 * HOUR,
    )


@pytest.fixture(scope="module")
def rich_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, str]]:
    """A server holding one farm some hours into a run; yields (server, device id, player id)."""
    s = ServerProcess(tmp_path_factory.mktemp("rich") / "data").start()
    device = f"e2e-{uuid.uuid4().hex}"
    player = guest_with_farm(s, device)
    s.terminate()
    edit_farm(s.data_dir, player, rich_farm)
    s.start()
    yield s, device, player
    s.kill()


def test_screenshot_of_the_main_view(browser: Any, rich_server: tuple[ServerProcess, str, str]) -> None:
    server, device, player = rich_server
    tab = Tab(browser, server.url + "/", device_id=device).open()
    try:
        assert tab.js("llamawool.player.id") == player
        assert tab.page.locator("#tiers .tier:visible").count() == 5
        assert tab.page.get_attribute("#prestige-btn", "aria-disabled") == "false"
        assert tab.text("#tiers [data-tier=basic] .tier-amount").endswith("M")
        tab.wait_for("/Your rank: #|not available/.test(document.querySelector('#board-panel').textContent)")
        tab.page.wait_for_timeout(1000)
        path = screenshot(tab.page, "main-view.png")
        assert path.stat().st_size > 20_000
        if os.environ.get("LLAMAWOOL_UPDATE_SCREENSHOT") == "1":
            # The README's picture: refreshed on request, so a test run leaves the tree clean.
            shutil.copyfile(path, REPO / "docs" / "screenshot.png")

        tab.page.set_viewport_size(PHONE)
        tab.page.wait_for_timeout(300)
        screenshot(tab.page, "main-view-phone.png", full_page=False)
        # Nothing overflows sideways on a phone.
        assert tab.js("document.documentElement.scrollWidth") <= PHONE["width"]
        assert tab.errors == []
    finally:
        tab.close()


def test_prestige_shows_the_preview_and_asks_first(browser: Any, rich_server: tuple[ServerProcess, str, str]) -> None:
    server, device, _ = rich_server
    tab = Tab(browser, server.url + "/", device_id=device).open()
    try:
        assert tab.js("llamawool.model.farm.soul_shears") == 2
        tab.page.click("#prestige-btn")
        tab.page.wait_for_selector("#prestige-dialog[open]")
        tab.page.wait_for_selector("#prestige-confirm:not([disabled])")
        assert "You will gain 1 soul shear" in tab.text("#prestige-preview")
        # Backing out changes nothing.
        tab.page.keyboard.press("Escape")
        tab.page.wait_for_selector("#prestige-dialog:not([open])", state="attached")
        assert tab.js("llamawool.model.farm.soul_shears") == 2

        tab.page.click("#prestige-btn")
        tab.page.wait_for_selector("#prestige-confirm:not([disabled])")
        tab.page.click("#prestige-confirm")
        tab.page.wait_for_selector("#prestige-dialog:not([open])", state="attached")
        tab.wait_for("llamawool.model.farm.soul_shears === 3")
        sent = [m for m in tab.sent if m.get("type") == "action" and m["data"]["action"] == "prestige"]
        assert [{k: v for k, v in m["data"].items() if k != "idempotency_key"} for m in sent] == [
            {"action": "prestige", "confirm": True, "expected_gain": 1}
        ]
        assert all(m["data"]["idempotency_key"] for m in sent)
        assert tab.text("[data-building=barn] .level-n") == "0"
        assert tab.text("#soul-shears") == "3"
        assert tab.errors == []
    finally:
        tab.close()
