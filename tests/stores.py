"""The store kinds the tests run on, and how each makes a fresh, empty store.

"sqlite" by default, or the comma-separated kinds in `KEYSCOPE_TEST_STORES` (e.g. `sqlite,postgresql`). A new kind
needs one factory in `STORE_URLS`. conftest.py's `store_url` fixture and the gateway fixtures take their
parameters from `store_params()`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

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
STORE_MARKS = {"postgresql": [pytest.mark.postgres]}

STORE_KINDS: list[str] = [
    kind.strip() for kind in os.environ.get("KEYSCOPE_TEST_STORES", "sqlite").split(",") if kind.strip()
]
_UNKNOWN = sorted(set(STORE_KINDS) - set(STORE_URLS))
if _UNKNOWN:
    raise pytest.UsageError(f"KEYSCOPE_TEST_STORES names unknown store kinds {_UNKNOWN}; known: {sorted(STORE_URLS)}")




def store_params() -> list[Any]:
    """One pytest parameter per store kind, marked as that kind needs (`-m "not postgres"` deselects)."""
    return [pytest.param(kind, marks=STORE_MARKS.get(kind, [])) for kind in STORE_KINDS]
