"""Timed live events ("double wool weekend"): the schedule and its exact integral.

A live event multiplies the production of some tiers (or all) from `starts_at`
to its end (`ends_at`, or the cancel time when it was cancelled while running).
Overlapping events multiply. Production stays a closed form: what a farm makes
of tier k over [t0, t1] is `rate_k × effective_seconds_k(t0, t1)`, where
`effective_seconds_k` is the integral of tier k's event multiplier over the
interval (plain seconds when no event covers it). The rules use this integral
everywhere a duration used to multiply a rate, so an anchor taken before a
boundary and one taken at it give the same numbers, and an offline absence
spanning any mix of events is credited piecewise in one step.

Pure: no I/O, no clock reads. The engine builds a new `Schedule` whenever the
stored events change and hands it to the rules.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["scheduled", "running", "ended", "cancelled"]


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One scheduled event as stored; `tiers` None means every tier."""

    id: str
    name: str
    multiplier: float
    tiers: tuple[str, ...] | None
    starts_at: float
    ends_at: float
    cancelled_at: float | None = None
    created_at: float = 0.0
    created_by: str | None = None

    @property
    def effective_end(self) -> float:
        """When production returns to normal: a cancel cuts a running event short,
        and a future event cancelled before its start never applies at all."""
        if self.cancelled_at is None:
            return self.ends_at
        return max(self.starts_at, min(self.ends_at, self.cancelled_at))

    @property
    def applies(self) -> bool:
        return self.effective_end > self.starts_at

    def status(self, now: float) -> Status:
        if self.cancelled_at is not None:
            return "cancelled"  # a cancel happens at the server's now: it no longer runs from then on
        if now < self.starts_at:
            return "scheduled"
        if now < self.ends_at:
            return "running"
        return "ended"

    def covers(self, tier: str) -> bool:
        return self.tiers is None or tier in self.tiers

    def view(self, now: float) -> dict[str, Any]:
        """The EventView clients and admins see (EVENTS-API.md)."""
        return {
            "id": self.id,
            "name": self.name,
            "multiplier": self.multiplier,
            "tiers": list(self.tiers) if self.tiers is not None else None,
            "starts_at": self.starts_at,
            "ends_at": self.effective_end if self.cancelled_at is not None and self.applies else self.ends_at,
            "cancelled_at": self.cancelled_at,
            "status": self.status(now),
        }


@dataclass(frozen=True, slots=True)
class Segment:
    """[start, end): every tier's multiplier is constant on it (1.0 where no event runs)."""

    start: float
    end: float
    multipliers: tuple[float, ...]


class Schedule:
    """The applying events cut into segments of constant multipliers, per tier."""

    def __init__(self, tier_keys: Sequence[str], events: Iterable[LiveEvent] = ()) -> None:
        self.tier_keys = tuple(tier_keys)
        self.events: tuple[LiveEvent, ...] = tuple(sorted(events, key=lambda e: (e.starts_at, e.id)))
        live = [e for e in self.events if e.applies]
        cuts = sorted({t for e in live for t in (e.starts_at, e.effective_end)})
        segments: list[Segment] = []
        for start, end in itertools.pairwise(cuts):
            mults = [1.0] * len(self.tier_keys)
            for e in live:
                if e.starts_at <= start and end <= e.effective_end:
                    for i, tier in enumerate(self.tier_keys):
                        if e.covers(tier):
                            mults[i] *= e.multiplier
            if any(m != 1.0 for m in mults):
                segments.append(Segment(start, end, tuple(mults)))
        self.segments: tuple[Segment, ...] = tuple(segments)
        self.boundaries: tuple[float, ...] = tuple(cuts)
        self._starts = [s.start for s in self.segments]
        self._ones = (1.0,) * len(self.tier_keys)

    def __bool__(self) -> bool:
        return bool(self.segments)

    def multipliers_at(self, t: float) -> tuple[float, ...]:
        """Each tier's multiplier in force at `t` (an event counts from its start, not at its end)."""
        i = bisect.bisect_right(self._starts, t) - 1
        if i >= 0 and t < self.segments[i].end:
            return self.segments[i].multipliers
        return self._ones

    def effective_seconds(self, t0: float, t1: float) -> list[float] | None:
        """∫ multiplier_k over [t0, t1] per tier, or None when no event touches the
        interval (then it is plainly t1 - t0 for every tier: the callers' fast path)."""
        if t1 <= t0 or not self.segments:
            return None
        out: list[float] | None = None
        i = max(0, bisect.bisect_right(self._starts, t0) - 1)
        for seg in self.segments[i:]:
            if seg.start >= t1:
                break
            overlap = min(t1, seg.end) - max(t0, seg.start)
            if overlap <= 0:
                continue
            if out is None:
                out = [t1 - t0] * len(self.tier_keys)
            for k, m in enumerate(seg.multipliers):
                if m != 1.0:
                    out[k] += (m - 1.0) * overlap
        return out

    def boundaries_in(self, after: float, until: float) -> list[float]:
        """Boundaries b with after < b <= until, in order: the instants the engine re-anchors at."""
        lo = bisect.bisect_right(self.boundaries, after)
        hi = bisect.bisect_right(self.boundaries, until)
        return list(self.boundaries[lo:hi])

    def last_boundary(self, at: float) -> float | None:
        """The last boundary at or before `at` (None when there is none)."""
        i = bisect.bisect_right(self.boundaries, at)
        return self.boundaries[i - 1] if i else None

    def changed_since(self, other: Schedule) -> float | None:
        """The earliest instant from which this schedule's multipliers differ from
        `other`'s (None when they agree everywhere): what a replica must re-derive."""
        if self.segments == other.segments:
            return None
        cuts = sorted(set(self.boundaries) | set(other.boundaries))
        for start, end in itertools.pairwise(cuts):
            mid = (start + end) / 2
            if self.multipliers_at(mid) != other.multipliers_at(mid):
                return start
        return cuts[0] if cuts else None
