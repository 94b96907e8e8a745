"""The store's rules, through the Store interface, against real database files."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from keyscope.core import keys
from keyscope.core.ratelimits import RateLimit
from keyscope.core.models import (
    DEFAULT_APPLICATION,
    ApiKey,
    Application,
    Association,
    AssociationFilter,
    Entity,
    KeyUpdate,
    PlatformEntry,
    PlatformLink,
)
from keyscope.store import (
    Conflict,
    MissingReference,
    NotFound,
    Protected,
    Store,
    StoreError,
    StoreUnavailable,
    store_from_url,
)
from keyscope.store.migrations import MIGRATIONS
from keyscope.store.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)


def new_key(*links: tuple[str | None, str | None], secret: str | None = None, name: str = "key") -> tuple[ApiKey, str]:
    secret = secret or keys.new_secret()
    key = ApiKey(
        id=keys.new_key_id(),
        name=name,
        secret_hash=keys.hash_secret(secret),
        prefix=keys.display_prefix(secret),
        allowed_ips=("10.0.0.0/8", "192.0.2.7"),
        valid_from=NOW,
        valid_to=NOW + timedelta(days=365),
        enabled=True,
        platform=tuple(PlatformEntry("", app, entity) for app, entity in links),
    )
    return key, secret


def links(key: ApiKey) -> list[tuple[str | None, str | None]]:
    return [(entry.application_id, entry.entity_id) for entry in key.platform]


async def seed(store: Store) -> None:
    for app in ("app-a", "app-b"):
        await store.create_application(Application(app, app.upper()))
    for entity in ("ent-x", "ent-y"):
        await store.create_entity(Entity(entity, entity.upper()))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """For the tests about the SQLite file itself (the rule tests take `store` and run on every kind)."""
    return f"sqlite:///{tmp_path}/keyscope.db"


def sqlite_path(url: str) -> str:
    return url[len("sqlite:///") :]


# applications and entities ----------------------------------------------------------------------------


async def test_fresh_store_has_only_the_default_application(store: Store) -> None:
    page = await store.list_applications(0, 10)
    assert page.items == [Application(DEFAULT_APPLICATION, "Default")]
    assert page.total == 1
    assert (await store.list_entities(0, 10)).total == 0


async def test_default_application_cannot_be_deleted(store: Store) -> None:
    with pytest.raises(Protected):
        await store.delete_application(DEFAULT_APPLICATION)
    assert (await store.get_application(DEFAULT_APPLICATION)).application_id == DEFAULT_APPLICATION


async def test_create_get_rename_delete_application_and_entity(store: Store) -> None:
    await store.create_application(Application("mkt.prod", "Marketing"))
    await store.create_entity(Entity("Shop_1~x", None))
    assert await store.get_application("mkt.prod") == Application("mkt.prod", "Marketing")
    assert await store.get_entity("Shop_1~x") == Entity("Shop_1~x", None)
    await store.rename_application("mkt.prod", "Marketing (prod)")
    await store.rename_entity("Shop_1~x", "Shop one")
    assert (await store.get_application("mkt.prod")).application_name == "Marketing (prod)"
    assert (await store.get_entity("Shop_1~x")).entity_name == "Shop one"
    await store.rename_application("mkt.prod", None)
    assert (await store.get_application("mkt.prod")).application_name is None
    await store.delete_application("mkt.prod")
    await store.delete_entity("Shop_1~x")
    with pytest.raises(NotFound):
        await store.get_application("mkt.prod")
    with pytest.raises(NotFound):
        await store.get_entity("Shop_1~x")


async def test_ids_are_case_sensitive(store: Store) -> None:
    await store.create_application(Application("App", None))
    await store.create_application(Application("app", None))
    assert [a.application_id for a in (await store.list_applications(0, 10)).items] == ["App", "app", "default"]
    with pytest.raises(NotFound):
        await store.get_application("APP")


async def test_duplicate_ids_conflict(store: Store) -> None:
    await store.create_application(Application("a", "first"))
    await store.create_entity(Entity("e", "first"))
    with pytest.raises(Conflict):
        await store.create_application(Application("a", "second"))
    with pytest.raises(Conflict):
        await store.create_application(Application(DEFAULT_APPLICATION, "again"))
    with pytest.raises(Conflict):
        await store.create_entity(Entity("e", "second"))
    assert (await store.get_application("a")).application_name == "first"
    assert (await store.get_entity("e")).entity_name == "first"


async def test_unknown_ids_are_not_found(store: Store) -> None:
    for call in (
        store.get_application("nope"),
        store.rename_application("nope", "x"),
        store.delete_application("nope"),
        store.get_entity("nope"),
        store.rename_entity("nope", "x"),
        store.delete_entity("nope"),
        store.get_key("nope"),
        store.update_key("nope", KeyUpdate(enabled=False)),
        store.delete_key("nope"),
    ):
        with pytest.raises(NotFound):
            await call


async def test_lists_are_ordered_by_id_and_paged_with_totals(store: Store) -> None:
    for ident in ("c", "a", "e", "b", "d"):
        await store.create_entity(Entity(ident, f"name {ident}"))
    first = await store.list_entities(0, 2)
    second = await store.list_entities(1, 2)
    last = await store.list_entities(2, 2)
    beyond = await store.list_entities(3, 2)
    assert [e.entity_id for e in first.items + second.items + last.items] == ["a", "b", "c", "d", "e"]
    assert (first.total, first.total_pages, beyond.items, beyond.total) == (5, 3, [], 5)
    with pytest.raises(ValueError):
        await store.list_entities(-1, 2)
    with pytest.raises(ValueError):
        await store.list_applications(0, 0)


async def test_search_matches_id_or_name_case_insensitively_and_literally(store: Store) -> None:
    await store.create_application(Application("shop-eu", "Shop Europe"))
    await store.create_application(Application("billing", "Shop_Billing 100%"))
    await store.create_application(Application("misc", None))
    found = await store.list_applications(0, 10, search="SHOP")
    assert [a.application_id for a in found.items] == ["billing", "shop-eu"]
    assert found.total == 2
    assert [a.application_id for a in (await store.list_applications(0, 10, search="europe")).items] == ["shop-eu"]
    assert [a.application_id for a in (await store.list_applications(0, 10, search="0%")).items] == ["billing"]
    assert [a.application_id for a in (await store.list_applications(0, 10, search="p_b")).items] == ["billing"]
    assert (await store.list_applications(0, 10, search="p_e")).total == 0


# associations ----------------------------------------------------------------------------------------


async def test_association_rules(store: Store) -> None:
    await seed(store)
    number = Association("NUMBER", "SMS", "app-a", "ent-x", "447700900000")
    await store.create_association(number)
    assert await store.get_association("NUMBER", "SMS", "app-a", "447700900000", "ent-x") == number
    # one association per resource, whatever it would name
    with pytest.raises(Conflict):
        await store.create_association(Association("NUMBER", "SMS", "app-b", None, "447700900000"))
    # the same resource id on another channel is another resource
    await store.create_association(Association("NUMBER", "WHATSAPP", "app-b", None, "447700900000"))
    with pytest.raises(MissingReference) as missing_app:
        await store.create_association(Association("NUMBER", "MMS", "ghost", None, "1"))
    assert (missing_app.value.field, missing_app.value.ident) == ("applicationId", "ghost")
    with pytest.raises(MissingReference) as missing_entity:
        await store.create_association(Association("NUMBER", "MMS", "app-a", "ghost", "1"))
    assert missing_entity.value.field == "entityId"
    assert (await store.list_associations(AssociationFilter(), 0, 10)).total == 2


async def test_association_get_and_delete_need_the_exact_association(store: Store) -> None:
    await seed(store)
    domain = Association("DOMAIN", "EMAIL", "app-a", None, "example.com")
    await store.create_association(domain)
    with pytest.raises(NotFound):
        await store.get_association("DOMAIN", "EMAIL", "app-a", "example.com", "ent-x")
    with pytest.raises(NotFound):
        await store.delete_association(Association("DOMAIN", "EMAIL", "app-b", None, "example.com"))
    await store.delete_association(domain)
    with pytest.raises(NotFound):
        await store.delete_association(domain)
    assert (await store.list_associations(AssociationFilter(), 0, 10)).total == 0


async def test_association_list_filters_and_pages(store: Store) -> None:
    await seed(store)
    for index in range(5):
        await store.create_association(Association("NUMBER", "SMS", "app-a", "ent-x" if index % 2 else None, f"n{index}"))
    await store.create_association(Association("ALPHA", "SMS", "app-b", None, "ACME"))
    page = await store.list_associations(AssociationFilter(application_id="app-a"), 1, 2)
    assert [a.resource_id for a in page.items] == ["n2", "n3"]
    assert page.total == 5
    by_entity = await store.list_associations(AssociationFilter(entity_id="ent-x"), 0, 10)
    assert [a.resource_id for a in by_entity.items] == ["n1", "n3"]
    everything = await store.list_associations(AssociationFilter(), 0, 10)
    assert [a.resource_id for a in everything.items][:2] == ["ACME", "n0"]
    assert (await store.list_associations(AssociationFilter(channel="MMS"), 0, 10)).total == 0


# keys -------------------------------------------------------------------------------------------------


async def test_create_key_assigns_entry_keys_and_keeps_order(store: Store) -> None:
    await seed(store)
    key, secret = new_key(("app-b", None), (None, "ent-x"), ("app-a", "ent-y"))
    stored = await store.create_key(key)
    assert links(stored) == [("app-b", None), (None, "ent-x"), ("app-a", "ent-y")]
    entry_keys = [entry.key for entry in stored.platform]
    assert len(set(entry_keys)) == 3 and all(len(k) == 32 for k in entry_keys)
    assert await store.get_key(key.id) == stored
    assert await store.find_key_by_hash(keys.hash_secret(secret)) == stored
    assert await store.find_key_by_hash(keys.hash_secret(secret + "x")) is None
    assert stored.allowed_ips == key.allowed_ips and stored.valid_to == key.valid_to
    assert stored.created_at is not None and stored.last_used is None


async def test_create_key_needs_every_id_to_exist_and_writes_nothing_otherwise(store: Store) -> None:
    await seed(store)
    before = await store.revision()
    key, secret = new_key(("app-a", None), ("ghost", "ent-x"))
    with pytest.raises(MissingReference) as missing_app:
        await store.create_key(key)
    assert (missing_app.value.field, missing_app.value.ident) == ("platform[1].applicationId", "ghost")
    key2, _ = new_key(("app-a", "ent-x"), ("app-b", None), (None, "nobody"))
    with pytest.raises(MissingReference) as missing_entity:
        await store.create_key(key2)
    assert missing_entity.value.field == "platform[2].entityId"
    assert (await store.list_keys(0, 10)).total == 0
    assert await store.find_key_by_hash(keys.hash_secret(secret)) is None
    assert await store.revision() == before


async def test_duplicate_key_id_or_secret_hash_conflicts(store: Store) -> None:
    key, secret = new_key()
    await store.create_key(key)
    twin_id, _ = new_key()
    with pytest.raises(Conflict):
        await store.create_key(ApiKey(**{**_fields(twin_id), "id": key.id}))
    twin_hash, _ = new_key(secret=secret)
    with pytest.raises(Conflict):
        await store.create_key(twin_hash)
    assert (await store.list_keys(0, 10)).total == 1


def _fields(key: ApiKey) -> dict[str, object]:
    return {name: getattr(key, name) for name in ApiKey.__dataclass_fields__}


async def test_update_key_fields_and_relink(store: Store) -> None:
    await seed(store)
    key, secret = new_key(("app-a", None))
    stored = await store.create_key(key)
    later = NOW + timedelta(days=30)
    updated = await store.update_key(
        key.id,
        KeyUpdate(name="renamed", allowed_ips=("203.0.113.0/24",), valid_to=later, enabled=False,
                  platform=(PlatformLink("app-b", "ent-y", "FORCE"), PlatformLink(None, "ent-x"))),
    )
    assert (updated.name, updated.allowed_ips, updated.valid_to, updated.enabled) == (
        "renamed", ("203.0.113.0/24",), later, False)
    assert links(updated) == [("app-b", "ent-y"), (None, "ent-x")]
    assert [e.action for e in updated.platform] == ["FORCE", None]
    assert not {e.key for e in updated.platform} & {e.key for e in stored.platform}
    assert updated.valid_from == stored.valid_from and updated.secret_hash == stored.secret_hash
    assert await store.find_key_by_hash(keys.hash_secret(secret)) == updated
    # a partial update leaves everything else alone
    again = await store.update_key(key.id, KeyUpdate(enabled=True))
    assert again.enabled and links(again) == links(updated) and again.name == "renamed"


async def test_explicit_empty_platform_makes_a_key_primary(store: Store) -> None:
    await seed(store)
    key, _ = new_key(("app-a", None))
    await store.create_key(key)
    primary = await store.update_key(key.id, KeyUpdate(platform=()))
    assert primary.is_primary and primary.enabled


async def test_update_key_with_a_missing_id_changes_nothing(store: Store) -> None:
    await seed(store)
    key, _ = new_key(("app-a", None))
    stored = await store.create_key(key)
    before = await store.revision()
    with pytest.raises(MissingReference) as missing:
        await store.update_key(key.id, KeyUpdate(name="changed", platform=(PlatformLink("app-b", None),
                                                                           PlatformLink("app-b", "ghost"))))
    assert missing.value.field == "platform[1].entityId"
    assert await store.get_key(key.id) == stored
    assert await store.revision() == before


async def test_delete_key(store: Store) -> None:
    await seed(store)
    key, secret = new_key(("app-a", None))
    await store.create_key(key)
    await store.delete_key(key.id)
    assert await store.find_key_by_hash(keys.hash_secret(secret)) is None
    with pytest.raises(NotFound):
        await store.get_key(key.id)
    assert await store.keys_for_application("app-a") == []
    # nothing left behind that would block deleting the application
    await store.delete_application("app-a")


async def test_list_keys_filters_and_pages(store: Store) -> None:
    created = []
    for index in range(5):
        key, _ = new_key(name=f"Batch {index}" if index < 4 else "other")
        created.append(await store.create_key(key))
        if index == 1:
            await store.update_key(key.id, KeyUpdate(enabled=False))
    ordered = sorted(k.id for k in created)
    everything = await store.list_keys(0, 3)
    assert [k.id for k in everything.items] == ordered[:3] and everything.total == 5
    assert [k.id for k in (await store.list_keys(1, 3)).items] == ordered[3:]
    assert (await store.list_keys(0, 10, name="batch")).total == 4
    assert (await store.list_keys(0, 10, enabled=False)).total == 1
    assert (await store.list_keys(0, 10, name="batch", enabled=True)).total == 3


async def test_list_keys_pages_keys_not_entries(store: Store) -> None:
    await seed(store)
    for _ in range(3):
        await store.create_key(new_key(("app-a", None), ("app-b", None), (None, "ent-x"))[0])
    page = await store.list_keys(0, 2)
    assert len(page.items) == 2 and all(len(k.platform) == 3 for k in page.items)


async def test_keys_for_application_and_entity(store: Store) -> None:
    await seed(store)
    pair = await store.create_key(new_key(("app-a", "ent-x"))[0])
    app_only = await store.create_key(new_key(("app-a", None))[0])
    await store.create_key(new_key(("app-b", None))[0])
    assert {k.id for k in await store.keys_for_application("app-a")} == {pair.id, app_only.id}
    assert [k.id for k in await store.keys_for_entity("ent-x")] == [pair.id]
    assert await store.keys_for_entity("ent-y") == []


async def test_times_are_stored_in_utc_and_naive_means_utc(store: Store) -> None:
    key, _ = new_key()
    plus_two = timezone(timedelta(hours=2))
    stored = await store.create_key(
        ApiKey(**{**_fields(key), "valid_from": datetime(2026, 5, 1, 12, 0, tzinfo=plus_two),
                  "valid_to": datetime(2027, 5, 1, 12, 0)})
    )
    assert stored.valid_from == datetime(2026, 5, 1, 10, 0, tzinfo=UTC) and stored.valid_from.tzinfo == UTC
    assert stored.valid_to == datetime(2027, 5, 1, 12, 0, tzinfo=UTC)


async def test_record_key_use_keeps_the_latest_time(store: Store) -> None:
    key, _ = new_key()
    await store.create_key(key)
    before = await store.revision()
    first = NOW + timedelta(minutes=5)
    await store.record_key_use({key.id: first, "deleted-meanwhile": first})
    assert (await store.get_key(key.id)).last_used == first
    await store.record_key_use({key.id: NOW})
    assert (await store.get_key(key.id)).last_used == first
    await store.record_key_use({})
    assert await store.revision() == before


async def test_missing_ids(store: Store) -> None:
    await seed(store)
    assert await store.missing_ids(["app-a", "ghost", DEFAULT_APPLICATION], ["ent-y", "ent-z"]) == (
        frozenset({"ghost"}), frozenset({"ent-z"}))
    assert await store.missing_ids([], []) == (frozenset(), frozenset())
    many = [f"m{index}" for index in range(1200)] + ["app-b"]
    missing_apps, _ = await store.missing_ids(many, [])
    assert len(missing_apps) == 1200 and "app-b" not in missing_apps


async def test_every_key_write_and_id_delete_bumps_the_revision(store: Store) -> None:
    await seed(store)
    revisions = [await store.revision()]

    async def bumped() -> None:
        revisions.append(await store.revision())
        assert revisions[-1] > revisions[-2]

    key, _ = new_key(("app-a", None), (None, "ent-x"))
    await store.create_key(key)
    await bumped()
    await store.update_key(key.id, KeyUpdate(enabled=False))
    await bumped()
    await store.update_key(key.id, KeyUpdate(platform=(PlatformLink("app-b", None),)))
    await bumped()
    await store.delete_entity("ent-y")
    await bumped()
    await store.delete_application("app-a")
    await bumped()
    await store.delete_key(key.id)
    await bumped()
    await store.list_keys(0, 10)
    await store.rename_application("app-b", "renamed")
    assert await store.revision() == revisions[-1]


# cascades ---------------------------------------------------------------------------------------------


async def test_deleting_an_application_cascades_and_disables_keys_left_without_entries(store: Store) -> None:
    await seed(store)
    await store.create_association(Association("NUMBER", "SMS", "app-a", "ent-x", "111"))
    await store.create_association(Association("NUMBER", "SMS", "app-b", None, "222"))
    only_a = await store.create_key(new_key(("app-a", None), ("app-a", "ent-x"))[0])
    mixed = await store.create_key(new_key(("app-a", None), ("app-b", "ent-y"), (None, "ent-x"))[0])
    untouched = await store.create_key(new_key(("app-b", None))[0])

    report = await store.delete_application("app-a")

    assert (report.associations_removed, report.entries_removed, report.keys_disabled) == (1, 3, (only_a.id,))
    dead = await store.get_key(only_a.id)
    assert not dead.enabled and dead.platform == ()
    survivor = await store.get_key(mixed.id)
    assert survivor.enabled and links(survivor) == [("app-b", "ent-y"), (None, "ent-x")]
    assert survivor.platform == mixed.platform[1:]
    assert await store.get_key(untouched.id) == untouched
    remaining = await store.list_associations(AssociationFilter(), 0, 10)
    assert [a.resource_id for a in remaining.items] == ["222"]
    with pytest.raises(NotFound):
        await store.get_application("app-a")


async def test_deleting_an_entity_removes_pair_entries_and_never_makes_a_key_primary(store: Store) -> None:
    await seed(store)
    await store.create_association(Association("ALPHA", "SMS", "app-b", "ent-x", "ACME"))
    pair_only, secret = new_key(("app-a", "ent-x"))
    await store.create_key(pair_only)
    two = await store.create_key(new_key(("app-a", "ent-x"), ("app-a", "ent-y"))[0])
    already_off = await store.create_key(new_key((None, "ent-x"))[0])
    await store.update_key(already_off.id, KeyUpdate(enabled=False))

    report = await store.delete_entity("ent-x")

    assert report.associations_removed == 1 and report.entries_removed == 3
    assert set(report.keys_disabled) == {pair_only.id, already_off.id}
    gone = await store.find_key_by_hash(keys.hash_secret(secret))
    assert gone is not None and not gone.enabled and gone.is_primary
    assert links(await store.get_key(two.id)) == [("app-a", "ent-y")]
    assert (await store.get_key(two.id)).enabled
    assert await store.get_application("app-a") == Application("app-a", "APP-A")


def _trigger(path: str, sql: str) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(sql)


async def _snapshot(store: Store) -> tuple[object, ...]:
    return (
        await store.list_applications(0, 100),
        await store.list_entities(0, 100),
        await store.list_associations(AssociationFilter(), 0, 100),
        await store.list_keys(0, 100),
        await store.revision(),
    )


@pytest.mark.parametrize(
    "failing_step",
    [
        "BEFORE UPDATE OF enabled ON api_keys",  # fails after nothing, first write of the cascade
        "BEFORE DELETE ON key_entries",  # fails after keys were disabled and associations removed
        "BEFORE DELETE ON applications",  # fails at the very last delete
        "BEFORE UPDATE ON meta",  # fails at the revision bump, after everything else
    ],
)
async def test_a_cascade_failing_halfway_leaves_the_store_as_before(sqlite_url: str, failing_step: str) -> None:
    store = store_from_url(sqlite_url, create=True)
    await store.open()
    try:
        await seed(store)
        await store.create_association(Association("NUMBER", "SMS", "app-a", None, "111"))
        await store.create_key(new_key(("app-a", None))[0])
        await store.create_key(new_key(("app-a", "ent-x"), ("app-b", None))[0])
        before = await _snapshot(store)
        _trigger(sqlite_path(sqlite_url), f"CREATE TRIGGER fail {failing_step} BEGIN SELECT RAISE(ABORT, 'injected'); END")
        with pytest.raises(StoreError, match="injected"):
            await store.delete_application("app-a")
        assert await _snapshot(store) == before
        # and the store still works afterwards
        _trigger(sqlite_path(sqlite_url), "DROP TRIGGER fail")
        assert (await store.delete_application("app-a")).keys_disabled != ()
    finally:
        await store.close()


async def test_a_delete_bypassing_the_cascade_cannot_widen_a_key(sqlite_url: str) -> None:
    """Key entries reference ids without ON DELETE CASCADE: a raw delete fails instead of making a key primary."""
    store = store_from_url(sqlite_url, create=True)
    await store.open()
    try:
        await seed(store)
        key = await store.create_key(new_key(("app-a", None))[0])
        conn = sqlite3.connect(sqlite_path(sqlite_url))
        conn.execute("PRAGMA foreign_keys = ON")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("DELETE FROM applications WHERE application_id = 'app-a'")
        conn.close()
        assert await store.get_key(key.id) == key
    finally:
        await store.close()


# files, processes and concurrency ---------------------------------------------------------------------


async def test_two_stores_on_one_file_creating_the_same_id_exactly_one_succeeds(store_url: str) -> None:
    first, second = store_from_url(store_url, create=True), store_from_url(store_url, create=True)
    await first.open()
    await second.open()
    try:
        for round_ in range(5):
            ident = f"race-{round_}"
            results = await asyncio.gather(
                *(s.create_application(Application(ident, str(i))) for i, s in enumerate([first, second] * 3)),
                return_exceptions=True,
            )
            assert sum(r is None for r in results) == 1
            assert all(isinstance(r, Conflict) for r in results if r is not None)
        assert (await second.list_applications(0, 100)).total == 6
    finally:
        await first.close()
        await second.close()


OPEN_AND_CREATE = """
import asyncio, sys
from keyscope.core.models import Application
from keyscope.store import Conflict, store_from_url

