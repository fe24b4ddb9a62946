"""What goes between replicas: actions, errors and the table of routed operations.

Each operation a replica may ask a farm's owner to run is one `Op`: its name on
the wire and how its arguments and its result go to and from JSON. The caller
encodes the arguments, the owner decodes them, runs the operation and encodes
the result, and the caller decodes it into the same type the local path
returns, so a routed call looks like a local one (`routing.Router.route`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from ..game import Action, BuyBuilding, BuyUpgrade, ClaimDailyReward, FarmState, GameError, Prestige, Shear
from ..game import errors as game_errors
from ..game.saves import ClaimedFarm
from ..store import Snapshot, StorageUnavailable
from .errors import IdempotencyMismatch, OwnerBusy, PlayerGone, RemoteError, Rerouted, SaveRejected, SaveStale
from .farms import IdempotentRequest, Reply

A = TypeVar("A")
R = TypeVar("R")

_ACTIONS: dict[str, type[Any]] = {c.__name__: c for c in (Shear, BuyBuilding, BuyUpgrade, Prestige, ClaimDailyReward)}
_GAME_ERRORS: dict[str, type[GameError]] = {
    cls.code: cls
    for cls in (
        game_errors.InsufficientResources,
        game_errors.RequirementNotMet,
        game_errors.UnknownItem,
        game_errors.ActionConflict,
        game_errors.InvalidAction,
    )
}


def action_to_wire(action: Action) -> dict[str, Any]:
    return {"t": type(action).__name__, **asdict(action)}


def action_from_wire(d: dict[str, Any]) -> Action:
    cls = _ACTIONS[d.pop("t")]
    action: Action = cls(**d)
    return action


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, GameError):
        return {"kind": "game", "code": exc.code, "detail": exc.detail, "extra": exc.extra}
    extra: dict[str, Any] = {}
    for name in ("reasons", "current_revision", "key", "owner", "retry_after_s"):
        if hasattr(exc, name):
            extra[name] = getattr(exc, name)
    return {"kind": type(exc).__name__, "detail": str(exc), "extra": extra}


def error_from_wire(e: dict[str, Any]) -> BaseException:
    kind = e["kind"]
    extra = e.get("extra") or {}
    if kind == "game":
        cls = _GAME_ERRORS.get(e["code"], GameError)
        return cls(e["detail"], **extra)
    if kind == "StorageUnavailable":
        return StorageUnavailable(e["detail"])
    if kind == "SaveStale":
        return SaveStale(int(extra.get("current_revision", 0)))
    if kind == "SaveRejected":
        return SaveRejected(list(extra.get("reasons", [])))
    if kind == "PlayerGone":
        return PlayerGone(e["detail"])
    if kind == "IdempotencyMismatch":
        return IdempotencyMismatch(e["detail"])
    if kind == "KeyError":
        return KeyError(e["detail"])
    if kind == "Rerouted":
        return Rerouted(e["detail"])
    if kind == "OwnerBusy":
        return OwnerBusy(str(extra.get("owner", "")), float(extra.get("retry_after_s", 1.0)))
    return RemoteError(kind, e["detail"], extra)


@dataclass(frozen=True, slots=True)
class Op(Generic[A, R]):
    """One routed operation: `A` its arguments, `R` its result, both as the engine uses them."""

    name: str
    args_to_wire: Callable[[A], dict[str, Any]]
    args_from_wire: Callable[[dict[str, Any]], A]
    result_to_wire: Callable[[R], Any]
    result_from_wire: Callable[[str, Any], R]  # (farm id, wire form)


@dataclass(frozen=True, slots=True)
class SubmitArgs:
    action: Action
    idempotency: IdempotentRequest | None


def _submit_to_wire(a: SubmitArgs) -> dict[str, Any]:
    out: dict[str, Any] = {"action": action_to_wire(a.action)}
    if a.idempotency is not None:
        out["idem"] = [a.idempotency.key, a.idempotency.fingerprint]
    return out


def _submit_from_wire(a: dict[str, Any]) -> SubmitArgs:
    idem = IdempotentRequest(a["idem"][0], a["idem"][1]) if a.get("idem") else None
    return SubmitArgs(action_from_wire(dict(a["action"])), idem)


@dataclass(frozen=True, slots=True)
class UploadArgs:
    base_revision: int
    signature: str
    claimed: ClaimedFarm


Touched = tuple[FarmState, float]  # the farm's state and the time it was read at


def _no_args(_: None) -> dict[str, Any]:
    return {}


def _none(_: dict[str, Any]) -> None:
    return None


def _no_result(_: None) -> None:
    return None


def _no_result_back(_farm: str, _out: Any) -> None:
    return None


def _touched_to_wire(t: Touched) -> dict[str, Any]:
    return {"doc": t[0].to_doc(), "revision": t[0].revision, "now": t[1]}


def _touched_from_wire(_farm: str, out: Any) -> Touched:
    return FarmState.from_doc(out["doc"], out["revision"]), out["now"]


@dataclass(frozen=True, slots=True)
class AttachArgs:
    """A socket on the asking replica joins the farm; `take`: the asker may take the farm
    over (a handover) when the owner has no socket of it."""

    take: bool = False


def _attached_to_wire(t: Touched | None) -> dict[str, Any]:
    return {"handed_over": True} if t is None else _touched_to_wire(t)


def _attached_from_wire(farm: str, out: Any) -> Touched | None:
    return None if out.get("handed_over") else _touched_from_wire(farm, out)


SUBMIT: Op[SubmitArgs, Reply] = Op(
    "submit",
    _submit_to_wire,
    _submit_from_wire,
    lambda r: {"status": r.status, "body": r.body.decode(), "revision": r.revision, "replayed": r.replayed},
    lambda _f, out: Reply(out["status"], out["body"].encode(), out["revision"], out["replayed"]),
)
TOUCH: Op[None, Touched] = Op("touch", _no_args, _none, _touched_to_wire, _touched_from_wire)
# None: the owner handed the farm over, its lease is the asker's now (`handover.py`)
ATTACH: Op[AttachArgs, Touched | None] = Op(
    "attach",
    lambda a: {"take": a.take},
    lambda a: AttachArgs(bool(a.get("take"))),
    _attached_to_wire,
    _attached_from_wire,
)
DETACH: Op[None, None] = Op("detach", _no_args, _none, _no_result, _no_result_back)
SNAPSHOT: Op[None, Snapshot] = Op(
    "snapshot",
    _no_args,
    _none,
    lambda s: {"revision": s.revision, "taken_at": s.taken_at, "farm_value": s.farm_value, "doc": s.doc},
    lambda farm, out: Snapshot(farm, out["revision"], out["taken_at"], out["farm_value"], out["doc"]),
)
UPLOAD: Op[UploadArgs, Reply] = Op(
    "upload",
    lambda a: {"base": a.base_revision, "signature": a.signature, "claimed": asdict(a.claimed)},
    lambda a: UploadArgs(a["base"], a["signature"], ClaimedFarm(**a["claimed"])),
    lambda r: {"status": r.status, "body": r.body.decode(), "revision": r.revision},
    lambda _f, out: Reply(out["status"], out["body"].encode(), out["revision"]),
)
RESTORE: Op[int, FarmState] = Op(
    "restore",
    lambda revision: {"revision": revision},
    lambda a: int(a["revision"]),
    lambda s: {"doc": s.to_doc(), "revision": s.revision},
    lambda _f, out: FarmState.from_doc(out["doc"], out["revision"]),
)
SEEN: Op[None, None] = Op("seen", _no_args, _none, _no_result, _no_result_back)
