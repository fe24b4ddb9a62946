"""Headers (CORS from settings, no version leak, caching of authenticated answers),
secrets kept out of the logs of a whole session, and ruff's bandit rules justified."""

from __future__ import annotations

import asyncio
import re
import secrets
import tomllib
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from llamawool.settings import Settings, SettingsError, load_settings
from tests.conftest import API, MakeClient, new_guest
from tests.helpers import REPO, ServerProcess

from .support import REPORT_LINES

ORIGIN = "https://play.example.com"
VERSION_MARKERS = ("aiohttp", "Python/", "python", "3.14", "uvloop")

# ---- CORS --------------------------------------------------------------------------------------------


def preflight_headers(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
    }


async def test_a_listed_origin_gets_a_preflight_and_its_answers(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=[ORIGIN, "http://localhost:5173"])
    resp = await client.options(f"{API}/farm/shear", headers=preflight_headers(ORIGIN))
    assert resp.status == 204, await resp.text()
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "if-match"} <= allowed
    assert int(resp.headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in resp.headers  # tokens are headers, not cookies
    assert "Origin" in resp.headers["Vary"]

    guest = await new_guest(client)
    resp = await client.post(
        f"{API}/farm/shear", json={"count": 1}, headers={**guest["headers"], "Origin": ORIGIN, "Idempotency-Key": "k1"}
    )
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"ETag", "Retry-After", "RateLimit-Remaining", "X-Request-Id"} <= exposed
    assert "Origin" in resp.headers["Vary"]
    # an error must be readable by the page too (the problem details say what went wrong)
    resp = await client.get(f"{API}/farm", headers={"Origin": ORIGIN})
    assert resp.status == 401
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN


async def test_other_origins_get_no_cors_headers(make_client: MakeClient) -> None:
    client = await make_client(cors_origins=[ORIGIN])
    for origin in ("https://evil.example", "https://play.example.com.evil.example", "null", ORIGIN + "/"):
        resp = await client.options(f"{API}/farm/shear", headers=preflight_headers(origin))
        assert resp.status == 405, (origin, resp.status)
        assert "Access-Control-Allow-Origin" not in resp.headers, origin
        resp = await client.get(f"{API}/config", headers={"Origin": origin})
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers, origin


async def test_by_default_no_origin_is_allowed(client: TestClient) -> None:
    """Default settings: same-origin only, so no CORS headers at all (and no Vary)."""
    assert Settings().cors_origins == []
    resp = await client.options(f"{API}/farm/shear", headers=preflight_headers(ORIGIN))
    assert resp.status == 405
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
    resp = await client.get(f"{API}/config", headers={"Origin": ORIGIN})
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


def test_cors_origins_come_from_the_environment_and_are_checked() -> None:
    s = load_settings(environ={"LLAMAWOOL_CORS_ORIGINS": f"{ORIGIN}, http://localhost:5173"})
    assert s.cors_origins == [ORIGIN, "http://localhost:5173"]
    for bad in ("*", "play.example.com", ORIGIN + "/", ORIGIN + "/path", "https://*.example.com"):
        with pytest.raises(SettingsError, match="cors_origins"):
            load_settings(environ={"LLAMAWOOL_CORS_ORIGINS": bad})


# ---- no version leak, caching ------------------------------------------------------------------------


def assert_no_version(headers: Any, where: str) -> None:
    assert headers.get("Server") == "llamawool", (where, headers.get("Server"))
    for name, value in headers.items():
        for marker in VERSION_MARKERS:
            assert marker not in value, (where, name, value)


async def raw_request(client: TestClient, data: bytes) -> str:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return out.decode(errors="replace")


