"""The live engine against the pure rules, its vectorised table, and its group committer.

The main property: for the same events at the same instants, a farm run
through the engine (actions via `submit`, ticks that settle thresholds, going
offline and coming back, commits through SQLite) ends in the state the pure
rules give when replayed by hand, and every tick a client receives shows the
closed-form balances of that replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamawool.engine import Engine, FarmConflict, PlayerGone
from llamawool.engine.commit import GroupCommitter
from llamawool.engine.table import FarmTable
from llamawool.game import (
    Action,
    BuyBuilding,
    BuyUpgrade,
    FarmState,
    GameError,
    Prestige,
    Shear,
    apply_action,
)
from llamawool.observability import Metrics
from llamawool.settings import Settings, load_rules
from llamawool.store import FarmCommit, PlayerRecord, SQLiteStore, StorageUnavailable, Store
from tests.helpers import CollectingSink, FakeClock, logs_go_nowhere  # noqa: F401 (an autouse fixture)

RULES = load_rules()
T0 = 1_800_000_000.0
WINDOW = RULES.online_window_s
REL = 1e-9
BUILDINGS = list(RULES.buildings)
UPGRADES = list(RULES.upgrades)


class CountingStore:
    """The real store, with every `commit` call's batch size recorded (and optionally held)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.hold: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.fail_next: int = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def commit(self, batch: list[FarmCommit]) -> list[bool]:
        self.batches.append(len(batch))
        self.entered.set()
        if self.hold is not None:
            hold, self.hold = self.hold, None
            await hold.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise StorageUnavailable("disk unplugged")
        return await self.inner.commit(batch)


def make_settings(data_dir: Path) -> Settings:
    return Settings(env="test", data_dir=data_dir, sqlite_synchronous="NORMAL")


