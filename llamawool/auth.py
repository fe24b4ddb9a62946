"""Accounts and tokens: argon2id passwords, short-lived JWTs, rotating refresh tokens.

Access tokens are HS256 JWTs (15 minutes by default) carrying the player id and
role. Refresh tokens are opaque random strings stored only as SHA-256 hashes,
grouped in families: each use spends the token and issues the next one in the
family; presenting a spent token again revokes the whole family (a stolen
token is worth one use at most).
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .settings import Settings
from .store import PlayerRecord, RefreshTokenRecord, Store

JWT_ALGORITHM = "HS256"
VERIFIED_CACHE_MAX = 100_000  # verified access tokens remembered (cleared whole when full)
ACCESS = "access"


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

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Auth:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.secret = settings.resolved_jwt_secret()
        self.access_ttl = settings.access_token_ttl_s
        self.refresh_ttl = settings.refresh_token_ttl_s
        # argon2id with the library's RFC 9106 "low memory" defaults.
        self.hasher = PasswordHasher()
        self._verified: dict[str, tuple[Principal, float]] = {}

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

    def access_token(self, player: PlayerRecord, now: float | None = None) -> str:
        now = time.time() if now is None else now
        claims: dict[str, Any] = {
            "sub": player.id,
            "role": player.role,
            "typ": ACCESS,
            "iat": int(now),
            "exp": int(now) + self.access_ttl,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.secret, algorithm=JWT_ALGORITHM)

    def decode_access(self, token: str) -> Principal:
        """Verify an access token. A verified token is remembered until it expires,
        so the signature is checked once per token rather than once per request."""
        hit = self._verified.get(token)
        if hit is not None:
            if hit[1] > time.time():
                return hit[0]
            del self._verified[token]
        return self._decode(token)

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
        principal = Principal(claims["sub"], str(claims.get("role", "player")))
        if len(self._verified) >= VERIFIED_CACHE_MAX:
            self._verified.clear()
        self._verified[token] = (principal, float(claims["exp"]))
        return principal

    async def issue(self, player: PlayerRecord, family_id: str | None = None) -> TokenPair:
        now = time.time()
        refresh = secrets.token_urlsafe(32)
        await self.store.add_refresh_token(
            RefreshTokenRecord(
                token_hash=_hash_token(refresh),
                family_id=family_id or uuid.uuid4().hex,
                player_id=player.id,
                issued_at=now,
                expires_at=now + self.refresh_ttl,
            )
        )
        return TokenPair(self.access_token(player, now), refresh, self.access_ttl)

    async def refresh(self, refresh_token: str) -> tuple[PlayerRecord, TokenPair]:
        now = time.time()
        spent = await self.store.spend_refresh_token(_hash_token(refresh_token), now)
        if spent.record is None:
            raise AuthError("INVALID_TOKEN", "unknown refresh token")
        if spent.reused:
            raise AuthError("INVALID_TOKEN", "refresh token already used: its session has been revoked")
        if spent.record.expires_at <= now:
            raise AuthError("INVALID_TOKEN", "the refresh token has expired")
        player = await self.store.get_player(spent.record.player_id)
        if player is None:
            raise AuthError("INVALID_TOKEN", "the account no longer exists")
        return player, await self.issue(player, spent.record.family_id)

    async def logout(self, refresh_token: str | None, player_id: str | None) -> None:
        if refresh_token:
            spent = await self.store.spend_refresh_token(_hash_token(refresh_token), time.time())
            if spent.record is not None:
                await self.store.revoke_family(spent.record.family_id)
                return
        if player_id:
            await self.store.revoke_player_tokens(player_id)
