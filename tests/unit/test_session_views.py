"""How support sees a player's sessions: one entry per refresh-token family, its
status from its newest token, nothing a session could be resumed with."""

from __future__ import annotations

from llamawool.api.session_views import session_views
from llamawool.store import RefreshTokenRecord

T0 = 1_800_000_000.0
DAY = 86400.0


def tok(
    name: str, family: str, issued: float, *, spent: float | None = None, revoked: bool = False
) -> RefreshTokenRecord:
    return RefreshTokenRecord(f"hash-{name}", family, "p1", issued, issued + 30 * DAY, spent, revoked)


def test_a_rotated_session_is_one_entry_dated_by_its_newest_token() -> None:
    chain = [tok("a", "fam", T0, spent=T0 + 60), tok("b", "fam", T0 + 60, spent=T0 + 120), tok("c", "fam", T0 + 120)]
    [view] = session_views(list(reversed(chain)), T0 + 200)
    assert view == {
        "id": "fam",
        "started_at": T0,
        "last_refreshed_at": T0 + 120,
        "expires_at": T0 + 120 + 30 * DAY,
        "refreshes": 2,
        "status": "active",
    }
    assert "hash" not in repr(view)


def test_status_ended_expired_or_active_newest_sign_in_first() -> None:
    tokens = [
        tok("old", "expired", T0 - 40 * DAY),
        tok("out", "logged-out", T0 - DAY, spent=T0 - DAY + 5),  # a logout spends the last token
        tok("rev", "revoked", T0 - 2 * DAY, revoked=True),
        tok("now", "live", T0 - 60),
    ]
    views = session_views(tokens, T0)
    assert [(v["id"], v["status"]) for v in views] == [
        ("live", "active"),
        ("logged-out", "ended"),
        ("revoked", "ended"),
        ("expired", "expired"),
    ]
    assert session_views([], T0) == []
