"""Shared fixtures: async tests run on asyncio through anyio's pytest plugin.

`store_url` is parametrised over the store kinds in `STORE_KINDS`: "sqlite" by default, or the comma-separated
kinds in `KEYSCOPE_TEST_STORES` (e.g. `sqlite,postgresql`). Every test that takes `store_url` or `store` runs
once per kind, each time on a fresh, empty store (PostgreSQL: a fresh schema). A new kind needs one factory in
`STORE_URLS`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from keyscope.store import Store, store_from_url

# The PostgreSQL server the "postgresql" kind creates its throwaway databases on (trust auth).
PG_SERVER = os.environ.get("KEYSCOPE_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


@contextmanager
def _sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path}/keyscope.db"


def _pg_admin(statement: str) -> None:
    """Runs one statement on the server's `test` database, on a thread of its own so that it never meets the
    event loop of the test being set up."""
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(f"{PG_SERVER}/test")
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, run()).result()


@contextmanager
def _postgresql_url(tmp_path: Path) -> Iterator[str]:
    """A fresh schema in the `test` database, alone on the search path: as isolated as a database for the
    store (every table lives in it) and far quicker to create and drop."""
    schema = f"keyscope_test_{secrets.token_hex(6)}"
    _pg_admin(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_SERVER}/test?search_path={schema}"
    finally:
        _pg_admin(f"SET lock_timeout = '10s'; DROP SCHEMA \"{schema}\" CASCADE")


# kind -> a context manager giving the URL of a fresh, empty store of that kind (and cleaning up after)
STORE_URLS: dict[str, Callable[[Path], AbstractContextManager[str]]] = {
    "sqlite": _sqlite_url,
    "postgresql": _postgresql_url,
}
# pytest marks per kind, so `-m "not postgres"` deselects the runs that need the server
_MARKS = {"postgresql": [pytest.mark.postgres]}

STORE_KINDS: list[str] = [
    kind.strip() for kind in os.environ.get("KEYSCOPE_TEST_STORES", "sqlite").split(",") if kind.strip()
]
_unknown = sorted(set(STORE_KINDS) - set(STORE_URLS))
if _unknown:
    raise pytest.UsageError(f"KEYSCOPE_TEST_STORES names unknown store kinds {_unknown}; known: {sorted(STORE_URLS)}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=[pytest.param(kind, marks=_MARKS.get(kind, [])) for kind in STORE_KINDS])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with STORE_URLS[request.param](tmp_path) as url:
        yield url


@pytest.fixture
async def store(store_url: str, anyio_backend: str) -> AsyncIterator[Store]:
    """An opened store on a fresh database, closed after the test."""
    opened = store_from_url(store_url, create=True)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def database(anyio_backend: str) -> AsyncIterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped afterwards with any connection a test left open.

    A whole database, not a schema, where a test needs its own NOTIFY channels or its own migrations.
    """
    import asyncpg

    name = f"keyscope_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(f"{PG_SERVER}/test")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{PG_SERVER}/{name}"
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