async def test_no_answer_names_the_software_or_its_version(client: TestClient) -> None:
    guest = await new_guest(client)
    for method, path, headers in (
        ("GET", "/health", {}),
        ("GET", "/metrics", {}),
        ("GET", f"{API}/openapi.json", {}),
        ("GET", f"{API}/farm", guest["headers"]),
        ("GET", f"{API}/farm", {}),
        ("GET", f"{API}/nowhere", {}),
        ("PUT", f"{API}/farm", guest["headers"]),
        ("GET", "/", {}),
        ("GET", "/static/app.js", {}),
        ("GET", "/admin", {}),
        ("GET", f"{API}/ws", {}),
    ):
        resp = await client.request(method, path, headers=headers)
        assert_no_version(resp.headers, f"{method} {path} -> {resp.status}")
    async with client.ws_connect(f"{API}/ws", headers=guest["headers"]) as ws:
        assert_no_version(ws._response.headers, "the WebSocket's 101")
    # requests aiohttp refuses before any of the app's code runs
    for data in (
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
    ):
        answer = await raw_request(client, data)
        head = answer.split("\r\n\r\n", 1)[0]
        assert answer.startswith("HTTP/1.") and " 400 " in answer.split("\r\n", 1)[0], answer[:200]
        assert "\r\nServer: llamawool" in head, head
        for marker in VERSION_MARKERS[:3]:
            assert marker not in answer, answer[:400]


async def test_the_admin_console_is_a_static_page_under_the_games_policy(client: TestClient) -> None:
    """/admin is the same kind of page as /: static, no inline code, framed by nobody;
    whoever asks gets the same bytes (the data comes from the admin API, by role)."""
    game, console = await client.get("/"), await client.get("/admin")
    assert console.status == 200 and console.content_type == "text/html"
    for header in ("Content-Security-Policy", "Cache-Control", "X-Frame-Options", "X-Content-Type-Options"):
        assert console.headers[header] == game.headers[header], header
    assert "'unsafe-inline'" not in console.headers["Content-Security-Policy"]
    page = await console.text()
    assert "<script>" not in page and " style=" not in page and " on" + "click=" not in page
    guest = await new_guest(client)
    assert await (await client.get("/admin", headers=guest["headers"])).text() == page
    for asset in ("/static/admin/admin.js", "/static/admin/admin.css"):
        assert (await client.get(asset)).status == 200, asset


async def test_authenticated_answers_are_never_stored(client: TestClient) -> None:
    """Every answer to a request that carried a token says `private, no-store` (the
    matrix checks each route with a valid token); token-issuing answers say `no-store`."""
    guest = await new_guest(client)
    for path in ("/farm", "/players/me", "/farm/saves/latest", "/leaderboards/lifetime/me"):
        resp = await client.get(f"{API}{path}", headers=guest["headers"])
        assert resp.headers["Cache-Control"] == "private, no-store", (path, resp.headers.get("Cache-Control"))
    resp = await client.get(f"{API}/farm", headers={"Authorization": "Bearer forged.token.value"})
    assert resp.status == 401 and resp.headers["Cache-Control"] == "private, no-store"
    for path, body in (
        ("/auth/guest", {"device_id": f"dev-{uuid.uuid4().hex}"}),
        ("/auth/refresh", {"refresh_token": guest["refresh_token"]}),
    ):
        resp = await client.post(f"{API}{path}", json=body)
        assert resp.status in (200, 201)
        assert "no-store" in resp.headers["Cache-Control"], path


# ---- secrets never reach the logs --------------------------------------------------------------------


