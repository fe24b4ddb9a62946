"""The storage contract (`llamawool.store.base.Store`), run on every adapter in `BACKENDS`.

Each test states one promise callers rely on: unique accounts, erasure,
refresh-token families, compare-and-set commits with their idempotency record
and snapshot in the same transaction, bounded history, monotonic activity.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from llamawool.store import (
    DuplicateKey,
    FarmCommit,
    IdempotencyRecord,
    PlayerChanges,
    PlayerRecord,
    RefreshTokenRecord,
    Revocation,
    Snapshot,
    Store,
)

from .conftest import SNAPSHOT_DAILY_DAYS, SNAPSHOT_HISTORY

T0 = 1_800_000_000.0
DAY = 86400.0
MIDNIGHT = T0 - T0 % DAY  # a UTC day boundary


def player(name: str, *, email: str | None = None, device_id: str | None = None, **extra: Any) -> PlayerRecord:
    return PlayerRecord(
        id=uuid.uuid4().hex,
        username=name,
        created_at=T0,
        email=email,
        device_id=device_id,
        **extra,
    )


def farm_doc(player_id: str, marker: float = 0.0) -> dict[str, Any]:
    """A document with the shapes a farm has: nested maps, lists, floats, ints, None, text."""
    return {
        "player_id": player_id,
        "balances": [marker, 0.1, 1e300, 5e-324],
        "buildings": {"barn": 3, "shears": 0},
        "achievements": {"first_wool": T0},
        "offline_report": None,
        "online": True,
        "note": "llama 🦙 wool",
    }


def token(player_id: str, family: str, name: str) -> RefreshTokenRecord:
    return RefreshTokenRecord(
        token_hash=f"hash-{name}-{uuid.uuid4().hex}",
        family_id=family,
        player_id=player_id,
        issued_at=T0,
        expires_at=T0 + 30 * 86400,
    )


def snapshot(player_id: str, revision: int, taken_at: float | None = None) -> Snapshot:
    at = MIDNIGHT + revision if taken_at is None else taken_at
    return Snapshot(player_id, revision, at, float(revision) * 10.0, farm_doc(player_id, float(revision)))


def idem(player_id: str, key: str, body: bytes = b'{"ok":true}') -> IdempotencyRecord:
    return IdempotencyRecord(player_id, key, "sha-" + key, 200, body, T0)


async def create_farm(store: Store, player_id: str, revision: int = 1, last_active: float = T0) -> None:
    assert await store.commit([FarmCommit(player_id, None, revision, farm_doc(player_id), last_active)]) == [True]


# ---- players ----------------------------------------------------------------------------------------


async def test_create_player_round_trips_every_field(store: Store) -> None:
    p = player(
        "Alice",
        email="alice@example.com",
        device_id="device-alice-1",
        password_hash="$argon2id$hash",
        role="admin",
        is_guest=False,
        settings={"sound": False, "lang": "fr", "volume": 0.5},
    )
    created = await store.create_player(p)
    assert created.id == p.id

    loaded = await store.get_player(p.id)
    assert loaded == p
    assert await store.get_player("nobody") is None


async def test_create_player_with_a_known_device_returns_the_existing_player(store: Store) -> None:
    first = await store.create_player(player("guest_one", device_id="device-shared-1"))
    again = await store.create_player(player("guest_two", device_id="device-shared-1"))

    assert again.id == first.id
    assert again.username == "guest_one"
    assert await store.count_players() == 1
    assert await store.find_player(username="guest_two") is None


@pytest.mark.parametrize(
    ("field", "first", "second"),
    [
        ("email", {"email": "Bob@Example.com"}, {"email": "bob@example.COM"}),
        ("username", {}, {}),
    ],
)
async def test_unique_fields_are_refused_ignoring_case(
    store: Store, field: str, first: dict[str, Any], second: dict[str, Any]
) -> None:
    await store.create_player(player("Bob", **first))
    clash = player("BOB" if field == "username" else "robert", device_id="device-of-clash", **second)

    with pytest.raises(DuplicateKey) as err:
        await store.create_player(clash)

    assert err.value.field == field
    assert await store.count_players() == 1
    # Nothing of the refused player was written, not even its device.
    assert await store.get_player(clash.id) is None
    assert await store.find_player(device_id="device-of-clash") is None


async def test_find_player_by_email_ignores_case(store: Store) -> None:
    p = await store.create_player(player("carol", email="Carol@Example.com"))

    found = await store.find_player(email="cAROL@example.com")

    assert found is not None
    assert found.id == p.id
    assert found.email == "Carol@Example.com"
    assert await store.find_player(email="someone@example.com") is None


async def test_find_player_by_username_and_by_device(store: Store) -> None:
    p = await store.create_player(player("dave", device_id="device-dave-1"))
    other = await store.create_player(player("erin", device_id="device-erin-1"))

    by_name = await store.find_player(username="dave")
    by_device = await store.find_player(device_id="device-dave-1")

    assert by_name is not None and by_name.id == p.id
    assert by_device is not None and by_device.id == p.id
    assert by_device.device_id == "device-dave-1"
    assert (await store.find_player(device_id="device-erin-1")).id == other.id  # type: ignore[union-attr]
    assert await store.find_player(username="frank") is None
    assert await store.find_player(device_id="device-unknown") is None
    assert await store.find_player() is None


async def test_every_lookup_returns_the_same_record(store: Store) -> None:
    p = player("gina", email="gina@example.com", device_id="device-gina-1", settings={"theme": "dark"})
    await store.create_player(p)

    records = [
        await store.get_player(p.id),
        await store.find_player(email="gina@example.com"),
        await store.find_player(username="gina"),
        await store.find_player(device_id="device-gina-1"),
    ]

    assert records == [p, p, p, p]


async def test_update_player_fields_writes_those_fields_and_no_other(store: Store) -> None:
    p = await store.create_player(player("guest_42", device_id="device-upgrade-1", settings={"sound": False}))
    await store.record_violation(p.id, T0 + 5, None)

    assert await store.update_player_fields(
        p.id, {"username": "henry", "email": "henry@example.com", "password_hash": "$argon2id$new", "is_guest": False}
    )

    got = await store.get_player(p.id)
    assert got == PlayerRecord(
        id=p.id,
        username="henry",
        created_at=p.created_at,
        is_guest=False,
        email="henry@example.com",
        password_hash="$argon2id$new",
        device_id="device-upgrade-1",
        settings={"sound": False},
        last_violation_at=T0 + 5,
        violations_total=1,
    )
    assert (await store.find_player(email="HENRY@example.com")).id == p.id  # type: ignore[union-attr]
    assert await store.find_player(username="guest_42") is None
    assert (await store.find_player(device_id="device-upgrade-1")).id == p.id  # type: ignore[union-attr]
    assert await store.update_player_fields(p.id, {"email": None, "settings": {"sound": True}})
    got = await store.get_player(p.id)
    assert got is not None and (got.email, got.settings, got.username) == (None, {"sound": True}, "henry")
    assert await store.find_player(email="henry@example.com") is None
    assert not await store.update_player_fields("nobody", {"role": "admin"})


async def test_update_player_fields_compares_and_sets(store: Store) -> None:
    p = await store.create_player(player("kate", password_hash="$argon2id$one"))

    upgrade: PlayerChanges = {"is_guest": False, "password_hash": "$argon2id$two"}
    assert await store.update_player_fields(p.id, upgrade, expect={"is_guest": True, "flagged_at": None})
    assert not await store.update_player_fields(p.id, {"is_guest": True}, expect={"is_guest": True})
    assert not await store.update_player_fields(
        p.id, {"password_hash": "$argon2id$three"}, expect={"password_hash": "$argon2id$one"}
    )
    got = await store.get_player(p.id)
    assert got is not None and (got.is_guest, got.password_hash) == (False, "$argon2id$two")


@pytest.mark.parametrize("field", ["email", "username"])
async def test_update_player_fields_refuses_a_taken_email_or_username(store: Store, field: str) -> None:
    await store.create_player(player("ivy", email="ivy@example.com"))
    p = await store.create_player(player("jack", email="jack@example.com"))
    before = await store.get_player(p.id)
    taken: PlayerChanges = {"email": "IVY@example.com"} if field == "email" else {"username": "Ivy"}

    with pytest.raises(DuplicateKey) as err:
        await store.update_player_fields(p.id, {**taken, "is_guest": False})

    assert err.value.field == field
    assert await store.get_player(p.id) == before


async def test_violations_are_counted_in_the_store_and_flag_once(store: Store) -> None:
    p = await store.create_player(player("vic"))

    assert await store.record_violation(p.id, T0, None) is False
    assert await store.record_violation(p.id, T0 + 1, "too many") is True
    assert await store.record_violation(p.id, T0 + 2, "still too many") is False
    assert await store.record_violation("nobody", T0, "x") is None

    got = await store.get_player(p.id)
    assert got is not None
    assert (got.violations_total, got.last_violation_at, got.flagged_at, got.flag_reason) == (
        3,
        T0 + 2,
        T0 + 1,
        "too many",
    )
    assert [f.id for f in await store.list_flagged()] == [p.id]


async def test_concurrent_field_writes_lose_nothing(store: Store) -> None:
    """Violations, a password change, a settings change and an upgrade all at once:
    every counted violation and every written field is there afterwards."""
    p = await store.create_player(player("wren", password_hash="$argon2id$old"))

    await asyncio.gather(
        *(store.record_violation(p.id, T0 + i, None) for i in range(20)),
        store.update_player_fields(p.id, {"password_hash": "$argon2id$new"}),
        store.update_player_fields(p.id, {"settings": {"music": False}}),
        store.update_player_fields(p.id, {"is_guest": False, "email": "wren@example.com"}),
    )

    got = await store.get_player(p.id)
    assert got is not None
    assert got.violations_total == 20
    assert (got.password_hash, got.settings, got.is_guest, got.email) == (
        "$argon2id$new",
        {"music": False},
        False,
        "wren@example.com",
    )


async def test_count_players(store: Store) -> None:
    assert await store.count_players() == 0
    a = await store.create_player(player("kim", device_id="device-kim-1"))
    await store.create_player(player("lou"))
    await store.create_player(player("max"))
    await store.create_player(player("kim_again", device_id="device-kim-1"))
    assert await store.count_players() == 3

    await store.delete_player(a.id)

    assert await store.count_players() == 2


async def test_delete_player_erases_everything_of_theirs_and_nothing_else(store: Store) -> None:
    gone = await store.create_player(player("nina", email="nina@example.com", device_id="device-nina-1"))
    kept = await store.create_player(player("otto", email="otto@example.com", device_id="device-otto-1"))
    for p in (gone, kept):
        await create_farm(store, p.id)
        assert await store.commit(
            [FarmCommit(p.id, 1, 2, farm_doc(p.id, 2.0), T0, idempotency=idem(p.id, "k1"), snapshot=snapshot(p.id, 2))]
        ) == [True]
        await store.add_snapshots([snapshot(p.id, 3)])
        await store.add_refresh_token(token(p.id, f"fam-{p.id}", "a"))
    gone_token = token(gone.id, "fam-gone-2", "b")
    await store.add_refresh_token(gone_token)

    await store.delete_player(gone.id)

    assert await store.get_player(gone.id) is None
    assert await store.find_player(email="nina@example.com") is None
    assert await store.find_player(username="nina") is None
    assert await store.find_player(device_id="device-nina-1") is None
    assert await store.load_farm(gone.id) is None
    assert await store.list_snapshots(gone.id, 100) == []
    assert await store.get_snapshot(gone.id, 2) is None
    assert await store.get_idempotency(gone.id, "k1") is None
    spent = await store.spend_refresh_token(gone_token.token_hash, T0 + 1)
    assert spent.record is None and not spent.reused

    assert await store.get_player(kept.id) is not None
    assert (await store.load_farm(kept.id)).revision == 2  # type: ignore[union-attr]
    assert [s.revision for s in await store.list_snapshots(kept.id, 100)] == [3, 2]
    assert await store.get_idempotency(kept.id, "k1") is not None

    # The erased player's email, name and device are free again: a new account, not the old one.
    again = await store.create_player(player("nina", email="nina@example.com", device_id="device-nina-1"))
    assert again.id != gone.id
    assert await store.load_farm(again.id) is None


# ---- refresh tokens ----------------------------------------------------------------------------------


async def test_a_refresh_token_spends_once(store: Store) -> None:
    p = await store.create_player(player("pia"))
    t = token(p.id, "fam-1", "a")
    await store.add_refresh_token(t)

    first = await store.spend_refresh_token(t.token_hash, T0 + 10)

    assert not first.reused
    assert first.record is not None
    assert (first.record.player_id, first.record.family_id) == (p.id, "fam-1")
    assert first.record.spent_at == T0 + 10
    assert first.record.expires_at == t.expires_at


async def test_reusing_a_spent_token_revokes_its_whole_family(store: Store) -> None:
    p = await store.create_player(player("quinn"))
    spent = token(p.id, "fam-stolen", "a")
    sibling = token(p.id, "fam-stolen", "b")  # the rotation's successor, still unspent
    elsewhere = token(p.id, "fam-other-device", "c")
    for t in (spent, sibling, elsewhere):
        await store.add_refresh_token(t)
    assert not (await store.spend_refresh_token(spent.token_hash, T0 + 1)).reused

    replay = await store.spend_refresh_token(spent.token_hash, T0 + 2)

    assert replay.reused
    assert replay.record is not None and replay.record.family_id == "fam-stolen"
    assert (await store.spend_refresh_token(sibling.token_hash, T0 + 3)).reused
    other = await store.spend_refresh_token(elsewhere.token_hash, T0 + 4)
    assert not other.reused and other.record is not None


async def test_an_unknown_refresh_token_is_neither_fresh_nor_reused(store: Store) -> None:
    result = await store.spend_refresh_token("no-such-hash", T0)
    assert result.record is None
    assert not result.reused


async def test_revoke_family_and_revoke_player_tokens(store: Store) -> None:
    p = await store.create_player(player("rita"))
    q = await store.create_player(player("sam"))
    fam_a = token(p.id, "fam-a", "a")
    fam_b = token(p.id, "fam-b", "b")
    theirs = token(q.id, "fam-q", "q")
    for t in (fam_a, fam_b, theirs):
        await store.add_refresh_token(t)

    await store.revoke_family("fam-a")
    assert (await store.spend_refresh_token(fam_a.token_hash, T0)).reused

    fam_b2 = token(p.id, "fam-b", "b2")
    await store.add_refresh_token(fam_b2)
    assert await store.revoke_player_tokens(p.id, T0 - 1) == ["fam-a", "fam-b"]
    assert (await store.spend_refresh_token(fam_b.token_hash, T0)).reused
    assert (await store.spend_refresh_token(fam_b2.token_hash, T0)).reused
    assert not (await store.spend_refresh_token(theirs.token_hash, T0)).reused


async def test_list_player_tokens_is_that_players_oldest_first(store: Store) -> None:
    p = await store.create_player(player("vic"))
    q = await store.create_player(player("wes"))
    later = RefreshTokenRecord("h-later", "fam-1", p.id, issued_at=T0 + 60, expires_at=T0 + 86400)
    first = RefreshTokenRecord("h-first", "fam-1", p.id, issued_at=T0, expires_at=T0 + 86400)
    other = RefreshTokenRecord("h-other", "fam-2", p.id, issued_at=T0 + 30, expires_at=T0 + 86400)
    for t in (later, first, other, token(q.id, "fam-q", "q")):
        await store.add_refresh_token(t)
    await store.spend_refresh_token("h-first", T0 + 60)
    await store.revoke_family("fam-2")

    listed = await store.list_player_tokens(p.id)
    assert [t.token_hash for t in listed] == ["h-first", "h-other", "h-later"]
    assert listed[0].spent_at == T0 + 60 and not listed[0].revoked
    assert listed[1].revoked and listed[1].family_id == "fam-2" and listed[1].player_id == p.id
    assert listed[2] == later
    assert await store.list_player_tokens("nobody") == []


async def test_revoking_a_players_tokens_names_only_the_families_issued_lately(store: Store) -> None:
    p = await store.create_player(player("uma"))
    old = RefreshTokenRecord("h-old", "fam-old", p.id, issued_at=T0 - 3600, expires_at=T0 + 86400)
    new = RefreshTokenRecord("h-new", "fam-new", p.id, issued_at=T0 - 60, expires_at=T0 + 86400)
    for t in (old, new):
        await store.add_refresh_token(t)

    assert await store.revoke_player_tokens(p.id, T0 - 900) == ["fam-new"]
    assert (await store.spend_refresh_token("h-old", T0)).reused, "every token is revoked all the same"
    assert await store.revoke_player_tokens("nobody", 0.0) == []


async def test_revocations_are_listed_since_a_time_and_pruned_once_expired(store: Store) -> None:
    a = Revocation("sess-a", until=T0 + 900, at=T0)
    b = Revocation("sess-b", until=T0 + 960, at=T0 + 60)
    await store.add_revocations([a, b])
    await store.add_revocations([])

    assert await store.revocations_since(T0) == [a, b]
    assert await store.revocations_since(T0 + 1) == [b]
    assert await store.revocations_since(T0 + 61) == []

    assert await store.prune_revocations(T0 + 901) == 1
    assert await store.revocations_since(0.0) == [b]
    again = Revocation("sess-b", until=T0 + 2000, at=T0 + 120)  # revoked again: the later entry stands
    await store.add_revocations([again])
    assert await store.revocations_since(0.0) == [again]


async def test_concurrent_spends_of_one_token_succeed_once(store: Store) -> None:
    p = await store.create_player(player("tess"))
    t = token(p.id, "fam-race", "a")
    await store.add_refresh_token(t)

    results = await asyncio.gather(*(store.spend_refresh_token(t.token_hash, T0 + i) for i in range(8)))

    assert sum(not r.reused for r in results) == 1


async def test_a_rotation_spends_the_token_and_stores_its_successor(store: Store) -> None:
    p = await store.create_player(player("rose"))
    t = token(p.id, "fam-rot", "a")
    await store.add_refresh_token(t)

    first = await store.rotate_refresh_token(t.token_hash, "succ-1", T0 + 10, T0 + 500)

    assert first.record is not None and not first.reused and not first.ended
    assert (first.record.family_id, first.record.player_id, first.record.spent_at) == ("fam-rot", p.id, T0 + 10)
    nxt = await store.rotate_refresh_token("succ-1", "succ-2", T0 + 20, T0 + 600)
    assert nxt.record is not None and not nxt.reused
    assert (nxt.record.family_id, nxt.record.issued_at, nxt.record.expires_at) == ("fam-rot", T0 + 10, T0 + 500)
    replay = await store.rotate_refresh_token(t.token_hash, "succ-x", T0 + 30, T0 + 700)
    assert replay.reused
    assert (await store.spend_refresh_token("succ-2", T0 + 31)).reused, "a replay revokes the whole family"
    assert (await store.spend_refresh_token("succ-x", T0 + 32)).record is None, "no successor for a replay"


async def test_an_expired_or_unknown_token_rotates_to_nothing(store: Store) -> None:
    p = await store.create_player(player("sid"))
    old = RefreshTokenRecord("h-expired", "fam-exp", p.id, issued_at=T0 - 100, expires_at=T0)
    await store.add_refresh_token(old)

    spent = await store.rotate_refresh_token("h-expired", "succ-exp", T0 + 1, T0 + 100)

    assert spent.record is not None and spent.record.expires_at == T0
    assert (await store.spend_refresh_token("succ-exp", T0 + 2)).record is None
    assert (await store.rotate_refresh_token("no-such", "succ-none", T0, T0 + 100)).record is None
    assert (await store.spend_refresh_token("succ-none", T0 + 2)).record is None


@pytest.mark.parametrize("revocation", ["family", "player"])
async def test_no_successor_outlives_a_revocation_that_raced_its_rotation(store: Store, revocation: str) -> None:
    """Rotations and a revocation of their family started together, many times over:
    however they interleave, once the revocation has returned no successor is live."""
    p = await store.create_player(player("tara"))
    for round_ in range(10):
        family = f"fam-{revocation}-{round_}"
        t = token(p.id, family, "a")
        await store.add_refresh_token(t)
        revoke = store.revoke_family(family) if revocation == "family" else store.revoke_player_tokens(p.id, 0.0)
        rotated, _ = await asyncio.gather(
            store.rotate_refresh_token(t.token_hash, f"succ-{family}", T0, T0 + 99), revoke
        )

        assert rotated.record is not None
        after = await store.spend_refresh_token(f"succ-{family}", T0 + 1)
        assert after.record is None or after.reused, (round_, rotated)


# ---- farms: compare-and-set commits ----------------------------------------------------------------------


async def test_create_a_farm_and_load_it(store: Store) -> None:
    doc = farm_doc("p1", 7.5)

    assert await store.commit([FarmCommit("p1", None, 1, doc, T0 + 5)]) == [True]

    stored = await store.load_farm("p1")
    assert stored is not None
    assert (stored.player_id, stored.revision, stored.doc, stored.last_active) == ("p1", 1, doc, T0 + 5)
    assert await store.load_farm("p2") is None


async def test_creating_an_existing_farm_fails_and_keeps_it(store: Store) -> None:
    await create_farm(store, "p1")

    assert await store.commit([FarmCommit("p1", None, 1, farm_doc("p1", 99.0), T0 + 50)]) == [False]

    stored = await store.load_farm("p1")
    assert stored is not None
    assert (stored.revision, stored.doc, stored.last_active) == (1, farm_doc("p1"), T0)


async def test_commit_applies_when_the_expected_revision_matches(store: Store) -> None:
    await create_farm(store, "p1")

    assert await store.commit([FarmCommit("p1", 1, 2, farm_doc("p1", 2.0), T0 + 2)]) == [True]
    assert await store.commit([FarmCommit("p1", 2, 3, farm_doc("p1", 3.0), T0 + 3)]) == [True]

    stored = await store.load_farm("p1")
    assert stored is not None
    assert (stored.revision, stored.doc, stored.last_active) == (3, farm_doc("p1", 3.0), T0 + 3)


async def test_a_stale_expected_revision_changes_nothing(store: Store) -> None:
    await create_farm(store, "p1")
    await store.commit([FarmCommit("p1", 1, 2, farm_doc("p1", 2.0), T0 + 2)])

    stale = FarmCommit(
        "p1", 1, 2, farm_doc("p1", -1.0), T0 + 9, idempotency=idem("p1", "stale"), snapshot=snapshot("p1", 2)
    )
    assert await store.commit([stale]) == [False]

    stored = await store.load_farm("p1")
    assert stored is not None
    assert (stored.revision, stored.doc, stored.last_active) == (2, farm_doc("p1", 2.0), T0 + 2)
    assert await store.get_idempotency("p1", "stale") is None
    assert await store.get_snapshot("p1", 2) is None


async def test_updating_a_missing_farm_fails(store: Store) -> None:
    assert await store.commit([FarmCommit("ghost", 3, 4, farm_doc("ghost"), T0)]) == [False]
    assert await store.load_farm("ghost") is None


async def test_one_conflict_in_a_batch_does_not_hold_back_the_others(store: Store) -> None:
    await create_farm(store, "a")
    await create_farm(store, "b", revision=5)
    batch = [
        FarmCommit("a", 1, 2, farm_doc("a", 2.0), T0 + 1, idempotency=idem("a", "ka")),
        FarmCommit("b", 4, 5, farm_doc("b", -1.0), T0 + 1, idempotency=idem("b", "kb")),  # stale
        FarmCommit("c", None, 1, farm_doc("c", 1.0), T0 + 1, snapshot=snapshot("c", 1)),
        FarmCommit("a-twin", None, 1, farm_doc("a-twin"), T0 + 1),
    ]

    assert await store.commit(batch) == [True, False, True, True]

    a, b, c = [await store.load_farm(k) for k in "abc"]
    assert a is not None and (a.revision, a.doc) == (2, farm_doc("a", 2.0))
    assert b is not None and (b.revision, b.doc) == (5, farm_doc("b"))
    assert c is not None and (c.revision, c.doc) == (1, farm_doc("c", 1.0))
    assert await store.get_idempotency("a", "ka") is not None
    assert await store.get_idempotency("b", "kb") is None
    assert [s.revision for s in await store.list_snapshots("c", 10)] == [1]
    assert await store.load_farm("a-twin") is not None


async def test_concurrent_commits_from_one_revision_apply_once(store: Store) -> None:
    await create_farm(store, "p1")

    results = await asyncio.gather(
        *(store.commit([FarmCommit("p1", 1, 2, farm_doc("p1", float(i)), T0 + i)]) for i in range(8))
    )

    winners = [i for i, r in enumerate(results) if r == [True]]
    assert len(winners) == 1
    stored = await store.load_farm("p1")
    assert stored is not None
    assert (stored.revision, stored.doc) == (2, farm_doc("p1", float(winners[0])))


async def test_an_empty_batch_commits_nothing(store: Store) -> None:
    assert await store.commit([]) == []


# ---- idempotency records -------------------------------------------------------------------------------


async def test_an_idempotency_record_commits_with_its_farm(store: Store) -> None:
    await create_farm(store, "p1")
    body = b'{"result":{"sheared":20},"farm":{"revision":2}}'
    record = IdempotencyRecord("p1", "key-1", "fingerprint-1", 200, body, T0 + 1)

    assert await store.commit([FarmCommit("p1", 1, 2, farm_doc("p1", 2.0), T0 + 1, idempotency=record)]) == [True]

    assert await store.get_idempotency("p1", "key-1") == record
    assert await store.get_idempotency("p1", "key-2") is None
    assert await store.get_idempotency("p2", "key-1") is None


async def test_a_commit_replaying_a_recorded_key_is_not_applied(store: Store) -> None:
    """The idempotency check rides in the commit: no read before it."""
    await create_farm(store, "p1")
    await create_farm(store, "p2")
    first = IdempotencyRecord("p1", "key-1", "fingerprint-1", 200, b'{"first":true}', T0 + 1)
    assert await store.commit([FarmCommit("p1", 1, 2, farm_doc("p1", 2.0), T0 + 1, idempotency=first)]) == [True]

    again = IdempotencyRecord("p1", "key-1", "fingerprint-2", 200, b'{"second":true}', T0 + 2)
    other = IdempotencyRecord("p2", "key-1", "fingerprint-3", 200, b"{}", T0 + 2)
    twice = IdempotencyRecord("p2", "key-2", "fingerprint-4", 200, b"{}", T0 + 2)
    batch = [
        FarmCommit("p1", 2, 3, farm_doc("p1", 3.0), T0 + 2, idempotency=again),  # the key is taken
        FarmCommit("p2", 1, 2, farm_doc("p2", 2.0), T0 + 2, idempotency=other),  # another player's key
        FarmCommit("p2", 2, 3, farm_doc("p2", 3.0), T0 + 2, idempotency=twice),
        FarmCommit("p2", 3, 4, farm_doc("p2", 4.0), T0 + 2, idempotency=twice),  # taken earlier in the batch
        FarmCommit("p1", 2, 3, farm_doc("p1", 3.5), T0 + 3),  # without a key: applies
    ]

    assert await store.commit(batch) == [False, True, True, False, True]

    p1, p2 = await store.load_farm("p1"), await store.load_farm("p2")
    assert p1 is not None and (p1.revision, p1.doc) == (3, farm_doc("p1", 3.5))
    assert p2 is not None and p2.revision == 3
    assert await store.get_idempotency("p1", "key-1") == first
    assert await store.get_idempotency("p2", "key-1") == other


async def test_old_idempotency_records_are_pruned_and_recent_ones_kept(store: Store) -> None:
    await create_farm(store, "p1")
    old = IdempotencyRecord("p1", "old", "fp-old", 200, b"{}", T0 + 1)
    new = IdempotencyRecord("p1", "new", "fp-new", 200, b"{}", T0 + 100)
    await store.commit([FarmCommit("p1", 1, 2, farm_doc("p1", 2.0), T0 + 1, idempotency=old)])
    await store.commit([FarmCommit("p1", 2, 3, farm_doc("p1", 3.0), T0 + 100, idempotency=new)])

    assert await store.prune_idempotency(T0 + 50) == 1

    assert await store.get_idempotency("p1", "new") == new
    assert await store.get_idempotency("p1", "old") is None


# ---- snapshots --------------------------------------------------------------------------------------------


async def test_snapshots_list_newest_first(store: Store) -> None:
    await store.add_snapshots([snapshot("p1", r) for r in (2, 4, 1, 3)])

    listed = await store.list_snapshots("p1", 10)

    assert [s.revision for s in listed] == [4, 3, 2, 1]
    assert listed[0] == snapshot("p1", 4)
    assert [s.revision for s in await store.list_snapshots("p1", 2)] == [4, 3]


async def test_snapshot_history_keeps_the_newest_and_the_first_of_the_day(store: Store) -> None:
    extra = 3
    for r in range(1, SNAPSHOT_HISTORY + extra + 1):
        await store.add_snapshots([snapshot("p1", r)])  # all on one UTC day
    await store.add_snapshots([snapshot("p2", 1)])

    listed = await store.list_snapshots("p1", 100)

    newest = SNAPSHOT_HISTORY + extra
    assert [s.revision for s in listed] == [*range(newest, extra, -1), 1]
    assert await store.get_snapshot("p1", extra) is None
    assert await store.get_snapshot("p1", 1) == snapshot("p1", 1)
    assert [s.revision for s in await store.list_snapshots("p2", 100)] == [1]


async def test_daily_snapshots_are_kept_only_for_the_recent_days(store: Store) -> None:
    every = 6 * 3600.0
    days = SNAPSHOT_DAILY_DAYS + 3
    per_day = int(DAY / every)
    total = days * per_day
    for r in range(1, total + 1):
        await store.add_snapshots([snapshot("p1", r, MIDNIGHT + (r - 1) * every)])

    kept = {s.revision for s in await store.list_snapshots("p1", 1000)}

    newest = set(range(total - SNAPSHOT_HISTORY + 1, total + 1))
    firsts_of_recent_full_days = {total - (d + 1) * per_day + 1 for d in range(SNAPSHOT_DAILY_DAYS)}
    assert newest | firsts_of_recent_full_days <= kept
    old = total - (SNAPSHOT_DAILY_DAYS + 1) * per_day
    assert not {r for r in kept if r <= old}, "snapshots older than the daily window survive"
    assert len(kept) <= SNAPSHOT_HISTORY + SNAPSHOT_DAILY_DAYS + 1


async def test_snapshot_history_is_trimmed_on_commit_too(store: Store) -> None:
    await create_farm(store, "p1")
    await store.add_snapshots([snapshot("p1", r) for r in range(1, SNAPSHOT_HISTORY + 1)])
    later = MIDNIGHT + (SNAPSHOT_DAILY_DAYS + 5) * DAY
    rev = SNAPSHOT_HISTORY + 1

    assert await store.commit(
        [FarmCommit("p1", 1, rev, farm_doc("p1"), later, snapshot=snapshot("p1", rev, later))]
    ) == [True]

    revisions = [s.revision for s in await store.list_snapshots("p1", 100)]
    assert revisions == list(range(rev, 1, -1))


async def test_get_snapshot_by_revision(store: Store) -> None:
    await store.add_snapshots([snapshot("p1", 1), snapshot("p1", 2)])

    assert await store.get_snapshot("p1", 2) == snapshot("p1", 2)
    assert await store.get_snapshot("p1", 7) is None
    assert await store.get_snapshot("p2", 1) is None


# ---- activity ------------------------------------------------------------------------------------------------


async def test_touch_farms_only_moves_last_active_forward(store: Store) -> None:
    await create_farm(store, "a", last_active=T0 + 100)
    await create_farm(store, "b", last_active=T0 + 100)

    await store.touch_farms([("a", T0 + 150), ("b", T0 + 50), ("nobody", T0 + 999)])

    a, b = await store.load_farm("a"), await store.load_farm("b")
    assert a is not None and b is not None
    assert a.last_active == T0 + 150
    assert b.last_active == T0 + 100
    assert (a.revision, a.doc) == (1, farm_doc("a"))
    assert await store.load_farm("nobody") is None
    await store.touch_farms([])


async def test_ping_answers_when_the_store_is_up(store: Store) -> None:
    await store.ping()
