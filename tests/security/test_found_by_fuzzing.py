"""What the fuzzers found, pinned: each case answered 500 or broke the document before its fix."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from llamawool.api.http import API_PREFIX, ROUTES
from llamawool.api.openapi import openapi_document
from tests.api.fairplay import make_admin
from tests.api.support import expect_problem
from tests.conftest import API, new_guest


async def test_non_ascii_digits_in_a_revision_are_422_not_500(client: TestClient) -> None:
    # "²".isdigit() is True but int("²") raises: this was a 500
    guest = await new_guest(client)
    for raw in ("%C2%B2", "%D9%A3", "1" * 19, "-1", "1.0"):
        resp = await client.get(f"{API}/farm/saves/{raw}", headers=guest["headers"])
        await expect_problem(resp, 422, "VALIDATION_ERROR")


async def test_the_audit_limit_is_validated_by_its_documented_model(client: TestClient) -> None:
    admin = await make_admin(client)
    h = admin["headers"]
    # "²" and a 5,000-digit number both reached int() and answered 500
    for query in ("limit=%C2%B2", "limit=" + "9" * 5000, "limit=0", "limit=1001", "surprise=1"):
        resp = await client.get(f"{API}/admin/audit?{query}", headers=h)
        await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert (await client.get(f"{API}/admin/audit?limit=5", headers=h)).status == 200


def test_query_strings_are_in_the_document() -> None:
    doc = openapi_document()
    for r in ROUTES:
        if r.query is None:
            continue
        op = doc["paths"][API_PREFIX + r.path][r.method.lower()]
        documented = {p["name"] for p in op["parameters"] if p["in"] == "query"}
        assert documented == set(r.query.model_fields), (r.path, documented)
        assert "422" in op["responses"], r.path


def _op(method: str, path: str) -> dict[str, Any]:
    op: dict[str, Any] = openapi_document()["paths"][API_PREFIX + path][method.lower()]
    return op


def test_statuses_the_server_answers_are_documented() -> None:
    # 401 from the public auth routes, 400 from a plain GET of the WebSocket, 101 without a body
    for path in ("/auth/guest", "/auth/register", "/auth/login", "/auth/refresh", "/auth/logout"):
        assert "401" in _op("POST", path)["responses"], path
    ws = _op("GET", "/ws")["responses"]
    assert "400" in ws and "content" not in ws["101"]
    revision = next(p for p in _op("GET", "/farm/saves/{revision}")["parameters"] if p["name"] == "revision")
    assert revision["schema"]["pattern"] == "^([0-9]{1,18}|latest)$"
    key = next(p for p in _op("POST", "/farm/shear")["parameters"] if p["name"] == "Idempotency-Key")
    assert key["schema"]["pattern"] == "^[!-~]{1,200}$"
    confirm = openapi_document()["components"]["schemas"]["PrestigeRequest"]["properties"]["confirm"]
    assert confirm.get("const") is True


async def test_a_body_the_document_calls_optional_may_be_left_out(client: TestClient) -> None:
    guest = await new_guest(client)
    for r in ROUTES:
        if r.body is None or r.access != "player":
            continue
        op = _op(r.method, r.path)
        required = op["requestBody"]["required"]
        assert required == any(f.is_required() for f in r.body.model_fields.values()), r.path
        if required or r.method == "DELETE":
            continue
        path = r.path.replace("{key}", "barn")
        resp = await client.request(r.method, f"{API}{path}", headers=guest["headers"])
        assert resp.status not in (400, 415, 422), (r.path, resp.status, await resp.text())


async def test_restoring_a_revision_past_64_bits_is_422_not_500(client: TestClient) -> None:
    # SQLite raised OverflowError on 2**63 (found by `make fuzz`: 179 answers of 500)
    admin = await make_admin(client)
    guest = await new_guest(client)
    path = f"{API}/admin/players/{guest['player']['id']}/restore"
    for revision in (2**63, 10**30):
        resp = await client.post(path, json={"revision": revision}, headers=admin["headers"])
        await expect_problem(resp, 422, "VALIDATION_ERROR")
    resp = await client.post(path, json={"revision": 2**63 - 1}, headers=admin["headers"])
    await expect_problem(resp, 404, "NOT_FOUND")


async def test_admin_bodies_are_as_strict_as_the_players(client: TestClient) -> None:
    # {"revision": true} restored revision 1 (found by `make fuzz`)
    admin = await make_admin(client)
    guest = await new_guest(client)
    path = f"{API}/admin/players/{guest['player']['id']}/restore"
    for revision in (True, "1", 1.0):
        resp = await client.post(path, json={"revision": revision}, headers=admin["headers"])
        await expect_problem(resp, 422, "VALIDATION_ERROR")
