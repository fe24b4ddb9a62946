"""Log redaction matches field names by pattern and strips credentials from URLs.

Each shape a secret takes in a log call is logged once through the server's
own logging configuration, and the line written is searched for the secret.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog

from llamawool.observability import configure_logging

# field name -> (value logged, what must not appear in the line)
SECRET_FIELDS = {
    "password": "hunter2-plain",
    "new_password": "hunter2-new",
    "current_password": "hunter2-current",
    "jwt_secret": "jwt-secret-value",
    "save_secret": "save-secret-value",
    "client_secret": "client-secret-value",
    "token": "opaque-token-1",
    "refresh_token": "opaque-refresh-2",
    "idToken": "opaque-id-token-3",
    "Authorization": "Bearer opaque-bearer-4",
    "proxy_authorization": "Basic cHJveHk6c2VjcmV0",
    "cookie": "session=cookie-value-5",
    "Set-Cookie": "sid=cookie-value-6",
    "x_api_key": "api-key-value-7",
    "aws_credentials": "credential-value-8",
}


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]) -> Any:
    configure_logging("debug", "json", "test")

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]

    yield read
    configure_logging("info", "json", "local")


def test_every_field_named_like_a_secret_is_redacted(lines: Any) -> None:
    structlog.get_logger("t").info("shapes", **SECRET_FIELDS)
    [line] = lines()
    for field, secret in SECRET_FIELDS.items():
        assert line[field] == "[redacted]", field
        assert secret not in json.dumps(line), field


def test_nested_fields_and_lists_are_redacted(lines: Any) -> None:
    structlog.get_logger("t").info(
        "nested",
        request={"headers": {"Authorization": "Bearer nested-bearer"}, "body": {"new_password": "nested-pw"}},
        attempts=[{"refresh_token": "listed-token"}, "plain"],
    )
    [line] = lines()
    assert line["request"] == {"headers": {"Authorization": "[redacted]"}, "body": {"new_password": "[redacted]"}}
    assert line["attempts"] == [{"refresh_token": "[redacted]"}, "plain"]


@pytest.mark.parametrize(
    ("field", "url", "shown"),
    [
        (
            "mongodb_uri",
            "mongodb://game:db-pass-9@mongo-0:27017/llamawool",
            "mongodb://[redacted]@mongo-0:27017/llamawool",
        ),
        ("redis_url", "redis://:cache-pass-10@redis:6379/0", "redis://[redacted]@redis:6379/0"),
        ("webhook_url", "https://user:hook-pass-11@hooks.example.com/x", "https://[redacted]@hooks.example.com/x"),
        ("backup_uri", "s3://bucket/path", "s3://bucket/path"),  # no credentials: unchanged
    ],
)
def test_credentials_in_a_url_are_stripped_and_the_host_kept(lines: Any, field: str, url: str, shown: str) -> None:
    structlog.get_logger("t").warning("connecting", **{field: url})
    [line] = lines()
    assert line[field] == shown


def test_credentials_quoted_in_a_message_or_an_exception_are_stripped(lines: Any) -> None:
    log = structlog.get_logger("t")
    log.error("store.down", detail="cannot reach mongodb://game:quoted-pass-12@mongo-0:27017")
    try:
        raise ConnectionError("redis://:exc-pass-13@redis:6379 refused the connection")
    except ConnectionError:
        log.exception("coord.down")
    text = "\n".join(json.dumps(line) for line in lines())
    assert "quoted-pass-12" not in text and "exc-pass-13" not in text
    assert "mongodb://[redacted]@mongo-0:27017" in text and "redis://[redacted]@redis:6379" in text
