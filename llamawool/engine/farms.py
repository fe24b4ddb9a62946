"""The one path of change, and what the farm's owner does with it.

Every change to a farm (a player's action, a return from offline, an upload, a
restore) runs here under the farm's lock: game rules compute the new state, the
group committer makes it durable, and only then does the resident copy (and its
numpy row) move on and the caller hear back. These are the owner-side
operations: the engine runs them when this replica owns the farm, and for a peer
that asked (`routing.py`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import structlog

from ..game import Action, Event, FarmState, Outcome, Rules, apply_action
from ..game.saves import ClaimedFarm, apply_save, check_save
from ..observability import Metrics
from ..store import FarmCommit, IdempotencyRecord, Snapshot, Store
from .commit import GroupCommitter
from .errors import FarmConflict, IdempotencyMismatch, SaveRejected, SaveStale
from .residents import Resident, ResidentSet, Sink, snapshot_of
from .saves import verify as verify_save
from .views import farm_view

log = structlog.get_logger("llamawool.engine")

# How many of a farm's latest Idempotency-Keys are answered from memory: a client retries
# its latest requests. Older keys (and farms loaded since) are found by the commit itself.
REMEMBERED_KEYS = 4
ROUTED = "routed:"  # the prefix of the keys a replica gives the actions it forwards


@dataclass(slots=True)
class Reply:
    """An action's answer, as the client sees it (also what an idempotent replay returns)."""

    status: int
    body: bytes
    revision: int
    replayed: bool = False


@dataclass(slots=True)
class IdempotentRequest:
    key: str
    fingerprint: str

    @classmethod
    def of(cls, key: str, action: Action) -> IdempotentRequest:
        digest = hashlib.sha256(repr(action).encode()).hexdigest()
        return cls(key, digest)

    @classmethod
    def routed(cls, action: Action) -> IdempotentRequest:
        """A key of its own for an action forwarded to the farm's owner (never retried by a client)."""
        return cls.of(f"{ROUTED}{uuid.uuid4().hex}", action)


class KeyRecorded(Exception):
    """The commit was refused because its Idempotency-Key is recorded already: a replay."""

    def __init__(self, record: IdempotencyRecord, fingerprint: str) -> None:
        super().__init__(record.key)
        self.record = record  # the key's first commit
        self.fingerprint = fingerprint  # of the request that was refused


