"""The resident set: which farms this replica holds in memory, and their numpy rows.

A farm becomes resident on first use (loaded from the store, or created), and
leaves when it goes offline, is forgotten, or its copy is dropped as stale.
Every change to a resident farm happens under its lock (`ResidentSet.locked`);
the tick and the board feed read the set through `ResidentIndex` only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..game import FarmState, Rules
from ..observability import Metrics
from ..store import FarmCommit, IdempotencyRecord, Snapshot, Store
from .commit import GroupCommitter
from .errors import FarmConflict, PlayerGone
from .table import FarmTable


class Sink(Protocol):
    """A connection that receives a farm's messages without blocking the engine."""

    def send(self, message: str) -> None: ...


@dataclass(eq=False, slots=True)
class Resident:
    player_id: str
    state: FarmState
    row: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sinks: set[Sink] = field(default_factory=set)
    snapshot_revision: int = -1
    ticked_revision: int = -1
    evicted: bool = False
    busy: bool = False  # a settle/offline task is queued for this farm
    ranks: dict[str, int] = field(default_factory=dict)  # last rank told to its connections
    # the answers of the latest Idempotency-Keys this replica committed for it, oldest first:
    # a client's retry is answered from memory (see farms.REMEMBERED_KEYS)
    replies: dict[str, IdempotencyRecord] = field(default_factory=dict)


class ResidentIndex(Protocol):
    """What readers of the resident set (the board feed) may see: no loading, no locks."""

    @property
    def table(self) -> FarmTable: ...
    @property
    def row_owners(self) -> Sequence[Resident | None]: ...
    def all(self) -> Iterable[Resident]: ...
    def online_count(self) -> int: ...


def snapshot_of(rules: Rules, state: FarmState) -> Snapshot:
    """The history snapshot of a farm's state (its value as the boards and saves see it)."""
    return Snapshot(
        state.player_id,
        state.revision,
        state.anchor_time,
        rules.value_of(state.balances),
        state.to_doc(),
    )


class ResidentSet:
    """The farms in memory by player id, and the resident owning each table row."""

    def __init__(
        self,
        rules: Rules,
        store: Store,
        committer: GroupCommitter,
        table: FarmTable,
        metrics: Metrics,
        clock: Callable[[], float],
        release: Callable[[str], None],
    ) -> None:
        self.rules = rules
        self.store = store
        self.committer = committer
        self.table = table
        self.metrics = metrics
        self.clock = clock
        self.release = release  # give up the farm's lease (in the background)
        self.online_window_s = rules.online_window_s
        self.by_id: dict[str, Resident] = {}
        self.row_owners: list[Resident | None] = []
        self._loading: dict[str, asyncio.Future[Resident]] = {}

    def all(self) -> Iterable[Resident]:
        return self.by_id.values()

    def here(self, player_id: str) -> bool:
        """Resident, or being loaded (by a request that found it owns the farm)."""
        return player_id in self.by_id or player_id in self._loading

    def resend_rates(self) -> None:
        """The rates changed (a live event's boundary, a new schedule): every farm's next
        tick carries them."""
        for res in self.by_id.values():
            res.ticked_revision = -1

    def online_count(self) -> int:
        n = self.table.size
        return int(self.table.online[:n].sum())

    async def resident(self, player_id: str) -> Resident:
        res = self.by_id.get(player_id)
        if res is not None:
            return res
        pending = self._loading.get(player_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Resident] = asyncio.get_running_loop().create_future()
        self._loading[player_id] = fut
        try:
            res = await self._load(player_id)
            fut.set_result(res)
            return res
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._loading[player_id]

    async def _load(self, player_id: str) -> Resident:
        now = self.clock()
        stored = await self.store.load_farm(player_id)
        if stored is None:
            if await self.store.get_player(player_id) is None:
                raise PlayerGone(player_id)
            state = self.rules.new_farm(player_id, now)
            state.revision = 1
            ok = await self.committer.commit(
                FarmCommit(player_id, None, 1, state.to_doc(), now, snapshot=snapshot_of(self.rules, state))
            )
            if not ok:  # created concurrently elsewhere: take theirs
                stored = await self.store.load_farm(player_id)
                if stored is None:
                    raise FarmConflict(player_id)
        if stored is not None:
            state = FarmState.from_doc(stored.doc, stored.revision)
            state.last_active = max(state.last_active, stored.last_active)
            if state.online and state.last_active + self.online_window_s <= now:
                # It was online when this process (or another) stopped; it went
                # offline when its online window ran out, and is credited on return.
                state = self.rules.go_offline(state, state.last_active + self.online_window_s).state
        res = Resident(player_id, state, -1, snapshot_revision=state.revision)
        res.row = self.table.add(state)
        if res.row >= len(self.row_owners):
            self.row_owners.extend([None] * (self.table.capacity - len(self.row_owners)))
        self.row_owners[res.row] = res
        self.by_id[player_id] = res
        self._gauge()
        return res

    def evict(self, res: Resident, *, release: bool = True) -> None:
        if res.evicted:  # e.g. forgotten while a commit was in flight: its row is freed already
            return
        res.evicted = True
        self.by_id.pop(res.player_id, None)
        self.table.remove(res.row)
        self.row_owners[res.row] = None
        self._gauge()
        if release:
            self.release(res.player_id)

    def _gauge(self) -> None:
        self.metrics.farms_resident.set(len(self.by_id))

    async def locked(self, player_id: str) -> Resident:
        """The resident farm with its lock held. Raises FarmConflict when the copy was
        dropped while we waited for its lock (it went stale, was handed to another
        replica, or its lease was lost): the caller routes again rather than reload
        here, where the farm may no longer belong."""
        res = await self.resident(player_id)
        await res.lock.acquire()
        if not res.evicted:
            return res
        res.lock.release()
        raise FarmConflict(player_id)

    def forget(self, player_id: str) -> None:
        """Drop a farm from memory without writing it (its player was erased)."""
        res = self.by_id.get(player_id)
        if res is not None:
            for sink in list(res.sinks):
                res.sinks.discard(sink)
            self.evict(res)
