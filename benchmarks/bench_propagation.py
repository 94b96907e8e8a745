"""How fast a revocation through one gateway reaches another gateway on the same store.

    .venv/bin/python benchmarks/bench_propagation.py [--rounds 50] [--stores postgresql,sqlite]
    .venv/bin/python benchmarks/bench_propagation.py --drivers     # PostgreSQL driver round trips instead

For each store: an echo backend and two `keyscope serve` processes (A and B) sharing one store (a fresh
PostgreSQL database on 127.0.0.1:5432, dropped afterwards, or one SQLite file), both caching keys for an hour,
so only propagation can make B refuse a key. Each round creates a primary key through A, warms both caches
with a request, revokes the key through A, and probes B over a kept-alive connection until it answers 401.
The figure is the time from the revoke's response to that first refusal.

Targets (issue 5): PostgreSQL median < 100 ms and max < 1 s; SQLite max < 1 s.

`--drivers` times the gateway's lookup query (find_key_by_hash: one indexed join) as sequential round trips
through asyncpg and, when it is importable, psycopg 3 async (not a dependency: install it somewhere on
PYTHONPATH to compare), on a fresh database with 1,000 keys.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx

SERVER = "postgresql://postgres@127.0.0.1:5432"
TOKEN = "bench-admin-token-0123456789abcdef"
PATIENCE = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a server exited with status {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on port {port} after 30 s")


@contextmanager
def running(command: list[str], port: int, log: Path) -> Iterator[None]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    environment["KEYSCOPE_ADMIN_TOKEN"] = TOKEN
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=environment, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_listening(port, process)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pg_sql(sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(f"{SERVER}/test")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


@contextmanager
def store_url(kind: str, folder: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'keyscope.db'}"
        return
    name = f"keyscope_bench_{secrets.token_hex(6)}"
    pg_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{SERVER}/{name}"
    finally:
        pg_sql(f'DROP DATABASE "{name}" WITH (FORCE)')


def gateway_command(upstream: str, store: str, port: int) -> list[str]:
    return [sys.executable, "-m", "keyscope.serve.server", "--upstream", upstream, "--store", store, "--port", str(port),
            "--key-cache-ttl", "3600", "--no-access-log"]


def measure(kind: str, rounds: int, folder: Path) -> list[float]:
    echo_port, a_port, b_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{echo_port}"
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with (
        store_url(kind, folder) as store,
        running([sys.executable, "-m", "keyscope.echo", "--port", str(echo_port)], echo_port, folder / "echo.log"),
        running(gateway_command(upstream, store, a_port), a_port, folder / "a.log"),
        running(gateway_command(upstream, store, b_port), b_port, folder / "b.log"),
        httpx.Client(base_url=f"http://127.0.0.1:{a_port}", timeout=30) as a,
        httpx.Client(base_url=f"http://127.0.0.1:{b_port}", timeout=30) as b,
    ):
        times: list[float] = []
        for _ in range(rounds):
            created = a.post("/settings/2/api-keys", json={"name": "bench"}, headers=admin)
            created.raise_for_status()
            key_id, secret = created.json()["id"], created.json()["apiKeySecret"]
            traffic = {"Authorization": f"App {secret}"}
            assert a.get("/sms/1/logs", headers=traffic).status_code == 200
            assert b.get("/sms/1/logs", headers=traffic).status_code == 200
            a.put(f"/settings/2/api-keys/{key_id}", json={"enabled": False}, headers=admin).raise_for_status()
            revoked = time.perf_counter()
            while (status := b.get("/sms/1/logs", headers=traffic).status_code) != 401:
                if status != 200:
                    raise SystemExit(f"unexpected status {status} from B")
                if time.perf_counter() - revoked > PATIENCE:
                    raise SystemExit(f"{kind}: B still accepted a revoked key after {PATIENCE} s")
            times.append(time.perf_counter() - revoked)
        return times


def report(kind: str, times: list[float]) -> None:
    ms = sorted(t * 1000 for t in times)
    p90 = ms[int(0.9 * (len(ms) - 1))]
    print(f"{kind:<10} rounds={len(ms):<3} median={statistics.median(ms):7.1f} ms  p90={p90:7.1f} ms"
          f"  max={ms[-1]:7.1f} ms  min={ms[0]:6.1f} ms")


# --drivers ------------------------------------------------------------------------------------------
LOOKUP = (
    "SELECT k.id, k.name, k.secret_hash, k.prefix, k.allowed_ips, k.valid_from, k.valid_to, k.enabled,"
    " k.created_at, k.last_used_at, e.entry_key, e.application_id, e.entity_id, e.action"
    " FROM api_keys k LEFT JOIN key_entries e ON e.key_id = k.id WHERE k.secret_hash = {mark}"
    " ORDER BY k.id, e.position"
)


def drivers(count: int) -> None:
    name = f"keyscope_bench_{secrets.token_hex(6)}"
    pg_sql(f'CREATE DATABASE "{name}"')
    try:
        asyncio.run(compare_drivers(f"{SERVER}/{name}", count))
    finally:
        pg_sql(f'DROP DATABASE "{name}" WITH (FORCE)')


async def compare_drivers(url: str, count: int) -> None:
    from keyscope.core.keys import hash_secret, new_secret
    from keyscope.store.postgres import PostgresStore

    store = PostgresStore(url)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(url)
    hashes = [hash_secret(new_secret()).hex() for _ in range(1000)]
    await conn.executemany(
        "INSERT INTO api_keys (id, name, secret_hash, prefix, allowed_ips, valid_from, valid_to, enabled,"
        " created_at) VALUES ($1, 'k', $2, 'p', '[]', '2020-01-01', '2100-01-01', 1, '2020-01-01')",
        [(f"K{i}", h) for i, h in enumerate(hashes)],
    )
    await conn.close()

    fetchers: dict[str, Callable[[str], Awaitable[object]]] = {}
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    sql = LOOKUP.format(mark="$1")
    fetchers["asyncpg pool"] = lambda h: pool.fetch(sql, h)
    store = PostgresStore(url)
    await store.open()
    fetchers["PostgresStore.find_key_by_hash"] = lambda h: store.find_key_by_hash(bytes.fromhex(h))
    try:
        import psycopg
        import psycopg_pool
    except ImportError:
        print("psycopg 3 not importable: not compared (pip install 'psycopg[binary,pool]' to compare)")
        psycopg_pool = None
    ppool = None
    if psycopg_pool is not None:
        ppool = psycopg_pool.AsyncConnectionPool(url, min_size=1, max_size=1, open=False)
        await ppool.open()
        psql = LOOKUP.format(mark="%s")

        async def psycopg_fetch(h: str) -> list[tuple[object, ...]]:
            async with ppool.connection() as c:
                cursor = await c.execute(psql, (h,), prepare=True)
                return await cursor.fetchall()

        fetchers[f"psycopg {psycopg.__version__} pool"] = psycopg_fetch
    # alternate the drivers in blocks, so that load from elsewhere on the machine falls on all of them
    per_block: dict[str, list[float]] = {label: [] for label in fetchers}
    for block in range(-1, 7):  # block -1 warms up (prepared statements, caches) and is not counted
        for label, fetch in fetchers.items():
            start = time.perf_counter()
            for i in range(count):
                await fetch(hashes[(block * count + i) % len(hashes)])
            if block >= 0:
                per_block[label].append((time.perf_counter() - start) / count * 1e6)
    for label, figures in per_block.items():
        print(f"{label:<32} median {statistics.median(figures):6.1f} us, best {min(figures):6.1f} us per lookup"
              f" ({len(figures)} blocks of {count} sequential round trips)")
    await pool.close()
    await store.close()
    if ppool is not None:
        await ppool.close()

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--stores", default="postgresql,sqlite")
    parser.add_argument("--drivers", action="store_true", help="compare PostgreSQL drivers instead")
    args = parser.parse_args()
    if args.drivers:
        drivers(1000)
        return
    for kind in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix=f"keyscope-bench-{kind}-") as folder:
            report(kind, measure(kind, args.rounds, Path(folder)))


if __name__ == "__main__":
    main()
