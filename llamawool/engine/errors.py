"""The engine's exceptions: what an action or a routed request can end in.

One module so that `api/` maps them to answers without importing the engine's
machinery, and the wire codec (`wire.py`) can rebuild them from a peer's reply.
"""

from __future__ import annotations

from typing import Any


class PlayerGone(Exception):
    """The farm's player no longer exists (account deleted)."""


class IdempotencyMismatch(Exception):
    """An Idempotency-Key was reused with a different request."""


class SaveStale(Exception):
    """The upload's base revision is older than the farm's last player change."""

    def __init__(self, current_revision: int) -> None:
        super().__init__(current_revision)
        self.current_revision = current_revision


class SaveRejected(Exception):
    """The upload is implausible; `reasons` says why, item by item."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class FarmConflict(Exception):
    """The stored farm moved on under us (another owner committed); it was reloaded."""


class OwnerUnreachable(Exception):
    """The lease holder did not answer in time."""


class OwnerBusy(Exception):
    """The farm's owner is alive but cannot answer now (its queue is full, or it did not
    answer in time while its heartbeat is current): the client retries after
    `retry_after_s` (503 + Retry-After). A request that timed out may still be applied
    by the owner: a retry with the same Idempotency-Key finds it."""

    def __init__(self, owner: str, retry_after_s: float) -> None:
        super().__init__(owner)
        self.owner = owner
        self.retry_after_s = retry_after_s


class Rerouted(Exception):
    """The asked replica does not own the farm (any more): route again."""


class RemoteError(Exception):
    """The owner raised an error that has no local type; carried by name."""

    def __init__(self, kind: str, detail: str, extra: dict[str, Any]) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.extra = extra