class Farms:
    """Owner-side operations on resident farms; each returns once its change is durable."""

    def __init__(
        self,
        rules: Rules,
        store: Store,
        committer: GroupCommitter,
        residents: ResidentSet,
        metrics: Metrics,
        clock: Callable[[], float],
        save_key: bytes,
        drop_copy: Callable[[Resident], None],
    ) -> None:
        self.rules = rules
        self.store = store
        self.committer = committer
        self.residents = residents
        self.table = residents.table
        self.metrics = metrics
        self.clock = clock
        self.save_key = save_key
        self.drop_copy = drop_copy  # a commit was refused as stale: drop our copy
        self.online_window_s = rules.online_window_s

    async def commit(
        self,
        res: Resident,
        outcome: Outcome,
        *,
        idempotency: IdempotencyRecord | None = None,
        snapshot: bool = False,
    ) -> FarmState:
        """Make `outcome.state` durable as the next revision, then adopt it.

        Raises FarmConflict (a newer revision was committed elsewhere: our copy is
        dropped) or, with `idempotency`, KeyRecorded when the key's first commit
        stands already (the only case that reads the store: the check rides in
        the commit)."""
        new = outcome.state
        new.revision = res.state.revision + 1
        commit = FarmCommit(
            res.player_id,
            res.state.revision,
            new.revision,
            new.to_doc(),
            new.last_active,
            idempotency=idempotency,
            snapshot=snapshot_of(self.rules, new) if snapshot else None,
        )
        ok = await self.committer.commit(commit)
        if not ok:
            if idempotency is not None:
                prior = await self.store.get_idempotency(res.player_id, idempotency.key)
                if prior is not None:
                    raise KeyRecorded(prior, idempotency.request_hash)
            # Someone else committed a newer revision: our copy is stale.
            self.drop_copy(res)
            raise FarmConflict(res.player_id)
        if snapshot:
            res.snapshot_revision = new.revision
        res.state = new
        if not res.evicted:
            self.table.sync(res.row, new)
        self.publish(res, outcome.events)
        return new

    def publish(self, res: Resident, events: list[Event]) -> None:
        if not res.sinks:
            return
        for event in events:
            msg = orjson.dumps({"type": "event", "data": event}).decode()
            for sink in res.sinks:
                sink.send(msg)

    async def come_online(self, res: Resident, now: float) -> None:
        state = res.state
        events: list[Event] = []
        if state.online and not res.sinks and state.last_active + self.online_window_s <= now:
            # Its online window ran out before a tick noticed: it went offline then.
            lapsed = self.rules.go_offline(state, state.last_active + self.online_window_s)
            state, events = lapsed.state, lapsed.events
        if state.online:
            res.state.last_active = max(res.state.last_active, now)
            self.table.last_active[res.row] = res.state.last_active
        else:
            outcome = self.rules.come_online(state, now)
            outcome.state.last_active = now
            outcome.events[:0] = events
            await self.commit(res, outcome)
            report = outcome.result["report"]
            self.metrics.offline_credits.inc()
            self.metrics.offline_credited_seconds.inc(report["credited_s"])
            log.info(
                "farm.offline_credited",
                player_id=res.player_id,
                elapsed_s=report["elapsed_s"],
                credited_s=report["credited_s"],
                value=report["value_gained"],
            )

    async def touch(self, player_id: str) -> tuple[FarmState, float]:
        """An authenticated request: the farm is online now. Returns its state."""
        res = await self.residents.locked(player_id)
        try:
            now = self.clock()
            await self.come_online(res, now)
            return res.state, now
        finally:
            res.lock.release()

    async def submit(
        self,
        player_id: str,
        action: Action,
        idempotency: IdempotentRequest | None = None,
    ) -> Reply:
        """Apply an action. With an Idempotency-Key, a key this replica committed for the
        farm lately is answered from memory; any other is checked by the commit itself
        (no read first). Only a keyed action the rules refuse reads the key first: a
        retry of an action already applied may be refused now (its price was paid)."""
        name = type(action).__name__.lower()
        res = await self.residents.locked(player_id)
        try:
            if idempotency is not None and (known := res.replies.get(idempotency.key)) is not None:
                return self._replay(known, idempotency.fingerprint, res)
            now = self.clock()
            await self.come_online(res, now)
            try:
                outcome = apply_action(self.rules, res.state, action, now)
            except Exception:
                if idempotency is not None:
                    prior = await self.store.get_idempotency(player_id, idempotency.key)
                    if prior is not None:
                        return self._replay(prior, idempotency.fingerprint, res)
                self.metrics.actions.labels(action=name, outcome="refused").inc()
                raise
            outcome.state.last_active = now
            revision = res.state.revision + 1
            outcome.state.revision = revision
            outcome.state.content_revision = revision
            body = orjson.dumps(
                {"result": outcome.result, "events": outcome.events, "farm": farm_view(self.rules, outcome.state, now)}
            )
            record = None
            if idempotency is not None:
                record = IdempotencyRecord(player_id, idempotency.key, idempotency.fingerprint, 200, body, now)
            try:
                await self.commit(res, outcome, idempotency=record)
            except KeyRecorded as replay:
                return self._replay(replay.record, replay.fingerprint, res)
            if record is not None and not record.key.startswith(ROUTED):
                self._remember(res, record)
            self.metrics.actions.labels(action=name, outcome="applied").inc()
            return Reply(200, body, revision)
        finally:
            res.lock.release()

    @staticmethod
    def _replay(prior: IdempotencyRecord, fingerprint: str, res: Resident) -> Reply:
        """The first answer of a key, again; IdempotencyMismatch when the key came with another request."""
        if prior.request_hash != fingerprint:
            raise IdempotencyMismatch(prior.key)
        # The ETag must describe the replayed body's farm, not today's.
        first = orjson.loads(prior.body).get("farm", {}).get("revision", res.state.revision)
        return Reply(prior.status, prior.body, first, replayed=True)

    @staticmethod
    def _remember(res: Resident, record: IdempotencyRecord) -> None:
        res.replies[record.key] = record
        while len(res.replies) > REMEMBERED_KEYS:
            del res.replies[next(iter(res.replies))]

    async def current_snapshot(self, player_id: str) -> Snapshot:
        res = await self.residents.locked(player_id)
        try:
            await self.come_online(res, self.clock())
            snap = await self.store.get_snapshot(player_id, res.state.revision)
            if snap is None:
                snap = snapshot_of(self.rules, res.state)
                await self.store.add_snapshots([snap])
                res.snapshot_revision = max(res.snapshot_revision, res.state.revision)
            return snap
        finally:
            res.lock.release()

    async def upload_save(self, player_id: str, base_revision: int, signature: str, claimed: ClaimedFarm) -> Reply:
        res = await self.residents.locked(player_id)
        try:
            now = self.clock()
            state = res.state
            if state.content_revision > base_revision or base_revision > state.revision:
                raise SaveStale(state.revision)
            base_snap = await self.store.get_snapshot(player_id, base_revision)
            if base_snap is None:
                raise SaveStale(state.revision)
            if not verify_save(self.rules, self.save_key, base_snap, signature):
                raise SaveRejected(["signature: the base save does not match the server's save of that revision"])
            base = FarmState.from_doc(base_snap.doc, base_revision)
            check = check_save(self.rules, base, claimed, now)
            if not check.plausible:
                raise SaveRejected(check.reasons)
            outcome = apply_save(self.rules, base, state, claimed, check, now)
            revision = state.revision + 1
            outcome.state.revision = revision
            outcome.state.content_revision = revision
            outcome.state.report_unseen = False
            body = orjson.dumps(
                {"result": outcome.result, "events": outcome.events, "farm": farm_view(self.rules, outcome.state, now)}
            )
            await self.commit(res, outcome, snapshot=True)
            return Reply(200, body, revision)
        finally:
            res.lock.release()

    async def restore(self, player_id: str, revision: int) -> FarmState:
        res = await self.residents.locked(player_id)
        try:
            snap = await self.store.get_snapshot(player_id, revision)
            if snap is None:
                raise KeyError(revision)
            now = self.clock()
            old = FarmState.from_doc(snap.doc, revision)
            s = res.state.clone()
            # Restore what the player owns; keep lifetime totals, achievements and stats monotone.
            s.balances = list(old.balances)
            s.buildings = dict(old.buildings)
            s.upgrades = list(old.upgrades)
            s.soul_shears = old.soul_shears
            s.prestige_count = old.prestige_count
            s.run_produced = list(old.run_produced)
            s.anchor_time = now
            s.online = True
            s.last_active = now
            s.content_revision = s.revision + 1
            await self.commit(res, Outcome(s), snapshot=True)
            return res.state
        finally:
            res.lock.release()

    async def mark_report_seen(self, player_id: str) -> None:
        res = await self.residents.locked(player_id)
        try:
            if res.state.report_unseen:
                s = res.state.clone()
                s.report_unseen = False
                await self.commit(res, Outcome(s))
        finally:
            res.lock.release()

    async def attach(self, player_id: str, sink: Sink) -> tuple[FarmState, float]:
        res = await self.residents.locked(player_id)
        try:
            now = self.clock()
            await self.come_online(res, now)
            res.sinks.add(sink)
            self.table.connections[res.row] = len(res.sinks)
            return res.state, now
        finally:
            res.lock.release()

    def detach(self, player_id: str, sink: Sink) -> None:
        res = self.residents.by_id.get(player_id)
        if res is None or sink not in res.sinks:
            return
        res.sinks.discard(sink)
        self.table.connections[res.row] = len(res.sinks)
        # The online window counts from the moment the last socket closed.
        now = self.clock()
        res.state.last_active = max(res.state.last_active, now)
        self.table.last_active[res.row] = res.state.last_active
