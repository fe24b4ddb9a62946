"""The daily return reward as a pure rule: server days, streaks, the cap, the day boundary."""

from __future__ import annotations

import datetime as dt
import tomllib

import pytest

from llamawool.game import (
    ActionConflict,
    BalanceError,
    BuyBuilding,
    ClaimDailyReward,
    FarmState,
    RequirementNotMet,
    Rules,
    apply_action,
    parse_balance,
)
from llamawool.game.daily import next_day_start, next_streak, reward_seconds, server_day
from llamawool.settings import DEFAULT_CONFIG_DIR, load_rules

MIDNIGHT = dt.datetime(2026, 12, 6, tzinfo=dt.UTC).timestamp()  # Sunday 2026-12-06 00:00 UTC
DAY = 86_400.0


@pytest.fixture(scope="module")
def rules() -> Rules:
    return load_rules()


def farm_with_barns(rules: Rules, now: float) -> FarmState:
    s = rules.new_farm("p1", now - 1000)
    s.balances[0] = 1e6
    out = apply_action(rules, s, BuyBuilding("barn", 10), now - 500)
    return out.state


def claim(rules: Rules, state: FarmState, now: float) -> tuple[FarmState, dict[str, object]]:
    out = apply_action(rules, state, ClaimDailyReward(), now)
    return out.state, out.result


def test_server_days_are_utc_calendar_days() -> None:
    assert server_day(MIDNIGHT - 0.001) == "2026-12-05"
    assert server_day(MIDNIGHT) == "2026-12-06"
    assert server_day(MIDNIGHT + DAY - 0.001) == "2026-12-06"
    assert next_day_start(MIDNIGHT + 5.0) == MIDNIGHT + DAY
    assert next_day_start(MIDNIGHT - 0.001) == MIDNIGHT


def test_the_streak_grows_on_consecutive_days_and_a_missed_day_resets_it() -> None:
    assert next_streak("", 0, "2026-12-06") == 1
    assert next_streak("2026-12-05", 3, "2026-12-06") == 4
    assert next_streak("2026-12-04", 3, "2026-12-06") == 1  # 12-05 missed
    assert next_streak("2026-11-30", 9, "2026-12-01") == 10  # across a month
    assert next_streak("2026-12-31", 2, "2027-01-01") == 3  # across a year


def test_the_reward_is_seconds_of_production_per_streak_day_capped() -> None:
    assert reward_seconds(1, 600, 7) == 600
    assert reward_seconds(3, 600, 7) == 1800
    assert reward_seconds(7, 600, 7) == 4200
    assert reward_seconds(30, 600, 7) == 4200


def test_a_claim_credits_the_farms_own_production(rules: Rules) -> None:
    now = MIDNIGHT + 3600
    s = farm_with_barns(rules, now)
    rates = rules.rates(s)
    before = rules.balances_at(s, now)
    after, result = claim(rules, s, now)
    cfg = rules.balance.daily_reward
    assert result["streak"] == 1 and result["day"] == "2026-12-06"
    assert result["reward_seconds"] == cfg.seconds_per_streak_day
    for k, (b, r, a) in enumerate(zip(before, rates, after.balances, strict=True)):
        assert a == pytest.approx(b + r * cfg.seconds_per_streak_day, rel=1e-12), rules.tier_keys[k]
    assert result["next_claim_at"] == MIDNIGHT + DAY
    assert after.daily_day == "2026-12-06" and after.daily_streak == 1
    assert (s.stats.daily_rewards, after.stats.daily_rewards) == (0, 1)
    assert after.lifetime_value == pytest.approx(
        rules.scores(s, now)["lifetime"] + rules.value_of(rates) * cfg.seconds_per_streak_day
    )


def test_once_per_server_day_and_the_day_boundary(rules: Rules) -> None:
    s = farm_with_barns(rules, MIDNIGHT - 10)
    s, _ = claim(rules, s, MIDNIGHT - 5)  # 2026-12-05 23:59:55
    assert s.daily_streak == 1
    s, result = claim(rules, s, MIDNIGHT)  # a new day, five seconds later
    assert result["streak"] == 2
    with pytest.raises(ActionConflict) as refused:
        claim(rules, s, MIDNIGHT + DAY - 0.001)
    assert refused.value.extra["next_claim_at"] == MIDNIGHT + DAY
    s, result = claim(rules, s, MIDNIGHT + DAY)
    assert result["streak"] == 3


def test_the_streak_is_capped_and_a_missed_day_starts_again(rules: Rules) -> None:
    cfg = rules.balance.daily_reward
    s = farm_with_barns(rules, MIDNIGHT)
    seconds = []
    for day in range(cfg.max_streak_days + 3):
        s, result = claim(rules, s, MIDNIGHT + day * DAY + 60)
        seconds.append(result["reward_seconds"])
    assert s.daily_streak == cfg.max_streak_days + 3
    per = cfg.seconds_per_streak_day
    assert seconds == [per * min(n, cfg.max_streak_days) for n in range(1, cfg.max_streak_days + 4)]
    s, result = claim(rules, s, MIDNIGHT + (cfg.max_streak_days + 4) * DAY + 60)  # one day skipped
    assert result["streak"] == 1 and result["reward_seconds"] == per


def test_the_claim_state_survives_the_storage_document(rules: Rules) -> None:
    s, _ = claim(rules, farm_with_barns(rules, MIDNIGHT), MIDNIGHT + 60)
    back = FarmState.from_doc(s.to_doc(), s.revision)
    assert (back.daily_day, back.daily_streak) == ("2026-12-06", 1)
    with pytest.raises(ActionConflict):
        claim(rules, back, MIDNIGHT + 120)
    old = s.to_doc()
    del old["daily_day"], old["daily_streak"]  # a farm stored before the reward existed
    assert FarmState.from_doc(old, 1).daily_streak == 0


def test_the_status_preview_matches_the_claim(rules: Rules) -> None:
    s = farm_with_barns(rules, MIDNIGHT)
    now = MIDNIGHT + 100
    status = rules.daily_status(s, now)
    after, result = claim(rules, s, now)
    assert status["claimed_today"] is False and status["streak"] == result["streak"]
    assert status["reward"] == pytest.approx(result["reward"])
    status = rules.daily_status(after, now + 1)
    assert status["claimed_today"] is True and status["next_claim_at"] == MIDNIGHT + DAY


def test_the_reward_is_configured_and_validated() -> None:
    data = tomllib.loads((DEFAULT_CONFIG_DIR / "game.toml").read_text())
    assert parse_balance(data).daily_reward.seconds_per_streak_day == data["daily_reward"]["seconds_per_streak_day"]
    without = {k: v for k, v in data.items() if k != "daily_reward"}
    assert parse_balance(without).daily_reward.max_streak_days == 7  # the default
    for bad, field in (
        ({"seconds_per_streak_day": 0}, "seconds_per_streak_day"),
        ({"max_streak_days": 0}, "max_streak_days"),
        ({"bonus": 1}, "bonus"),
    ):
        with pytest.raises(BalanceError, match=f"daily_reward.{field}"):
            parse_balance({**data, "daily_reward": {**data["daily_reward"], **bad}})
    off = Rules(parse_balance({**data, "daily_reward": {"enabled": False}}), load_rules().config)
    with pytest.raises(RequirementNotMet):
        apply_action(off, off.new_farm("p", MIDNIGHT), ClaimDailyReward(), MIDNIGHT + 1)
