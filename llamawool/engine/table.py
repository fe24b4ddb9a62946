"""Resident farms as numpy columns, and the vectorised tick over them.

One row per resident farm. The columns mirror each farm's anchor and rates
(written by `sync` whenever an event re-anchors a farm); the tick reads them
only, with preallocated buffers, and returns the few rows that need Python
attention (a threshold crossed, a tier about to be discovered, a farm gone
offline) plus the current balances of the connected rows.

Live events: a row's `rates` are the farm's own rates (`base_rates`) times the
event multipliers in force since its anchor. When the tick passes an event
boundary, every resident row re-anchors at the boundary's own instant (one
vectorised pass) and takes the new multipliers, so `anchor + rates × dt` stays
exact; the farms' states need no write (the rules integrate the same schedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..game import FarmState, Rules, week_start, week_start_of

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
BOOL = npt.NDArray[np.bool_]


# The board scores a row last sent, by column of `FarmTable._pushed`; the prestige board
# ranks by its score then by its tiebreak (lifetime value), so it keeps both.
PUSHED = ("lifetime", "prestige", "prestige_tiebreak", "rate", "weekly")


@dataclass(slots=True)
class BoardScores:
    """Every board's score for some rows (prestige's tiebreak is `lifetime`)."""

    lifetime: F64
    prestige: F64
    rate: F64
    weekly: F64


@dataclass(slots=True)
class TickResult:
    now: float
    settle_rows: I64
    offline_rows: I64
    connected_rows: I64
    balances: F64


class FarmTable:
    """Columns for up to `capacity` farms; grows by doubling."""

    def __init__(self, rules: Rules, capacity: int = 1024) -> None:
        self.rules = rules
        self.n_tiers = rules.n_tiers
        self.size = 0  # rows in use are < size (holes are marked unused)
        self.applied_to = -math.inf  # event boundaries up to here are applied to the rows
        self._values = np.array(rules.tier_values)
        self._free: list[int] = []
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        t = self.n_tiers
        old = self.__dict__.get("anchor_time")
        cols: dict[str, npt.NDArray[np.generic]] = {
            "anchor_time": np.zeros(capacity),
            "balances": np.zeros((capacity, t)),
            "rates": np.zeros((capacity, t)),
            "base_rates": np.zeros((capacity, t)),
            "own_value_rate": np.zeros(capacity),
            "lifetime": np.zeros(capacity),
            "value_rate": np.zeros(capacity),
            "play": np.zeros(capacity),
            "next_lifetime": np.full(capacity, np.inf),
            "next_play": np.full(capacity, np.inf),
            "last_active": np.zeros(capacity),
            "online": np.zeros(capacity, dtype=bool),
            "used": np.zeros(capacity, dtype=bool),
            "connections": np.zeros(capacity, dtype=np.int32),
            "undiscovered": np.zeros(capacity, dtype=bool),
            # leaderboard inputs
            "soul_shears": np.zeros(capacity),
            "weekly": np.zeros(capacity),
            "week_start": np.zeros(capacity),
            "score_dirty": np.zeros(capacity, dtype=bool),
            # the board feed's memory of what it sent (private: the tick never reads it)
            "_pushed": np.full((capacity, len(PUSHED)), np.nan),
        }
        if old is not None:
            for name, arr in cols.items():
                prev = getattr(self, name)
                arr[: prev.shape[0]] = prev
        for name, arr in cols.items():
            setattr(self, name, arr)
        self.capacity = capacity
        # tick buffers, reused every tick
        self._dt = np.zeros(capacity)
        self._tmp = np.zeros(capacity)
        self._mask = np.zeros(capacity, dtype=bool)
        self._mask2 = np.zeros(capacity, dtype=bool)
        self._idle = np.zeros(capacity, dtype=bool)

    # Typed views of the columns (set dynamically by _alloc).
    anchor_time: F64
    balances: F64
    rates: F64
    base_rates: F64
    own_value_rate: F64
    lifetime: F64
    value_rate: F64
    play: F64
    next_lifetime: F64
    next_play: F64
    last_active: F64
    online: BOOL
    used: BOOL
    connections: npt.NDArray[np.int32]
    undiscovered: BOOL
    soul_shears: F64
    weekly: F64
    week_start: F64
    score_dirty: BOOL
    _pushed: F64

    def add(self, state: FarmState) -> int:
        if self._free:
            row = self._free.pop()
        else:
            if self.size == self.capacity:
                self._alloc(self.capacity * 2)
            row = self.size
            self.size += 1
        self.used[row] = True
        self.connections[row] = 0
        self._pushed[row] = np.nan  # a farm that (re)takes a row is sent whole: another replica may have moved it
        # A reused row must not keep its previous farm's activity (sync only moves it forward).
        self.last_active[row] = state.last_active
        self.sync(row, state)
        return row

    def remove(self, row: int) -> None:
        self.used[row] = False
        self.online[row] = False
        self.undiscovered[row] = False
        self.connections[row] = 0
        self.next_lifetime[row] = math.inf
        self.next_play[row] = math.inf
        self._free.append(row)

    def sync(self, row: int, state: FarmState) -> None:
        """Mirror a farm's anchor and rates after an event.

        A state anchored before the last event boundary the rows passed is mirrored
        as of that boundary (where the other rows are anchored too), so the row's
        constant rates hold from its anchor on."""
        rules = self.rules
        rates = rules.rates(state)
        boundary = rules.schedule.last_boundary(self.applied_to)
        if state.online and boundary is not None and state.anchor_time < boundary:
            state = rules.advance(state, boundary)[0]
        live = rules.live_rates(state, state.anchor_time)
        self.anchor_time[row] = state.anchor_time
        self.balances[row] = state.balances
        self.base_rates[row] = rates
        self.rates[row] = live
        self.own_value_rate[row] = rules.value_of(rates)
        self.lifetime[row] = state.lifetime_value
        self.value_rate[row] = rules.value_of(live)
        self.play[row] = state.play_time_s
        self.online[row] = state.online
        self.last_active[row] = max(self.last_active[row], state.last_active)
        self.undiscovered[row] = any(
            r > 0 and k not in state.discovered for k, r in zip(rules.tier_keys, rates, strict=True)
        )
        self.next_lifetime[row] = self._next(state, "lifetime_value", 1.0)
        self.next_play[row] = self._next(state, "play_hours", 3600.0)
        self.soul_shears[row] = state.soul_shears
        self.weekly[row] = state.weekly_value
        self.week_start[row] = week_start_of(state.week)
        self.score_dirty[row] = True

    def _next(self, state: FarmState, metric: str, scale: float) -> float:
        """The smallest locked threshold of a time-driven metric (inf when none)."""
        locked = [
            a.threshold * scale
            for a in self.rules.achievements.values()
            if a.metric == metric and a.key not in state.achievements
        ]
        return min(locked, default=math.inf)

    def score_rows(self, every: bool = False) -> I64:
        """The rows whose board scores may have moved since the last call (online, or
        changed by an event), or every row in use; clears the change marks."""
        n = self.size
        moved = self.used[:n] if every else self.used[:n] & (self.online[:n] | self.score_dirty[:n])
        rows = np.flatnonzero(moved)
        self.score_dirty[:n] = False
        return rows

    def scores(self, rows: I64, now: float, week_start: float) -> BoardScores:
        """The board scores of `rows` at `now`; weekly is the value produced since `week_start`."""
        online = self.online[rows]
        anchor = self.anchor_time[rows]
        value_rate = self.value_rate[rows]
        dt = np.maximum(now - anchor, 0.0) * online
        lifetime = self.lifetime[rows] + value_rate * dt
        same_week = self.week_start[rows] == week_start
        fresh = value_rate * np.maximum(now - np.maximum(anchor, week_start), 0.0) * online
        weekly = np.where(same_week, self.weekly[rows] + value_rate * dt, fresh)
        return BoardScores(lifetime, self.soul_shears[rows], self.own_value_rate[rows], weekly)

    def unpushed(self, rows: I64, column: int, values: F64) -> BOOL:
        """Which of `rows` would send `values` in pushed column `column` (see PUSHED) for the
        first time: they differ from what was last sent, or nothing was (NaN equals nothing)."""
        changed: BOOL = np.not_equal(self._pushed[rows, column], values)
        return changed

    def mark_pushed(self, rows: I64, column: int, values: F64) -> None:
        self._pushed[rows, column] = values

    def forget_pushed(self, columns: tuple[int, ...] | None = None, rows: I64 | None = None) -> None:
        """Send these again next time, changed or not (all columns of every row by default)."""
        where = slice(0, self.size) if rows is None else rows
        if columns is None:
            self._pushed[where] = np.nan
        else:
            for column in columns:
                self._pushed[where, column] = np.nan

    def cross_boundaries(self, now: float) -> list[float]:
        """Re-anchor every row at each event boundary passed since the last call, at
        the boundary's own instant (not at `now`); returns the boundaries applied."""
        passed = self.rules.schedule.boundaries_in(self.applied_to, now)
        for at in passed:
            self.reanchor(at)
        self.applied_to = max(self.applied_to, now)
        return passed

    def reanchor(self, at: float) -> None:
        """One event boundary: the closed form's values at `at` become every online
        row's anchor, and every row takes the multipliers in force from `at` on."""
        n = self.size
        rows = np.flatnonzero(self.used[:n] & self.online[:n] & (self.anchor_time[:n] < at))
        dt = at - self.anchor_time[rows]
        value_rate = self.value_rate[rows]
        self.balances[rows] += self.rates[rows] * dt[:, None]
        self.lifetime[rows] += value_rate * dt
        self.play[rows] += dt
        start = week_start(at)
        fresh = value_rate * (at - np.maximum(self.anchor_time[rows], start))
        self.weekly[rows] = np.where(self.week_start[rows] == start, self.weekly[rows] + value_rate * dt, fresh)
        self.week_start[rows] = start
        self.anchor_time[rows] = at
        self.score_dirty[rows] = True
        mults = np.array(self.rules.schedule.multipliers_at(at))
        np.multiply(self.base_rates[:n], mults, out=self.rates[:n])
        np.matmul(self.rates[:n], self._values, out=self.value_rate[:n])

    def tick(self, now: float, online_window_s: float) -> TickResult:
        """The whole tick at once: `check` over every row, then every connected row's
        balances (the engine's loop sends them in phases instead: `connected_balances`)."""
        settle_rows, offline_rows = self.check(now, online_window_s)
        connected_rows, balances = self.connected_balances(now)
        return TickResult(now, settle_rows, offline_rows, connected_rows, balances)

    def check(self, now: float, online_window_s: float) -> tuple[I64, I64]:
        """Closed-form threshold checks for every resident farm: the rows to settle (a
        time-driven achievement reached, a tier about to be discovered) and the rows
        whose online window ran out with no connection.

        No per-farm Python: each step is one numpy operation over the columns.
        """
        self.cross_boundaries(now)
        n = self.size
        dt = np.subtract(now, self.anchor_time[:n], out=self._dt[:n])
        np.maximum(dt, 0.0, out=dt)
        np.multiply(dt, self.online[:n], out=dt)  # an offline farm produces nothing until it returns
        tmp = self._tmp[:n]
        mask = self._mask[:n]
        hit = self._mask2[:n]
        # achievements driven by time: lifetime value and online play time
        np.multiply(self.value_rate[:n], dt, out=tmp)
        np.add(tmp, self.lifetime[:n], out=tmp)
        np.greater_equal(tmp, self.next_lifetime[:n], out=hit)
        np.add(self.play[:n], dt, out=tmp)
        np.greater_equal(tmp, self.next_play[:n], out=mask)
        np.logical_or(hit, mask, out=hit)
        # a tier with a positive rate not yet discovered is discovered now
        np.greater(dt, 0.0, out=mask)
        np.logical_and(mask, self.undiscovered[:n], out=mask)
        np.logical_or(hit, mask, out=hit)
        np.logical_and(hit, self.used[:n], out=hit)
        settle_rows = np.flatnonzero(hit)
        # online -> offline: no connection and no request within the window
        np.add(self.last_active[:n], online_window_s, out=tmp)
        np.less_equal(tmp, now, out=mask)
        np.logical_and(mask, self.online[:n], out=mask)
        idle = np.equal(self.connections[:n], 0, out=self._idle[:n])
        np.logical_and(mask, idle, out=mask)
        return settle_rows, np.flatnonzero(mask)

    def connected_balances(self, now: float, phase: int = 0, phases: int = 1) -> tuple[I64, F64]:
        """The rows with a connection among those of one phase (row % phases == phase),
        and their balances at `now` in closed form: what their tick carries. The
        caller has crossed the event boundaries up to `now` (`check`, or
        `cross_boundaries` itself)."""
        rows = np.flatnonzero(self.connections[phase : self.size : phases])
        if phases != 1:
            rows *= phases
            rows += phase
        dt = np.subtract(now, self.anchor_time[rows])
        np.maximum(dt, 0.0, out=dt)
        dt *= self.online[rows]
        balances = self.rates[rows]
        balances *= dt[:, None]
        balances += self.balances[rows]
        return rows, balances
