"""Change propagation: a write through one store instance reaches the watchers of the others.

Store level: two store instances on one database (PostgreSQL: pushed by NOTIFY; SQLite: polled by tick()).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from keyscope.keys import display_prefix, hash_secret, new_key_id, new_secret
from keyscope.models import ApiKey, Application, Entity, KeyUpdate, PlatformEntry, PlatformLink
from keyscope.store import Store
from keyscope.store.postgres import PostgresStore
from keyscope.store.sqlite import SQLiteStore
from keyscope.watch import ChangeWatcher

pytestmark = pytest.mark.anyio

SERVER = "postgresql://postgres@127.0.0.1:5432"
PATIENCE = 15.0  # seconds: generous, the tests assert that a change arrives, not how fast


@pytest.fixture
async def database(anyio_backend: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database (NOTIFY channels are per database, so tests cannot hear each other)."""
    name = f"keyscope_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(f"{SERVER}/test")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{SERVER}/{name}"
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def new_key(*links: tuple[str | None, str | None]) -> ApiKey:
    secret = new_secret()
    now = datetime.now(UTC)
    return ApiKey(
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


class Heard:
    """An on_change callback that records when it was called."""

    def __init__(self) -> None:
        self.calls = 0
        self.event = asyncio.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.event.set()

    async def next(self, poll: Callable[[], Awaitable[None]] | None = None) -> float:
        """Waits for the next call (calling `poll` meanwhile, as requests would); returns seconds waited."""
        start = time.monotonic()
        deadline = start + PATIENCE
        while not self.event.is_set():
            assert time.monotonic() < deadline, "the change never arrived"
            if poll is not None:
                await poll()
            await asyncio.sleep(0.01)
        self.event.clear()
        return time.monotonic() - start


# each write that can narrow or widen a key, applied through the *other* store instance
async def revoke(store: Store, key: ApiKey) -> None:
    await store.update_key(key.id, KeyUpdate(enabled=False))


async def relink(store: Store, key: ApiKey) -> None:
    await store.update_key(key.id, KeyUpdate(platform=(PlatformLink("other", None),)))


async def narrow_ips(store: Store, key: ApiKey) -> None:
    await store.update_key(key.id, KeyUpdate(allowed_ips=("10.0.0.0/8",)))


async def shorten_validity(store: Store, key: ApiKey) -> None:
    await store.update_key(key.id, KeyUpdate(valid_to=datetime.now(UTC)))


async def delete_key(store: Store, key: ApiKey) -> None:
    await store.delete_key(key.id)


async def delete_application(store: Store, key: ApiKey) -> None:
    await store.delete_application("app")


async def delete_entity(store: Store, key: ApiKey) -> None:
    await store.delete_entity("ent")


WRITES = [revoke, relink, narrow_ips, shorten_validity, delete_key, delete_application, delete_entity]


async def prepare(store: Store) -> ApiKey:
    await store.create_application(Application("app", None))
    await store.create_application(Application("other", None))
    await store.create_entity(Entity("ent", None))
    return await store.create_key(new_key(("app", "ent")))


@pytest.mark.postgres
@pytest.mark.parametrize("write", WRITES, ids=lambda write: write.__name__)
async def test_postgresql_announces_each_narrowing_write_to_other_instances(
    database: str, write: Callable[[Store, ApiKey], Awaitable[None]]
) -> None:
    writer, reader = PostgresStore(database), PostgresStore(database)
    await writer.open()
    await reader.open()
    heard = Heard()
    watcher = ChangeWatcher(reader, heard)
    try:
        key = await prepare(writer)
        await watcher.start()
        await write(writer, key)
        waited = await heard.next()
        print(f"{write.__name__}: heard after {waited * 1000:.1f} ms")
        assert heard.calls == 1
    finally:
        await watcher.stop()
        await writer.close()
        await reader.close()


@pytest.mark.postgres
async def test_postgresql_watcher_reconnects_and_reports_the_gap(database: str) -> None:
    """A dropped LISTEN connection may have lost announcements: the watcher reconnects, calls on_change
    once it is back, and hears later changes again."""
    writer, reader = PostgresStore(database), PostgresStore(database)
    await writer.open()
    await reader.open()
    heard = Heard()
    watcher = ChangeWatcher(reader, heard, backoff=(0.05, 0.5))
    try:
        key = await prepare(writer)
        await watcher.start()
        killed = await terminate(database, "keyscope-listen")
        assert killed == 1
        await heard.next()  # the reconnect itself counts as a change
        await revoke(writer, key)
        await heard.next()
    finally:
        await watcher.stop()
        await writer.close()
        await reader.close()


@pytest.mark.postgres
async def test_postgresql_watcher_needs_no_request_to_hear(database: str) -> None:
    """tick() is a no-op for a store that pushes: nothing on the request path touches the store."""
    writer, reader = PostgresStore(database), PostgresStore(database)
    await writer.open()
    await reader.open()
    heard = Heard()
    watcher = ChangeWatcher(reader, heard)
    try:
        key = await prepare(writer)
        await watcher.start()
        assert watcher.pushed
        await reader.close()  # the pool is gone; tick() must not need it
        await watcher.tick()
        await revoke(writer, key)
        await heard.next()
    finally:
        await watcher.stop()
        await writer.close()


@pytest.mark.parametrize("write", WRITES, ids=lambda write: write.__name__)
async def test_sqlite_tick_sees_each_narrowing_write_by_another_connection(
    tmp_path: Path, write: Callable[[Store, ApiKey], Awaitable[None]]
) -> None:
    path = tmp_path / "keyscope.db"
    writer, reader = SQLiteStore(path), SQLiteStore(path)
    await writer.open()
    await reader.open()
    heard = Heard()
    watcher = ChangeWatcher(reader, heard, interval=0.05)
    try:
        key = await prepare(writer)
        await watcher.start()
        await write(writer, key)
        waited = await heard.next(poll=watcher.tick)
        print(f"{write.__name__}: seen after {waited * 1000:.1f} ms")
        assert heard.calls == 1
    finally:
        await watcher.stop()
        await writer.close()
        await reader.close()


async def test_sqlite_tick_reads_the_store_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "keyscope.db"
    writer, reader = SQLiteStore(path), SQLiteStore(path)
    await writer.open()
    await reader.open()
    heard = Heard()
    watcher = ChangeWatcher(reader, heard, interval=3600)
    try:
        key = await prepare(writer)
        await watcher.start()
        await revoke(writer, key)
        for _ in range(100):
            await watcher.tick()
        assert heard.calls == 0  # the interval has not passed since start(): no read yet
        watcher.interval = 0.0
        watcher._next_poll = 0.0
        await watcher.tick()
        assert heard.calls == 1
    finally:
        await watcher.stop()
        await writer.close()
        await reader.close()


async def test_sqlite_writes_that_change_no_key_are_not_changes(tmp_path: Path) -> None:
    path = tmp_path / "keyscope.db"
    writer, reader = SQLiteStore(path), SQLiteStore(path)
    await writer.open()
    await reader.open()
    heard = Heard()
    watcher = ChangeWatcher(reader, heard, interval=0.0)
    try:
        key = await prepare(writer)
        await watcher.start()
        await writer.rename_application("app", "renamed")
        await writer.record_key_use({key.id: datetime.now(UTC)})
        await watcher.tick()
        assert heard.calls == 0
        await revoke(writer, key)
        await watcher.tick()
        assert heard.calls == 1
    finally:
        await watcher.stop()
        await writer.close()
        await reader.close()


async def terminate(database: str, application_name: str) -> int:
    conn = await asyncpg.connect(f"{SERVER}/test")
    try:
        return len(
            await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
                database.rsplit("/", 1)[1],
                application_name,
            )
        )
    finally:
        await conn.close()