@asynccontextmanager
async def opened_store(data_dir: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(data_dir / "engine.sqlite3", synchronous="NORMAL")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def running_engine(store: Store, clock: FakeClock, data_dir: Path) -> AsyncIterator[Engine]:
    engine = Engine(RULES, store, make_settings(data_dir), Metrics(), clock=clock)
    await engine.start(tick=False)
    try:
        yield engine
    finally:
        await engine.stop()


async def add_player(store: Store, player_id: str) -> None:
    await store.create_player(PlayerRecord(id=player_id, username=f"u_{player_id}", created_at=T0))


async def tick_and_settle(engine: Engine) -> None:
    """One tick, then wait for every settle / offline / autosave task it spawned."""
    engine.tick()
    while engine._tasks:
        await asyncio.gather(*list(engine._tasks))


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


def assert_same(engine_value: Any, replay_value: Any, path: str = "farm") -> None:
    """Structural equality with floats compared to 1e-9 relative."""
    if isinstance(replay_value, dict):
        assert isinstance(engine_value, dict), path
        assert engine_value.keys() == replay_value.keys(), path
        for k in replay_value:
            assert_same(engine_value[k], replay_value[k], f"{path}.{k}")
    elif isinstance(replay_value, list):
        assert isinstance(engine_value, list) and len(engine_value) == len(replay_value), path
        for i, (a, b) in enumerate(zip(engine_value, replay_value, strict=True)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(replay_value, float) and not isinstance(engine_value, bool):
        assert close(float(engine_value), replay_value), f"{path}: engine {engine_value!r} != replay {replay_value!r}"
    else:
        assert engine_value == replay_value, f"{path}: engine {engine_value!r} != replay {replay_value!r}"


# ---- the pure replay: GAME.md's events, by hand ----------------------------------------------------------


class Replay:
    """The rules applied event by event: what the engine must agree with."""

    def __init__(self, state: FarmState, connected: bool) -> None:
        self.state = state
        self.connected = connected

    def _lapse(self, now: float) -> None:
        # Online while connected or within the window after the last request.
        s = self.state
        if not self.connected and s.online and s.last_active + WINDOW <= now:
            self.state = RULES.go_offline(s, s.last_active + WINDOW).state

    def come_online(self, now: float) -> None:
        self._lapse(now)
        if not self.state.online:
            self.state = RULES.come_online(self.state, now).state
        self.state.last_active = max(self.state.last_active, now)

    def act(self, action: Action, now: float) -> None:
        self.come_online(now)
        try:
            outcome = apply_action(RULES, self.state, action, now)
        except GameError:
            return
        self.state = outcome.state
        self.state.last_active = now

    def tick(self, now: float) -> None:
        self._lapse(now)
        if self.state.online:
            outcome = RULES.settle(self.state, now)
            if outcome.events:  # a threshold was crossed: the farm re-anchors there
                self.state = outcome.state


# ---- strategies ---------------------------------------------------------------------------------------------

magnitudes = st.one_of(st.just(0.0), st.floats(min_value=-1.0, max_value=9.0).map(lambda e: 10.0**e))


@st.composite
def stored_farms(draw: st.DrawFn) -> FarmState:
    """A farm as it might sit in storage: some wool, some buildings, close to a play-time threshold."""
    s = RULES.new_farm("p", T0)
    s.balances = [draw(magnitudes) for _ in RULES.tier_keys]
    s.run_produced = list(s.balances)
    s.lifetime_value = RULES.value_of(s.run_produced) * draw(st.sampled_from([1.0, 1.5]))
    s.buildings = draw(st.dictionaries(st.sampled_from(BUILDINGS), st.integers(min_value=1, max_value=12), max_size=4))
    s.upgrades = draw(st.lists(st.sampled_from(UPGRADES), unique=True, max_size=3))
    s.discovered = draw(st.lists(st.sampled_from(RULES.tier_keys), unique=True, max_size=3))
    s.play_time_s = draw(st.sampled_from([0.0, 3600.0 - 30.0, 24 * 3600.0 - 5.0]))
    s.soul_shears = draw(st.integers(min_value=0, max_value=3))
    return s


actions = st.one_of(
    st.builds(Shear, st.integers(min_value=1, max_value=RULES.shear_rules.max_per_request)),
    st.builds(
        BuyBuilding,
        st.sampled_from(BUILDINGS),
        st.one_of(st.just("max"), st.integers(min_value=1, max_value=5)),
    ),
    st.builds(BuyUpgrade, st.sampled_from(UPGRADES)),
    st.builds(Prestige, st.just(True)),
)
steps = st.lists(
    st.tuples(
        st.one_of(
            st.just(0.0),
            st.floats(min_value=0.0, max_value=3.0),
            st.floats(min_value=0.0, max_value=400.0),
            st.floats(min_value=0.0, max_value=2e5),
        ),
        st.one_of(actions, st.sampled_from(["tick", "tick", "touch"])),
    ),
    min_size=1,
    max_size=25,
)


# ---- the property ----------------------------------------------------------------------------------------------


async def run_both(start: FarmState, script: list[tuple[float, Any]], connected: bool) -> None:
    clock = FakeClock(T0)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        async with opened_store(data_dir) as store:
            pid = start.player_id
            await add_player(store, pid)
            assert await store.commit([FarmCommit(pid, None, 1, start.to_doc(), T0)]) == [True]
            replay = Replay(FarmState.from_doc(start.to_doc(), 1), connected)
            sink = CollectingSink()
            async with running_engine(store, clock, data_dir) as engine:
                if connected:
                    await engine.attach(pid, sink)
                else:
                    await engine.touch(pid)
                replay.come_online(clock.now)
                for dt, step in script:
                    now = clock.advance(dt)
                    if step == "tick":
                        seen = len(sink.ticks())
                        await tick_and_settle(engine)
                        if connected:
                            ticks = sink.ticks()[seen:]
                            assert len(ticks) == 1
                            expected = RULES.balances_at(replay.state, now)
                            assert_same(list(ticks[0]["balances"].values()), expected, "tick.balances")
                        replay.tick(now)
                    elif step == "touch":
                        await engine.touch(pid)
                        replay.come_online(now)
                    else:
                        with contextlib.suppress(GameError):  # refused: nothing changed, as in the replay
                            await engine.submit(pid, step)
                        replay.act(step, now)
                state = engine.resident_state(pid)
                if state is None:  # it went offline and was written out
                    stored = await store.load_farm(pid)
                    assert stored is not None
                    state = FarmState.from_doc(stored.doc, stored.revision)
                engine_doc, replay_doc = state.to_doc(), replay.state.to_doc()
                for doc in (engine_doc, replay_doc):
                    del doc["content_revision"]  # a revision number: the engine counts commits, the replay does not
                if connected:  # the autosave refreshes a connected farm's activity time; it never lapses
                    del engine_doc["last_active"], replay_doc["last_active"]
                assert_same(engine_doc, replay_doc)
                now = clock.now
                assert_same(RULES.balances_at(state, now), RULES.balances_at(replay.state, now), "balances_at")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(start=stored_farms(), script=steps, connected=st.booleans())
def test_engine_equals_the_pure_rules_for_any_event_sequence(
    start: FarmState, script: list[tuple[float, Any]], connected: bool
) -> None:
    asyncio.run(run_both(start, script, connected))


async def test_a_request_after_the_online_window_credits_the_absence_even_before_a_tick(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    async with opened_store(tmp_path) as store:
        await add_player(store, "p")
        async with running_engine(store, clock, tmp_path) as engine:
            await engine.touch("p")
            clock.advance(WINDOW + 3600.0)

            state, _ = await engine.touch("p")

            report = state.offline_report
            assert report is not None
            assert report.went_offline_at == T0 + WINDOW
            assert report.elapsed_s == pytest.approx(3600.0)
            # The window online at the full rate; going offline unlocked first_wool (+2 %);
            # then an hour at the offline efficiency.
            base = RULES.base_rate
            away = base * 1.02 * RULES.config.production.offlineEfficiency * 3600.0
            assert state.balances[0] == pytest.approx(base * WINDOW + away, rel=REL)
            assert "first_wool" in state.achievements


# ---- the vectorised table ----------------------------------------------------------------------------------


def farm(**fields: Any) -> FarmState:
    s = RULES.new_farm("p", T0)
    s.discovered = ["basic"]
    for k, v in fields.items():
        setattr(s, k, v)
    return s


def every_achievement_but(*keys: str) -> dict[str, float]:
    return {k: T0 for k in RULES.achievements if k not in keys}


def test_tick_flags_a_farm_when_its_lifetime_value_reaches_a_threshold() -> None:
    table = FarmTable(RULES)
    s = farm(lifetime_value=0.5, achievements=every_achievement_but("first_wool"))
    row = table.add(s)
    reach = 0.5 / RULES.value_of(RULES.rates(s))  # seconds until lifetime value 1

    assert row not in table.tick(T0 + reach * 0.99, WINDOW).settle_rows
    assert row in table.tick(T0 + reach * 1.001, WINDOW).settle_rows
    outcome = RULES.settle(s, T0 + reach * 1.001)
    assert [e["key"] for e in outcome.events] == ["first_wool"]


def test_tick_flags_a_farm_when_its_play_time_reaches_a_threshold() -> None:
    table = FarmTable(RULES)
    row = table.add(farm(play_time_s=3600.0 - 5.0, achievements=every_achievement_but("dedicated_player")))

    assert row not in table.tick(T0 + 4.0, WINDOW).settle_rows
    assert row in table.tick(T0 + 5.0, WINDOW).settle_rows


def test_tick_ignores_thresholds_already_unlocked() -> None:
    table = FarmTable(RULES)
    row = table.add(farm(play_time_s=1e9, lifetime_value=1e30, achievements=every_achievement_but()))

    assert row not in table.tick(T0 + 100.0, WINDOW).settle_rows


def test_tick_flags_a_farm_about_to_discover_a_tier() -> None:
    table = FarmTable(RULES)
    achieved = every_achievement_but()
    discovering = table.add(farm(buildings={"shears": 1}, achievements=achieved))  # makes silver
    discovered = table.add(farm(buildings={"shears": 1}, achievements=achieved, discovered=["basic", "silver"]))

    assert discovering not in table.tick(T0, WINDOW).settle_rows  # no time has passed: nothing produced yet
    flagged = table.tick(T0 + 0.001, WINDOW).settle_rows
    assert discovering in flagged
    assert discovered not in flagged


def test_an_offline_farm_produces_and_flags_nothing() -> None:
    table = FarmTable(RULES)
    row = table.add(farm(online=False, lifetime_value=0.5, discovered=[]))
    table.connections[row] = 1

    result = table.tick(T0 + 1e6, WINDOW)

    assert row not in result.settle_rows
    assert row not in result.offline_rows
    assert result.balances[list(result.connected_rows).index(row)].tolist() == [0.0] * RULES.n_tiers


def test_tick_detects_a_farm_going_offline_only_without_connections_after_the_window() -> None:
    table = FarmTable(RULES)
    idle = table.add(farm(last_active=T0))
    connected = table.add(farm(last_active=T0))
    recent = table.add(farm(last_active=T0 + 10.0))
    table.connections[connected] = 2

    assert idle not in table.tick(T0 + WINDOW - 0.001, WINDOW).offline_rows
    offline = table.tick(T0 + WINDOW, WINDOW).offline_rows.tolist()

    assert offline == [idle]
    assert recent not in offline and connected not in offline


def test_connected_rows_get_closed_form_balances() -> None:
    table = FarmTable(RULES)
    s = farm(balances=[5.0, 1.0] + [0.0] * (RULES.n_tiers - 2), buildings={"barn": 3, "shears": 2})
    row = table.add(s)
    table.connections[row] = 1

    result = table.tick(T0 + 42.5, WINDOW)

    assert result.connected_rows.tolist() == [row]
    assert_same(result.balances[0].tolist(), RULES.balances_at(s, T0 + 42.5))


def test_a_freed_row_is_reused_and_forgets_its_previous_farm() -> None:
    table = FarmTable(RULES)
    first = table.add(farm(last_active=T0 + 1000.0, lifetime_value=0.5, discovered=[]))
    other = table.add(farm(last_active=T0))
    table.connections[first] = 1
    table.remove(first)

    reused = table.add(farm(last_active=T0, achievements=every_achievement_but()))

    assert reused == first
    assert table.size == 2
    result = table.tick(T0 + WINDOW, WINDOW)
    assert sorted(result.offline_rows.tolist()) == sorted([reused, other])
    assert reused not in result.settle_rows
    assert reused not in result.connected_rows


def test_a_removed_row_is_never_reported() -> None:
    table = FarmTable(RULES)
    row = table.add(farm(last_active=T0, lifetime_value=0.5, discovered=[]))
    table.connections[row] = 1
    table.remove(row)

    result = table.tick(T0 + 1e6, WINDOW)

    assert row not in result.settle_rows
    assert row not in result.offline_rows
    assert row not in result.connected_rows


def test_the_table_grows_beyond_its_initial_capacity_keeping_every_row() -> None:
    table = FarmTable(RULES, capacity=2)
    states = [
        farm(balances=[float(i)] + [0.0] * (RULES.n_tiers - 1), buildings={"barn": i}, anchor_time=T0 - i)
        for i in range(9)
    ]
    rows = [table.add(s) for s in states]
    for row in rows:
        table.connections[row] = 1

    result = table.tick(T0 + 10.0, WINDOW)

    assert table.capacity >= 9
    assert sorted(rows) == list(range(9))
    assert sorted(result.connected_rows.tolist()) == rows
    by_row = dict(zip(result.connected_rows.tolist(), result.balances.tolist(), strict=True))
    for row, s in zip(rows, states, strict=True):
        assert_same(by_row[row], RULES.balances_at(s, T0 + 10.0), f"row {row}")


# ---- the group committer -----------------------------------------------------------------------------------------


def create(player_id: str) -> FarmCommit:
    s = RULES.new_farm(player_id, T0)
    return FarmCommit(player_id, None, 1, s.to_doc(), T0)


@asynccontextmanager
async def committer_on(tmp_path: Path, max_batch: int = 512) -> AsyncIterator[tuple[GroupCommitter, CountingStore]]:
    async with opened_store(tmp_path) as inner:
        store = CountingStore(inner)
        committer = GroupCommitter(store, Metrics(), max_batch)  # type: ignore[arg-type]
        committer.start()
        try:
            yield committer, store
        finally:
            await committer.stop()


async def test_concurrent_commits_share_one_transaction(tmp_path: Path) -> None:
    async with committer_on(tmp_path) as (committer, store):
        results = await asyncio.gather(*(committer.commit(create(f"p{i}")) for i in range(10)))

        assert results == [True] * 10
        assert sum(store.batches) == 10
        assert len(store.batches) < 10
        for i in range(10):
            assert await store.load_farm(f"p{i}") is not None


async def test_commits_queued_during_a_transaction_go_out_together_in_the_next(tmp_path: Path) -> None:
    async with committer_on(tmp_path) as (committer, store):
        hold = store.hold = asyncio.Event()
        first = asyncio.create_task(committer.commit(create("first")))
        await store.entered.wait()
        waiting = [asyncio.create_task(committer.commit(create(f"p{i}"))) for i in range(5)]
        hold.set()

        assert await asyncio.gather(first, *waiting) == [True] * 6
        assert store.batches == [1, 5]


async def test_a_batch_never_exceeds_the_maximum(tmp_path: Path) -> None:
    async with committer_on(tmp_path, max_batch=3) as (committer, store):
        results = await asyncio.gather(*(committer.commit(create(f"p{i}")) for i in range(7)))

        assert results == [True] * 7
        assert sum(store.batches) == 7
        assert max(store.batches) <= 3


async def test_each_commit_gets_its_own_compare_and_set_answer(tmp_path: Path) -> None:
    async with committer_on(tmp_path) as (committer, _):
        assert await committer.commit(create("taken"))

        results = await asyncio.gather(committer.commit(create("taken")), committer.commit(create("fresh")))

        assert results == [False, True]


async def test_a_failed_transaction_fails_every_waiter_and_the_committer_carries_on(tmp_path: Path) -> None:
    async with committer_on(tmp_path) as (committer, store):
        store.fail_next = 1

        results = await asyncio.gather(*(committer.commit(create(f"p{i}")) for i in range(3)), return_exceptions=True)

        assert all(isinstance(r, StorageUnavailable) for r in results)
        assert [await store.load_farm(f"p{i}") for i in range(3)] == [None] * 3
        assert await committer.commit(create("p0"))
        assert await store.load_farm("p0") is not None


# ---- residency ---------------------------------------------------------------------------------------------------


async def test_forgetting_a_farm_during_its_commit_frees_its_row_once(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    async with opened_store(tmp_path) as inner:
        store = CountingStore(inner)
        for pid in ("gone", "b", "c"):
            await add_player(inner, pid)
        async with running_engine(store, clock, tmp_path) as engine:  # type: ignore[arg-type]
            await engine.touch("gone")
            hold = store.hold = asyncio.Event()
            store.entered.clear()
            action = asyncio.create_task(engine.submit("gone", Shear(5)))
            await store.entered.wait()
            # The account is erased while the shear's commit is on its way.
            engine.forget("gone")
            await inner.delete_player("gone")
            hold.set()
            with pytest.raises((FarmConflict, PlayerGone)):
                await action

            await engine.touch("b")
            await engine.touch("c")

            rows = [engine.residents[p].row for p in ("b", "c")]
            assert rows[0] != rows[1]
            assert len(engine.table._free) == len(set(engine.table._free))


# ---- autosave ----------------------------------------------------------------------------------------------------


class SnapshotLog:
    """The real store, with each written `add_snapshots` call's farms recorded; the
    call after `fail_after` more successful ones fails (a full disk)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []
        self.fail_after: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def add_snapshots(self, snapshots: list[Any]) -> None:
        if self.fail_after is not None:
            if self.fail_after == 0:
                self.fail_after = None
                raise StorageUnavailable("database or disk is full")
            self.fail_after -= 1
        self.calls.append([s.player_id for s in snapshots])
        await self.inner.add_snapshots(snapshots)


async def test_the_autosave_writes_in_chunks_and_retries_what_a_failed_chunk_lost(tmp_path: Path) -> None:
    from llamawool.engine.ticker import AUTOSAVE_CHUNK

    clock = FakeClock(T0)
    farms = [f"p{i}" for i in range(2 * AUTOSAVE_CHUNK + 7)]
    async with opened_store(tmp_path) as inner:
        store = SnapshotLog(inner)
        for pid in farms:
            await add_player(inner, pid)
        async with running_engine(store, clock, tmp_path) as engine:  # type: ignore[arg-type]
            for pid in farms:
                await engine.touch(pid)
            clock.advance(600.0)
            for pid in farms:
                assert (await engine.submit(pid, Shear(1))).status == 200
            revisions = {pid: engine.residents[pid].state.revision for pid in farms}
            store.calls.clear()
            store.fail_after = 1  # the second chunk meets a full disk

            await engine.autosave()

            assert len(store.calls) == 1, "the autosave stops at the failed chunk"
            saved_first = store.calls[0]
            assert len(saved_first) == AUTOSAVE_CHUNK
            store.calls.clear()

            await engine.autosave()

            rewritten = [pid for call in store.calls for pid in call]
            assert max(len(call) for call in store.calls) <= AUTOSAVE_CHUNK
            assert sorted(rewritten) == sorted(set(farms) - set(saved_first)), "the lost chunks are written next time"
            for pid in farms:
                snap = await inner.get_snapshot(pid, revisions[pid])
                assert snap is not None and snap.revision == revisions[pid]
            store.calls.clear()

            await engine.autosave()

            assert store.calls == [], "nothing changed: nothing written"