async def full_session(base: str, password: str) -> list[str]:
    """Register, log in (JSON and form), refresh (and replay a spent token), play over
    REST and the WebSocket (all three ways to authenticate), upgrade a guest, log out.
    Returns every credential the server handed out or was handed."""
    seen: list[str] = [password]
    name = f"s{uuid.uuid4().hex[:10]}"
    async with aiohttp.ClientSession(base) as http:

        async def call(method: str, path: str, status: int | tuple[int, ...], **kw: Any) -> Any:
            async with http.request(method, f"{API}{path}", **kw) as resp:
                text = await resp.text()
                assert resp.status in ((status,) if isinstance(status, int) else status), (path, resp.status, text)
                return await resp.json() if resp.content_type == "application/json" else text

        def keep(body: dict[str, Any]) -> dict[str, str]:
            seen.extend([body["access_token"], body["refresh_token"]])
            return {"Authorization": f"Bearer {body['access_token']}"}

        reg = await call(
            "POST", "/auth/register", 201, json={"email": f"{name}@example.com", "password": password, "username": name}
        )
        keep(reg)
        await call("POST", "/auth/login", 401, json={"login": name, "password": password + "-wrong"})
        seen.append(password + "-wrong")
        await call("POST", "/auth/login", 200, data={"login": name, "password": password})  # form-encoded
        login = await call("POST", "/auth/login", 200, json={"login": f"{name}@example.com", "password": password})
        keep(login)
        refreshed = await call("POST", "/auth/refresh", 200, json={"refresh_token": login["refresh_token"]})
        h = keep(refreshed)
        # replaying the spent token revokes the family (logged as a security event, without the token)
        await call("POST", "/auth/refresh", 401, json={"refresh_token": login["refresh_token"]})
        again = await call("POST", "/auth/login", 200, json={"login": name, "password": password})
        h = keep(again)

        await call("POST", "/farm/shear", 200, json={"count": 5}, headers={**h, "Idempotency-Key": "once"})
        await call("POST", "/farm/shear", 200, json={"count": 5}, headers={**h, "Idempotency-Key": "once"})
        await call("POST", "/farm/buildings/barn/purchase", (200, 409), json={"quantity": 1}, headers=h)
        await call("PATCH", "/players/me", 200, json={"settings": {"sound": False}}, headers=h)
        save = await call("GET", "/farm/saves/latest", 200, headers=h)
        await call(
            "POST", "/farm/saves", (200, 412, 422), json=save, headers={**h, "If-Match": f'"{save["revision"]}"'}
        )
        await call("GET", "/farm", 401, headers={"Authorization": f"Bearer {again['refresh_token']}"})
        # refusals the server logs (anti-cheat violations), each carrying a secret in the refused value
        await call("POST", "/farm/shear", 422, json={"count": password}, headers=h)
        # (an opaque refresh token pasted into an unrelated field cannot be told from a key;
        # a JWT can, and is redacted wherever it appears)
        await call("POST", f"/farm/upgrades/{again['access_token']}/purchase", 404, json={}, headers=h)
        forged = {**save, "signature": "0" * 64, "farm": {**save["farm"], "soul_shears": 10**6}}
        await call("POST", "/farm/saves", (412, 422), json=forged, headers={**h, "If-Match": f'"{save["revision"]}"'})
        await call("GET", "/farm", 401, headers={"Authorization": f"Bearer {again['access_token']}x"})

        token = again["access_token"]
        for how in ("header", "query", "message"):
            if how == "header":
                ws = await http.ws_connect(f"{API}/ws", headers=h)
            elif how == "query":
                ws = await http.ws_connect(f"{API}/ws?token={token}")
            else:
                ws = await http.ws_connect(f"{API}/ws")
                await ws.send_json({"type": "auth", "data": {"token": token}})
            assert (await ws.receive_json(timeout=5))["type"] == "welcome"
            await ws.send_json({"type": "action", "id": "bad", "data": {"action": "buy_upgrade", "key": token}})
            await ws.send_json({"type": "action", "id": how, "data": {"action": "shear", "count": 1}})
            while (await ws.receive_json(timeout=5)).get("id") != how:
                pass
            await ws.close()
        bad = await http.ws_connect(f"{API}/ws?token={again['refresh_token']}")
        assert (await bad.receive(timeout=5)).data == 4401

        guest = await call("POST", "/auth/guest", (200, 201), json={"device_id": f"dev-{uuid.uuid4().hex}"})
        gh = keep(guest)
        upgraded = await call(
            "POST",
            "/auth/register",
            201,
            json={"email": f"g{name}@example.com", "password": password, "username": f"g{name}"},
            headers=gh,
        )
        keep(upgraded)
        last = await call("POST", "/auth/login", 200, json={"login": name, "password": password})
        keep(last)
        await call("POST", "/auth/logout", 204, json={"refresh_token": again["refresh_token"]})
        await call("GET", "/farm", 401, headers=h)  # that session's access token ended with it
        new_password = password + "-changed"
        seen.append(new_password)
        body = {"current_password": password + "-wrong", "new_password": new_password}
        lh = {"Authorization": f"Bearer {last['access_token']}"}
        await call("POST", "/auth/password", 403, json=body, headers=lh)
        body["current_password"] = password
        changed = await call("POST", "/auth/password", 200, json=body, headers=lh)
        keep(changed)
        await call("POST", "/auth/logout", 204, headers={"Authorization": f"Bearer {changed['access_token']}"})
    return seen


