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
_STATUS_TEXT = {200: "OK", 201: "Created", 204: "No Content"}


def _error_statuses(access: str, has_body: bool) -> list[int]:
    out = [400, 413, 415, 422] if has_body else []
    if access != "public":
        out += [401]
    if access == "admin":
        out += [403]
    out += [404, 409, 429, 503]
    return sorted(set(out))


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
        params = [
            {"name": name, "in": "path", "required": True, "description": desc, "schema": {"type": "string"}}
            for name, desc in r.params.items()
        ]
        for name in re.findall(r"{(\w+)}", r.path):
            if name not in r.params:
                params.append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
        if r.idempotent_key:
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "A retry with the same key returns the first answer and applies nothing twice",
                    "schema": {"type": "string", "maxLength": 200},
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
            op["requestBody"] = {"required": True, "content": content}
        statuses = [r.status, *(st for st in r.extra_statuses if st < 400)]
        for st in statuses:
            resp: dict[str, Any] = {"description": _STATUS_TEXT.get(st, "OK")}
            if st != 204:
                schema = {"$ref": REF.format(model=r.response.__name__)} if r.response else {"type": "object"}
                resp["content"] = {"application/json": {"schema": schema}}
            op["responses"][str(st)] = resp
        for st in sorted({*_error_statuses(r.access, r.body is not None), *(s for s in r.extra_statuses if s >= 400)}):
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
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llamawool",
            "version": __version__,
            "description": "Llama Wool Farm game server. Errors are RFC 9457 problem details with a stable `code`. "
            "The WebSocket protocol at /api/v1/ws is described in docs/protocol.md.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }
