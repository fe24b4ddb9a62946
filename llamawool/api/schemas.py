"""The protocol's schemas: one source that validates requests and writes the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

DeviceId = Annotated[str, StringConstraints(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]
Username = Annotated[str, StringConstraints(min_length=3, max_length=24, pattern=r"^[A-Za-z0-9_]+$")]
Email = Annotated[
    str, StringConstraints(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", to_lower=True)
]
Password = Annotated[str, StringConstraints(min_length=8, max_length=256)]


class Request(BaseModel):
    # strict: "5" is not a count and "true" is not a confirmation; wrong types are 422s
    model_config = ConfigDict(extra="forbid", strict=True)


class GuestRequest(Request):
    device_id: DeviceId = Field(description="A stable id the client generates once per install")


class RegisterRequest(Request):
    email: Email
    password: Password
    username: Username


class LoginRequest(Request):
    login: Annotated[str, StringConstraints(min_length=1, max_length=254)] = Field(description="email or username")
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class RefreshRequest(Request):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class LogoutRequest(Request):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None


class PasswordChangeRequest(Request):
    current_password: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    new_password: Password


class PlayerPatch(Request):
    username: Username | None = None
    settings: dict[str, str | int | float | bool | None] | None = Field(
        None, description="Client settings (flat; at most 32 keys)", max_length=32
    )


class BuyBuildingRequest(Request):
    quantity: Annotated[int, Field(ge=1, le=100)] | Literal["max"] = 1


class BuyUpgradeRequest(Request):
    pass


class ShearRequest(Request):
    count: Annotated[int, Field(ge=1, le=20)] = 1


class DailyRewardRequest(Request):
    pass


class PrestigeRequest(Request):
    confirm: Literal[True] = Field(description="must be true: prestige resets the run")
    expected_gain: Annotated[int, Field(ge=0)] | None = None


# ---- responses --------------------------------------------------------------


class Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class PlayerView(Response):
    id: str
    username: str
    email: str | None
    is_guest: bool
    role: str
    created_at: float
    settings: dict[str, Any]


class AuthResponse(Response):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"]
    expires_in: int
    player: PlayerView


class FarmView(Response):
    player_id: str
    revision: int
    server_time: float
    online: bool
    balances: dict[str, float]
    rates: dict[str, float]
    farm_value: float
    value_per_second: float
    run_value: float
    lifetime_value: float
    weekly_value: float
    buildings: dict[str, int]
    upgrades: list[str]
    soul_shears: int
    prestige_count: int
    achievements: dict[str, float]
    discovered_tiers: list[str]
    click_power: float
    shear_tokens: float
    play_time_s: float
    stats: dict[str, Any]
    created_at: float


class ActionResponse(Response):
    result: dict[str, Any]
    events: list[dict[str, Any]]
    farm: FarmView


class Problem(Response):
    type: str
    title: str
    status: int
    detail: str
    code: str
    outcome: Literal["unknown", "not_applied"] | None = Field(
        None,
        description="on UNAVAILABLE for a write: `unknown` when it may have been applied "
        "(retry with the same Idempotency-Key), `not_applied` when it certainly was not",
    )


class Health(Response):
    status: str


# ---- WebSocket ------------------------------------------------------------------


IdempotencyKey = Annotated[str, StringConstraints(pattern=r"^[!-~]{1,200}$")]


class WsActionData(Request):
    idempotency_key: IdempotencyKey | None = Field(
        None, description="as REST's Idempotency-Key: a retry with the same key applies nothing twice"
    )


class WsShear(WsActionData):
    action: Literal["shear"]
    count: Annotated[int, Field(ge=1, le=20)] = 1


class WsBuyBuilding(WsActionData):
    action: Literal["buy_building"]
    key: Annotated[str, StringConstraints(max_length=64)]
    quantity: Annotated[int, Field(ge=1, le=100)] | Literal["max"] = 1


class WsBuyUpgrade(WsActionData):
    action: Literal["buy_upgrade"]
    key: Annotated[str, StringConstraints(max_length=64)]


class WsPrestige(WsActionData):
    action: Literal["prestige"]
    confirm: bool
    expected_gain: Annotated[int, Field(ge=0)] | None = None


class WsClaimDailyReward(WsActionData):
    action: Literal["claim_daily_reward"]


WsAction = Annotated[
    WsShear | WsBuyBuilding | WsBuyUpgrade | WsPrestige | WsClaimDailyReward, Field(discriminator="action")
]


class WsEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    id: Annotated[str, StringConstraints(max_length=64)] | int | None = None
    data: dict[str, Any] | None = None
