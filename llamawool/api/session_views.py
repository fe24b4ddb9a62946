"""A player's sessions as support staff see them: refresh-token families summed
up, never a token or its hash (the hash is what a refresh is checked against)."""

from __future__ import annotations

from typing import Any

from ..store import RefreshTokenRecord


def session_views(tokens: list[RefreshTokenRecord], now: float) -> list[dict[str, Any]]:
    """One entry per refresh-token family, the newest sign-in first.

    `last_refreshed_at` is when its newest token was issued (a refresh issues
    one), `expires_at` when that token runs out; `status` is `ended` once the
    family is revoked or its last token spent without a successor (a logout),
    `expired` past `expires_at`, else `active`."""
    families: dict[str, list[RefreshTokenRecord]] = {}
    for t in sorted(tokens, key=lambda t: t.issued_at):
        families.setdefault(t.family_id, []).append(t)
    views: list[dict[str, Any]] = []
    for family_id, chain in families.items():
        newest = chain[-1]
        ended = any(t.revoked for t in chain) or newest.spent_at is not None
        status = "ended" if ended else "expired" if newest.expires_at <= now else "active"
        views.append(
            {
                "id": family_id,
                "started_at": chain[0].issued_at,
                "last_refreshed_at": newest.issued_at,
                "expires_at": newest.expires_at,
                "refreshes": len(chain) - 1,
                "status": status,
            }
        )
    return sorted(views, key=lambda v: float(v["started_at"]), reverse=True)
