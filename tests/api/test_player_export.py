"""`GET /players/me/export` through the real server, on SQLite and on MongoDB: everything
held about the caller, nothing about anyone else, never a secret; limited and audited."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import jwt
from aiohttp.test_utils import TestClient

from llamawool.api.app import context
from llamawool.api.player_export import PlayerExport
from tests.conftest import API, MakeClient, new_guest

from .fairplay import make_admin
from .support import bearer, expect_problem, ok_json, shear
from .test_auth import PASSWORD, register

EXPORT = f"{API}/players/me/export"


async def export(client: TestClient, headers: dict[str, str]) -> tuple[dict[str, Any], str]:
    resp = await client.get(EXPORT, headers=headers)
    text = await resp.text()
    body = await ok_json(resp)
    assert resp.headers["Cache-Control"] == "private, no-store"
    PlayerExport.model_validate(body)  # the shape the OpenAPI document publishes
    return body, text


async def busy_player(client: TestClient, admin: dict[str, Any], device: str) -> dict[str, Any]:
    """A guest with two sessions (one refreshed), a replayable action, a save and an
    admin look-up: something of every kind the export lists."""
    first = await new_guest(client, device)
    second = await new_guest(client, device)  # the same device: the same player, a second session
    assert second["player"]["id"] == first["player"]["id"]
    refreshed = await ok_json(await client.post(f"{API}/auth/refresh", json={"refresh_token": second["refresh_token"]}))
    key = f"key-{uuid.uuid4().hex}"
    await shear(client, first["headers"], 3)
    resp = await client.post(
        f"{API}/farm/shear", json={"count": 2}, headers={**first["headers"], "Idempotency-Key": key}
    )
    await ok_json(resp)
    await ok_json(await client.get(f"{API}/farm/saves/latest", headers=first["headers"]))
    await ok_json(await client.get(f"{API}/admin/players/{first['player']['id']}", headers=admin["headers"]))
    return {**first, "device": device, "key": key, "tokens": [first, second, refreshed]}


async def test_the_export_holds_everything_of_the_player_and_nothing_of_anyone_else(
    client_on_each_store: TestClient,
) -> None:
    client = client_on_each_store
    store = context(client.server.app).store
    admin = await make_admin(client)
    alice = await busy_player(client, admin, f"dev-alice-{uuid.uuid4().hex}")
    bob = await busy_player(client, admin, f"dev-bob-{uuid.uuid4().hex}")
    carol = await register(client)  # with a password
    carol_id = carol["player"]["id"]
    alice_id = alice["player"]["id"]

    body, text = await export(client, alice["headers"])

    assert (body["format"], body["version"]) == ("llamawool-player-export", 1)
    account = body["account"]
    assert (account["id"], account["username"]) == (alice_id, alice["player"]["username"])
    assert (account["has_device"], account["has_password"], account["is_guest"]) == (True, False, True)
    assert body["farm"]["player_id"] == alice_id and body["farm"]["revision"] >= 2
    assert body["saves"] and all(s["doc"]["player_id"] == alice_id for s in body["saves"])
    # sessions: the two sign-ins, by the ids their access tokens carry; the refreshed one too
    sids = {jwt.decode(t["access_token"], options={"verify_signature": False})["sid"] for t in alice["tokens"]}
    assert {s["id"] for s in body["sessions"]} == sids and len(sids) == 2
    assert all(s["active"] for s in body["sessions"])
    assert [r["key"] for r in body["replays"]] == [alice["key"]]
    assert body["replays"][0]["status"] == 200 and body["replays"][0]["response"]["farm"]["player_id"] == alice_id
    lookups = [a for a in body["audit"] if a["action"] == "player.lookup"]
    assert lookups and all(a["by"] == "admin" and a["about_you"] for a in lookups)

    # never a secret of hers: no token, no token hash, no device id (it signs a guest in)
    secrets = [alice["device"]]
    for t in alice["tokens"]:
        secrets += [t["access_token"], t["refresh_token"], hashlib.sha256(t["refresh_token"].encode()).hexdigest()]
    secrets += [t.token_hash for t in await store.list_player_tokens(alice_id)]
    # and nothing of anyone else: not bob's, carol's or the admin's names, ids or secrets
    others = [bob["player"]["id"], bob["player"]["username"], bob["device"], carol_id, carol["player"]["username"]]
    others += [carol["player"]["email"], admin["player"]["id"], admin["player"]["username"], bob["key"]]
    assert [s for s in secrets + others if s in text] == []

    # a password account: the hash never leaves the store
    carol_body, carol_text = await export(client, bearer(carol["access_token"]))
    assert carol_body["account"]["has_password"] is True and carol_body["account"]["email"] == carol["player"]["email"]
    carol_record = await store.get_player(carol_id)
    assert carol_record is not None and carol_record.password_hash
    assert carol_record.password_hash not in carol_text and PASSWORD not in carol_text
    assert alice_id not in carol_text

    # an admin's own actions on others are those players' data, not the admin's
    _, admin_text = await export(client, admin["headers"])
    assert alice_id not in admin_text and bob["player"]["id"] not in admin_text

    # every export is audited (and shows up in the next one)
    audit = await store.list_audit_about(alice_id, 50)
    assert [(a.action, a.admin_id, a.target) for a in audit if a.action == "player.export"] == [
        ("player.export", alice_id, alice_id)
    ]


async def test_exports_are_limited_per_player_per_hour(make_client: MakeClient) -> None:
    client = await make_client(data_exports_per_hour=2)
    alice = await new_guest(client)
    bob = await new_guest(client)
    for _ in range(2):
        await ok_json(await client.get(EXPORT, headers=alice["headers"]))
    resp = await client.get(EXPORT, headers=alice["headers"])
    problem = await expect_problem(resp, 429, "RATE_LIMITED")
    assert "export" in problem["detail"] and int(resp.headers["Retry-After"]) > 0
    await ok_json(await client.get(EXPORT, headers=bob["headers"]))  # per player: bob's own allowance


async def test_an_erased_account_leaves_a_tombstone_and_no_export(client_on_each_store: TestClient) -> None:
    client = client_on_each_store
    store = context(client.server.app).store
    alice = await new_guest(client)
    bob = await new_guest(client)
    alice_id = alice["player"]["id"]
    assert (await client.delete(f"{API}/players/me", headers=alice["headers"])).status == 204
    assert [e.player_id for e in await store.list_erasures()] == [alice_id]
    assert await store.get_player(alice_id) is None and await store.list_player_tokens(alice_id) == []
    erased = [a for a in await store.list_audit_about(alice_id, 10) if a.action == "player.erased"]
    assert [(a.admin_id, a.target, a.details) for a in erased] == [(alice_id, alice_id, {})]
    await expect_problem(await client.get(EXPORT, headers=alice["headers"]), 401, "INVALID_TOKEN")
    await ok_json(await client.get(EXPORT, headers=bob["headers"]))
