"""The daily return reward: server days, streaks and what a claim is worth.

A farm may claim once per server day (the UTC calendar day of server time).
Claiming on the day after its last claim extends the streak; a missed day
starts it again at 1. The reward is wool by the farm's own production: each
streak day is worth `seconds_per_streak_day` seconds of the farm's current
rates, counted up to `max_streak_days` days, so it scales with the farm
without ever outgrowing a few hours of play. The claim state lives in the
farm document itself, so "once a day" holds wherever the farm's owner is:
the farm's single owner and its revision check refuse a second claim (see
docs/daily-reward.md).
"""

from __future__ import annotations

import datetime as dt

DAY_S = 86_400.0


def server_day(t: float) -> str:
    """The UTC calendar day containing server time `t`, e.g. "2026-12-06"."""
    return dt.datetime.fromtimestamp(t, dt.UTC).date().isoformat()


def next_day_start(t: float) -> float:
    """00:00 UTC of the day after the one containing `t`: when the next claim opens."""
    d = dt.datetime.fromtimestamp(t, dt.UTC).date() + dt.timedelta(days=1)
    return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC).timestamp()


def next_streak(last_day: str, streak: int, today: str) -> int:
    """The streak a claim today makes: one more after yesterday's claim, else 1."""
    if last_day and streak > 0:
        yesterday = (dt.date.fromisoformat(today) - dt.timedelta(days=1)).isoformat()
        if last_day == yesterday:
            return streak + 1
    return 1


def reward_seconds(streak: int, seconds_per_streak_day: float, max_streak_days: int) -> float:
    """Seconds of production a claim on this streak day is worth (capped at `max_streak_days`)."""
    return seconds_per_streak_day * min(streak, max_streak_days)
