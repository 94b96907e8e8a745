"""How long the gateway's key lookup takes with 100,000 keys stored (the issue's target: under 50 µs).

Fills a temporary SQLite store (a bulk insert in the store's own schema, after the store's migrations ran),
then times `SQLiteStore.find_key_by_hash` per call, for hits and for misses, inside a running event loop.

    .venv/bin/python benchmarks/bench_key_lookup.py [--keys 100000] [--calls 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from keyscope.core import keys
from keyscope.store.sql import to_text
from keyscope.store.sqlite import SQLiteStore


def fill(path: Path, count: int) -> list[bytes]:
    """Inserts `count` keys, every other one linked to the default application; returns their hashes."""
    now = datetime.now(UTC)
    hashes = [keys.hash_secret(keys.new_secret()) for _ in range(count)]
    key_rows = []
    entry_rows = []
    for index, secret_hash in enumerate(hashes):
        key_id = f"{index:032X}"
        key_rows.append(
            (key_id, f"key {index}", secret_hash.hex(), "abcdefgh", json.dumps(["10.0.0.0/8"]), to_text(now),
             to_text(now + timedelta(days=365)), 1, to_text(now))
        )
        if index % 2:
            entry_rows.append((key_id, 0, f"E{index:031X}", "default", None, None))
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany(
            "INSERT INTO api_keys (id, name, secret_hash, prefix, allowed_ips, valid_from, valid_to, enabled,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            key_rows,
        )
        conn.executemany(
            "INSERT INTO key_entries (key_id, position, entry_key, application_id, entity_id, action)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            entry_rows,
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return hashes


async def measure(store: SQLiteStore, probes: list[bytes]) -> list[float]:
    timings = []
    for secret_hash in probes:
        start = time.perf_counter_ns()
        await store.find_key_by_hash(secret_hash)
        timings.append((time.perf_counter_ns() - start) / 1000)
    return timings


def report(label: str, timings: list[float]) -> None:
    ordered = sorted(timings)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    print(f"{label:<6} calls={len(ordered):>6}  median={statistics.median(ordered):6.1f} µs  p99={p99:6.1f} µs"
          f"  max={ordered[-1]:7.1f} µs")


async def main(count: int, calls: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.db"
        store = SQLiteStore(path)
        await store.open()
        started = time.perf_counter()
        hashes = fill(path, count)
        print(f"filled {count} keys in {time.perf_counter() - started:.1f} s")
        try:
            rng = random.Random(7)
            hits = [rng.choice(hashes) for _ in range(calls)]
            misses = [keys.hash_secret(keys.new_secret()) for _ in range(calls)]
            assert all([await store.find_key_by_hash(h) is not None for h in hits[:100]])
            assert all([await store.find_key_by_hash(h) is None for h in misses[:100]])
            await measure(store, hits[:1000])  # warm the page cache and the statement cache
            for round_ in range(rounds):
                # several rounds: the spread between them shows how much is noise from the rest of the machine
                print(f"round {round_ + 1}")
                report("hits", await measure(store, hits))
                report("misses", await measure(store, misses))
        finally:
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.keys, arguments.calls, arguments.rounds))
