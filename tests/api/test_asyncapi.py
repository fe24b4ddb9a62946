"""The AsyncAPI document of the WebSocket is valid AsyncAPI 3.0 and describes every message a real game carries."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest
from aiohttp.test_utils import TestClient

from llamawool.api.messages import CLIENT_MESSAGES, SERVER_MESSAGES, Board
from llamawool.coord import BOARDS
from tests.conftest import API, new_guest
from tests.helpers import FakeClock

from .fairplay import make_admin, push
from .support import bearer, ok_json, run_ticks, shear, take_offline

SPEC = Path(__file__).parents[1] / "fixtures" / "asyncapi" / "asyncapi-3.0.0.schema.json"


@pytest.fixture(scope="module")
def spec_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SPEC.read_text()))


@pytest.fixture
async def doc(client: TestClient) -> dict[str, Any]:
    resp = await client.get(f"{API}/asyncapi.json")
    assert resp.headers["Content-Type"].startswith("application/json")
    return await ok_json(resp)


class Protocol:
    """Checks one message against the document: the payload schema of the message its `type` names."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def _validator(self, ref: str) -> jsonschema.Draft202012Validator:
        # The document is the root, so every "#/components/schemas/..." in it resolves.
        return jsonschema.Draft202012Validator({**self.doc, "$ref": ref})

    def errors(self, side: str, message: dict[str, Any]) -> list[str]:
        name = f"{side}.{message.get('type')}"
        channel = self.doc["channels"]["game"]["messages"]
        if name not in channel:
            return [f"{name} is not in the document"]
        ref = channel[name]["$ref"].removeprefix("#/")
        target = self.doc
        for part in ref.split("/"):
            target = target[part]
        payload_ref = target["payload"]["$ref"]
        found = self._validator(payload_ref).iter_errors(message)
        return [f"{name}: {e.message} at {list(e.absolute_path)}" for e in found]


async def test_the_document_is_valid_asyncapi_3(
    doc: dict[str, Any], spec_validator: jsonschema.Draft7Validator
) -> None:
    assert doc["asyncapi"] == "3.0.0"
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in spec_validator.iter_errors(doc)]
    assert errors == []
    # the validator is not vacuous: a broken document fails it
    broken = copy.deepcopy(doc)
    broken["operations"]["sendServerMessages"]["action"] = "publish"  # AsyncAPI 2's word
    del broken["channels"]["game"]["address"]
    broken["channels"]["game"]["address"] = 5
    assert len(list(spec_validator.iter_errors(broken))) >= 2


async def test_it_is_served_beside_the_openapi_document(client: TestClient, doc: dict[str, Any]) -> None:
    openapi = await ok_json(await client.get(f"{API}/openapi.json"))
    assert doc["info"]["version"] == openapi["info"]["version"]
    assert doc["channels"]["game"]["address"] == f"{API}/ws"
    assert f"{API}/ws" in openapi["paths"]
    ops = doc["operations"]
    assert {ops["receiveClientMessages"]["action"], ops["sendServerMessages"]["action"]} == {"receive", "send"}
    sent = {m["$ref"].rsplit("/", 1)[1] for m in ops["sendServerMessages"]["messages"]}
    received = {m["$ref"].rsplit("/", 1)[1] for m in ops["receiveClientMessages"]["messages"]}
    assert sent == {f"server.{t}" for t in ("welcome", "tick", "result", "event", "error", "pong")}
    assert received == {f"client.{t}" for t in ("auth", "action", "subscribe", "unsubscribe", "ping")}
    assert set(SERVER_MESSAGES) | set(CLIENT_MESSAGES) == {n.split(".", 1)[1] for n in sent | received}


def test_the_boards_in_the_document_are_the_servers() -> None:
    assert Board.__args__ == BOARDS  # type: ignore[attr-defined]


