"""Shared fixtures: async tests run on asyncio through anyio's pytest plugin.

`store_url` is parametrised over the store kinds in `STORE_KINDS` (default just "sqlite"; set
`KEYSCOPE_TEST_STORES=sqlite,postgresql` once a kind has a factory in `STORE_URLS`), so every test that takes
`store_url` or `store` runs once per kind.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from keyscope.store import Store, store_from_url

# kind -> how a test gets a fresh, empty store URL of that kind
STORE_URLS: dict[str, Callable[[Path], str]] = {
    "sqlite": lambda tmp_path: f"sqlite:///{tmp_path}/keyscope.db",
}

STORE_KINDS: list[str] = [kind.strip() for kind in os.environ.get("KEYSCOPE_TEST_STORES", "sqlite").split(",")
                          if kind.strip()]
_unknown = sorted(set(STORE_KINDS) - set(STORE_URLS))
if _unknown:
    raise pytest.UsageError(f"KEYSCOPE_TEST_STORES names unknown store kinds {_unknown}; known: {sorted(STORE_URLS)}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return STORE_URLS[request.param](tmp_path)


@pytest.fixture
async def store(store_url: str, anyio_backend: str) -> AsyncIterator[Store]:
    """An opened store on a fresh database, closed after the test."""
    opened = store_from_url(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
