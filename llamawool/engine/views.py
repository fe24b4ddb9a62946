"""How a farm looks to a client: the JSON views shared by REST and WebSocket."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from ..game import FarmState, Rules


def farm_view(rules: Rules, state: FarmState, now: float) -> dict[str, Any]:
    """The whole farm at `now`, balances in closed form.

    The rates are computed once (they are the costly part) and every derived
    figure uses them: the same closed forms as `Rules.scores` and
    `Rules.run_value`, which would each compute the rates again.
    """
    rates = rules.rates(state)
    balances = rules.balances_at(state, now, rates)
    keys = rules.tier_keys
    live = rules.live_rates(state, now)  # with the live events in force now
    d = now - state.anchor_time if state.online and now > state.anchor_time else 0.0
    made = rules.produced(rates, state.anchor_time, now) if d > 0.0 else [0.0] * len(keys)
    run_value = rules.value_of([p + q for p, q in zip(state.run_produced, made, strict=True)])
    return {
        "player_id": state.player_id,
        "revision": state.revision,
        "server_time": now,
        "online": state.online,
        "balances": dict(zip(keys, balances, strict=True)),
        "rates": dict(zip(keys, live, strict=True)),
        "farm_value": rules.value_of(balances),
        "value_per_second": rules.value_of(live),
        "run_value": run_value,
        "lifetime_value": state.lifetime_value + rules.value_of(made),
        "weekly_value": rules.weekly_score(state, now, rates),
        "buildings": {k: state.buildings.get(k, 0) for k in rules.buildings},
        "upgrades": list(state.upgrades),
        "soul_shears": state.soul_shears,
        "prestige_count": state.prestige_count,
        "achievements": dict(state.achievements),
        "discovered_tiers": [k for k in keys if k in state.discovered],
        "click_power": rules.click_power(state),
        "shear_tokens": rules.shear_tokens_at(state, now),
        "play_time_s": state.play_time_s + d,
        "stats": state.stats.to_dict(),
        "created_at": state.created_at,
    }


def tick_message(
    rules: Rules,
    state: FarmState,
    now: float,
    keys: Sequence[str],
    balances: Sequence[float],
    with_rates: bool,
) -> str:
    """One serialised tick per farm, shared by all of its connections.

    On the tick path once per connected farm: the balances come from the
    table's rows, one per tier, so the length check of a strict zip (a third
    of this function's cost) is left out.
    """
    data: dict[str, Any] = {
        "server_time": now,
        "revision": state.revision,
        "balances": dict(zip(keys, balances, strict=False)),
    }
    if with_rates:
        data["rates"] = dict(zip(keys, rules.live_rates(state, now), strict=True))
    return orjson.dumps({"type": "tick", "data": data}).decode()


def tick_messages(
    now: float, revisions: Sequence[int], balances: npt.NDArray[np.float64], keys: Sequence[str]
) -> list[str]:
    """The ticks (without rates) of many farms at one instant, as `tick_message` writes
    them: `revisions[i]` and `balances[i]` (one row per farm, one column per tier).

    The tick path's per-farm cost, so written for it: every farm's balances go
    through one `orjson.dumps` call (a list of small dicts) and are cut apart at
    `},{` (inside, there are only tier names and numbers), then each payload is
    one string format. One call per farm, and one `bytes` per farm, would cost
    half as much again.
    """
    if not len(revisions):
        return []
    dicts = list(map(dict, map(zip, repeat(keys), balances.tolist())))
    bodies = orjson.dumps(dicts).decode()[2:-2].split("},{")
    head = '{"type":"tick","data":{"server_time":' + orjson.dumps(now).decode() + ',"revision":'
    return [f'{head}{rev},"balances":{{{body}}}}}}}' for rev, body in zip(revisions, bodies, strict=True)]
