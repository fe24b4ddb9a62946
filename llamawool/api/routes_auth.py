"""Accounts: guest, register (and upgrade a guest in place), login, refresh, logout."""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web

from ..auth import Auth, AuthError, TokenPair
from ..passwords import password_problem
from ..settings import Settings
from ..store import DuplicateKey, PlayerChanges, PlayerRecord, Store
from .context import ctx
from .errors import ApiError, field_error
from .http import (
    authenticate,
    client_ip,
    json_response,
    principal,
    read_body,
    route,
)
from .schemas import (
    AuthResponse,
    GuestRequest,
    LoginRequest,
    LogoutRequest,
    PasswordChangeRequest,
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
    # the device id opens a guest only: one that registered meanwhile gets no session
    tokens = await c.auth.issue_if(existing, lambda now: now.is_guest)
    if tokens is None:
        raise ApiError("INVALID_CREDENTIALS", "this device's farm belongs to a registered account: log in")
    c.metrics.auth.labels(kind="guest", outcome="ok").inc()
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
    check_new_password(c.settings, body.password, username=body.username, email=body.email)
    password_hash = await c.auth.hash_password(body.password)
    try:
        if caller is not None:
            player = await c.store.get_player(caller.player_id)
            if player is None:
                raise ApiError("INVALID_TOKEN", "the account no longer exists")
            if not player.is_guest:
                raise ApiError("CONFLICT", "this account is already registered")
            await _refuse_taken(c.store, player.id, body.email, body.username)
            upgrade: PlayerChanges = {
                "email": body.email,
                "username": body.username,
                "password_hash": password_hash,
                "is_guest": False,
            }
            # A password now guards the account: every session its device id opened ends
            # and the caller gets a fresh pair below. Only while it is still a guest: of
            # two upgrades racing, one wins.
            if not await c.auth.change_credentials(player.id, upgrade, expect={"is_guest": True}):
                raise ApiError("CONFLICT", "this account is already registered")
            player = await c.store.get_player(player.id)
            if player is None:
                raise ApiError("INVALID_TOKEN", "the account no longer exists")
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


async def _refuse_taken(store: Store, player_id: str, email: str, username: str) -> None:
    """409 before a guest's upgrade ends its sessions, when the name or email is taken
    (the unique indexes still decide a race; this spares the common case a sign-out)."""
    for field, other in (
        ("email", await store.find_player(email=email)),
        ("username", await store.find_player(username=username)),
    ):
        if other is not None and other.id != player_id:
            raise DuplicateKey(field)


def check_new_password(
    settings: Settings, password: str, *, username: str | None, email: str | None, field: str = "password"
) -> None:
    """422 naming the field when a new password breaks the policy (`llamawool.passwords`)."""
    problem = password_problem(
        password,
        min_length=settings.password_min_length,
        blocklist=settings.blocks_weak_passwords(),
        username=username,
        email=email,
    )
    if problem is not None:
        raise field_error(field, f"the password {problem}", "weak_password")


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
    # the password verified must still be the account's when the session starts
    verified = player.password_hash
    tokens = await c.auth.issue_if(player, lambda now: now.password_hash == verified)
    if tokens is None:
        c.metrics.auth.labels(kind="login", outcome="failed").inc()
        raise ApiError("INVALID_CREDENTIALS", "the password was changed meanwhile: log in with the new one")
    c.metrics.auth.labels(kind="login", outcome="ok").inc()
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


@route(
    "POST",
    "/auth/password",
    summary="Change your password (the current one is required); every session ends and a new one starts",
    tag="auth",
    body=PasswordChangeRequest,
    response=AuthResponse,
    extra_statuses=(403, 409),  # the current password is wrong; a guest has no password (register instead)
)
async def change_password(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_body(request, PasswordChangeRequest)
    player = await c.store.get_player(principal(request).player_id)
    if player is None:
        raise ApiError("INVALID_TOKEN", "the account no longer exists")
    if player.is_guest or not player.password_hash:
        raise ApiError("CONFLICT", "a guest account has no password: register to set one")
    ip = client_ip(request, c.trusted)
    subject = f"id:{player.id}"
    await c.anticheat.check_login(ip, subject)  # the current password is guessable here too: same budget as login
    if not await c.auth.verify_password(player.password_hash, body.current_password):
        await c.anticheat.login_failed(ip, subject)
        c.metrics.auth.labels(kind="password_change", outcome="failed").inc()
        # 403, not 401: the access token is good, and a 401 would send clients to refresh it
        raise ApiError("INVALID_CREDENTIALS", "the current password is wrong", status=403, field="current_password")
    check_new_password(
        c.settings, body.new_password, username=player.username, email=player.email, field="new_password"
    )
    if body.new_password == body.current_password:
        raise field_error("new_password", "the new password is the current one", "same_password")
    new_hash = await c.auth.hash_password(body.new_password)
    # Every session ends (see Auth.change_credentials). Only the password is written,
    # and only over the one verified above: a concurrent change that won answers 409
    # here rather than being overwritten.
    if not await c.auth.change_credentials(
        player.id, {"password_hash": new_hash}, expect={"password_hash": player.password_hash}
    ):
        raise ApiError("CONFLICT", "the password was changed meanwhile: log in with the new one")
    player.password_hash = new_hash
    c.metrics.auth.labels(kind="password_change", outcome="ok").inc()
    tokens = await c.auth.issue(player)
    return json_response(auth_body(player, tokens), headers=_no_store())


__all__ = ["Auth", "auth_body", "check_new_password", "player_view"]
