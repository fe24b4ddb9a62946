"""Bad input is a 4xx problem+json naming what was wrong: never a 500, never a stack trace."""

from __future__ import annotations

import orjson
import pytest
from aiohttp.test_utils import TestClient

from llamawool.api.errors import CODES
from tests.conftest import API, new_guest

from .support import expect_problem, get_farm

JSON = {"Content-Type": "application/json"}


async def test_unparseable_json_is_400_invalid_json(client: TestClient) -> None:
    guest = await new_guest(client)
    for raw in (b"{", b'{"count": 5,}', b"{'count': 5}", b"\xff\xfe", b'{"count": NaN}', b"nul"):
        resp = await client.post(f"{API}/farm/shear", data=raw, headers={**guest["headers"], **JSON})
        body = await expect_problem(resp, 400, "INVALID_JSON")
        assert "JSON" in body["detail"]
    resp = await client.post(f"{API}/auth/guest", data=b"{not json", headers=JSON)
    await expect_problem(resp, 400, "INVALID_JSON")
    farm = await get_farm(client, guest["headers"])
    assert farm["stats"]["shears"] == 0


async def test_a_body_that_is_not_an_object_is_422(client: TestClient) -> None:
    guest = await new_guest(client)
    for raw in (b"[]", b"5", b'"count"', b"null", b"true"):
        resp = await client.post(f"{API}/farm/shear", data=raw, headers={**guest["headers"], **JSON})
        await expect_problem(resp, 422, "VALIDATION_ERROR")


async def test_wrong_fields_and_values_are_422_naming_each_field(client: TestClient) -> None:
    guest = await new_guest(client)
    resp = await client.post(f"{API}/farm/shear", json={"count": 50}, headers=guest["headers"])
    body = await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert [e["field"] for e in body["errors"]] == ["count"]
    assert "count" in body["detail"]
    assert {"field", "message", "type"} <= body["errors"][0].keys()

    resp = await client.post(f"{API}/farm/shear", json={"count": 1, "wool": 1e9}, headers=guest["headers"])
    body = await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert [e["field"] for e in body["errors"]] == ["wool"]

    resp = await client.post(f"{API}/auth/register", json={"email": "a@b.co", "username": "abc"})
    body = await expect_problem(resp, 422, "VALIDATION_ERROR")
    assert [e["field"] for e in body["errors"]] == ["password"]


