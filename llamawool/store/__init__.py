"""Durable storage behind one interface (`base.Store`); adapters per backend."""

from __future__ import annotations

from pathlib import Path

from ..settings import Settings
from .base import (
    AuditRecord,
    DuplicateKey,
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
    StorageUnavailable,
    Store,
    StoredFarm,
    StoreError,
)
from .metered import MeteredStore
from .migrations import SchemaError, SchemaPolicy
from .mongo import MongoStore
from .sqlite import SQLiteStore


def open_store(settings: Settings, schema: SchemaPolicy | None = None) -> Store:
    """The adapter the settings select: MongoDB when `mongodb_uri` is set, else
    SQLite in the data folder. `schema` (default: MIGRATE_ON_START's) is what its
    `open` does about pending schema migrations."""
    if settings.mongodb_uri:
        return store_from_uri(settings.mongodb_uri, settings, schema)
    return store_from_uri(f"sqlite:///{settings.data_dir / 'llamawool.sqlite3'}", settings, schema)


def store_from_uri(uri: str, settings: Settings, schema: SchemaPolicy | None = None) -> Store:
    """`sqlite:///relative/path`, `sqlite:////absolute/path`, or `mongodb://` / `mongodb+srv://`."""
    policy: SchemaPolicy = schema or ("apply" if settings.migrate_on_start else "refuse")
    if uri.startswith(("mongodb://", "mongodb+srv://")):
        return MongoStore(
            uri,
            pool_size=settings.mongodb_pool_size,
            timeout_s=settings.mongodb_timeout_s,
            select_timeout_s=settings.mongodb_select_timeout_s,
            snapshot_history=settings.snapshot_history,
            snapshot_daily_days=settings.snapshot_daily_days,
            schema=policy,
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
            schema=policy,
        )
    raise ValueError(f"{uri!r}: expected sqlite:///PATH or mongodb://...")


__all__ = [
    "AuditRecord",
    "DuplicateKey",
    "Erasure",
    "FarmCommit",
    "IdempotencyRecord",
    "MeteredStore",
    "MongoStore",
    "PlayerChanges",
    "PlayerRecord",
    "Record",
    "RefreshTokenRecord",
    "Revocation",
    "SQLiteStore",
    "SchemaError",
    "Snapshot",
    "SpendResult",
    "StorageUnavailable",
    "Store",
    "StoreError",
    "StoredFarm",
    "open_store",
    "store_from_uri",
]
