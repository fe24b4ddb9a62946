"""Problem details (RFC 9457) and the one table mapping error codes to statuses."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

PROBLEM_TYPE = "application/problem+json"

# code -> (status, title). The protocol's stable error codes live here only.
CODES: dict[str, tuple[int, str]] = {
    "INVALID_JSON": (400, "Request body is not valid JSON"),
    "BAD_REQUEST": (400, "Bad request"),
    "AUTH_REQUIRED": (401, "Authentication required"),
    "INVALID_TOKEN": (401, "Invalid token"),
    "INVALID_CREDENTIALS": (401, "Invalid credentials"),
    "FORBIDDEN": (403, "Forbidden"),
    "NOT_FOUND": (404, "Not found"),
    "METHOD_NOT_ALLOWED": (405, "Method not allowed"),
    "CONFLICT": (409, "Conflict"),
    "INSUFFICIENT_RESOURCES": (409, "Insufficient resources"),
    "REQUIREMENT_NOT_MET": (409, "Requirement not met"),
    "PRECONDITION_FAILED": (412, "Precondition failed"),
    "PRECONDITION_REQUIRED": (428, "Precondition required"),
    "PAYLOAD_TOO_LARGE": (413, "Payload too large"),
    "UNSUPPORTED_MEDIA_TYPE": (415, "Unsupported media type"),
    "VALIDATION_ERROR": (422, "Validation error"),
    "IMPLAUSIBLE_SAVE": (422, "Implausible save"),
    "RATE_LIMITED": (429, "Too many requests"),
    "INTERNAL": (500, "Internal server error"),
    "UNAVAILABLE": (503, "Service unavailable"),
}


class ApiError(Exception):
    """Raised by handlers; the error middleware renders it as problem+json."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.status = status or CODES[code][0]
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def unavailable(cause: str, *, writes: bool, retry_key: str | None) -> tuple[str, dict[str, Any]]:
    """The detail and extension fields of an `UNAVAILABLE` answer: only what is true.

    A read changed nothing. A write that storage or the farm's replica did not
    confirm may have been applied all the same: a MongoDB commit whose result was
    lost, a majority write that timed out after it applied, the owner's reply lost
    after the routing retries. "Nothing was applied" would invite a retry without
    the key, applying the action twice; the honest answer is "unknown", and the
    idempotency key (`retry_key`, where the request can carry one) settles it.
    """
    if not writes:
        return f"{cause}; nothing was changed, retry shortly", {}
    if retry_key is None:
        how = "check its effect before repeating it"
    else:
        how = f"retry with the same {retry_key}: the answer says what was done, and nothing is applied twice"
    return f"{cause}; the request may or may not have been applied: {how}", {"outcome": "unknown"}


def field_error(field: str, message: str, type_: str = "value_error", *, detail: str | None = None) -> ApiError:
    """422 for one field, shaped like the schema's own refusals (`errors: [{field,
    message, type}]`, see `http.validation_problem`), so clients read every field
    error the same way."""
    return ApiError(
        "VALIDATION_ERROR",
        detail or f"{field}: {message}",
        errors=[{"field": field, "message": message, "type": type_}],
    )


def problem_body(code: str, detail: str, status: int | None = None, **extra: Any) -> dict[str, Any]:
    st, title = CODES.get(code, (status or 500, code.replace("_", " ").capitalize()))
    body: dict[str, Any] = {
        "type": f"https://llamawool.dev/problems/{code.lower().replace('_', '-')}",
        "title": title,
        "status": status or st,
        "detail": detail,
        "code": code,
    }
    body.update(extra)
    return body


def problem_response(err: ApiError, request_id: str | None = None) -> web.Response:
    body = problem_body(err.code, err.detail, err.status, **err.extra)
    if request_id:
        body["request_id"] = request_id
    headers = dict(err.headers)
    if err.status == 401:
        headers.setdefault(
            "WWW-Authenticate",
            f'Bearer error="{"invalid_token" if err.code == "INVALID_TOKEN" else "invalid_request"}"',
        )
    return web.Response(status=err.status, body=orjson.dumps(body), content_type=PROBLEM_TYPE, headers=headers)