async def test_the_action_schema_is_the_one_the_server_validates_with(doc: dict[str, Any]) -> None:
    protocol = Protocol(doc)
    good = {"type": "action", "id": "a1", "data": {"action": "buy_building", "key": "barn", "quantity": "max"}}
    assert protocol.errors("client", good) == []
    for bad in (
        {"action": "shear", "count": 21},  # the server's limit is 20
        {"action": "shear", "count": "5"},  # strict: a string is not a count
        {"action": "shear", "idempotency_key": ""},
        {"action": "teleport"},
        {"action": "shear", "bonus": 1},  # extra fields are refused
    ):
        assert protocol.errors("client", {"type": "action", "id": "x", "data": bad}), bad


class Recorder:
    """A socket whose every frame, both ways, is kept for checking against the document."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        await self.ws.send_str(orjson.dumps(message).decode())

    async def receive(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=5.0)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
        body: dict[str, Any] = orjson.loads(msg.data)
        self.received.append(body)
        return body

    async def until(self, type_: str, msg_id: object = None) -> dict[str, Any]:
        while True:
            msg = await self.receive()
            if msg["type"] == type_ and (msg_id is None or msg.get("id") == msg_id):
                return msg

    async def reply(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.send(message)
        while True:
            msg = await self.receive()
            if msg["type"] in ("result", "error") and msg.get("id") == message["id"]:
                return msg

    async def settle(self, ping_id: str) -> None:
        """Everything the server queued before this ping is received (and recorded)."""
        await self.send({"type": "ping", "id": ping_id})
        await self.until("pong", ping_id)


async def test_every_message_of_a_scripted_game_matches_the_document(
    frozen: TestClient, clock: FakeClock, doc: dict[str, Any]
) -> None:
    protocol = Protocol(doc)
    guest = await new_guest(frozen)
    pid = guest["player"]["id"]
    await shear(frozen, guest["headers"], 5)
    clock.advance(121)
    await take_offline(frozen, pid)
    clock.advance(60)  # the welcome carries a "while you were away" report

    raw = await frozen.ws_connect(f"{API}/ws")
    game = Recorder(raw)
    try:
        await game.send({"type": "auth", "data": {"token": guest["access_token"]}})
        welcome = await game.until("welcome")
        assert welcome["data"]["offline_report"] is not None
        await game.settle("p0")

        shorn = await game.reply(
            {"type": "action", "id": 1, "data": {"action": "shear", "count": 20, "idempotency_key": "k-1"}}
        )
        assert shorn["type"] == "result"
        assert (await game.reply({"type": "action", "id": "b1", "data": {"action": "buy_building", "key": "barn"}}))[
            "type"
        ] in ("result", "error")
        poor = await game.reply(
            {"type": "action", "id": "b2", "data": {"action": "buy_building", "key": "dimension_gate", "quantity": 100}}
        )
        assert poor["type"] == "error"
        unknown = await game.reply({"type": "action", "id": "u1", "data": {"action": "buy_upgrade", "key": "nope"}})
        assert unknown["data"]["code"] == "NOT_FOUND"
        early = await game.reply(
            {"type": "action", "id": "r1", "data": {"action": "prestige", "confirm": True, "expected_gain": 0}}
        )
        assert early["type"] == "error"
        await game.ws.send_str("{not json")
        assert (await game.until("error"))["data"]["code"] == "INVALID_JSON"

        subscribed = await game.reply({"type": "subscribe", "id": "s1", "data": {"board": "lifetime"}})
        assert subscribed["data"] == {"subscribed": "lifetime"}
        await push(frozen)
        rival = await new_guest(frozen)
        for _ in range(4):  # 80 wool: ahead of the player
            await shear(frozen, rival["headers"], 20)
            clock.advance(1.0)  # the shear bucket refills
        clock.advance(5.0)
        await push(frozen)
        await game.settle("p-rank")  # the rank change arrives before the reward puts us ahead again
        daily = await game.reply({"type": "action", "id": "d1", "data": {"action": "claim_daily_reward"}})
        assert daily["type"] == "result"
        assert (await game.reply({"type": "action", "id": "d2", "data": {"action": "claim_daily_reward"}}))["data"][
            "code"
        ] == "CONFLICT"

        admin = await make_admin(frozen)
        resp = await frozen.post(
            f"{API}/admin/broadcast", json={"message": "hello, farmers", "level": "info"}, headers=admin["headers"]
        )
        await ok_json(resp)
        await run_ticks(frozen, 2)
        await game.settle("p1")
        assert (await game.reply({"type": "unsubscribe", "id": "s2", "data": {"board": "lifetime"}}))["type"] == (
            "result"
        )
        await game.settle("p2")
    finally:
        await raw.close()

    sent_types = {m["type"] for m in game.sent}
    received_types = {m["type"] for m in game.received}
    event_kinds = {m["data"].get("type") for m in game.received if m["type"] == "event"}
    assert sent_types == {"auth", "action", "subscribe", "unsubscribe", "ping"}
    assert received_types == {"welcome", "tick", "result", "event", "error", "pong"}
    assert {"achievement_unlocked", "leaderboard", "rank_changed", "broadcast", "daily_reward"} <= event_kinds
    problems = [e for m in game.sent for e in protocol.errors("client", m)]
    problems += [e for m in game.received for e in protocol.errors("server", m)]
    assert problems == []
    assert len(game.received) > 15

    # not vacuous: a tick without its revision, or an event of no known kind, fails the document
    tick = next(m for m in game.received if m["type"] == "tick")
    assert protocol.errors("server", {**tick, "data": {k: v for k, v in tick["data"].items() if k != "revision"}})
    assert protocol.errors("server", {"type": "event", "data": {"type": "meteor_shower"}})


async def test_the_ws_refuses_what_the_document_refuses(client: TestClient, doc: dict[str, Any]) -> None:
    """A client message the document calls invalid is refused by the socket with VALIDATION_ERROR."""
    protocol = Protocol(doc)
    guest = await new_guest(client)
    ws = await client.ws_connect(f"{API}/ws", headers=bearer(guest["access_token"]))
    game = Recorder(ws)
    try:
        await game.until("welcome")
        for i, data in enumerate(({"action": "shear", "count": 0}, {"action": "shear", "bonus": 1})):
            message = {"type": "action", "id": f"v{i}", "data": data}
            assert protocol.errors("client", message)
            assert (await game.reply(message))["data"]["code"] == "VALIDATION_ERROR"
        message = {"type": "subscribe", "id": "s", "data": {"board": "richest"}}
        assert protocol.errors("client", message)
        assert (await game.reply(message))["data"]["code"] == "VALIDATION_ERROR"
    finally:
        await ws.close()


def test_the_cli_prints_the_served_document(capsys: pytest.CaptureFixture[str]) -> None:
    from llamawool import cli
    from llamawool.api.asyncapi import asyncapi_document

    assert cli.main(["asyncapi"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(orjson.dumps(asyncapi_document()))


def _typed_dicts_built_in(paths: list[Path]) -> dict[str, str]:
    """Every `{"type": "<literal>", ...}` the server's code builds: message types and event kinds."""
    import ast

    found: dict[str, str] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "type"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                    ):
                        found.setdefault(value.value, f"{path.name}:{node.lineno}")
    return found


def test_every_message_and_event_kind_the_code_builds_is_in_the_document(doc: dict[str, Any]) -> None:
    """A new event kind (or message) built anywhere in the game, the engine or the app without a model in
    llamawool/api/messages.py fails here, before a client meets it undocumented."""
    import llamawool

    root = Path(llamawool.__file__).parent
    paths = [*sorted((root / "game").glob("*.py")), *sorted((root / "engine").glob("*.py")), root / "api" / "app.py"]
    built = _typed_dicts_built_in(paths)
    assert {"tick", "event", "tier_discovered", "rank_changed", "broadcast", "daily_reward"} <= set(built)
    schemas = doc["components"]["schemas"]
    kinds = {
        s["properties"]["type"]["const"]
        for s in schemas.values()
        if "type" in s.get("properties", {}) and "const" in s["properties"]["type"]
    }
    missing = {kind: where for kind, where in built.items() if kind not in kinds}
    assert missing == {}
