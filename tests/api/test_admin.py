"""Operator tools through the real server: the create-admin CLI, look-ups, flags,
restores, broadcasts, the audit log, and 403 for everyone else on every admin route."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from llamawool import cli
from llamawool.api.app import context
from llamawool.api.http import API_PREFIX, ROUTES
from llamawool.settings import Settings
from llamawool.store import StorageUnavailable
from tests.conftest import API, MakeClient, new_guest
from tests.helpers import FakeClock

from .fairplay import make_admin, ws_connect
from .support import expect_problem, get_farm, ok_json, receive_until, shear

ADMIN_PASSWORD = "operator password 1"
ADMIN_ROUTES = [r for r in ROUTES if r.access == "admin"]


def is_event(kind: str) -> Any:
    return lambda m: m["type"] == "event" and m["data"]["type"] == kind


async def login(client: TestClient, name: str, password: str) -> dict[str, Any]:
    body = await ok_json(await client.post(f"{API}/auth/login", json={"login": name, "password": password}))
    body["headers"] = {"Authorization": f"Bearer {body['access_token']}"}
    return body


# ---- the first admin --------------------------------------------------------------------------


async def test_create_admin_then_log_in_as_admin(
    make_client: MakeClient, settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLAMAWOOL_TEST_ADMIN_PASSWORD", ADMIN_PASSWORD)
    rc = await cli.create_admin(settings, "boss", "Boss@Example.com", "LLAMAWOOL_TEST_ADMIN_PASSWORD")
    assert rc == 0
    assert re.search(r"^admin boss created \(id [0-9a-f]{32}\)", capsys.readouterr().out, re.M)

    client = await make_client()
    admin = await login(client, "boss", ADMIN_PASSWORD)
    assert admin["player"]["role"] == "admin" and admin["player"]["is_guest"] is False
    assert admin["player"]["email"] == "boss@example.com"
    claims = jwt.decode(admin["access_token"], options={"verify_signature": False})
    assert claims["role"] == "admin"
    looked_up = await ok_json(await client.get(f"{API}/admin/players/boss", headers=admin["headers"]))
    assert looked_up["player"]["id"] == admin["player"]["id"]
    assert (await login(client, "boss@example.com", ADMIN_PASSWORD))["player"]["role"] == "admin"


async def test_the_cli_command_promotes_an_existing_account(
    make_client: MakeClient, settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = await make_client()
    resp = await client.post(
        f"{API}/auth/register", json={"email": "kim@example.com", "password": "player password", "username": "kim"}
    )
    player = (await ok_json(resp, 201))["player"]
    assert player["role"] == "player"
    old_token = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}

    monkeypatch.setenv("LLAMAWOOL_ADMIN_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.setattr(cli, "configure_logging", lambda *args, **kwargs: None)
    argv = ["admin", "create-admin", "--username", "kim", "--email", "kim@example.com"]
    argv += ["--data-dir", str(settings.data_dir)]
    assert await asyncio.to_thread(cli.main, argv) == 0
    assert f"admin kim promoted (id {player['id']})" in capsys.readouterr().out

    # the role travels in the token, and the new password ended the account's sessions: the old
    # token is refused (once the server has read the revocation list), a new login is an admin's
    await context(client.server.app).auth.sync_revocations()
    await expect_problem(await client.get(f"{API}/admin/audit", headers=old_token), 401, "INVALID_TOKEN")
    admin = await login(client, "kim", ADMIN_PASSWORD)
    assert admin["player"]["id"] == player["id"] and admin["player"]["role"] == "admin"
    assert (await client.get(f"{API}/admin/audit", headers=admin["headers"])).status == 200


async def test_create_admin_refuses_a_weak_password(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLAMAWOOL_TEST_ADMIN_PASSWORD", "short")
    assert await cli.create_admin(settings, "boss", "boss@example.com", "LLAMAWOOL_TEST_ADMIN_PASSWORD") == 2
    assert "llamawool:" in capsys.readouterr().err
    # a common password is refused for an admin even where players may choose one (the test env)
    monkeypatch.setenv("LLAMAWOOL_TEST_ADMIN_PASSWORD", "Password123")
    assert await cli.create_admin(settings, "boss", "boss@example.com", "LLAMAWOOL_TEST_ADMIN_PASSWORD") == 2
    assert "most common passwords" in capsys.readouterr().err


# ---- look-up, restore, broadcast, audit ---------------------------------------------------------


async def test_look_up_a_player_by_id_username_or_email(frozen: TestClient) -> None:
    admin = await make_admin(frozen)
    guest = await new_guest(frozen)
    await shear(frozen, guest["headers"], 7)
    pid, name = guest["player"]["id"], guest["player"]["username"]
    by_id = await ok_json(await frozen.get(f"{API}/admin/players/{pid}", headers=admin["headers"]))
    by_name = await ok_json(await frozen.get(f"{API}/admin/players/{name}", headers=admin["headers"]))
    assert by_id == by_name
    assert by_id["player"]["id"] == pid and by_id["player"]["flagged"] is False
    assert by_id["player"]["violations_total"] == 0 and by_id["player"]["flag_reason"] is None
    assert by_id["farm"]["balances"]["basic"] == 7.0
    assert [s["revision"] for s in by_id["saves"]] == [1]
    assert "password_hash" not in by_id["player"]
    by_email = await ok_json(
        await frozen.get(f"{API}/admin/players/{admin['player']['email']}", headers=admin["headers"])
    )
    assert by_email["player"]["id"] == admin["player"]["id"] and by_email["player"]["role"] == "admin"
    await expect_problem(
        await frozen.get(f"{API}/admin/players/nobody_here", headers=admin["headers"]), 404, "NOT_FOUND"
    )


async def test_restore_a_snapshot_as_a_new_revision_keeping_history(frozen: TestClient, clock: FakeClock) -> None:
    admin = await make_admin(frozen)
    guest = await new_guest(frozen)
    pid = guest["player"]["id"]
    await shear(frozen, guest["headers"], 20)
    good = await ok_json(await frozen.get(f"{API}/farm/saves/latest", headers=guest["headers"]))
    await shear(frozen, guest["headers"], 20)
    await frozen.post(f"{API}/farm/buildings/barn/purchase", json={"quantity": 2}, headers=guest["headers"])
    bad = await ok_json(await frozen.get(f"{API}/farm/saves/latest", headers=guest["headers"]))
    assert (good["revision"], bad["revision"]) == (2, 4)
    lifetime_before = (await get_farm(frozen, guest["headers"]))["lifetime_value"]

    resp = await frozen.post(f"{API}/admin/players/{pid}/restore", json={"revision": 2}, headers=admin["headers"])
    restored = await ok_json(resp)
    assert restored == {"player_id": pid, "restored_from": 2, "revision": 5}

    farm = await get_farm(frozen, guest["headers"])
    assert farm["revision"] == 5
    assert farm["balances"]["basic"] == 20.0 and farm["buildings"]["barn"] == 0
    assert farm["lifetime_value"] >= lifetime_before  # totals never go backwards
    history = await ok_json(await frozen.get(f"{API}/farm/saves", headers=guest["headers"]))
    assert [s["revision"] for s in history["saves"]] == [5, 4, 2, 1]
    assert await ok_json(await frozen.get(f"{API}/farm/saves/4", headers=guest["headers"])) == bad
    # a client's offline save from before the restore is stale now
    stale = await frozen.post(f"{API}/farm/saves", json=bad, headers={**guest["headers"], "If-Match": '"4"'})
    await expect_problem(stale, 412, "PRECONDITION_FAILED")

    await expect_problem(
        await frozen.post(f"{API}/admin/players/{pid}/restore", json={"revision": 99}, headers=admin["headers"]),
        404,
        "NOT_FOUND",
    )
    await expect_problem(
        await frozen.post(f"{API}/admin/players/{pid}/restore", json={"revision": 0}, headers=admin["headers"]),
        422,
        "VALIDATION_ERROR",
    )


async def test_broadcast_reaches_every_connected_client(frozen: TestClient) -> None:
    admin = await make_admin(frozen)
    alice, bob = await new_guest(frozen), await new_guest(frozen)
    phone = await ws_connect(frozen, alice["access_token"])
    tablet = await ws_connect(frozen, alice["access_token"])
    other = await ws_connect(frozen, bob["access_token"])
    try:
        resp = await frozen.post(
            f"{API}/admin/broadcast",
            json={"message": "Servers restart at 03:00 UTC", "level": "maintenance"},
            headers=admin["headers"],
        )
        assert await ok_json(resp) == {"sent": True}
        for ws in (phone, tablet, other):
            msg = await receive_until(ws, is_event("broadcast"))
            assert msg["data"]["message"] == "Servers restart at 03:00 UTC"
            assert msg["data"]["level"] == "maintenance"
            assert isinstance(msg["data"]["at"], float)
    finally:
        for ws in (phone, tablet, other):
            await ws.close()
    for bad in ({"message": ""}, {"message": "x", "level": "shout"}, {"message": "x" * 501}, {}):
        await expect_problem(
            await frozen.post(f"{API}/admin/broadcast", json=bad, headers=admin["headers"]), 422, "VALIDATION_ERROR"
        )


async def test_the_audit_log_lists_every_admin_action(frozen: TestClient) -> None:
    admin = await make_admin(frozen)
    admin_id = admin["player"]["id"]
    guest = await new_guest(frozen)
    pid = guest["player"]["id"]
    await shear(frozen, guest["headers"], 3)
    h = admin["headers"]

    assert (await frozen.get(f"{API}/admin/players/{pid}", headers=h)).status == 200
    assert (await frozen.post(f"{API}/admin/players/{pid}/clear-flag", json={}, headers=h)).status == 200
    assert (await frozen.post(f"{API}/admin/players/{pid}/restore", json={"revision": 1}, headers=h)).status == 200
    assert (await frozen.post(f"{API}/admin/broadcast", json={"message": "hello"}, headers=h)).status == 200

    audit = await ok_json(await frozen.get(f"{API}/admin/audit", headers=h))
    entries = audit["entries"]
    assert [(e["action"], e["target"], e["details"].get("status")) for e in entries] == [
        ("audit.read", None, None),  # this very read
        ("broadcast", None, None),
        ("farm.restore", pid, "completed"),
        ("farm.restore", pid, "pending"),
        ("player.clear_flag", pid, "completed"),
        ("player.clear_flag", pid, "pending"),
        ("player.lookup", pid, None),
    ]
    assert all(e["admin_id"] == admin_id for e in entries)
    assert entries[0]["details"] == {"limit": 100}
    assert entries[1]["details"] == {"message": "hello", "level": "info"}
    restore_ref, clear_ref = entries[2]["details"]["ref"], entries[4]["details"]["ref"]
    assert entries[2]["details"] == {"status": "completed", "ref": restore_ref, "from_revision": 1, "new_revision": 3}
    assert entries[3]["details"] == {"status": "pending", "ref": restore_ref, "from_revision": 1}
    assert entries[4]["details"] == {"status": "completed", "ref": clear_ref, "cleared": False}
    assert entries[5]["details"] == {"status": "pending", "ref": clear_ref}
    assert restore_ref != clear_ref
    assert [e["at"] for e in entries] == sorted((e["at"] for e in entries), reverse=True)

    two = await ok_json(await frozen.get(f"{API}/admin/audit", params={"limit": "2"}, headers=h))
    assert [e["details"] for e in two["entries"]] == [{"limit": 2}, {"limit": 100}]  # each read is audited
    await expect_problem(await frozen.get(f"{API}/admin/audit?limit=0", headers=h), 422, "VALIDATION_ERROR")
    await expect_problem(await frozen.get(f"{API}/admin/audit?limit=lots", headers=h), 422, "VALIDATION_ERROR")


# ---- everyone else --------------------------------------------------------------------------------


def admin_path(path: str, player_id: str) -> str:
    return API_PREFIX + path.replace("{player}", player_id).replace("{event_id}", "an-event")


async def call(client: TestClient, method: str, path: str, headers: dict[str, str]) -> Any:
    return await client.request(method, path, json={} if method != "GET" else None, headers=headers)


def test_the_admin_routes_are_the_expected_ones() -> None:
    """Guards the loop below: it covers every admin route there is."""
    assert {(r.method, r.path) for r in ADMIN_ROUTES} >= {
        ("GET", "/admin/players/{player}"),
        ("POST", "/admin/players/{player}/clear-flag"),
        ("POST", "/admin/players/{player}/restore"),
        ("POST", "/admin/broadcast"),
        ("GET", "/admin/audit"),
        ("GET", "/admin/players/{player}/sessions"),
        ("POST", "/admin/players/{player}/sessions/end"),
        ("POST", "/admin/events"),
        ("GET", "/admin/events"),
        ("DELETE", "/admin/events/{event_id}"),
    }
    assert all(r.path.startswith("/admin/") for r in ADMIN_ROUTES)


async def test_non_admins_get_403_on_every_admin_route(frozen: TestClient) -> None:
    admin = await make_admin(frozen)
    guest = await new_guest(frozen)
    await shear(frozen, guest["headers"], 1)
    registered = await ok_json(
        await frozen.post(
            f"{API}/auth/register",
            json={"email": "pat@example.com", "password": "player password", "username": "pat"},
        ),
        201,
    )
    players = {"guest": guest["headers"], "registered": {"Authorization": f"Bearer {registered['access_token']}"}}
    audit_before = await ok_json(await frozen.get(f"{API}/admin/audit", headers=admin["headers"]))
    farm_before = await get_farm(frozen, guest["headers"])

    for r in ADMIN_ROUTES:
        path = admin_path(r.path, guest["player"]["id"])
        for headers in players.values():
            resp = await call(frozen, r.method, path, headers)
            await expect_problem(resp, 403, "FORBIDDEN")
        await expect_problem(await call(frozen, r.method, path, {}), 401, "AUTH_REQUIRED")
        # a token that claims the admin role without the server's key is not believed
        forged = jwt.encode(
            {"sub": guest["player"]["id"], "role": "admin", "typ": "access", "exp": 4_000_000_000},
            "not-the-server-secret",
            algorithm="HS256",
        )
        await expect_problem(
            await call(frozen, r.method, path, {"Authorization": f"Bearer {forged}"}), 401, "INVALID_TOKEN"
        )
        # the admin gets past the role check on the same request (ending the guest's
        # sessions is refused for its body instead: the guest plays on below)
        if r.path.endswith("/sessions/end"):
            resp = await frozen.post(path, json={"session_id": 0}, headers=admin["headers"])
            await expect_problem(resp, 422, "VALIDATION_ERROR")
        else:
            assert (await call(frozen, r.method, path, admin["headers"])).status != 403

    # nothing the players tried happened; only the admin's own calls were audited
    # (its restore and broadcast above carried empty bodies: refused with 422 before acting, not audited)
    assert (await get_farm(frozen, guest["headers"]))["balances"] == farm_before["balances"]
    audit_after = await ok_json(await frozen.get(f"{API}/admin/audit", headers=admin["headers"]))
    new = audit_after["entries"][: len(audit_after["entries"]) - len(audit_before["entries"])]
    assert [(e["action"], e["admin_id"]) for e in new] == [
        ("audit.read", admin["player"]["id"]),  # audit_after
        ("event.cancel", admin["player"]["id"]),  # failed: no such event (404)
        ("event.cancel", admin["player"]["id"]),  # pending
        ("event.list", admin["player"]["id"]),
        ("player.sessions", admin["player"]["id"]),
        ("audit.read", admin["player"]["id"]),
        ("player.clear_flag", admin["player"]["id"]),  # completed
        ("player.clear_flag", admin["player"]["id"]),  # pending
        ("player.lookup", admin["player"]["id"]),
    ]


# ---- the record comes first ---------------------------------------------------------------------


async def audit_actions(client: TestClient) -> list[tuple[str, str | None]]:
    """The audit log as the store holds it now (read directly: an API read would add its own record)."""
    records = await context(client.server.app).store.list_audit(100)
    return [(r.action, r.details.get("status")) for r in records]


@pytest.mark.parametrize("change", ["restore", "clear-flag"])
async def test_a_change_is_recorded_pending_before_it_is_made(
    frozen: TestClient, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """A process that dies mid-change leaves a pending record, never an unrecorded change."""
    admin = await make_admin(frozen)
    guest = await new_guest(frozen)
    pid = guest["player"]["id"]
    await shear(frozen, guest["headers"], 3)
    c = context(frozen.server.app)
    seen_during: list[list[tuple[str, str | None]]] = []
    action = "farm.restore" if change == "restore" else "player.clear_flag"
    target, name = (c.engine, "restore") if change == "restore" else (c.anticheat, "clear_flag")
    real = getattr(target, name)

    async def watched(*args: Any) -> Any:
        seen_during.append(await audit_actions(frozen))
        return await real(*args)

    monkeypatch.setattr(target, name, watched)
    body = {"revision": 1} if change == "restore" else {}
    resp = await frozen.post(f"{API}/admin/players/{pid}/{change}", json=body, headers=admin["headers"])
    assert resp.status == 200, await resp.text()
    assert seen_during == [[(action, "pending")]]
    assert await audit_actions(frozen) == [(action, "completed"), (action, "pending")]


async def test_a_change_that_fails_is_recorded_failed(frozen: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = await make_admin(frozen)
    guest = await new_guest(frozen)
    pid = guest["player"]["id"]
    c = context(frozen.server.app)

    async def broken(*args: Any) -> Any:
        raise StorageUnavailable("disk full")

    monkeypatch.setattr(c.engine, "restore", broken)
    resp = await frozen.post(f"{API}/admin/players/{pid}/restore", json={"revision": 1}, headers=admin["headers"])
    await expect_problem(resp, 503, "UNAVAILABLE")
    records = await c.store.list_audit(10)
    assert [(r.action, r.details["status"]) for r in records] == [
        ("farm.restore", "failed"),
        ("farm.restore", "pending"),
    ]
    assert records[0].details["error"] == "StorageUnavailable"
    assert records[0].details["ref"] == records[1].details["ref"]
    # a restore of a revision that does not exist is attempted, refused, and recorded so
    monkeypatch.undo()
    resp = await frozen.post(f"{API}/admin/players/{pid}/restore", json={"revision": 9}, headers=admin["headers"])
    await expect_problem(resp, 404, "NOT_FOUND")
    newest = (await c.store.list_audit(1))[0]
    assert (newest.details["status"], newest.details["error"]) == ("failed", "NOT_FOUND")
