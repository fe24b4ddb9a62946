"""Every WebSocket message, both ways: the one place the AsyncAPI document is written from.

Client messages are the models the socket validates with (`ws.py` checks the
envelope, then the `data` of each type with these). Server messages are the
models the socket builds its replies with; the two hot ones, `tick` and
`event`, are built as plain dicts where they happen (the tick loop, the
engine's event publisher, the boards) and described here field for field.
The scripted-game test (tests/api/test_asyncapi.py) checks every message a
real socket carries against this document, so a field added in one place and
not the other fails there.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..game.state import OfflineReport
from .schemas import ActionResponse, FarmView, PlayerView, Request, Response, WsAction

Board = Literal["lifetime", "prestige", "rate", "weekly"]  # coord.BOARDS, checked by a test
MessageId = Annotated[str, StringConstraints(max_length=64)] | int
EchoedId = str | int  # the server echoes an id as it came, even one it refused


# ---- client to server -----------------------------------------------------------


class AuthData(Request):
    token: Annotated[str, StringConstraints(min_length=1)] = Field(description="an access token")


class BoardData(Request):
    board: Board


class ClientAuth(BaseModel):
    """Authenticates a socket opened without a token; only as the first message."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["auth"]
    data: AuthData


class ClientAction(BaseModel):
    """A farm action; the server answers with `result` (same `id`) or `error`."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["action"]
    id: MessageId | None = None
    data: WsAction


class _BoardMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: MessageId | None = None
    data: BoardData


class ClientSubscribe(_BoardMessage):
    """Live top-of-board `event`s (`leaderboard`) for one board."""

    type: Literal["subscribe"]


class ClientUnsubscribe(_BoardMessage):
    type: Literal["unsubscribe"]


class ClientPing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["ping"]
    id: MessageId | None = None
    data: dict[str, Any] | None = None


CLIENT_MESSAGES: dict[str, type[BaseModel]] = {
    "auth": ClientAuth,
    "action": ClientAction,
    "subscribe": ClientSubscribe,
    "unsubscribe": ClientUnsubscribe,
    "ping": ClientPing,
}


# ---- server to client: the data of each message ------------------------------------


class WelcomeData(Response):
    player: PlayerView
    farm: FarmView
    server_time: float
    tick_interval_s: float
    offline_report: OfflineReport | None = Field(description="the 'while you were away' report, once after an absence")


class TickData(Response):
    server_time: float
    revision: int
    balances: dict[str, float]
    rates: dict[str, float] | None = Field(None, description="only when they changed since the last tick")


class Subscribed(Response):
    subscribed: Board


class Unsubscribed(Response):
    unsubscribed: Board


class ErrorData(Response):
    """Codes as in REST, plus MESSAGE_TOO_LARGE, UNSUPPORTED_FRAME, INVALID_JSON; more fields per code."""

    code: str
    message: str
    id: EchoedId | None = None
    retry_after: float | None = None


class PongData(Response):
    server_time: float


class TierDiscovered(Response):
    type: Literal["tier_discovered"]
    tier: str
    at: float


class AchievementUnlocked(Response):
    type: Literal["achievement_unlocked"]
    key: str
    name: str
    at: float


class OfflineReportEvent(Response):
    type: Literal["offline_report"]
    report: OfflineReport


class PrestigeEvent(Response):
    type: Literal["prestige"]
    gain: int
    soul_shears: int
    at: float


class DailyRewardClaimed(Response):
    type: Literal["daily_reward"]
    day: str = Field(description="the server day (UTC) claimed, YYYY-MM-DD")
    streak: int
    reward: dict[str, float] = Field(description="wool per tier credited")
    at: float


class RankChanged(Response):
    type: Literal["rank_changed"]
    board: Board
    rank: int
    previous_rank: int
    score: float


class BoardEntry(Response):
    rank: int
    player_id: str
    username: str
    score: float
    reached_at: float


class LeaderboardTop(Response):
    type: Literal["leaderboard"]
    board: Board
    period: str
    entries: list[BoardEntry]


class Broadcast(Response):
    type: Literal["broadcast"]
    message: str
    level: str
    at: float


class LiveEvent(Response):
    """A timed event scheduled, started, ended or cancelled (its `event` as in `GET /config`)."""

    kind: Literal["live_event"]
    phase: Literal["scheduled", "started", "ended", "cancelled"]
    event: dict[str, Any]


EventData = (
    TierDiscovered
    | AchievementUnlocked
    | OfflineReportEvent
    | PrestigeEvent
    | DailyRewardClaimed
    | RankChanged
    | LeaderboardTop
    | Broadcast
    | LiveEvent
)


# ---- server to client: the messages ------------------------------------------------


class Welcome(BaseModel):
    """The first message of an authenticated socket."""

    type: Literal["welcome"]
    data: WelcomeData


class Tick(BaseModel):
    """Balances every tick; extrapolate between them with the rates."""

    type: Literal["tick"]
    data: TickData


class Result(BaseModel):
    """The answer to an `action` (`{result, events, farm}`) or a (un)subscription; `id` echoes the client's."""

    type: Literal["result"]
    id: EchoedId | None
    data: ActionResponse | Subscribed | Unsubscribed


class Event(BaseModel):
    """Something happened: to the farm, on a board, or to the whole game."""

    type: Literal["event"]
    data: EventData


class Error(BaseModel):
    """A refused message; the session and the farm are otherwise unharmed."""

    type: Literal["error"]
    id: EchoedId | None
    data: ErrorData


class Pong(BaseModel):
    type: Literal["pong"]
    id: EchoedId | None
    data: PongData


SERVER_MESSAGES: dict[str, type[BaseModel]] = {
    "welcome": Welcome,
    "tick": Tick,
    "result": Result,
    "event": Event,
    "error": Error,
    "pong": Pong,
}


def encode(message: BaseModel) -> str:
    """One server message as the text frame it goes out as: the fields it was built with, no others."""
    return orjson.dumps(message.model_dump(mode="json", exclude_unset=True)).decode()
