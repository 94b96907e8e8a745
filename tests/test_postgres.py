"""The PostgreSQL store's own behaviour, on the real server at 127.0.0.1:5432 (each test on a fresh database).

The rules shared with SQLite are covered by the store suite, which runs on both stores; here: placeholders,
migrations racing at start-up, error translation, writes serialised across instances, outages and recovery.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from relay import Relay, socket_refusing, terminate
from stores import PG_SERVER as SERVER

from keyscope.core.keys import display_prefix, hash_secret, new_key_id, new_secret
from keyscope.core.models import ApiKey, Application, KeyUpdate, PlatformEntry, PlatformLink
from keyscope.store import Conflict, MissingReference, StoreUnavailable
from keyscope.store.migrations import LATEST, MIGRATIONS
from keyscope.store.postgres import PostgresStore, redact, to_dollar

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def new_key(*links: tuple[str | None, str | None]) -> tuple[str, ApiKey]:
    secret = new_secret()
    now = datetime.now(UTC)
    key = ApiKey(
        id=new_key_id(),
        name="k",
        secret_hash=hash_secret(secret),
        prefix=display_prefix(secret),
        allowed_ips=(),
        valid_from=now - timedelta(minutes=1),
        valid_to=now + timedelta(days=1),
        enabled=True,
        platform=tuple(PlatformEntry("", app, entity) for app, entity in links),
    )
    return secret, key


async def opened(url: str) -> PostgresStore:
    store = PostgresStore(url)
    await store.open()
    return store


# placeholders and messages ------------------------------------------------------------------------
def test_placeholders_are_numbered_outside_quotes_and_bare_null_tests_are_text() -> None:
    sql = "SELECT a FROM t WHERE x = ? AND (e = ? OR (e IS NULL AND ? IS NULL)) AND n LIKE ? ESCAPE '\\' AND q = 'a?'"
    assert to_dollar(sql) == (
        "SELECT a FROM t WHERE x = $1 AND (e = $2 OR (e IS NULL AND $3::text IS NULL))"
        " AND n LIKE $4 ESCAPE '\\' AND q = 'a?'"
    )
    assert to_dollar("INSERT INTO t (a, b) VALUES (?, ?)") == "INSERT INTO t (a, b) VALUES ($1, $2)"


def test_passwords_never_appear_in_messages() -> None:
    assert redact("postgresql://ks:s3cret@db.example:6543/keys") == "postgresql://ks:***@db.example:6543/keys"
    assert redact("postgresql://ks@db/keys") == "postgresql://ks@db/keys"


# start-up -----------------------------------------------------------------------------------------
async def test_unreachable_store_fails_start_up_with_one_line() -> None:
    with socket_refusing() as port:
        store = PostgresStore(f"postgresql://ks:s3cret@127.0.0.1:{port}/keys", connect_timeout=2)
        with pytest.raises(StoreUnavailable) as caught:
            await store.open()
    message = str(caught.value)
    assert "\n" not in message
    assert "s3cret" not in message
    assert message.startswith(f"cannot connect to PostgreSQL store postgresql://ks:***@127.0.0.1:{port}/keys")


async def test_unknown_database_is_unavailable_not_a_crash() -> None:
    store = PostgresStore(f"{SERVER}/keyscope_no_such_db_{secrets.token_hex(4)}")
    with pytest.raises(StoreUnavailable, match="does not exist"):
        await store.open()


async def test_instances_starting_at_once_migrate_exactly_once(database: str) -> None:
    stores = [PostgresStore(database) for _ in range(6)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        conn = await asyncpg.connect(database)
        try:
            versions = [row[0] for row in await conn.fetch("SELECT version FROM schema_version ORDER BY version")]
            defaults = await conn.fetchval("SELECT COUNT(*) FROM applications WHERE application_id = 'default'")
        finally:
            await conn.close()
        assert versions == [migration.version for migration in MIGRATIONS]
        assert versions[-1] == LATEST
        assert defaults == 1
        # every instance works on the one schema
        await stores[0].create_application(Application("shared", None))
        assert (await stores[5].get_application("shared")).application_id == "shared"
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_a_newer_schema_is_refused(database: str) -> None:
    store = await opened(database)
    await store.close()
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            "INSERT INTO schema_version (version, description, applied_at) VALUES ($1, 'future', 'now')", LATEST + 1
        )
    finally:
        await conn.close()
    with pytest.raises(StoreUnavailable, match="newer"):
        await opened(database)


# error translation and write serialisation --------------------------------------------------------
async def test_concurrent_creates_of_one_id_across_instances_give_one_winner(database: str) -> None:
    stores = [await opened(database) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(stores[i % 3].create_application(Application("race", str(i))) for i in range(12)),
            return_exceptions=True,
        )
        assert sum(result is None for result in results) == 1
        assert all(isinstance(result, Conflict) for result in results if result is not None)
    finally:
        for store in stores:
            await store.close()


async def test_missing_reference_is_named(database: str) -> None:
    store = await opened(database)
    try:
        _, key = new_key(("nope", None))
        with pytest.raises(MissingReference) as caught:
            await store.create_key(key)
        assert caught.value.field == "platform[0].applicationId"
    finally:
        await store.close()


async def test_cascades_racing_relinks_across_instances_never_leave_an_enabled_unlinked_key(database: str) -> None:
    """Deleting applications through one instance while another re-links keys to them: each key ends up
    linked to an application that exists, or disabled; never enabled with no entries (that is primary)."""
    one, two = await opened(database), await opened(database)
    try:
        apps = [f"app{i}" for i in range(8)]
        for app in apps:
            await one.create_application(Application(app, None))
        keys = []
        for i in range(8):
            _, key = new_key((apps[i], None))
            keys.append((await one.create_key(key)).id)

        async def relink(key_id: str, app: str) -> None:
            try:
                await two.update_key(key_id, KeyUpdate(platform=(PlatformLink(app, None),)))
            except MissingReference:
                pass

        await asyncio.gather(
            *(one.delete_application(app) for app in apps[:6]),
            *(relink(key_id, apps[(i + 3) % 6]) for i, key_id in enumerate(keys)),
        )
        for key_id in keys:
            key = await one.get_key(key_id)
            assert key.platform or not key.enabled, key
            for entry in key.platform:
                assert entry.application_id in apps[6:]
    finally:
        await one.close()
        await two.close()


# outages ------------------------------------------------------------------------------------------
async def test_reads_survive_the_server_dropping_pooled_connections(database: str) -> None:
    store = await opened(database)
    try:
        _, key = new_key()
        created = await store.create_key(key)
        await terminate(database, "keyscope")
        found = await store.find_key_by_hash(key.secret_hash)
        assert found is not None and found.id == created.id
        await terminate(database, "keyscope")
        await store.create_application(Application("after", None))  # a write on a fresh connection too
        assert (await store.get_application("after")).application_id == "after"
    finally:
        await store.close()


async def test_outage_gives_store_unavailable_writes_nothing_and_recovers(database: str) -> None:
    with Relay() as relay:
        url = database.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
        store = PostgresStore(url, connect_timeout=2, command_timeout=3)
        await store.open()
        try:
            _, key = new_key()
            await store.create_key(key)
            relay.cut()
            with pytest.raises(StoreUnavailable):
                await store.find_key_by_hash(hash_secret(new_secret()))
            with pytest.raises(StoreUnavailable):
                await store.create_application(Application("during", None))
            with pytest.raises(StoreUnavailable):
                await store.update_key(key.id, KeyUpdate(enabled=False))
            relay.restore()
            found = await store.find_key_by_hash(key.secret_hash)
            assert found is not None and found.enabled
            assert await store.get_application("default")
            with pytest.raises(Exception, match="not found"):
                await store.get_application("during")
        finally:
            await store.close()


async def test_a_hung_server_is_unavailable_not_an_error(database: str) -> None:
    with Relay() as relay:
        store = PostgresStore(database.replace(":5432/", f":{relay.port}/"), connect_timeout=1, command_timeout=1)
        await store.open()
        try:
            _, key = new_key()
            await store.create_key(key)
            relay.frozen.set()
            with pytest.raises(StoreUnavailable, match="no answer"):
                await store.find_key_by_hash(key.secret_hash)
            with pytest.raises(StoreUnavailable):
                await store.update_key(key.id, KeyUpdate(enabled=False))
            relay.frozen.clear()
            found = await store.find_key_by_hash(key.secret_hash)
            assert found is not None and found.enabled
        finally:
            await store.close()


# helpers ------------------------------------------------------------------------------------------
