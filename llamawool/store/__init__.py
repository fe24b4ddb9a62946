"""Durable storage behind one interface (`base.Store`); adapters per backend."""

from __future__ import annotations

from ..settings import Settings
from .base import (
    AuditRecord,
    DuplicateKey,
    FarmCommit,
    IdempotencyRecord,
    PlayerRecord,
    RefreshTokenRecord,
    Snapshot,
    SpendResult,
    StorageUnavailable,
    Store,
    StoredFarm,
    StoreError,
)
from .sqlite import SQLiteStore


def open_store(settings: Settings) -> Store:
    """The adapter the settings select (SQLite in the data folder by default)."""
    return SQLiteStore(
        settings.data_dir / "llamawool.sqlite3",
        synchronous=settings.sqlite_synchronous,
        snapshot_history=settings.snapshot_history,
        snapshot_daily_days=settings.snapshot_daily_days,
    )


__all__ = [
    "AuditRecord",
    "DuplicateKey",
    "FarmCommit",
    "IdempotencyRecord",
    "PlayerRecord",
    "RefreshTokenRecord",
    "SQLiteStore",
    "Snapshot",
    "SpendResult",
    "StorageUnavailable",
    "Store",
    "StoreError",
    "StoredFarm",
    "open_store",
]
