"""Change propagation: a write through one store instance or gateway reaches the others.

Store level: two store instances on one database (PostgreSQL: pushed by NOTIFY; SQLite: polled by tick()).
Process level: two `keyscope serve` processes on one store, and `serve --workers 2` on one SQLite file.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from keyscope.keys import display_prefix, hash_secret, new_key_id, new_secret
from keyscope.models import ApiKey, Application, Entity, KeyUpdate, PlatformEntry, PlatformLink
from keyscope.store import Store
from keyscope.store.postgres import PostgresStore
from keyscope.store.sqlite import SQLiteStore
from keyscope.watch import ChangeWatcher


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


@pytest.mark.anyio
@pytest.mark.postgres
@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


@pytest.mark.anyio
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


# process level: real `keyscope serve` gateways sharing one store ----------------------------------
#
# Every gateway here caches keys for an hour, so a change can only reach the other gateway by propagation.

ADMIN_TOKEN = "propagation-admin-token-0123456789"
HOUR = "3600"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            detail = log.read_text()[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} exited with status {process.returncode}: {detail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Instance:
    """One `keyscope serve` process and a client for it."""

    port: int
    process: subprocess.Popen[bytes]
    client: httpx.Client

    @classmethod
    def start(cls, upstream: str, store_url: str, folder: Path, *extra: str) -> Instance:
        port = free_port()
        log = folder / f"gateway-{port}.log"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
        environment["KEYSCOPE_ADMIN_TOKEN"] = ADMIN_TOKEN
        command = [sys.executable, "-m", "keyscope.server", "--upstream", upstream, "--store", store_url,
                   "--port", str(port), "--key-cache-ttl", HOUR, "--no-access-log", *extra]
        with log.open("ab") as out:
            process = subprocess.Popen(command, env=environment, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, process, "keyscope serve", log)
        except RuntimeError:
            stop(process)
            raise
        return cls(port, process, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30))

    def stop(self) -> None:
        self.client.close()
        stop(self.process)

    def admin(self, method: str, path: str, doc: Any = None) -> httpx.Response:
        return self.client.request(method, path, json=doc, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def create(self, path: str, doc: dict[str, Any]) -> dict[str, Any]:
        response = self.admin("POST", path, doc)
        assert response.status_code in (200, 201), response.text
        return response.json() if response.content else {}

    def logs(self, secret: str, application_id: str | None = None) -> int:
        """A traffic request (`GET /sms/1/logs`, ids in the query); its status."""
        query = {"applicationId": application_id} if application_id else {}
        headers = {"Authorization": f"App {secret}", "Connection": "close"}
        return self.client.get("/sms/1/logs", params=query, headers=headers).status_code


def until(status: int, probe: Callable[[], int]) -> float:
    """Probes until it answers `status`; the seconds that took."""
    start = time.monotonic()
    while True:
        seen = probe()
        elapsed = time.monotonic() - start
        if seen == status:
            return elapsed
        assert elapsed < PATIENCE, f"still {seen} (waiting for {status}) after {PATIENCE} s"
        time.sleep(0.002)


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "keyscope.echo", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, process, "echo backend")
    yield f"http://127.0.0.1:{port}"
    stop(process)


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    name = f"keyscope_test_{secrets.token_hex(6)}"
    run_sql(f'CREATE DATABASE "{name}"')
    yield f"{SERVER}/{name}"
    run_sql(f'DROP DATABASE "{name}" WITH (FORCE)')


def run_sql(sql: str, database: str = "test") -> None:
    async def go() -> None:
        conn = await asyncpg.connect(f"{SERVER}/{database}")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def pair(request: pytest.FixtureRequest, echo: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[Instance, Instance]
]:
    """Two gateway processes on one store: one PostgreSQL database, or one SQLite file."""
    folder = tmp_path_factory.mktemp(f"pair-{request.param}")
    if request.param == "postgresql":
        store_url = request.getfixturevalue("pg_database")
    else:
        store_url = f"sqlite:///{folder / 'keyscope.db'}"
    one = Instance.start(echo, store_url, folder)
    try:
        two = Instance.start(echo, store_url, folder)
    except BaseException:
        one.stop()
        raise
    yield one, two
    one.stop()
    two.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def linked_key(gateway: Instance, application_id: str) -> dict[str, Any]:
    return gateway.create("/settings/2/api-keys", {"name": "k", "platform": [{"applicationId": application_id}]})


def test_revoke_reaches_the_other_gateway(pair: tuple[Instance, Instance], record_property: Any) -> None:
    one, two = pair
    key = one.create("/settings/2/api-keys", {"name": "primary"})
    assert one.logs(key["apiKeySecret"]) == 200
    assert two.logs(key["apiKeySecret"]) == 200  # now cached for an hour in both
    response = one.admin("PUT", f"/settings/2/api-keys/{key['id']}", {"enabled": False})
    assert response.status_code == 200, response.text
    waited = until(401, lambda: two.logs(key["apiKeySecret"]))
    record_property("propagation_seconds", waited)
    print(f"revoke reached the other gateway after {waited * 1000:.1f} ms")
    assert one.logs(key["apiKeySecret"]) == 401


def test_delete_application_reaches_the_other_gateway(pair: tuple[Instance, Instance], record_property: Any) -> None:
    one, two = pair
    app = unique("app")
    one.create("/provisioning/1/applications", {"applicationId": app})
    key = linked_key(one, app)
    assert one.logs(key["apiKeySecret"], app) == 200
    assert two.logs(key["apiKeySecret"], app) == 200
    response = one.admin("DELETE", f"/provisioning/1/applications/{app}")
    assert response.status_code == 200, response.text
    waited = until(401, lambda: two.logs(key["apiKeySecret"], app))  # its last entry gone: disabled
    record_property("propagation_seconds", waited)
    print(f"delete-application reached the other gateway after {waited * 1000:.1f} ms")


def test_relink_reaches_the_other_gateway(pair: tuple[Instance, Instance], record_property: Any) -> None:
    one, two = pair
    first, second = unique("app"), unique("app")
    for app in (first, second):
        one.create("/provisioning/1/applications", {"applicationId": app})
    key = linked_key(one, first)
    assert one.logs(key["apiKeySecret"], first) == 200
    assert two.logs(key["apiKeySecret"], first) == 200
    response = one.admin("PUT", f"/settings/2/api-keys/{key['id']}", {"platform": [{"applicationId": second}]})
    assert response.status_code == 200, response.text
    waited = until(403, lambda: two.logs(key["apiKeySecret"], first))
    record_property("propagation_seconds", waited)
    print(f"re-link reached the other gateway after {waited * 1000:.1f} ms")
    assert two.logs(key["apiKeySecret"], second) == 200


def test_reenable_reaches_the_other_gateway(pair: tuple[Instance, Instance], record_property: Any) -> None:
    one, two = pair
    app = unique("app")
    one.create("/provisioning/1/applications", {"applicationId": app})
    key = one.create("/settings/2/api-keys", {"name": "k", "enabled": False, "platform": [{"applicationId": app}]})
    assert one.logs(key["apiKeySecret"], app) == 401
    assert two.logs(key["apiKeySecret"], app) == 401  # the disabled record is cached for an hour in both
    response = one.admin("PUT", f"/settings/2/api-keys/{key['id']}", {"enabled": True})
    assert response.status_code == 200, response.text
    waited = until(200, lambda: two.logs(key["apiKeySecret"], app))
    record_property("propagation_seconds", waited)
    print(f"re-enable reached the other gateway after {waited * 1000:.1f} ms")


def test_sqlite_workers_share_revocations(echo: str, tmp_path: Path) -> None:
    """`serve --workers 2` on one SQLite file: the worker that did not take the revoke stops the key too.
    Each probe is a new connection, so probes reach both workers."""
    gateway = Instance.start(echo, f"sqlite:///{tmp_path / 'keyscope.db'}", tmp_path, "--workers", "2")
    try:
        key = gateway.create("/settings/2/api-keys", {"name": "primary"})
        for _ in range(40):
            assert gateway.logs(key["apiKeySecret"]) == 200  # warms both workers' caches
        response = gateway.admin("PUT", f"/settings/2/api-keys/{key['id']}", {"enabled": False})
        assert response.status_code == 200, response.text
        refused_in_a_row = 0
        deadline = time.monotonic() + PATIENCE
        while refused_in_a_row < 40:
            assert time.monotonic() < deadline, "a worker kept accepting the revoked key"
            refused_in_a_row = refused_in_a_row + 1 if gateway.logs(key["apiKeySecret"]) == 401 else 0
    finally:
        gateway.stop()
