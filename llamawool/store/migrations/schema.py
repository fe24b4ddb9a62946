"""What every store's schema versioning shares: the steps, the status, the refusals.

A database carries a schema version (SQLite: `PRAGMA user_version`; MongoDB: a
version document) and the oldest code version that can still run on it
(`min_code`). A step is an *expand* step when the code before it keeps working
on the result (a new table, collection or index, a backfill), a *contract* step
when it does not (a column dropped, a field renamed): only a contract step
raises `min_code`. So code older than the database starts as long as no
contract step it does not know has run, which is what lets a rolling upgrade
and its rollback run old and new replicas side by side (docs/operations.md).

Version 0 is a database nothing has versioned: empty, or written by release
376f2b0 (which had no versioning). Step 1 is that release's schema, written so
it changes nothing that release wrote, so both kinds of version-0 database take
the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from ..base import StoreError

# At open: "apply" pending steps, "refuse" to open while any are pending, or
# "inspect" (touch nothing, refuse nothing: `migrate status` and `migrate up`).
SchemaPolicy = Literal["apply", "refuse", "inspect"]
UPGRADE_COMMAND = "python -m llamawool migrate up"

Apply = TypeVar("Apply", bound=Callable[..., object])


@dataclass(frozen=True, slots=True)
class Migration(Generic[Apply]):
    """One step: `apply` takes the database from `version - 1` to `version` and is
    idempotent (a step cut short by a crash is run again from its start)."""

    version: int
    name: str
    apply: Apply
    contract: bool = False  # True: code older than `version` cannot run on the result


def check_steps(steps: list[Migration[Apply]]) -> None:
    """Versions 1, 2, 3... in order: a gap or a duplicate is a programming error."""
    versions = [s.version for s in steps]
    if versions != list(range(1, len(steps) + 1)):
        raise AssertionError(f"migration steps must be numbered 1..n in order, got {versions}")


def min_code_after(steps: list[Migration[Apply]], version: int, floor: int) -> int:
    """The oldest code version that can run on the database once `version` is reached."""
    contracts = [s.version for s in steps if s.contract and s.version <= version]
    return max([floor, *contracts])


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    store: str
    version: int  # the database's
    latest: int  # this code's
    min_code: int  # the oldest code version the database allows
    pending: list[tuple[int, str]] = field(default_factory=list)

    @property
    def too_new(self) -> bool:
        """Newer than this code in a way this code cannot run on."""
        return self.min_code > self.latest

    def describe(self) -> str:
        lines = [f"{self.store}: schema version {self.version}; this code's latest is {self.latest}"]
        if self.too_new:
            lines.append(f"the database needs code of schema version {self.min_code} or newer: this code refuses it")
        elif self.version > self.latest:
            lines.append(f"newer than this code, by expand steps only: this code can run on it (min {self.min_code})")
        elif self.pending:
            lines += [f"pending {v}: {name}" for v, name in self.pending]
        else:
            lines.append("up to date")
        return "\n".join(lines)


def status_of(store: str, steps: list[Migration[Apply]], version: int, min_code: int) -> SchemaStatus:
    pending = [(s.version, s.name) for s in steps if s.version > version]
    return SchemaStatus(store, version, len(steps), min_code, pending)


class SchemaError(StoreError):
    """The database's schema does not fit this code; nothing was changed."""


class SchemaTooNew(SchemaError):
    def __init__(self, status: SchemaStatus) -> None:
        super().__init__(
            f"{status.store}: the database is at schema version {status.version} and needs code of schema version "
            f"{status.min_code} or newer; this code knows {status.latest}. A newer llamawool upgraded it: run that "
            "version, or restore a backup taken before the upgrade. Nothing was changed."
        )
        self.status = status


class SchemaBehind(SchemaError):
    def __init__(self, status: SchemaStatus) -> None:
        names = "; ".join(f"{v}: {n}" for v, n in status.pending)
        super().__init__(
            f"{status.store}: the database is at schema version {status.version}, this code needs "
            f"{status.latest} (pending {names}) and MIGRATE_ON_START is off: run `{UPGRADE_COMMAND}` "
            "(or start with LLAMAWOOL_MIGRATE_ON_START=true)"
        )
        self.status = status


def admit(status: SchemaStatus, policy: SchemaPolicy) -> bool:
    """Whether to upgrade now; raises when this code must not open the database."""
    if policy == "inspect":
        return False
    if status.too_new:
        raise SchemaTooNew(status)
    if not status.pending:
        return False
    if policy == "refuse":
        raise SchemaBehind(status)
    return True
