"""The OpenAPI 3.1 document, written from the route table and its pydantic schemas."""

from __future__ import annotations

import functools
import re
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from .errors import CODES, PROBLEM_TYPE
from .http import API_PREFIX, ROUTES
from .schemas import Health, Problem

REF = "#/components/schemas/{model}"
_STATUS_TEXT = {101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content"}
_NO_CONTENT = (101, 204)


def _error_statuses(access: str, has_body: bool, validates: bool = False) -> list[int]:
    out = [400, 413, 415, 422] if has_body else []
    if validates:  # path or query values the server checks beyond "a string"
        out += [422]
    if access != "public":
        out += [401]
    if access == "admin":
        out += [403]
    out += [404, 409, 429, 503]
    return sorted(set(out))


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The query string's parameters, from the pydantic model that validates it."""
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            param["description"] = prop["description"]
        out.append(param)
    return out


@functools.cache
def openapi_document() -> dict[str, Any]:
    models: set[type[BaseModel]] = {Problem, Health}
    for r in ROUTES:
        for m in (r.body, r.response):
            if m is not None:
                models.add(m)
    bodies = {r.body for r in ROUTES}
    keyed: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (m, "validation" if m in bodies else "serialization") for m in models
    ]
    _, defs = models_json_schema(sorted(keyed, key=lambda x: x[0].__name__), ref_template=REF)
    schemas = defs.get("$defs", {})

    paths: dict[str, dict[str, Any]] = {}
    for r in ROUTES:
        path = API_PREFIX + r.path
        op: dict[str, Any] = {
            "operationId": r.handler.__name__,
            "summary": r.summary,
            "tags": [r.tag],
            "responses": {},
        }
        params = []
        for name, spec in r.params.items():
            desc, schema = spec if isinstance(spec, tuple) else (spec, {"type": "string"})
            params.append({"name": name, "in": "path", "required": True, "description": desc, "schema": schema})
        for name in re.findall(r"{(\w+)}", r.path):
            if name not in r.params:
                params.append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
        if r.query is not None:
            params += _query_parameters(r.query)
        if r.idempotent_key:
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "A retry with the same key returns the first answer and applies nothing twice",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[!-~]{1,200}$"},
                }
            )
        if params:
            op["parameters"] = params
        if r.access != "public":
            op["security"] = [{"bearer": []}]
        if r.body is not None:
            content = {"application/json": {"schema": {"$ref": REF.format(model=r.body.__name__)}}}
            if r.form:
                content["application/x-www-form-urlencoded"] = {"schema": {"$ref": REF.format(model=r.body.__name__)}}
            # a body whose fields all have defaults may be left out (the server reads it as {})
            required = any(f.is_required() for f in r.body.model_fields.values())
            op["requestBody"] = {"required": required, "content": content}
        statuses = [r.status, *(st for st in r.extra_statuses if st < 400)]
        for st in statuses:
            resp: dict[str, Any] = {"description": _STATUS_TEXT.get(st, "OK")}
            if st not in _NO_CONTENT:
                schema = {"$ref": REF.format(model=r.response.__name__)} if r.response else {"type": "object"}
                resp["content"] = {"application/json": {"schema": schema}}
            op["responses"][str(st)] = resp
        validates = r.query is not None or any(isinstance(spec, tuple) for spec in r.params.values())
        errors = _error_statuses(r.access, r.body is not None, validates)
        for st in sorted({*errors, *(s for s in r.extra_statuses if s >= 400)}):
            codes = sorted(c for c, (s, _) in CODES.items() if s == st)
            op["responses"][str(st)] = {
                "description": ", ".join(codes) or "error",
                "content": {PROBLEM_TYPE: {"schema": {"$ref": REF.format(model="Problem")}}},
            }
        paths.setdefault(path, {})[r.method.lower()] = op

    for p, summary in (("/health", "Liveness"), ("/ready", "Readiness: storage reachable and not draining")):
        paths[p] = {
            "get": {
                "operationId": p.strip("/"),
                "summary": summary,
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": {"$ref": REF.format(model="Health")}}},
                    },
                    **({"503": {"description": "Not ready"}} if p == "/ready" else {}),
                },
            }
        }
    paths[API_PREFIX + "/asyncapi.json"] = {
        "get": {
            "operationId": "asyncapi",
            "summary": "The WebSocket protocol as an AsyncAPI 3.0 document, from the schemas the socket validates with",
            "tags": ["realtime"],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llamawool",
            "version": __version__,
            "description": "Llama Wool Farm game server. Errors are RFC 9457 problem details with a stable `code`. "
            "The WebSocket protocol at /api/v1/ws is described in docs/protocol.md and, typed, by the AsyncAPI 3.0 "
            "document at /api/v1/asyncapi.json.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
