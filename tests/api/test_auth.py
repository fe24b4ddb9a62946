"""Accounts and tokens through the real server: guest, register, login, refresh, logout, profile."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import jwt
from aiohttp.test_utils import TestClient

from llamawool.api.schemas import AuthResponse
from llamawool.settings import Settings
from tests.conftest import API, new_guest
from tests.helpers import FakeClock

from .support import bearer, expect_problem, get_farm, ok_json, shear

PASSWORD = "correct horse battery"


def _unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def assert_auth_answer(body: dict[str, Any]) -> None:
    """Every auth answer has one shape: tokens, type, lifetime and the player."""
    assert {"access_token", "refresh_token", "token_type", "expires_in", "player"} <= body.keys()
    assert body["token_type"] == "bearer"
    assert isinstance(body["access_token"], str) and body["access_token"].count(".") == 2  # a JWT
    assert isinstance(body["refresh_token"], str) and len(body["refresh_token"]) >= 32
    assert body["access_token"] != body["refresh_token"]
    assert body["expires_in"] == 900
    player = body["player"]
    assert {"id", "username", "email", "is_guest", "role", "created_at", "settings"} <= player.keys()
    assert "password_hash" not in player and "device_id" not in player
    AuthResponse.model_validate(body)


async def register(
    client: TestClient,
    *,
    email: str | None = None,
    username: str | None = None,
    password: str = PASSWORD,
    headers: dict[str, str] | None = None,
    status: int = 201,
) -> dict[str, Any]:
    name = username or _unique()
    payload = {"email": email or f"{name}@example.com", "password": password, "username": name}
    resp = await client.post(f"{API}/auth/register", json=payload, headers=headers or {})
    body = await ok_json(resp, status)
    assert resp.headers.get("Cache-Control") == "no-store"
    return body


# ---- guests ----------------------------------------------------------------------------


async def test_guest_same_device_gets_same_player_201_then_200(client: TestClient) -> None:
    device = f"device-{uuid.uuid4().hex}"
    first = await client.post(f"{API}/auth/guest", json={"device_id": device})
    first_body = await ok_json(first, 201)
    again = await client.post(f"{API}/auth/guest", json={"device_id": device})
    again_body = await ok_json(again, 200)
    assert_auth_answer(first_body)
    assert_auth_answer(again_body)
    assert first_body["player"]["id"] == again_body["player"]["id"]
    assert first_body["player"]["is_guest"] is True
    assert first_body["player"]["email"] is None
    assert first_body["refresh_token"] != again_body["refresh_token"]
    assert first.headers["Cache-Control"] == "no-store"

    other = await new_guest(client)
    assert other["player"]["id"] != first_body["player"]["id"]


async def test_concurrent_first_guest_logins_of_one_device_make_one_player(client: TestClient) -> None:
    device = f"device-{uuid.uuid4().hex}"
    resps = await asyncio.gather(*(client.post(f"{API}/auth/guest", json={"device_id": device}) for _ in range(4)))
    bodies = [await r.json() for r in resps]
    assert sorted(r.status for r in resps) == [200, 200, 200, 201]
    assert len({b["player"]["id"] for b in bodies}) == 1


async def test_guest_rejects_a_malformed_device_id(client: TestClient) -> None:
    resp = await client.post(f"{API}/auth/guest", json={"device_id": "short"})
    body = await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert [e["field"] for e in body["errors"]] == ["device_id"]
    resp = await client.post(f"{API}/auth/guest", json={})
    body = await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert body["errors"][0]["field"] == "device_id"


# ---- register and login ------------------------------------------------------------------


async def test_register_answers_201_with_a_registered_player(client: TestClient) -> None:
    name = _unique()
    body = await register(client, email=f"{name.upper()}@Example.COM", username=name)
    assert_auth_answer(body)
    assert body["player"]["username"] == name
    assert body["player"]["email"] == f"{name}@example.com"  # emails are case-insensitive, stored lower
    assert body["player"]["is_guest"] is False
    me = await ok_json(await client.get(f"{API}/players/me", headers=bearer(body["access_token"])))
    assert me["id"] == body["player"]["id"]


async def test_register_duplicate_email_or_username_is_409_conflict(client: TestClient) -> None:
    name = _unique()
    await register(client, email=f"{name}@example.com", username=name)

    resp = await client.post(
        f"{API}/auth/register", json={"email": f"{name}@EXAMPLE.com", "password": "x" * 12, "username": _unique()}
    )
    body = await expect_problem(resp, 409, "CONFLICT")
    assert body["field"] == "email"

    resp = await client.post(
        f"{API}/auth/register", json={"email": f"{_unique()}@example.com", "password": "x" * 12, "username": name}
    )
    body = await expect_problem(resp, 409, "CONFLICT")
    assert body["field"] == "username"

    resp = await client.post(
        f"{API}/auth/register",
        json={"email": f"{_unique()}@example.com", "password": "x" * 12, "username": name.upper()},
    )
    body = await expect_problem(resp, 409, "CONFLICT")
    assert body["field"] == "username"


async def test_concurrent_registrations_of_one_username_admit_exactly_one(client: TestClient) -> None:
    name = _unique()

    async def attempt(i: int) -> int:
        resp = await client.post(
            f"{API}/auth/register",
            json={"email": f"{name}{i}@example.com", "password": "x" * 12, "username": name},
        )
        return resp.status

    statuses = await asyncio.gather(*(attempt(i) for i in range(3)))
    assert sorted(statuses) == [201, 409, 409]


async def test_register_validates_each_field(client: TestClient) -> None:
    resp = await client.post(
        f"{API}/auth/register", json={"email": "not-an-email", "password": "short", "username": "a b"}
    )
    body = await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert {e["field"] for e in body["errors"]} == {"email", "password", "username"}


async def test_register_with_a_guest_token_upgrades_the_guest_in_place(frozen: TestClient, clock: FakeClock) -> None:
    guest = await new_guest(frozen)
    gid = guest["player"]["id"]
    await shear(frozen, guest["headers"], 20)
    bought = await ok_json(
        await frozen.post(f"{API}/farm/buildings/barn/purchase", json={"quantity": 1}, headers=guest["headers"])
    )
    assert bought["farm"]["buildings"]["barn"] == 1
    before = await get_farm(frozen, guest["headers"])
    assert before["balances"]["basic"] == 10.0

    name = _unique()
    body = await register(frozen, email=f"{name}@example.com", username=name, headers=guest["headers"])
    assert_auth_answer(body)
    assert body["player"]["id"] == gid
    assert body["player"]["is_guest"] is False
    assert body["player"]["username"] == name

    after = await get_farm(frozen, bearer(body["access_token"]))
    assert after["player_id"] == gid
    assert after["balances"] == before["balances"]
    assert after["buildings"] == before["buildings"]
    assert after["revision"] == before["revision"]

    # The old guest token still names the same player; logging in finds it too.
    login = await ok_json(await frozen.post(f"{API}/auth/login", json={"login": name, "password": PASSWORD}))
    assert login["player"]["id"] == gid

    # A registered account cannot be "upgraded" again.
    resp = await frozen.post(
        f"{API}/auth/register",
        json={"email": f"{_unique()}@example.com", "password": "x" * 12, "username": _unique()},
        headers=bearer(body["access_token"]),
    )
    await expect_problem(resp, 409, "CONFLICT")


async def test_upgrading_a_guest_to_a_taken_email_is_409_and_keeps_the_guest(client: TestClient) -> None:
    taken = _unique()
    await register(client, email=f"{taken}@example.com", username=taken)
    guest = await new_guest(client)
    resp = await client.post(
        f"{API}/auth/register",
        json={"email": f"{taken}@example.com", "password": "x" * 12, "username": _unique()},
        headers=guest["headers"],
    )
    await expect_problem(resp, 409, "CONFLICT")
    me = await ok_json(await client.get(f"{API}/players/me", headers=guest["headers"]))
    assert me["is_guest"] is True
    assert me["email"] is None


async def test_register_with_a_bad_token_is_401(client: TestClient) -> None:
    resp = await client.post(
        f"{API}/auth/register",
        json={"email": f"{_unique()}@example.com", "password": "x" * 12, "username": _unique()},
        headers=bearer("not-a-jwt"),
    )
    await expect_problem(resp, 401, "INVALID_TOKEN")


async def test_login_by_email_and_by_username_json_and_form(client: TestClient) -> None:
    name = _unique()
    reg = await register(client, email=f"{name}@example.com", username=name, password="s3cret-pass")
    pid = reg["player"]["id"]

    for login in (f"{name}@example.com", f"{name.upper()}@EXAMPLE.COM", name):
        body = await ok_json(await client.post(f"{API}/auth/login", json={"login": login, "password": "s3cret-pass"}))
        assert_auth_answer(body)
        assert body["player"]["id"] == pid

    form = await client.post(f"{API}/auth/login", data={"login": name, "password": "s3cret-pass"})
    assert form.request_info.headers["Content-Type"] == "application/x-www-form-urlencoded"
    body = await ok_json(form)
    assert_auth_answer(body)
    assert body["player"]["id"] == pid
    me = await ok_json(await client.get(f"{API}/players/me", headers=bearer(body["access_token"])))
    assert me["id"] == pid


async def test_login_with_a_wrong_password_or_unknown_login_is_401_invalid_credentials(client: TestClient) -> None:
    name = _unique()
    await register(client, email=f"{name}@example.com", username=name, password="s3cret-pass")
    wrong = await client.post(f"{API}/auth/login", json={"login": name, "password": "wrong-pass"})
    wrong_body = await expect_problem(wrong, 401, "INVALID_CREDENTIALS")
    unknown = await client.post(f"{API}/auth/login", data={"login": "nobody_here", "password": "s3cret-pass"})
    unknown_body = await expect_problem(unknown, 401, "INVALID_CREDENTIALS")
    # The answer does not reveal which of the two was wrong.
    assert wrong_body["detail"] == unknown_body["detail"]


async def test_a_guest_has_no_password_to_log_in_with(client: TestClient) -> None:
    guest = await new_guest(client)
    resp = await client.post(f"{API}/auth/login", json={"login": guest["player"]["username"], "password": "anything"})
    await expect_problem(resp, 401, "INVALID_CREDENTIALS")


async def test_login_form_with_unknown_field_is_422_and_register_form_is_415(client: TestClient) -> None:
    resp = await client.post(f"{API}/auth/login", data={"login": "x", "password": "y", "admin": "1"})
    body = await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert [e["field"] for e in body["errors"]] == ["admin"]
    resp = await client.post(f"{API}/auth/register", data={"email": "a@b.co", "password": "x" * 12, "username": "abc"})
    await expect_problem(resp, 415, "UNSUPPORTED_MEDIA_TYPE")


# ---- refresh and logout ---------------------------------------------------------------------


async def test_refresh_rotates_and_the_new_tokens_work(client: TestClient) -> None:
    guest = await new_guest(client)
    resp = await client.post(f"{API}/auth/refresh", json={"refresh_token": guest["refresh_token"]})
    body = await ok_json(resp)
    assert resp.headers["Cache-Control"] == "no-store"
    assert_auth_answer(body)
    assert body["player"]["id"] == guest["player"]["id"]
    assert body["refresh_token"] != guest["refresh_token"]
    me = await ok_json(await client.get(f"{API}/players/me", headers=bearer(body["access_token"])))
    assert me["id"] == guest["player"]["id"]
    again = await ok_json(await client.post(f"{API}/auth/refresh", json={"refresh_token": body["refresh_token"]}))
    assert again["player"]["id"] == guest["player"]["id"]


async def test_reusing_a_spent_refresh_token_revokes_the_whole_family(client: TestClient) -> None:
    device = f"device-{uuid.uuid4().hex}"
    guest = await new_guest(client, device)
    other_session = await new_guest(client, device)  # same player, another family
    assert other_session["player"]["id"] == guest["player"]["id"]
    first = guest["refresh_token"]
    second = (await ok_json(await client.post(f"{API}/auth/refresh", json={"refresh_token": first})))["refresh_token"]

    reuse = await client.post(f"{API}/auth/refresh", json={"refresh_token": first})
    await expect_problem(reuse, 401, "INVALID_TOKEN")
    # The thief's replay burned the legitimate newest token as well.
    newest = await client.post(f"{API}/auth/refresh", json={"refresh_token": second})
    await expect_problem(newest, 401, "INVALID_TOKEN")

    # Another session (another family) of the same player is untouched.
    resp = await client.post(f"{API}/auth/refresh", json={"refresh_token": other_session["refresh_token"]})
    assert (await ok_json(resp))["player"]["id"] == guest["player"]["id"]


async def test_unknown_refresh_token_is_401(client: TestClient) -> None:
    resp = await client.post(f"{API}/auth/refresh", json={"refresh_token": "never-issued"})
    await expect_problem(resp, 401, "INVALID_TOKEN")
    resp = await client.post(f"{API}/auth/refresh", json={})
    body = await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert body["errors"][0]["field"] == "refresh_token"


async def test_logout_revokes_the_refresh_token(client: TestClient) -> None:
    guest = await new_guest(client)
    resp = await client.post(f"{API}/auth/logout", json={"refresh_token": guest["refresh_token"]})
    assert resp.status == 204
    resp = await client.post(f"{API}/auth/refresh", json={"refresh_token": guest["refresh_token"]})
    await expect_problem(resp, 401, "INVALID_TOKEN")


async def test_logout_of_a_rotated_session_revokes_its_newest_token(client: TestClient) -> None:
    guest = await new_guest(client)
    rotated = await ok_json(await client.post(f"{API}/auth/refresh", json={"refresh_token": guest["refresh_token"]}))
    assert (await client.post(f"{API}/auth/logout", json={"refresh_token": rotated["refresh_token"]})).status == 204
    resp = await client.post(f"{API}/auth/refresh", json={"refresh_token": rotated["refresh_token"]})
    await expect_problem(resp, 401, "INVALID_TOKEN")


async def test_logout_with_only_an_access_token_ends_every_session(client: TestClient) -> None:
    device = f"device-{uuid.uuid4().hex}"
    a = await new_guest(client, device)
    b = await new_guest(client, device)  # a second session of the same player
    assert a["player"]["id"] == b["player"]["id"]
    resp = await client.post(f"{API}/auth/logout", json={}, headers=a["headers"])
    assert resp.status == 204
    for token in (a["refresh_token"], b["refresh_token"]):
        resp = await client.post(f"{API}/auth/refresh", json={"refresh_token": token})
        await expect_problem(resp, 401, "INVALID_TOKEN")


async def test_logout_with_nothing_is_401(client: TestClient) -> None:
    resp = await client.post(f"{API}/auth/logout", json={})
    await expect_problem(resp, 401, "AUTH_REQUIRED")


# ---- access tokens ----------------------------------------------------------------------------


async def test_a_refresh_token_is_not_an_access_token(client: TestClient) -> None:
    guest = await new_guest(client)
    resp = await client.get(f"{API}/farm", headers=bearer(guest["refresh_token"]))
    await expect_problem(resp, 401, "INVALID_TOKEN")


async def test_an_access_token_is_not_a_refresh_token(client: TestClient) -> None:
    guest = await new_guest(client)
    resp = await client.post(f"{API}/auth/refresh", json={"refresh_token": guest["access_token"]})
    await expect_problem(resp, 401, "INVALID_TOKEN")


def _claims(player_id: str, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": player_id, "role": "player", "typ": "access", "iat": now, "exp": now + 600}
    claims.update(over)
    return claims


async def test_expired_forged_and_malformed_access_tokens_are_401_invalid_token(
    client: TestClient, settings: Settings
) -> None:
    guest = await new_guest(client)
    pid = guest["player"]["id"]
    secret = settings.resolved_jwt_secret()

    valid = jwt.encode(_claims(pid), secret, algorithm="HS256")
    assert (await client.get(f"{API}/farm", headers=bearer(valid))).status == 200  # the recipe is right

    past = int(time.time()) - 3600
    bad_tokens = {
        "expired": jwt.encode(_claims(pid, iat=past - 900, exp=past), secret, algorithm="HS256"),
        "bad signature": jwt.encode(_claims(pid), "another-secret-that-is-long-enough-0123456789", algorithm="HS256"),
        "tampered": valid[:-4] + ("AAAA" if not valid.endswith("AAAA") else "BBBB"),
        "alg none": jwt.encode(_claims(pid), None, algorithm="none"),  # type: ignore[arg-type]
        "no typ": jwt.encode({k: v for k, v in _claims(pid).items() if k != "typ"}, secret, algorithm="HS256"),
        "wrong typ": jwt.encode(_claims(pid, typ="refresh"), secret, algorithm="HS256"),
        "garbage": "abc.def.ghi",
    }
    for name, token in bad_tokens.items():
        resp = await client.get(f"{API}/farm", headers=bearer(token))
        body = await expect_problem(resp, 401, "INVALID_TOKEN")
        assert body["detail"], name
    expired = await client.get(f"{API}/players/me", headers=bearer(bad_tokens["expired"]))
    assert "expired" in (await expect_problem(expired, 401, "INVALID_TOKEN"))["detail"]

    resp = await client.get(f"{API}/farm", headers={"Authorization": f"Token {valid}"})
    await expect_problem(resp, 401, "INVALID_TOKEN")


async def test_a_forged_admin_role_needs_the_secret(client: TestClient) -> None:
    guest = await new_guest(client)
    forged = jwt.encode(
        _claims(guest["player"]["id"], role="admin"), "not-the-server-secret-but-long-enough-0123456789", "HS256"
    )
    resp = await client.get(f"{API}/players/me", headers=bearer(forged))
    await expect_problem(resp, 401, "INVALID_TOKEN")


# ---- players/me ----------------------------------------------------------------------------------


async def test_players_me_get_and_patch(client: TestClient) -> None:
    guest = await new_guest(client)
    resp = await client.get(f"{API}/players/me", headers=guest["headers"])
    me = await ok_json(resp)
    assert resp.headers["Cache-Control"] == "private, no-store"
    assert me == guest["player"]

    name = _unique("farmer")
    resp = await client.patch(
        f"{API}/players/me",
        json={"username": name, "settings": {"sound": False, "theme": "dark", "volume": 0.5}},
        headers=guest["headers"],
    )
    patched = await ok_json(resp)
    assert patched["username"] == name
    assert patched["settings"] == {"sound": False, "theme": "dark", "volume": 0.5}
    me = await ok_json(await client.get(f"{API}/players/me", headers=guest["headers"]))
    assert me["username"] == name and me["settings"]["theme"] == "dark"

    # Only the fields sent change.
    patched = await ok_json(
        await client.patch(f"{API}/players/me", json={"settings": {"sound": True}}, headers=guest["headers"])
    )
    assert patched["username"] == name
    assert patched["settings"] == {"sound": True}


async def test_players_me_patch_rejects_bad_values_and_taken_names(client: TestClient) -> None:
    a = await new_guest(client)
    b = await new_guest(client)
    resp = await client.patch(f"{API}/players/me", json={"username": b["player"]["username"]}, headers=a["headers"])
    body = await expect_problem(resp, 409, "CONFLICT")
    assert body["field"] == "username"

    resp = await client.patch(f"{API}/players/me", json={"username": "no spaces!"}, headers=a["headers"])
    body = await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert body["errors"][0]["field"] == "username"
    resp = await client.patch(
        f"{API}/players/me", json={"settings": {f"k{i}": i for i in range(33)}}, headers=a["headers"]
    )
    body = await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert body["errors"][0]["field"] == "settings"
    resp = await client.patch(f"{API}/players/me", json={"role": "admin"}, headers=a["headers"])
    body = await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert body["errors"][0]["field"] == "role"
    me = await ok_json(await client.get(f"{API}/players/me", headers=a["headers"]))
    assert me["role"] == "player"
    assert me["username"] == a["player"]["username"]


async def test_players_me_needs_a_token(client: TestClient) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        resp = await client.request(method, f"{API}/players/me")
        await expect_problem(resp, 401, "AUTH_REQUIRED")


async def test_delete_me_erases_the_account_and_its_farm(client: TestClient) -> None:
    device = f"device-{uuid.uuid4().hex}"
    guest = await new_guest(client, device)
    await shear(client, guest["headers"], 10)

    resp = await client.delete(f"{API}/players/me", headers=guest["headers"])
    assert resp.status == 204

    for path in ("/farm", "/players/me", "/farm/buildings"):
        resp = await client.get(f"{API}{path}", headers=guest["headers"])
        await expect_problem(resp, 401, "INVALID_TOKEN")
    resp = await client.post(f"{API}/farm/shear", json={"count": 1}, headers=guest["headers"])
    await expect_problem(resp, 401, "INVALID_TOKEN")
    resp = await client.post(f"{API}/auth/refresh", json={"refresh_token": guest["refresh_token"]})
    await expect_problem(resp, 401, "INVALID_TOKEN")

    # The device starts over with a brand-new player and an empty farm.
    fresh = await client.post(f"{API}/auth/guest", json={"device_id": device})
    fresh_body = await ok_json(fresh, 201)
    assert fresh_body["player"]["id"] != guest["player"]["id"]
    farm = await get_farm(client, bearer(fresh_body["access_token"]))
    assert farm["balances"]["basic"] < 1.0
    assert farm["stats"]["shears"] == 0


async def test_delete_me_frees_the_username_and_email(client: TestClient) -> None:
    name = _unique()
    reg = await register(client, email=f"{name}@example.com", username=name)
    assert (await client.delete(f"{API}/players/me", headers=bearer(reg["access_token"]))).status == 204
    resp = await client.post(f"{API}/auth/login", json={"login": name, "password": PASSWORD})
    await expect_problem(resp, 401, "INVALID_CREDENTIALS")
    again = await register(client, email=f"{name}@example.com", username=name)
    assert again["player"]["id"] != reg["player"]["id"]
