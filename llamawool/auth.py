"""Accounts and tokens: argon2id passwords, short-lived JWTs, rotating refresh tokens.

Access tokens are HS256 JWTs (15 minutes by default) carrying the player id and
role. Refresh tokens are opaque random strings stored only as SHA-256 hashes,
grouped in families: each use spends the token and issues the next one in the
family; presenting a spent token again revokes the whole family (a stolen
token is worth one use at most).

A family is a session, and its id travels in every access token as `sid`.
Ending a session (logout, a password change, account deletion, a replayed
refresh token) also ends its access tokens at once: the session id is written
to the store's revocation list, which every replica reads into memory (on
start, then every `revocation_poll_s`, and at once when another replica
announces one over the coordination channel) and checks on every request, so
a self-contained token needs no round trip to be refused. An entry lives until
the last access token it could cover expires.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .observability import get_logger
from .settings import Settings
from .store import PlayerChanges, PlayerRecord, RefreshTokenRecord, Revocation, Store

JWT_ALGORITHM = "HS256"
REVOCATION_OVERLAP_S = 30.0  # re-read this far back each poll (replica clocks differ a little)
CLOCK_SLACK_S = 60.0  # a revocation outlives its tokens' expiry by this much
VERIFIED_CACHE_MAX = 100_000  # verified access tokens remembered (cleared whole when full)
ACCESS = "access"
log = get_logger(__name__)


class AuthError(Exception):
    """Authentication failed; `code` is the protocol's error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(slots=True)
