"""A Store that counts its round trips: `llamawool_store_ops_total{op}`.

Wraps any adapter (the app factory wraps the one it serves with), so the cost
budget in docs/scaling.md is counted the same way on SQLite and MongoDB: one
increment per call of a Store method, that is per round trip the server asks
for. A group commit of fifty farms is one `commit`. The label is the method
name: a fixed set, never a key or a player.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import Counter

from .base import (
    AuditRecord,
    Erasure,
    FarmCommit,
    IdempotencyRecord,
    PlayerChanges,
    PlayerRecord,
    Record,
    RefreshTokenRecord,
    Revocation,
    Snapshot,
    SpendResult,
    Store,
    StoredFarm,
)

if TYPE_CHECKING:
    from .migrations.schema import SchemaStatus

T = TypeVar("T")


class MeteredStore:
    """Counts each call, then hands it to `inner`. Attributes that are not part of
    the Store port (a MongoStore's `transactions`, a SQLiteStore's `path`) read through."""

    def __init__(self, inner: Store, ops: Counter) -> None:
        self.inner = inner
        self.name = inner.name
        self._ops = ops

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def _count(self, op: str, call: Awaitable[T]) -> Awaitable[T]:
        self._ops.labels(op=op).inc()
        return call

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def schema_status(self) -> SchemaStatus:
        return await self._count("schema_status", self.inner.schema_status())

    async def upgrade_schema(self) -> list[str]:
        return await self._count("upgrade_schema", self.inner.upgrade_schema())

    async def ping(self) -> None:
        await self._count("ping", self.inner.ping())

    async def create_player(self, player: PlayerRecord) -> PlayerRecord:
        return await self._count("create_player", self.inner.create_player(player))

    async def get_player(self, player_id: str) -> PlayerRecord | None:
        return await self._count("get_player", self.inner.get_player(player_id))

    async def find_player(
        self, *, email: str | None = None, username: str | None = None, device_id: str | None = None
    ) -> PlayerRecord | None:
        return await self._count(
            "find_player", self.inner.find_player(email=email, username=username, device_id=device_id)
        )

    async def update_player_fields(
        self, player_id: str, changes: PlayerChanges, expect: PlayerChanges | None = None
    ) -> bool:
        return await self._count("update_player_fields", self.inner.update_player_fields(player_id, changes, expect))

    async def record_violation(self, player_id: str, at: float, flag_reason: str | None) -> bool | None:
        return await self._count("record_violation", self.inner.record_violation(player_id, at, flag_reason))

    async def delete_player(self, player_id: str, at: float | None = None) -> None:
        await self._count("delete_player", self.inner.delete_player(player_id, at))

    async def list_erasures(self) -> list[Erasure]:
        return await self._count("list_erasures", self.inner.list_erasures())

    async def list_player_tokens(self, player_id: str) -> list[RefreshTokenRecord]:
        return await self._count("list_player_tokens", self.inner.list_player_tokens(player_id))

    async def list_player_idempotency(self, player_id: str) -> list[IdempotencyRecord]:
        return await self._count("list_player_idempotency", self.inner.list_player_idempotency(player_id))

    async def count_players(self) -> int:
        return await self._count("count_players", self.inner.count_players())

    async def usernames(self, player_ids: list[str]) -> dict[str, str]:
        return await self._count("usernames", self.inner.usernames(player_ids))

    async def list_flagged(self) -> list[PlayerRecord]:
        return await self._count("list_flagged", self.inner.list_flagged())

    async def add_refresh_token(self, record: RefreshTokenRecord) -> None:
        await self._count("add_refresh_token", self.inner.add_refresh_token(record))

    async def spend_refresh_token(self, token_hash: str, now: float) -> SpendResult:
        return await self._count("spend_refresh_token", self.inner.spend_refresh_token(token_hash, now))

    async def rotate_refresh_token(
        self, token_hash: str, successor_hash: str, now: float, expires_at: float
    ) -> SpendResult:
        return await self._count(
            "rotate_refresh_token", self.inner.rotate_refresh_token(token_hash, successor_hash, now, expires_at)
        )

    async def revoke_family(self, family_id: str) -> None:
        await self._count("revoke_family", self.inner.revoke_family(family_id))

    async def revoke_player_tokens(self, player_id: str, issued_after: float) -> list[str]:
        return await self._count("revoke_player_tokens", self.inner.revoke_player_tokens(player_id, issued_after))

    async def add_revocations(self, revocations: list[Revocation]) -> None:
        await self._count("add_revocations", self.inner.add_revocations(revocations))

    async def revocations_since(self, at: float) -> list[Revocation]:
        return await self._count("revocations_since", self.inner.revocations_since(at))

    async def prune_revocations(self, before: float) -> int:
        return await self._count("prune_revocations", self.inner.prune_revocations(before))

    async def load_farm(self, player_id: str) -> StoredFarm | None:
        return await self._count("load_farm", self.inner.load_farm(player_id))

    async def commit(self, batch: list[FarmCommit]) -> list[bool]:
        return await self._count("commit", self.inner.commit(batch))

    async def touch_farms(self, items: list[tuple[str, float]]) -> None:
        await self._count("touch_farms", self.inner.touch_farms(items))

    async def add_snapshots(self, snapshots: list[Snapshot]) -> None:
        await self._count("add_snapshots", self.inner.add_snapshots(snapshots))

    async def list_snapshots(self, player_id: str, limit: int) -> list[Snapshot]:
        return await self._count("list_snapshots", self.inner.list_snapshots(player_id, limit))

    async def get_snapshot(self, player_id: str, revision: int) -> Snapshot | None:
        return await self._count("get_snapshot", self.inner.get_snapshot(player_id, revision))

    async def get_idempotency(self, player_id: str, key: str) -> IdempotencyRecord | None:
        return await self._count("get_idempotency", self.inner.get_idempotency(player_id, key))

    async def prune_idempotency(self, before: float) -> int:
        return await self._count("prune_idempotency", self.inner.prune_idempotency(before))

    async def add_audit(self, record: AuditRecord) -> None:
        await self._count("add_audit", self.inner.add_audit(record))

    async def list_audit(self, limit: int) -> list[AuditRecord]:
        return await self._count("list_audit", self.inner.list_audit(limit))

    async def list_audit_about(self, player_id: str, limit: int) -> list[AuditRecord]:
        return await self._count("list_audit_about", self.inner.list_audit_about(player_id, limit))

    def export_all(self) -> AsyncIterator[Record]:
        self._ops.labels(op="export_all").inc()
        return self.inner.export_all()

    async def import_all(self, records: AsyncIterable[Record]) -> dict[str, int]:
        return await self._count("import_all", self.inner.import_all(records))