async def main():
    store = store_from_url(sys.argv[1], create=True)
    await store.open()
    try:
        await store.create_application(Application("same", sys.argv[2]))
        print("created")
    except Conflict:
        print("conflict")
    finally:
        await store.close()

asyncio.run(main())
"""


async def test_a_key_read_by_id_or_by_its_secret_carries_its_applications_limits(store: Store) -> None:
    limits = (RateLimit(10, "minute"), RateLimit(1000, "day"))
    await store.create_application(Application("shop", None, limits))
    await store.create_application(Application("free", None))
    await store.create_entity(Entity("acme", None))
    key, secret = new_key(("shop", None), ("free", "acme"), (None, "acme"))
    await store.create_key(key)
    by_id = await store.get_key(key.id)
    by_secret = await store.find_key_by_hash(keys.hash_secret(secret))
    assert by_secret is not None
    assert by_id.application_limits == by_secret.application_limits == (("shop", limits),)
    assert links(by_id) == [("shop", None), ("free", "acme"), (None, "acme")]


def test_processes_opening_a_fresh_file_at_once_migrate_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    procs = [
        subprocess.Popen([sys.executable, "-c", OPEN_AND_CREATE, url, str(i)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, outputs
    assert sorted(out.strip() for out, _ in outputs) == ["conflict"] * 3 + ["created"]
    with closing(sqlite3.connect(tmp_path / "shared.db")) as conn:
        versions = [(migration.version,) for migration in MIGRATIONS]
        assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == versions
        assert conn.execute("SELECT COUNT(*) FROM applications").fetchone() == (2,)


async def test_reopening_keeps_data(store_url: str) -> None:
    store = store_from_url(store_url, create=True)
    await store.open()
    await store.create_application(Application("kept", "Kept"))
    key = await store.create_key(new_key(("kept", None))[0])
    revision = await store.revision()
    await store.close()

    reopened = store_from_url(store_url, create=True)
    await reopened.open()
    try:
        assert await reopened.get_application("kept") == Application("kept", "Kept")
        assert await reopened.get_key(key.id) == key
        assert await reopened.revision() == revision
    finally:
        await reopened.close()


async def test_reopening_does_not_rerun_migrations(sqlite_url: str) -> None:
    store = store_from_url(sqlite_url, create=True)
    await store.open()
    await store.close()
    path = sqlite_path(sqlite_url)
    applied = _schema_versions(path)
    assert [version for version, _ in applied] == [migration.version for migration in MIGRATIONS]
    await store.open()
    await store.close()
    assert _schema_versions(path) == applied


def _schema_versions(path: str) -> list[tuple[int, str]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT version, applied_at FROM schema_version").fetchall()


async def test_a_newer_schema_is_refused(sqlite_url: str) -> None:
    store = store_from_url(sqlite_url, create=True)
    await store.open()
    await store.close()
    with closing(sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None)) as conn:
        conn.execute("INSERT INTO schema_version VALUES (999, 'from the future', '2030-01-01T00:00:00.000000+00:00')")
    with pytest.raises(StoreUnavailable, match="newer"):
        await store_from_url(sqlite_url, create=True).open()


async def test_secrets_are_never_in_the_database_file(sqlite_url: str) -> None:
    store = store_from_url(sqlite_url, create=True)
    await store.open()
    key, secret = new_key()
    await store.create_key(key)
    await store.close()
    path = Path(sqlite_path(sqlite_url))
    files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
    content = b"".join(p.read_bytes() for p in files)
    assert key.secret_hash.hex().encode() in content  # the scan does see what was stored
    for form in (secret.encode(), secret.encode("utf-16-le"), secret[8:].encode(), secret.split("-", 1)[1].encode()):
        assert form not in content


async def test_reads_go_on_while_another_process_holds_the_write_lock(sqlite_url: str) -> None:
    path = sqlite_path(sqlite_url)
    store = SQLiteStore(path, busy_timeout=30)
    await store.open()
    try:
        key, secret = new_key()
        await store.create_key(key)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        write = asyncio.ensure_future(store.create_application(Application("waits", None)))
        await asyncio.sleep(0)
        # the event loop is free and reads answer while the write waits for the lock
        assert (await store.find_key_by_hash(keys.hash_secret(secret))) is not None
        assert await store.missing_ids(["waits"], []) == (frozenset({"waits"}), frozenset())
        assert not write.done()
        holder.execute("COMMIT")
        holder.close()
        await write
        assert await store.get_application("waits") == Application("waits", None)
    finally:
        await store.close()


async def test_a_write_lock_held_too_long_is_unavailable_not_a_hang(sqlite_url: str) -> None:
    path = sqlite_path(sqlite_url)
    store = SQLiteStore(path, busy_timeout=0.1)
    await store.open()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.create_application(Application("blocked", None))
        holder.execute("ROLLBACK")
        await store.create_application(Application("blocked", None))
    finally:
        holder.close()
        await store.close()


async def test_a_cancelled_write_applies_nothing_and_leaves_no_lock_behind(sqlite_url: str) -> None:
    path = sqlite_path(sqlite_url)
    store = SQLiteStore(path, busy_timeout=30)
    await store.open()
    holder = sqlite3.connect(path, isolation_level=None)
    other = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        holder.execute("BEGIN IMMEDIATE")
        write = asyncio.ensure_future(store.create_application(Application("cancelled", None)))
        await asyncio.sleep(0.05)  # let the write reach the writer thread; the outcome must not depend on it
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        holder.execute("ROLLBACK")
        # another process can take the write lock: the abandoned BEGIN was rolled back behind it
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        with pytest.raises(NotFound):
            await store.get_application("cancelled")
        await store.create_application(Application("after", None))
        assert await store.get_application("after") == Application("after", None)
    finally:
        holder.close()
        other.close()
        await store.close()


# opening ----------------------------------------------------------------------------------------------


async def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    store = store_from_url(f"sqlite:///{tmp_path}/no/such/folder/k.db", create=True)
    with pytest.raises(StoreUnavailable, match="does not exist"):
        await store.open()
    assert not (tmp_path / "no").exists()


async def test_a_folder_or_a_non_database_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="folder"):
        await store_from_url(f"sqlite:///{tmp_path}", create=True).open()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, not even close" * 100)
    with pytest.raises(StoreUnavailable, match="not a database"):
        await store_from_url(f"sqlite:///{junk}", create=True).open()


async def test_an_unwritable_location_is_unavailable() -> None:
    """/proc exists but no file can be created there, not even by root."""
    with pytest.raises(StoreUnavailable, match="cannot open SQLite store '/proc/keyscope-test.db'"):
        await store_from_url("sqlite:////proc/keyscope-test.db", create=True).open()


async def test_a_closed_store_is_unavailable(store_url: str) -> None:
    store = store_from_url(store_url, create=True)
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.find_key_by_hash(b"\0" * 32)
    with pytest.raises(StoreUnavailable):
        await store.create_application(Application("late", None))