class Principal:
    player_id: str
    role: str
    session_id: str | None = None  # the refresh-token family the access token was issued with

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    session_id: str = ""


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Auth:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.secret = settings.resolved_jwt_secret()
        self.access_ttl = settings.access_token_ttl_s
        self.refresh_ttl = settings.refresh_token_ttl_s
        self.poll_s = settings.revocation_poll_s
        # argon2id with the library's RFC 9106 "low memory" defaults.
        self.hasher = PasswordHasher()
        self._verified: dict[str, tuple[Principal, float]] = {}
        self._revoked: dict[str, float] = {}  # session id -> until
        self._polled_to: float | None = None
        # set by the app: tell the other replicas (best effort; the poll is the guarantee)
        self.announce: Callable[[list[str], float], Awaitable[None]] | None = None
        # called with the sessions newly ended (the app closes their sockets)
        self.on_revoked: list[Callable[[set[str]], None]] = []

    # ---- passwords (hashing is CPU-heavy: off the event loop) -------------------

    async def hash_password(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self.hasher.hash, password)

    async def verify_password(self, password_hash: str | None, password: str) -> bool:
        if not password_hash:
            # Spend the same time as a real check so logins don't reveal which accounts exist.
            await self.hash_password(password)
            return False

        def check() -> bool:
            try:
                return self.hasher.verify(password_hash, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return False

        return await asyncio.get_running_loop().run_in_executor(None, check)

    # ---- tokens ---------------------------------------------------------------------

    def access_token(self, player: PlayerRecord, now: float | None = None, session_id: str | None = None) -> str:
        now = time.time() if now is None else now
        claims: dict[str, Any] = {
            "sub": player.id,
            "role": player.role,
            "typ": ACCESS,
            "sid": session_id or uuid.uuid4().hex,
            "iat": int(now),
            "exp": int(now) + self.access_ttl,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.secret, algorithm=JWT_ALGORITHM)

    def decode_access(self, token: str) -> Principal:
        """Verify an access token. A verified token is remembered until it expires,
        so the signature is checked once per token rather than once per request;
        whether its session has ended is checked every time."""
        hit = self._verified.get(token)
        if hit is not None and hit[1] <= time.time():
            del self._verified[token]
            hit = None
        principal = hit[0] if hit is not None else self._decode(token)
        if principal.session_id is not None and principal.session_id in self._revoked:
            raise AuthError("INVALID_TOKEN", "the session has ended (logged out, password changed or revoked)")
        return principal

    def _decode(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token, self.secret, algorithms=[JWT_ALGORITHM], options={"require": ["exp", "sub", "typ"]}
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("INVALID_TOKEN", "the access token has expired") from None
        except jwt.PyJWTError:
            raise AuthError("INVALID_TOKEN", "the access token is invalid") from None
        if claims.get("typ") != ACCESS or not isinstance(claims.get("sub"), str):
            raise AuthError("INVALID_TOKEN", "not an access token")
        sid = claims.get("sid")
        principal = Principal(claims["sub"], str(claims.get("role", "player")), sid if isinstance(sid, str) else None)
        if len(self._verified) >= VERIFIED_CACHE_MAX:
            self._verified.clear()
        self._verified[token] = (principal, float(claims["exp"]))
        return principal

    async def issue(self, player: PlayerRecord, family_id: str | None = None) -> TokenPair:
        now = time.time()
        refresh = secrets.token_urlsafe(32)
        family = family_id or uuid.uuid4().hex
        await self.store.add_refresh_token(
            RefreshTokenRecord(
                token_hash=_hash_token(refresh),
                family_id=family,
                player_id=player.id,
                issued_at=now,
                expires_at=now + self.refresh_ttl,
            )
        )
        return TokenPair(self.access_token(player, now, family), refresh, self.access_ttl, family)

    async def issue_if(self, player: PlayerRecord, holds: Callable[[PlayerRecord], bool]) -> TokenPair | None:
        """Start a session for a credential checked against `player` as read earlier (a
        password, a guest's device id), unless the account changed meanwhile: the session
        is stored first, then the player read again; when `holds` is no longer true of it
        (the password changed, the guest registered) or it is gone, the session ends at
        once and None is returned. A change ends every session after its write too
        (`change_credentials`), so either it sees this session or this read sees it."""
        tokens = await self.issue(player)
        now = await self.store.get_player(player.id)
        if now is not None and holds(now):
            return tokens
        await self.store.revoke_family(tokens.session_id)
        await self.end_sessions([tokens.session_id])
        return None

    async def change_credentials(
        self, player_id: str, changes: PlayerChanges, expect: PlayerChanges | None = None
    ) -> bool:
        """Write a new password (a password change, a guest's upgrade, a new admin) and end
        every session: before the write, so that a change cut short leaves the account
        signed out with its old credentials rather than the old sessions alive with new
        ones; and after it, for a sign-in that checked the old credentials and started
        its session in between (`issue_if`). False (nothing written) when `expect` fails."""
        await self.end_all_sessions(player_id)
        if not await self.store.update_player_fields(player_id, changes, expect):
            return False
        await self.end_all_sessions(player_id)
        return True

    async def refresh(self, refresh_token: str) -> tuple[PlayerRecord, TokenPair]:
        """Rotate: spend the token and store its successor in one step of the store, which
        refuses a family revoked before or during it, so once a logout, a password change,
        an account deletion or a detected replay has answered, no token of the sessions
        it ended can be rotated again. The player is read after the rotation: an account
        erased meanwhile leaves an orphan token that no refresh can use."""
        now = time.time()
        successor = secrets.token_urlsafe(32)
        spent = await self.store.rotate_refresh_token(
            _hash_token(refresh_token), _hash_token(successor), now, now + self.refresh_ttl
        )
        if spent.record is None:
            raise AuthError("INVALID_TOKEN", "unknown refresh token")
        if spent.reused:
            # a stolen token replayed (or the thief's copy spent first): end the session's access tokens too
            await self.end_sessions([spent.record.family_id])
            raise AuthError("INVALID_TOKEN", "refresh token already used: its session has been revoked")
        if spent.record.expires_at <= now:
            raise AuthError("INVALID_TOKEN", "the refresh token has expired")
        if spent.ended:
            raise AuthError("INVALID_TOKEN", "the session has ended (logged out, password changed or revoked)")
        player = await self.store.get_player(spent.record.player_id)
        if player is None:
            raise AuthError("INVALID_TOKEN", "the account no longer exists")
        family = spent.record.family_id
        return player, TokenPair(self.access_token(player, now, family), successor, self.access_ttl, family)

    async def logout(self, refresh_token: str | None, player_id: str | None) -> None:
        """End the refresh token's session; with no refresh token, every session of
        `player_id` (the caller of an access token). Access tokens end with them."""
        if refresh_token:
            spent = await self.store.spend_refresh_token(_hash_token(refresh_token), time.time())
            if spent.record is not None:
                await self.store.revoke_family(spent.record.family_id)
                await self.end_sessions([spent.record.family_id])
                return
        if player_id:
            await self.end_all_sessions(player_id)

    async def end_all_sessions(self, player_id: str) -> None:
        """Every refresh token of the player revoked, every live access token refused."""
        now = time.time()
        families = await self.store.revoke_player_tokens(player_id, now - self.access_ttl - CLOCK_SLACK_S)
        await self.end_sessions(families, now)

    async def end_sessions(self, session_ids: list[str], now: float | None = None) -> None:
        """Refuse the sessions' access tokens from now on, on every replica."""
        if not session_ids:
            return
        now = time.time() if now is None else now
        until = now + self.access_ttl + CLOCK_SLACK_S
        await self.store.add_revocations([Revocation(sid, until, now) for sid in session_ids])
        self.revoked(session_ids, until)
        if self.announce is not None:
            try:
                await self.announce(session_ids, until)
            except Exception as exc:  # best effort: the other replicas' poll reads the store within seconds
                log.warning("auth.revocation_not_announced", error=str(exc))

    def revoked(self, session_ids: list[str], until: float) -> None:
        """Sessions ended (here, or on another replica): refuse their tokens until `until`."""
        new = {sid for sid in session_ids if sid not in self._revoked}
        for sid in session_ids:
            self._revoked[sid] = max(until, self._revoked.get(sid, 0.0))
        if new:
            for listener in self.on_revoked:
                listener(new)

    async def sync_revocations(self, now: float | None = None) -> None:
        """Read the revocations made since the last read (all live ones the first time)
        and forget those whose tokens have all expired."""
        now = time.time() if now is None else now
        since = 0.0 if self._polled_to is None else self._polled_to - REVOCATION_OVERLAP_S
        for r in await self.store.revocations_since(since):
            if r.until > now:
                self.revoked([r.session_id], r.until)
        self._polled_to = now
        for sid in [sid for sid, until in self._revoked.items() if until <= now]:
            del self._revoked[sid]

    async def watch_revocations(self) -> None:
        """Keep this replica's revocation list current; prunes the store now and then."""
        pruned = 0.0
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.sync_revocations()
                if time.time() - pruned >= 600:
                    pruned = time.time()
                    await self.store.prune_revocations(pruned)
            except Exception as exc:  # storage away: keep what is known, try again
                log.warning("auth.revocations_unavailable", error=str(exc))
