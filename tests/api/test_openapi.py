"""The served OpenAPI document is the contract: every route, the very schemas that validate requests."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from llamawool.api.http import API_PREFIX, ROUTES, Route
from llamawool.api.openapi import REF
from tests.conftest import API, new_guest

from .support import expect_problem, ok_json

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
async def doc(client: TestClient) -> dict[str, Any]:
    resp = await client.get(f"{API}/openapi.json")
    return await ok_json(resp)


def _op(doc: dict[str, Any], r: Route) -> dict[str, Any]:
    path = API_PREFIX + r.path
    assert path in doc["paths"], f"{path} missing from the OpenAPI document"
    ops = doc["paths"][path]
    assert r.method.lower() in ops, f"{r.method} {path} missing from the OpenAPI document"
    op: dict[str, Any] = ops[r.method.lower()]
    return op


def _resolve(doc: dict[str, Any], ref: str) -> dict[str, Any]:
    prefix = "#/components/schemas/"
    assert ref.startswith(prefix), ref
    name = ref.removeprefix(prefix)
    assert name in doc["components"]["schemas"], f"dangling $ref {ref}"
    schema: dict[str, Any] = doc["components"]["schemas"][name]
    return schema


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        for v in node.values():
            out += _refs(v)
        return out
    if isinstance(node, list):
        return [ref for v in node for ref in _refs(v)]
    return []


async def test_the_document_is_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}


async def test_every_registered_route_is_documented(doc: dict[str, Any]) -> None:
    assert ROUTES, "no routes registered"
    for r in ROUTES:
        op = _op(doc, r)
        assert op["summary"], r.path
        assert op["responses"], r.path
        assert str(r.status) in op["responses"], (r.method, r.path)
        for extra in r.extra_statuses:
            assert str(extra) in op["responses"], (r.method, r.path, extra)
    op_ids = [op["operationId"] for item in doc["paths"].values() for m, op in item.items() if m in METHODS]
    assert len(op_ids) == len(set(op_ids)), "operationIds must be unique"
    for r in ROUTES:
        assert r.path.startswith("/")


async def test_the_document_names_no_route_the_server_lacks(client: TestClient, doc: dict[str, Any]) -> None:
    served = set()
    for resource_route in client.server.app.router.routes():
        info = resource_route.resource.get_info() if resource_route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path and resource_route.method != "HEAD":
            served.add((resource_route.method.lower(), path))
    for path, item in doc["paths"].items():
        for method in item:
            if method in METHODS:
                assert (method, path) in served, f"documented but not served: {method.upper()} {path}"
    # ...and every API route the server serves is in the document (the document itself aside)
    for method, path in served:
        if path.startswith(API_PREFIX) and path != f"{API_PREFIX}/openapi.json" and method in METHODS:
            assert method in doc["paths"].get(path, {}), f"served but undocumented: {method.upper()} {path}"


async def test_request_schemas_are_the_pydantic_models(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    for r in ROUTES:
        if r.body is None:
            assert "requestBody" not in _op(doc, r), (r.method, r.path)
            continue
        op = _op(doc, r)
        content = op["requestBody"]["content"]
        expected_types = {"application/json"} | ({"application/x-www-form-urlencoded"} if r.form else set())
        assert set(content) == expected_types, (r.path, set(content))
        for media in content.values():
            assert media["schema"] == {"$ref": REF.format(model=r.body.__name__)}
        model_schema = r.body.model_json_schema(ref_template=REF, mode="validation")
        for name, sub in model_schema.pop("$defs", {}).items():
            assert schemas[name] == sub, (r.body.__name__, name)
        assert schemas[r.body.__name__] == model_schema, r.body.__name__


async def test_response_schemas_and_every_ref_resolve(doc: dict[str, Any]) -> None:
    for ref in _refs(doc["paths"]) + _refs(doc["components"]):
        _resolve(doc, ref)
    problem = doc["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "code"} <= set(problem["required"])
    for r in ROUTES:
        op = _op(doc, r)
        if r.response is not None:
            schema = op["responses"][str(r.status)]["content"]["application/json"]["schema"]
            assert schema == {"$ref": REF.format(model=r.response.__name__)}
        for status, resp in op["responses"].items():
            if int(status) >= 400:
                assert "application/problem+json" in resp["content"], (r.path, status)


async def test_security_path_parameters_and_idempotency_keys(doc: dict[str, Any]) -> None:
    for r in ROUTES:
        op = _op(doc, r)
        if r.access == "public":
            assert "security" not in op, r.path
        else:
            assert op["security"] == [{"bearer": []}], r.path
            assert "401" in op["responses"], r.path
        params = op.get("parameters", [])
        path_params = {p["name"] for p in params if p["in"] == "path"}
        assert path_params == set(re.findall(r"{(\w+)}", r.path)), r.path
        headers = {p["name"] for p in params if p["in"] == "header"}
        assert ("Idempotency-Key" in headers) == r.idempotent_key, r.path
    keyed = {(r.method, r.path) for r in ROUTES if r.idempotent_key}
    for action in ("/farm/shear", "/farm/buildings/{key}/purchase", "/farm/upgrades/{key}/purchase", "/farm/prestige"):
        assert ("POST", action) in keyed, action


# The document's `required` lists are what the server really insists on: an
# empty body to each route is refused naming exactly those fields.
EMPTY_BODY_CASES = {
    ("POST", "/auth/guest"): "/auth/guest",
    ("POST", "/auth/register"): "/auth/register",
    ("POST", "/auth/login"): "/auth/login",
    ("POST", "/auth/refresh"): "/auth/refresh",
    ("POST", "/farm/prestige"): "/farm/prestige",
    ("POST", "/farm/shear"): "/farm/shear",
    ("POST", "/farm/buildings/{key}/purchase"): "/farm/buildings/barn/purchase",
    ("PATCH", "/players/me"): "/players/me",
}


async def test_required_fields_in_the_document_are_the_ones_the_server_requires(
    client: TestClient, doc: dict[str, Any]
) -> None:
    guest = await new_guest(client)
    by_key = {(r.method, r.path): r for r in ROUTES}
    for key, concrete in EMPTY_BODY_CASES.items():
        r = by_key[key]
        assert r.body is not None
        required = set(doc["components"]["schemas"][r.body.__name__].get("required", []))
        headers = guest["headers"] if r.access == "player" else {}
        resp = await client.request(r.method, f"{API}{concrete}", json={}, headers=headers)
        if required:
            body = await expect_problem(resp, 422, "VALIDATION_ERROR")
            assert {e["field"] for e in body["errors"]} == required, key
        else:
            assert resp.status != 422, (key, await resp.text())


async def test_unknown_fields_are_refused_as_the_document_says(client: TestClient, doc: dict[str, Any]) -> None:
    guest = await new_guest(client)
    for (method, path), concrete in EMPTY_BODY_CASES.items():
        r = next(x for x in ROUTES if x.method == method and x.path == path)
        assert r.body is not None
        schema = doc["components"]["schemas"][r.body.__name__]
        assert schema.get("additionalProperties") is False, r.body.__name__
        headers = guest["headers"] if r.access == "player" else {}
        resp = await client.request(method, f"{API}{concrete}", json={"surprise": 1}, headers=headers)
        body = await expect_problem(resp, 422, "VALIDATION_ERROR")
        assert "surprise" in {e["field"] for e in body["errors"]}, (method, path)