async def test_a_whole_session_leaves_no_secret_in_the_logs(tmp_path: Path) -> None:
    jwt_secret = secrets.token_urlsafe(48)
    password = f"pw-{secrets.token_urlsafe(18)}"
    server = ServerProcess(
        tmp_path / "srv",
        env={"LLAMAWOOL_LOG_LEVEL": "debug", "LLAMAWOOL_JWT_SECRET": jwt_secret, "LLAMAWOOL_TICK_INTERVAL_S": "0.2"},
    )
    server.start()
    try:
        handed = await full_session(server.url, password)
    finally:
        server.terminate()
    logs = server.log_path.read_text()
    lines = logs.splitlines()
    assert len(lines) >= 3 and "server.started" in logs, logs[:500]
    needles: dict[str, str] = {"the JWT secret": jwt_secret}
    for i, value in enumerate(handed):
        needles[f"credential #{i}"] = value
        if value.count(".") == 2:  # a JWT: its signature and its payload on their own too
            _, payload, signature = value.split(".")
            needles[f"credential #{i} signature"] = signature
            needles[f"credential #{i} payload"] = payload
    found = [what for what, value in needles.items() if value in logs]
    # ...nor any 24 characters of one (a secret cut short by a truncated detail)
    found += [
        f"part of {what}"
        for what, value in needles.items()
        if not what.endswith("payload")  # a JWT's claims are encoded, not secret; its signature is
        and any(value[i : i + 24] in logs for i in range(max(1, len(value) - 23)))
    ]
    assert "[redacted-jwt]" in logs, "the refusal quoting a JWT was not logged: the test lost its teeth"
    assert not found, f"secrets in the server's logs: {found}"
    REPORT_LINES.append(
        f"Log secrets: a full session (register, login x3, refresh, spent-token replay, actions, save upload, "
        f"refusals carrying secrets, 3 WebSocket auths, guest upgrade, password change, logout) "
        f"at log level debug wrote "
        f"{len(lines)} log lines "
        f"({len(logs)} bytes); searched them for {len(needles)} secrets "
        f"({len(handed)} credentials and passwords, their JWT parts, the JWT secret): found {len(found)}"
    )


def test_a_logged_exception_shows_no_local_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    """An exception logged from a frame that holds the settings, a password and a token
    (every request handler does): the traceback names the frames, never their locals."""
    import structlog

    from llamawool.observability import configure_logging

    jwt_secret, password, token = secrets.token_urlsafe(40), secrets.token_urlsafe(12), secrets.token_urlsafe(30)
    settings = Settings(jwt_secret=jwt_secret)
    saved = structlog.get_config()
    configure_logging("debug", "json")
    try:

        def handler(settings: Settings, password: str, token: str) -> None:
            raise RuntimeError("boom")

        try:
            handler(settings, password, token)
        except RuntimeError:
            structlog.get_logger("t").exception("http.unhandled", password=password, context={"token": token})
    finally:
        structlog.reset_defaults()
        structlog.configure(**saved)
        structlog.contextvars.unbind_contextvars("region")
    out = capsys.readouterr().out
    assert "http.unhandled" in out and "boom" in out and "handler" in out, out
    for value in (jwt_secret, password, token):
        assert value not in out, out


# ---- ruff's bandit rules -----------------------------------------------------------------------------

NOQA_S = re.compile(r"#\s*noqa:\s*([A-Z0-9, ]*\bS\d{3}[A-Z0-9, ]*)(.*)$")


def test_every_bandit_exception_says_why() -> None:
    """`make lint` runs ruff with the S rules on; each `noqa: S...` and each per-file
    ignore of an S rule must carry its reason (`# noqa: S310 - loopback`)."""
    unexplained = []
    for folder in ("llamawool", "tests", "benchmarks", "deploy"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                m = NOQA_S.search(line)
                if m and not re.match(r"\s*-\s*\S", m.group(2)):
                    unexplained.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not unexplained, "noqa without a reason:\n" + "\n".join(unexplained)
    pyproject = (REPO / "pyproject.toml").read_text()
    ignores = tomllib.loads(pyproject)["tool"]["ruff"]["lint"]["per-file-ignores"]
    lines = pyproject.splitlines()
    for pattern, codes in ignores.items():
        if not any(c.startswith("S") for c in codes):
            continue
        at = next(i for i, line in enumerate(lines) if line.startswith(f'"{pattern}"'))
        assert lines[at - 1].lstrip().startswith("#"), f"per-file-ignores {pattern}: say why above it"
