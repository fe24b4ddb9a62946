"""The daily claim state lives in the farm document, so the farm's revision check is what
refuses a second claim: on SQLite and on MongoDB, two claims computed from the same stored
revision (two replicas that both believed they owned the farm) commit once."""

from __future__ import annotations

import pytest

from llamawool.game import ActionConflict, ClaimDailyReward, FarmState, apply_action
from llamawool.settings import load_rules
from llamawool.store import FarmCommit, Store

RULES = load_rules()
T0 = 1_800_000_000.0


async def test_two_claims_from_one_revision_commit_once(store: Store) -> None:
    farm = RULES.new_farm("p1", T0)
    farm.revision = 1
    assert await store.commit([FarmCommit("p1", None, 1, farm.to_doc(), T0)]) == [True]

    stored = await store.load_farm("p1")
    assert stored is not None
    read_a = FarmState.from_doc(stored.doc, stored.revision)
    read_b = FarmState.from_doc(stored.doc, stored.revision)
    claims = [apply_action(RULES, s, ClaimDailyReward(), T0 + 10).state for s in (read_a, read_b)]
    commits = [FarmCommit("p1", 1, 2, c.to_doc(), T0 + 10) for c in claims]

    assert [await store.commit([c]) for c in commits] == [[True], [False]]
    after = await store.load_farm("p1")
    assert after is not None and after.revision == 2
    back = FarmState.from_doc(after.doc, after.revision)
    assert (back.daily_day, back.daily_streak, back.stats.daily_rewards) == (claims[0].daily_day, 1, 1)
    # the loser reloads and sees the claim: the rule now refuses it
    with pytest.raises(ActionConflict):
        apply_action(RULES, back, ClaimDailyReward(), T0 + 11)
