"""Change propagation: a write through one store instance or gateway reaches the others.

Store level: two store instances on one database (PostgreSQL: pushed by NOTIFY; SQLite: polled by tick()).
Process level: two `keyscope serve` processes on one store, and `serve --workers 2` on one SQLite file.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from stores import PG_SERVER as SERVER
from gateway_helpers import init_store
from relay import Relay, terminate

from keyscope.core.keys import display_prefix, hash_secret, new_key_id, new_secret
from keyscope.core.models import ApiKey, Application, Entity, KeyUpdate, PlatformEntry, PlatformLink
from keyscope.store import MissingReference, NotFound, Store
from keyscope.store.postgres import PostgresStore
from keyscope.store.sqlite import SQLiteStore
from keyscope.store.watch import ChangeWatcher

PATIENCE = 15.0  # seconds: generous, the tests assert that a change arrives, not how fast


def new_key(*links: tuple[str | None, str | None], secret: str | None = None) -> ApiKey:
    secret = secret or new_secret()
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
async def test_postgresql_refused_writes_announce_nothing(database: str) -> None:
    """A write that fails rolls back its NOTIFY with everything else; announcements arrive in commit order,
    so one call after the next real write proves the refused ones sent none."""
    writer, reader = PostgresStore(database), PostgresStore(database)
    await writer.open()
    await reader.open()
    heard = Heard()
    watcher = ChangeWatcher(reader, heard)
    try:
        key = await prepare(writer)
        await watcher.start()
        with pytest.raises(MissingReference):
            await writer.update_key(key.id, KeyUpdate(enabled=False, platform=(PlatformLink("nope", None),)))
        with pytest.raises(NotFound):
            await writer.delete_application("nope")
        await revoke(writer, key)
        latest = await writer.revision()
        while watcher.revision != latest:
            await heard.next()
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
async def test_postgresql_watcher_notices_announcements_lost_in_transit(database: str) -> None:
    """A network fault that loses the NOTIFY without closing the connection: the watcher's periodic revision
    check (or, if the connection turns out dead, its reconnect) still reports the change."""
    with Relay() as relay:
        writer = PostgresStore(database)
        reader = PostgresStore(database.replace(":5432/", f":{relay.port}/"))
        await writer.open()
        await reader.open()
        heard = Heard()
        watcher = ChangeWatcher(reader, heard, check_every=0.2, backoff=(0.05, 0.5))
        try:
            key = await prepare(writer)
            await watcher.start()
            relay.dropping.set()
            await revoke(writer, key)
            await asyncio.sleep(0.1)
            relay.dropping.clear()
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
        if store_url.startswith("sqlite:///"):
            init_store(store_url)  # serve refuses a SQLite file that does not exist
        command = [sys.executable, "-m", "keyscope.serve.server", "--upstream", upstream, "--store", store_url,
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


BOTH = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", params=BOTH)
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


def test_revoke_reaches_the_other_gateways_management_api(
    pair: tuple[Instance, Instance], record_property: Any
) -> None:
    """A primary key may call /provisioning/1/*: once revoked anywhere, nowhere, even if a gateway has seen
    no traffic request since."""
    one, two = pair
    key = one.create("/settings/2/api-keys", {"name": "primary"})

    def applications() -> int:
        headers = {"Authorization": f"App {key['apiKeySecret']}", "Connection": "close"}
        return two.client.get("/provisioning/1/applications", headers=headers).status_code

    assert applications() == 200
    response = one.admin("PUT", f"/settings/2/api-keys/{key['id']}", {"enabled": False})
    assert response.status_code == 200, response.text
    waited = until(401, applications)
    record_property("propagation_seconds", waited)
    print(f"revoke reached the other gateway's management API after {waited * 1000:.1f} ms")


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


@pytest.mark.parametrize("kind", BOTH)
def test_workers_share_revocations(echo: str, tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    """`serve --workers 2` on one store: the worker that did not take the revoke stops the key too.
    Each probe is a new connection, so probes reach both workers."""
    store = request.getfixturevalue("pg_database") if kind == "postgresql" else f"sqlite:///{tmp_path / 'k.db'}"
    gateway = Instance.start(echo, store, tmp_path, "--workers", "2")
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


# outages and crashes --------------------------------------------------------------------------------


def seed_keys(store_url: str, count: int) -> list[tuple[str, ApiKey]]:
    """Primary keys written straight into the store (not through a gateway, so no gateway has seen them)."""

    async def go() -> list[tuple[str, ApiKey]]:
        store = PostgresStore(store_url) if store_url.startswith("postgresql") else SQLiteStore(
            store_url.removeprefix("sqlite:///"))
        await store.open()
        try:
            made = []
            for _ in range(count):
                secret = new_secret()
                made.append((secret, await store.create_key(new_key(secret=secret))))
            return made
        finally:
            await store.close()

    return asyncio.run(go())


def test_start_up_with_an_unreachable_store_fails_with_one_line(echo: str, tmp_path: Path) -> None:
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        url = f"postgresql://keyscope:s3cret@127.0.0.1:{refusing.getsockname()[1]}/keys"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
        result = subprocess.run(
            [sys.executable, "-m", "keyscope.serve.server", "--upstream", echo, "--store", url, "--port", str(free_port())],
            env=environment, capture_output=True, timeout=60,
        )
    assert result.returncode != 0
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert "cannot" in lines[0] and "127.0.0.1" in lines[0]
    assert "s3cret" not in lines[0]


@pytest.mark.postgres
def test_store_outage_then_recovery(echo: str, pg_database: str, tmp_path: Path) -> None:
    """PostgreSQL reached through a relay that the test cuts: cached keys keep working, unknown keys and
    management writes get 503 and write nothing; once the relay is back, everything works again by itself,
    change announcements included."""
    (warm_secret, warm), (cold_secret, cold) = seed_keys(pg_database, 2)
    with Relay() as relay:
        gateway = Instance.start(echo, pg_database.replace(":5432/", f":{relay.port}/"), tmp_path)
        try:
            assert gateway.logs(warm_secret) == 200  # cached for an hour from here on
            relay.cut()
            assert gateway.logs(warm_secret) == 200
            assert gateway.logs(cold_secret) == 503
            assert gateway.logs(new_secret()) == 503  # unknown: the client did nothing wrong, not 401
            app = unique("app")
            assert gateway.admin("POST", "/provisioning/1/applications", {"applicationId": app}).status_code == 503
            assert gateway.admin("PUT", f"/settings/2/api-keys/{warm.id}", {"enabled": False}).status_code == 503
            relay.restore()
            until(200, lambda: gateway.logs(cold_secret))
            assert gateway.admin("GET", f"/provisioning/1/applications/{app}").status_code == 404  # nothing written
            assert gateway.logs(warm_secret) == 200  # the refused revoke did not happen either
            revoke_elsewhere(pg_database, warm.id)
            until(401, lambda: gateway.logs(warm_secret))  # announcements are heard again
        finally:
            gateway.stop()


def revoke_elsewhere(store_url: str, key_id: str) -> None:
    async def go() -> None:
        store = PostgresStore(store_url)
        await store.open()
        try:
            await store.update_key(key_id, KeyUpdate(enabled=False))
        finally:
            await store.close()

    asyncio.run(go())


@pytest.fixture(params=BOTH)
def crash_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keyscope.db'}"
        return
    name = f"keyscope_test_{secrets.token_hex(6)}"
    run_sql(f'CREATE DATABASE "{name}"')
    yield f"{SERVER}/{name}"
    run_sql(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_kill_9_during_a_burst_of_writes_leaves_the_store_consistent(
    echo: str, crash_store: str, tmp_path: Path
) -> None:
    gateway = Instance.start(echo, crash_store, tmp_path)
    stop_burst = threading.Event()
    done = [0]

    def burst(worker: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10,
                          headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
            try:
                for n in itertools.count():
                    if stop_burst.is_set():
                        return
                    app, other, ent = f"a{worker}-{n}", f"b{worker}-{n}", f"e{worker}-{n}"
                    client.post("/provisioning/1/applications", json={"applicationId": app})
                    client.post("/provisioning/1/applications", json={"applicationId": other})
                    client.post("/provisioning/1/entities", json={"entityId": ent})
                    client.post("/provisioning/1/associations", json={
                        "resourceType": "NUMBER", "channel": "SMS", "applicationId": app, "entityId": ent,
                        "resourceId": f"r{worker}-{n}"})
                    key = client.post("/settings/2/api-keys", json={
                        "name": "k", "platform": [{"applicationId": app, "entityId": ent}, {"applicationId": app}]})
                    if key.status_code == 200:
                        client.put(f"/settings/2/api-keys/{key.json()['id']}",
                                   json={"platform": [{"applicationId": other}, {"entityId": ent}]})
                    client.delete(f"/provisioning/1/entities/{ent}")
                    client.delete(f"/provisioning/1/applications/{app}")
                    client.delete(f"/provisioning/1/applications/{other}")
                    done[0] += 1
            except httpx.TransportError:
                return  # the gateway is gone

    threads = [threading.Thread(target=burst, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + PATIENCE
    while done[0] < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    gateway.process.send_signal(signal.SIGKILL)
    gateway.process.wait()
    stop_burst.set()
    for thread in threads:
        thread.join()
    gateway.client.close()
    assert done[0] >= 8, "the burst did not get going"
    assert_consistent(crash_store)


def assert_consistent(store_url: str) -> None:
    """Nothing names a missing application or entity, and no key was left enabled without entries (every
    key of the burst was created linked, so that would be a cascade turning it primary)."""
    orphans = [
        "SELECT COUNT(*) FROM key_entries e WHERE e.application_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM applications a WHERE a.application_id = e.application_id)",
        "SELECT COUNT(*) FROM key_entries e WHERE e.entity_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM entities n WHERE n.entity_id = e.entity_id)",
        "SELECT COUNT(*) FROM associations s"
        " WHERE NOT EXISTS (SELECT 1 FROM applications a WHERE a.application_id = s.application_id)",
        "SELECT COUNT(*) FROM associations s WHERE s.entity_id IS NOT NULL"
        " AND NOT EXISTS (SELECT 1 FROM entities n WHERE n.entity_id = s.entity_id)",
        "SELECT COUNT(*) FROM api_keys k WHERE k.enabled = 1"
        " AND NOT EXISTS (SELECT 1 FROM key_entries e WHERE e.key_id = k.id)",
    ]

    async def go() -> None:
        store = PostgresStore(store_url) if store_url.startswith("postgresql") else SQLiteStore(
            store_url.removeprefix("sqlite:///"))
        await store.open()  # also proves no lock was left held by the dead process
        try:
            for sql in orphans:
                row = await store._read_one(sql)
                assert row is not None and row[0] == 0, sql
            await store.create_application(Application(unique("after"), None))  # writes work again
        finally:
            await store.close()

    asyncio.run(go())
    if store_url.startswith("sqlite"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