async def test_a_body_over_64_kib_is_413(client: TestClient) -> None:
    guest = await new_guest(client)
    big = orjson.dumps({"count": 1, "pad": "x" * (64 * 1024)})
    resp = await client.post(f"{API}/farm/shear", data=big, headers={**guest["headers"], **JSON})
    body = await expect_problem(resp, 413, "PAYLOAD_TOO_LARGE")
    assert "65536" in body["detail"]
    resp = await client.post(f"{API}/auth/guest", data=big, headers=JSON)
    await expect_problem(resp, 413, "PAYLOAD_TOO_LARGE")
    # Just under the limit is read (and refused for its content instead).
    near = orjson.dumps({"count": 1, "pad": "x" * (60 * 1024)})
    resp = await client.post(f"{API}/farm/shear", data=near, headers={**guest["headers"], **JSON})
    await expect_problem(resp, 422, "VALIDATION_ERROR")
    farm = await get_farm(client, guest["headers"])
    assert farm["stats"]["shears"] == 0


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"],
)
async def test_a_wrong_content_type_is_415(client: TestClient, content_type: str) -> None:
    guest = await new_guest(client)
    resp = await client.post(
        f"{API}/farm/shear", data=b"count=5", headers={**guest["headers"], "Content-Type": content_type}
    )
    body = await expect_problem(resp, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert "application/json" in body["detail"]


async def test_json_with_a_charset_parameter_is_json(client: TestClient) -> None:
    guest = await new_guest(client)
    resp = await client.post(
        f"{API}/farm/shear",
        data=b'{"count": 2}',
        headers={**guest["headers"], "Content-Type": "application/json; charset=utf-8"},
    )
    assert resp.status == 200, await resp.text()


async def test_no_token_is_401_auth_required(client: TestClient) -> None:
    resp = await client.get(f"{API}/farm")
    body = await expect_problem(resp, 401, "AUTH_REQUIRED")
    assert "Bearer" in body["detail"]
    # Authentication comes before the body: a bad body without a token is still 401.
    resp = await client.post(f"{API}/farm/shear", data=b"{", headers=JSON)
    await expect_problem(resp, 401, "AUTH_REQUIRED")


async def test_an_unknown_route_is_a_404_problem(client: TestClient) -> None:
    for path in (f"{API}/nothing-here", f"{API}/farm/buildings", "/definitely/not/here"):
        resp = await client.get(path if path != f"{API}/farm/buildings" else f"{API}/farm/buildingz")
        body = await expect_problem(resp, 404, "NOT_FOUND")
        assert "no route" in body["detail"]


async def test_a_wrong_method_is_405_with_allow(client: TestClient) -> None:
    guest = await new_guest(client)
    resp = await client.delete(f"{API}/farm", headers=guest["headers"])
    body = await expect_problem(resp, 405, "METHOD_NOT_ALLOWED")
    assert "DELETE" in body["detail"]
    assert "GET" in resp.headers["Allow"]
    resp = await client.get(f"{API}/farm/shear", headers=guest["headers"])
    await expect_problem(resp, 405, "METHOD_NOT_ALLOWED")
    assert "POST" in resp.headers["Allow"]


async def test_an_invalid_idempotency_key_is_422(client: TestClient) -> None:
    guest = await new_guest(client)
    for key in ("x" * 201, "has space", "tab\tkey"):
        resp = await client.post(
            f"{API}/farm/shear", json={"count": 1}, headers={**guest["headers"], "Idempotency-Key": key}
        )
        await expect_problem(resp, 422, "VALIDATION_ERROR")
    farm = await get_farm(client, guest["headers"])
    assert farm["stats"]["shears"] == 0


async def test_error_bodies_carry_a_request_id(client: TestClient) -> None:
    resp = await client.get(f"{API}/farm", headers={"X-Request-Id": "req-123"})
    body = await expect_problem(resp, 401, "AUTH_REQUIRED")
    assert body["request_id"] == "req-123"
    assert resp.headers["X-Request-Id"] == "req-123"


async def test_every_error_code_maps_to_a_4xx_or_5xx_status() -> None:
    for code, (status, title) in CODES.items():
        assert 400 <= status < 600, code
        assert title, code
    for code in ("VALIDATION_ERROR", "AUTH_REQUIRED", "INVALID_TOKEN", "INSUFFICIENT_RESOURCES",
                 "REQUIREMENT_NOT_MET", "NOT_FOUND", "CONFLICT", "RATE_LIMITED", "IMPLAUSIBLE_SAVE",
                 "UNAVAILABLE"):  # fmt: skip
        assert code in CODES, code


async def test_a_garbage_barrage_never_yields_a_500(client: TestClient) -> None:
    """Odd but well-formed requests across the API: each one a 4xx problem, none a 500."""
    guest = await new_guest(client)
    h = guest["headers"]
    cases = [
        ("POST", "/farm/shear", {"count": 10**30}),
        ("POST", "/farm/shear", {"count": {"nested": [1, 2]}}),
        ("POST", "/farm/buildings/barn/purchase", {"quantity": None}),
        ("POST", "/farm/buildings/" + "x" * 300 + "/purchase", {}),
        ("POST", "/farm/buildings/%00/purchase", {}),
        ("POST", "/farm/upgrades/%F0%9F%A6%99/purchase", {}),
        ("POST", "/farm/prestige", {"confirm": "yes please"}),
        ("POST", "/farm/prestige", {"confirm": True, "expected_gain": -1}),
        ("PATCH", "/players/me", {"settings": {"nested": {"a": 1}}}),
        ("PATCH", "/players/me", {"settings": []}),
        ("POST", "/auth/login", {"login": "", "password": ""}),
        ("POST", "/auth/login", {"login": "a" * 10_000, "password": "b"}),
        ("POST", "/auth/guest", {"device_id": "../../etc/passwd"}),
        ("POST", "/auth/refresh", {"refresh_token": 12345}),
        ("POST", "/auth/logout", {"refresh_token": ""}),
    ]
    for method, path, payload in cases:
        resp = await client.request(method, f"{API}{path}", json=payload, headers=h)
        text = await resp.text()
        assert 400 <= resp.status < 500, (method, path, resp.status, text)
        assert resp.content_type == "application/problem+json", (path, text)
        assert "Traceback" not in text
