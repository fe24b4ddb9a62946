"""The AsyncAPI 3.0 document of the WebSocket, written from the message models in `messages.py`.

The WebSocket's equivalent of `openapi.py`: the schemas in it are the very
pydantic models the socket validates client messages with and builds its own
messages from, so the document cannot describe a protocol the server does not
speak. It describes the server as the application: it `receive`s the client's
messages and `send`s its own.
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from .http import API_PREFIX
from .messages import CLIENT_MESSAGES, SERVER_MESSAGES

REF = "#/components/schemas/{model}"
CHANNEL = "game"


def _asyncapi_schema(node: Any) -> Any:
    """Pydantic writes OpenAPI's discriminator object; an AsyncAPI schema's discriminator is the property name."""
    if isinstance(node, dict):
        out = {k: _asyncapi_schema(v) for k, v in node.items()}
        if isinstance(out.get("discriminator"), dict):
            out["discriminator"] = out["discriminator"]["propertyName"]
        return out
    if isinstance(node, list):
        return [_asyncapi_schema(v) for v in node]
    return node


def _message(name: str, model: type[BaseModel]) -> dict[str, Any]:
    doc = (model.__doc__ or "").strip()
    out: dict[str, Any] = {
        "name": name,
        "title": name,
        "contentType": "application/json",
        "payload": {"$ref": REF.format(model=model.__name__)},
    }
    if doc:
        out["summary"] = doc.splitlines()[0]
    return out


@functools.cache
def asyncapi_document() -> dict[str, Any]:
    keyed: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        *((m, "validation") for m in CLIENT_MESSAGES.values()),
        *((m, "serialization") for m in SERVER_MESSAGES.values()),
    ]
    _, defs = models_json_schema(keyed, ref_template=REF)
    schemas = _asyncapi_schema(defs.get("$defs", {}))
    client = {f"client.{n}": _message(n, m) for n, m in CLIENT_MESSAGES.items()}
    server = {f"server.{n}": _message(n, m) for n, m in SERVER_MESSAGES.items()}
    channel_ref = {"$ref": f"#/channels/{CHANNEL}"}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "llamawool WebSocket",
            "version": __version__,
            "description": "The real-time protocol of the Llama Wool Farm game server: one JSON text frame per "
            "message, `{type, id?, data?}`. Authenticate with an `Authorization: Bearer` header, `?token=`, or a "
            "first `auth` message within 5 s (else close 4401). Close codes: 1012 draining or rebalancing "
            "(reconnect with jitter), 4401 authentication, 4408 too many limit violations, 1009 message too "
            "big, 1011 storage unavailable while joining. docs/protocol.md explains each message; the REST API "
            f"is described by {API_PREFIX}/openapi.json.",
        },
        "defaultContentType": "application/json",
        "channels": {
            CHANNEL: {
                "address": f"{API_PREFIX}/ws",
                "title": "The game socket",
                "description": "One per client; a farm may have several (all get its ticks and events).",
                "messages": {n: {"$ref": f"#/components/messages/{n}"} for n in (*client, *server)},
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {"token": {"type": "string", "description": "an access token"}},
                        },
                        "headers": {
                            "type": "object",
                            "properties": {"Authorization": {"type": "string", "description": "Bearer <access token>"}},
                        },
                    }
                },
            }
        },
        "operations": {
            "receiveClientMessages": {
                "action": "receive",
                "channel": channel_ref,
                "title": "What a client may send",
                "messages": [{"$ref": f"#/channels/{CHANNEL}/messages/{n}"} for n in client],
            },
            "sendServerMessages": {
                "action": "send",
                "channel": channel_ref,
                "title": "What the server sends",
                "messages": [{"$ref": f"#/channels/{CHANNEL}/messages/{n}"} for n in server],
            },
        },
        "components": {
            "schemas": schemas,
            "messages": {**client, **server},
        },
    }
