"""Versioned schema migrations for both stores (`schema.py`: versions, `min_code`, refusals)."""

from __future__ import annotations

from .schema import (
    UPGRADE_COMMAND,
    Migration,
    SchemaBehind,
    SchemaError,
    SchemaPolicy,
    SchemaStatus,
    SchemaTooNew,
)

__all__ = [
    "UPGRADE_COMMAND",
    "Migration",
    "SchemaBehind",
    "SchemaError",
    "SchemaPolicy",
    "SchemaStatus",
    "SchemaTooNew",
]
