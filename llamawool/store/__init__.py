"""Durable storage behind one interface (`base.Store`); adapters per backend."""

from __future__ import annotations

from pathlib import Path

from ..settings import Settings
from .base import (
    AuditRecord,
    DuplicateKey,
    FarmCommit,
    IdempotencyRecord,
    PlayerRecord,
    Record,
    RefreshTokenRecord,
    Revocation,
    Snapshot,
    SpendResult,
    StorageUnavailable,
    Store,
    StoredFarm,
    StoreError,
)
from .metered import MeteredStore
from .mongo import MongoStore
from .sqlite import SQLiteStore


def open_store(settings: Settings) -> Store:
    """The adapter the settings select: MongoDB when `mongodb_uri` is set, else
    SQLite in the data folder."""
    if settings.mongodb_uri:
        return store_from_uri(settings.mongodb_uri, settings)
    return SQLiteStore(
        settings.data_dir / "llamawool.sqlite3",
        synchronous=settings.sqlite_synchronous,
        snapshot_history=settings.snapshot_history,
        snapshot_daily_days=settings.snapshot_daily_days,
    )


def store_from_uri(uri: str, settings: Settings) -> Store:
    """`sqlite:///relative/path`, `sqlite:////absolute/path`, or `mongodb://` / `mongodb+srv://`."""
    if uri.startswith(("mongodb://", "mongodb+srv://")):
        return MongoStore(
            uri,
            pool_size=settings.mongodb_pool_size,
            timeout_s=settings.mongodb_timeout_s,
            select_timeout_s=settings.mongodb_select_timeout_s,
            snapshot_history=settings.snapshot_history,
            snapshot_daily_days=settings.snapshot_daily_days,
        )
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if not path:
            raise ValueError(f"{uri!r}: no file path after sqlite:///")
        return SQLiteStore(
            Path(path),
            synchronous=settings.sqlite_synchronous,
            snapshot_history=settings.snapshot_history,
            snapshot_daily_days=settings.snapshot_daily_days,
        )
    raise ValueError(f"{uri!r}: expected sqlite:///PATH or mongodb://...")


__all__ = [
    "AuditRecord",
    "DuplicateKey",
    "FarmCommit",
    "IdempotencyRecord",
    "MeteredStore",
    "MongoStore",
    "PlayerRecord",
    "Record",
    "RefreshTokenRecord",
    "Revocation",
    "SQLiteStore",
    "Snapshot",
    "SpendResult",
    "StorageUnavailable",
    "Store",
    "StoreError",
    "StoredFarm",
    "open_store",
    "store_from_uri",
]
