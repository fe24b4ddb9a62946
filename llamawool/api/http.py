"""The route table and the helpers every handler shares.

A handler is declared once with `@route(...)`: its method, path, request and
response schemas and who may call it. The same table registers the aiohttp
routes and writes the OpenAPI document, so the two cannot drift.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..auth import AuthError, Principal
from .errors import ApiError, field_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Access = Literal["public", "player", "admin"]
M = TypeVar("M", bound=BaseModel)

API_PREFIX = "/api/v1"
PRINCIPAL = web.RequestKey("principal", Principal)


@dataclass(slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    access: Access
    tag: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    extra_statuses: tuple[int, ...] = ()
    form: bool = False
    idempotent_key: bool = False
    # name -> description, or (description, JSON schema) when not any string
    params: dict[str, str | tuple[str, dict[str, Any]]] = field(default_factory=dict)
    query: type[BaseModel] | None = None  # the model that validates the query string


ROUTES: list[Route] = []
ROUTE = web.RequestKey("route", Route)  # the route a request matched (set by the app before its handler)


def route(
    method: str,
    path: str,
    *,
    summary: str,
    access: Access = "player",
    tag: str,
    body: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    extra_statuses: tuple[int, ...] = (),
    form: bool = False,
    idempotency: bool = False,
    params: dict[str, str | tuple[str, dict[str, Any]]] | None = None,
    query: type[BaseModel] | None = None,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES.append(
            Route(
                method,
                path,
                handler,
                summary,
                access,
                tag,
                body,
                response,
                status,
                extra_statuses,
                form,
                idempotency,
                params or {},
                query,
            )
        )
        return handler

    return register


# ---- request helpers ---------------------------------------------------------------


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def raw_json_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def validation_problem(exc: ValidationError) -> ApiError:
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return ApiError("VALIDATION_ERROR", summary, errors=errors)


def read_query(request: web.Request, model: type[M]) -> M:
    """Validate a query string: 422 naming each bad parameter (never a 500 for "²")."""
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise validation_problem(exc) from None


async def read_body(request: web.Request, model: type[M], *, form: bool = False) -> M:
    """Parse and validate a request body: 415 for the wrong type, 400 for bad
    JSON, 422 (naming each field) for well-formed but wrong content."""
    ctype = request.content_type
    raw = await request.read()
    if form and ctype == "application/x-www-form-urlencoded":
        try:
            data: Any = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw)))
        except (UnicodeDecodeError, ValueError):
            raise ApiError("BAD_REQUEST", "form body could not be parsed") from None
    elif ctype == "application/json" or (not raw and ctype in ("", "application/octet-stream")):
        if not raw:
            data = {}
        else:
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ApiError("INVALID_JSON", f"request body is not valid JSON: {exc}") from None
    else:
        accepted = "application/json" + (" or application/x-www-form-urlencoded" if form else "")
        raise ApiError("UNSUPPORTED_MEDIA_TYPE", f"Content-Type must be {accepted}, not {ctype or 'missing'}")
    if not isinstance(data, dict):
        raise field_error("(body)", "must be a JSON object", "dict_type", detail="request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc) from None


_BEARER = re.compile(r"^Bearer\s+(\S+)\s*$", re.IGNORECASE)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    m = _BEARER.match(header)
    if not m:
        raise ApiError("INVALID_TOKEN", "Authorization header must be 'Bearer <token>'")
    return m.group(1)


def principal(request: web.Request) -> Principal:
    p: Principal | None = request.get(PRINCIPAL)
    if p is None:
        raise ApiError("AUTH_REQUIRED", "this route needs an access token")
    return p


def authenticate(request: web.Request, decode: Callable[[str], Principal], access: Access) -> Principal | None:
    token = bearer_token(request)
    if token is None:
        if access == "public":
            return None
        raise ApiError("AUTH_REQUIRED", "this route needs 'Authorization: Bearer <access token>'")
    try:
        p = decode(token)
    except AuthError as exc:
        raise ApiError(exc.code, exc.detail) from None
    if access == "admin" and not p.is_admin:
        raise ApiError("FORBIDDEN", "this route needs the admin role")
    return p


IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


def idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.match(key):
        raise field_error(
            "Idempotency-Key",
            "must be 1..200 printable ASCII characters",
            "string_pattern_mismatch",
        )
    return key


def client_ip(request: web.Request, trusted: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str:
    """The client's address: the peer, or (only when the peer is a trusted proxy)
    the right-most untrusted address in X-Forwarded-For."""
    peer = request.remote or "unknown"
    if not trusted or not _in(peer, trusted):
        return peer
    forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
    for addr in reversed(forwarded):
        if not _in(addr, trusted):
            return addr
    return forwarded[0] if forwarded else peer


def _in(addr: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(ip in net for net in networks)
