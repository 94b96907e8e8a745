"""Shared fixtures: async tests run on asyncio through anyio's pytest plugin.

`store_url` is parametrised over the store kinds of `stores.py` (`KEYSCOPE_TEST_STORES`): every test that takes
`store_url` or `store` runs once per kind, each time on a fresh, empty store (PostgreSQL: a fresh schema).
`web` and `signed_in` are the web interface in-process over such a store (helpers in `web_helpers.py`).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from stores import PG_SERVER, STORE_URLS, store_params
from web_helpers import Clock, Web, make_client

from keyscope.store import Store, store_from_url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=store_params())
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


@pytest.fixture
async def web(store: Store) -> AsyncIterator[Web]:
    clock = Clock()
    async with make_client(store, clock) as client:
        yield Web(client, clock, store)


@pytest.fixture
async def signed_in(web: Web) -> Web:
    await web.signin()
    return web
