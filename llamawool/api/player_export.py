"""A player's data export (`GET /players/me/export`): its shape and how it is gathered.

Everything the server holds about one player, as one JSON document: the account,
the farm at server time, the save history, the sessions, the stored replay
answers and the audit entries that name them. Never a secret: no password hash,
no refresh-token hash, no device id (a guest signs in with it), so a stolen
access token cannot turn an export into a lasting takeover. docs/privacy.md
describes every field and how long each kind of data is kept.
"""

from __future__ import annotations

import base64
import time
from typing import Any, Literal

import orjson
from pydantic import Field

from ..store import AuditRecord, IdempotencyRecord, PlayerRecord, RefreshTokenRecord, Snapshot
from .context import AppContext
from .schemas import Response

FORMAT = "llamawool-player-export"
VERSION = 1
SAVES_LIMIT = 10_000  # beyond any retention policy (newest N plus one a day)
AUDIT_LIMIT = 1000  # the newest entries about the player


class ExportAccount(Response):
    id: str
    username: str
    email: str | None
    is_guest: bool
    role: str
    created_at: float
    settings: dict[str, Any]
    has_password: bool = Field(description="whether a password is set (the hash itself is never exported)")
    has_device: bool = Field(description="whether a device id is linked (the id signs a guest in: not exported)")
    flagged_at: float | None = Field(description="anti-cheat flag: hidden from public boards since then")
    flag_reason: str | None
    last_violation_at: float | None
    violations_total: int


class ExportSave(Response):
    revision: int
    taken_at: float
    farm_value: float
    doc: dict[str, Any] = Field(description="the farm as saved at that revision")


class ExportSession(Response):
    id: str = Field(description="the session (refresh-token family) id, as `POST /auth/logout` and admins name it")
    issued_at: float = Field(description="when the session began (its first sign-in)")
    last_refreshed_at: float = Field(description="when its newest refresh token was issued")
    expires_at: float = Field(description="when its newest refresh token expires")
    active: bool = Field(description="not revoked, and its newest token neither spent nor expired")


class ExportReplay(Response):
    key: str = Field(description="the Idempotency-Key the player sent")
    status: int
    created_at: float
    response: Any = Field(description="the answer a retry with this key receives (JSON, else base64 text)")


class ExportAuditEntry(Response):
    at: float
    by: Literal["you", "admin"] = Field(description="who acted: the player, or an administrator")
    action: str
    about_you: bool = Field(description="whether the player was the target of the action")
    details: dict[str, Any]


class PlayerExport(Response):
    format: Literal["llamawool-player-export"]
    version: int
    exported_at: float
    account: ExportAccount
    farm: dict[str, Any] | None = Field(description="the farm at server time, as `GET /farm` answers")
    saves: list[ExportSave] = Field(description="the save history (snapshots), oldest first")
    sessions: list[ExportSession] = Field(description="sign-in sessions, oldest first; no token or hash")
    replays: list[ExportReplay] = Field(description="stored answers to Idempotency-Key requests, by key")
    audit: list[ExportAuditEntry] = Field(
        description=f"audit entries about you (of the newest {AUDIT_LIMIT} naming you), newest first"
    )


def _account(p: PlayerRecord) -> dict[str, Any]:
    return {
        "id": p.id,
        "username": p.username,
        "email": p.email,
        "is_guest": p.is_guest,
        "role": p.role,
        "created_at": p.created_at,
        "settings": p.settings,
        "has_password": p.password_hash is not None,
        "has_device": p.device_id is not None,
        "flagged_at": p.flagged_at,
        "flag_reason": p.flag_reason,
        "last_violation_at": p.last_violation_at,
        "violations_total": p.violations_total,
    }


def sessions_of(tokens: list[RefreshTokenRecord], now: float) -> list[dict[str, Any]]:
    """One entry per refresh-token family, oldest first, from its tokens' times only."""
    families: dict[str, list[RefreshTokenRecord]] = {}
    for t in tokens:
        families.setdefault(t.family_id, []).append(t)
    out = []
    for family_id, members in families.items():
        newest = max(members, key=lambda t: t.issued_at)
        out.append(
            {
                "id": family_id,
                "issued_at": min(t.issued_at for t in members),
                "last_refreshed_at": newest.issued_at,
                "expires_at": newest.expires_at,
                "active": not any(t.revoked for t in members) and newest.spent_at is None and newest.expires_at > now,
            }
        )
    return sorted(out, key=lambda s: (s["issued_at"], s["id"]))


def _save(s: Snapshot) -> dict[str, Any]:
    return {"revision": s.revision, "taken_at": s.taken_at, "farm_value": s.farm_value, "doc": s.doc}


def _replay(r: IdempotencyRecord) -> dict[str, Any]:
    try:
        response: Any = orjson.loads(r.body)
    except orjson.JSONDecodeError:
        response = base64.b64encode(r.body).decode()
    return {"key": r.key, "status": r.status, "created_at": r.created_at, "response": response}


def _audit(r: AuditRecord, player_id: str) -> dict[str, Any]:
    return {
        "at": r.at,
        "by": "you" if r.admin_id == player_id else "admin",
        "action": r.action,
        "about_you": r.target == player_id,
        "details": r.details,
    }


async def gather(c: AppContext, player: PlayerRecord, farm: dict[str, Any] | None) -> dict[str, Any]:
    """The export document of `player` (its farm view read by the caller)."""
    now = time.time()
    snaps = await c.store.list_snapshots(player.id, SAVES_LIMIT)
    tokens = await c.store.list_player_tokens(player.id)
    replays = await c.store.list_player_idempotency(player.id)
    audit = await c.store.list_audit_about(player.id, AUDIT_LIMIT)
    return {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": now,
        "account": _account(player),
        "farm": farm,
        "saves": [_save(s) for s in sorted(snaps, key=lambda s: s.revision)],
        "sessions": sessions_of(tokens, now),
        "replays": [_replay(r) for r in replays],
        # what others did to them, and what they did that names no one else (an admin's
        # actions on other players are those players' data)
        "audit": [_audit(r, player.id) for r in audit if r.target in (player.id, None)],
    }
