"""Accounts: guest, register (and upgrade a guest in place), login, refresh, logout."""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from ..auth import Auth, AuthError, TokenPair
from ..store import DuplicateKey, PlayerRecord, Store
from .context import ctx
from .errors import ApiError
from .http import (
    authenticate,
    client_ip,
    json_response,
    read_body,
    route,
)
from .schemas import (
    AuthResponse,
    GuestRequest,
    LoginRequest,
    LogoutRequest,
    RefreshRequest,
    RegisterRequest,
)


def player_view(p: PlayerRecord) -> dict[str, Any]:
    return {
        "id": p.id,
        "username": p.username,
        "email": p.email,
        "is_guest": p.is_guest,
        "role": p.role,
        "created_at": p.created_at,
        "settings": p.settings,
    }


def auth_body(player: PlayerRecord, tokens: TokenPair) -> dict[str, Any]:
    return {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "token_type": "bearer",
        "expires_in": tokens.expires_in,
        "player": player_view(player),
    }


def _no_store() -> dict[str, str]:
    return {"Cache-Control": "no-store"}


@route(
    "POST",
    "/auth/guest",
    summary="Play as a guest: the same device id always gets the same player",
    access="public",
    tag="auth",
    body=GuestRequest,
    response=AuthResponse,
    extra_statuses=(201, 401),  # 401: the device's farm belongs to a registered account
)
async def guest(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_body(request, GuestRequest)
    existing = await c.store.find_player(device_id=body.device_id)
    status = 200
    if existing is not None and not existing.is_guest:
        # The guest registered: the device id alone no longer opens the account.
        raise ApiError("INVALID_CREDENTIALS", "this device's farm belongs to a registered account: log in")
    if existing is None:
        await c.anticheat.check_auth("guest", client_ip(request, c.trusted))
        pid = uuid.uuid4().hex
        candidate = PlayerRecord(
            id=pid,
            username=f"guest_{pid[:10]}",
            created_at=time.time(),
            device_id=body.device_id,
        )
        existing = await c.store.create_player(candidate)
        status = 201 if existing.id == pid else 200
    c.metrics.auth.labels(kind="guest", outcome="ok").inc()
    tokens = await c.auth.issue(existing)
    return json_response(auth_body(existing, tokens), status=status, headers=_no_store())


@route(
    "POST",
    "/auth/register",
    summary="Create an account; with a guest's token, upgrade that guest in place (keeping its farm)",
    access="public",
    tag="auth",
    body=RegisterRequest,
    response=AuthResponse,
    status=201,
    extra_statuses=(401,),  # an upgrading guest's token that is invalid
)
async def register(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_body(request, RegisterRequest)
    caller = authenticate(request, c.auth.decode_access, "public")
    await c.anticheat.check_auth("register", client_ip(request, c.trusted))
    password_hash = await c.auth.hash_password(body.password)
    try:
        if caller is not None:
            player = await c.store.get_player(caller.player_id)
            if player is None:
                raise ApiError("INVALID_TOKEN", "the account no longer exists")
            if not player.is_guest:
                raise ApiError("CONFLICT", "this account is already registered")
            player.email = body.email
            player.username = body.username
            player.password_hash = password_hash
            player.is_guest = False
            await c.store.update_player(player)
        else:
            player = await c.store.create_player(
                PlayerRecord(
                    id=uuid.uuid4().hex,
                    username=body.username,
                    email=body.email,
                    password_hash=password_hash,
                    is_guest=False,
                    created_at=time.time(),
                )
            )
    except DuplicateKey as exc:
        raise ApiError("CONFLICT", f"{exc.field} is already taken", field=exc.field) from None
    c.metrics.auth.labels(kind="register", outcome="ok").inc()
    tokens = await c.auth.issue(player)
    return json_response(auth_body(player, tokens), status=201, headers=_no_store())


async def _find_login(store: Store, login: str) -> PlayerRecord | None:
    if "@" in login:
        return await store.find_player(email=login.lower())
    return await store.find_player(username=login)


@route(
    "POST",
    "/auth/login",
    summary="Log in with email or username; JSON or form-encoded",
    access="public",
    tag="auth",
    body=LoginRequest,
    response=AuthResponse,
    form=True,
    extra_statuses=(401,),  # wrong login or password
)
async def login(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_body(request, LoginRequest, form=True)
    ip = client_ip(request, c.trusted)
    player = await _find_login(c.store, body.login)
    # Count failures per account when it exists, so its email and username share one budget.
    subject = f"id:{player.id}" if player else body.login
    await c.anticheat.check_login(ip, subject)
    ok = await c.auth.verify_password(player.password_hash if player else None, body.password)
    if player is None or not ok:
        await c.anticheat.login_failed(ip, subject)
        c.metrics.auth.labels(kind="login", outcome="failed").inc()
        raise ApiError("INVALID_CREDENTIALS", "wrong login or password")
    c.metrics.auth.labels(kind="login", outcome="ok").inc()
    tokens = await c.auth.issue(player)
    return json_response(auth_body(player, tokens), headers=_no_store())


@route(
    "POST",
    "/auth/refresh",
    summary="Rotate a refresh token; reusing a spent one revokes its whole family",
    access="public",
    tag="auth",
    body=RefreshRequest,
    response=AuthResponse,
    extra_statuses=(401,),  # unknown, spent or expired refresh token
)
async def refresh(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_body(request, RefreshRequest)
    try:
        player, tokens = await c.auth.refresh(body.refresh_token)
    except AuthError as exc:
        c.metrics.auth.labels(kind="refresh", outcome="failed").inc()
        raise ApiError(exc.code, exc.detail) from None
    except Exception:
        c.metrics.auth.labels(kind="refresh", outcome="failed").inc()
        raise
    c.metrics.auth.labels(kind="refresh", outcome="ok").inc()
    return json_response(auth_body(player, tokens), headers=_no_store())


@route(
    "POST",
    "/auth/logout",
    summary="Revoke a refresh token's family (or, with only an access token, every session)",
    access="public",
    tag="auth",
    body=LogoutRequest,
    status=204,
    extra_statuses=(401,),  # neither a refresh token nor a valid access token
)
async def logout(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_body(request, LogoutRequest)
    caller = authenticate(request, c.auth.decode_access, "public")
    if body.refresh_token is None and caller is None:
        raise ApiError("AUTH_REQUIRED", "send a refresh_token or an access token")
    await c.auth.logout(body.refresh_token, caller.player_id if caller and not body.refresh_token else None)
    return web.Response(status=204)


__all__ = ["Auth", "auth_body", "player_view"]
