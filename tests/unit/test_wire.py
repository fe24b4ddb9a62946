"""The routed operations survive the wire: what the owner returns is what the caller gets.

A routed call must return the same value the local path would have (the engine
no longer tells the two apart), so every operation's arguments and result are
sent through JSON here, as `Cluster.call` sends them, and compared.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llamawool.engine import IdempotentRequest, Reply
from llamawool.engine.errors import OwnerBusy, RemoteError, SaveRejected, SaveStale
from llamawool.engine.wire import (
    ATTACH,
    RESTORE,
    SEEN,
    SNAPSHOT,
    SUBMIT,
    TOUCH,
    UPLOAD,
    AttachArgs,
    Op,
    SubmitArgs,
    UploadArgs,
    error_from_wire,
    error_to_wire,
)
from llamawool.game import BuyBuilding, BuyUpgrade, ClaimDailyReward, InsufficientResources, Prestige, Shear
from llamawool.game.saves import ClaimedFarm
from llamawool.settings import load_rules
from llamawool.store import Snapshot

RULES = load_rules()


def over_json(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


def round_trip(op: Op[Any, Any], args: Any, result: Any) -> tuple[Any, Any]:
    sent = op.args_from_wire({**over_json(op.args_to_wire(args)), "_from": "peer"})
    back = op.result_from_wire("farm-1", over_json(op.result_to_wire(result)))
    return sent, back


def test_submit_carries_the_action_and_its_key_and_returns_the_reply() -> None:
    action = BuyBuilding("barn", 3)
    args = SubmitArgs(action, IdempotentRequest.of("k1", action))
    reply = Reply(200, b'{"farm":{"revision":7}}', 7, replayed=True)
    sent, back = round_trip(SUBMIT, args, reply)
    assert sent == args
    assert back == reply


def test_submit_without_a_key_arrives_without_one() -> None:
    sent, _ = round_trip(SUBMIT, SubmitArgs(Shear(2), None), Reply(200, b"{}", 2))
    assert sent == SubmitArgs(Shear(2), None)


@pytest.mark.parametrize(
    "action", [Shear(5), BuyBuilding("barn", "max"), BuyUpgrade("sharp_shears"), Prestige(True, 2), ClaimDailyReward()]
)
def test_every_action_type_crosses_the_wire(action: Any) -> None:
    """An action a replica forwards to the farm's owner arrives as itself (the daily claim included)."""
    sent, _ = round_trip(SUBMIT, SubmitArgs(action, IdempotentRequest.of("k", action)), Reply(200, b"{}", 1))
    assert sent == SubmitArgs(action, IdempotentRequest.of("k", action))


def test_touch_returns_the_farm_and_its_time() -> None:
    state = RULES.new_farm("farm-1", 1000.0)
    state.revision = 4
    _, (back, now) = round_trip(TOUCH, None, (state, 1234.5))
    assert (back.to_doc(), back.revision, now) == (state.to_doc(), 4, 1234.5)


def test_attach_asks_for_the_farm_and_hears_whether_it_was_handed_over() -> None:
    state = RULES.new_farm("farm-1", 1000.0)
    state.revision = 6
    sent, (back, now) = round_trip(ATTACH, AttachArgs(take=True), (state, 99.5))
    assert sent == AttachArgs(take=True)
    assert (back.to_doc(), back.revision, now) == (state.to_doc(), 6, 99.5)
    assert round_trip(ATTACH, AttachArgs(), None) == (AttachArgs(take=False), None)  # handed over


def test_a_busy_owner_comes_back_busy_with_its_retry_after() -> None:
    back = error_from_wire(over_json(error_to_wire(OwnerBusy("replica-a", 2.0))))
    assert isinstance(back, OwnerBusy)
    assert (back.owner, back.retry_after_s) == ("replica-a", 2.0)


def test_snapshot_upload_restore_and_seen() -> None:
    state = RULES.new_farm("farm-1", 1000.0)
    snap = Snapshot("farm-1", 3, 999.0, 12.5, state.to_doc())
    assert round_trip(SNAPSHOT, None, snap)[1] == snap
    claimed = ClaimedFarm({"basic": 5.0}, {"barn": 1}, [], 0, 0)
    args = UploadArgs(3, "sig", claimed)
    sent, back = round_trip(UPLOAD, args, Reply(200, b"{}", 4))
    assert (sent, back) == (args, Reply(200, b"{}", 4))
    state.revision = 9
    sent, restored = round_trip(RESTORE, 5, state)
    assert (sent, restored.revision, restored.to_doc()) == (5, 9, state.to_doc())
    assert round_trip(SEEN, None, None) == (None, None)


@pytest.mark.parametrize(
    "exc",
    [SaveStale(12), SaveRejected(["balances: too much"]), InsufficientResources("need more", missing={"basic": 3.0})],
)
def test_errors_come_back_as_their_own_type(exc: Exception) -> None:
    back = error_from_wire(over_json(error_to_wire(exc)))
    assert type(back) is type(exc)
    assert str(back) == str(exc)


def test_an_unknown_error_is_carried_by_name() -> None:
    back = error_from_wire(over_json(error_to_wire(ZeroDivisionError("oops"))))
    assert isinstance(back, RemoteError)
    assert (back.kind, back.detail) == ("ZeroDivisionError", "oops")
