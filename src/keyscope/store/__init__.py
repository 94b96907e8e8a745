"""Stores: `store_from_url(url)` picks the implementation from the URL's scheme (the store is not opened there)."""

from __future__ import annotations

from keyscope.store.base import Conflict, MissingReference, NotFound, Protected, Store, StoreError, StoreUnavailable

__all__ = [
    "Conflict",
    "MissingReference",
    "NotFound",
    "Protected",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "store_from_url",
]


def store_from_url(url: str, *, create: bool = False) -> Store:
    """`sqlite:///relative.db`, `sqlite:////abs/path.db` (SQLAlchemy's spelling) or `postgresql://...`.

    Raises ValueError with a one-line message for anything else. The store is not opened here. A SQLite file
    that does not exist makes `open()` fail (`StoreMissing`, naming the file and `keyscope init`) unless
    `create=True`: a URL is what an operator types, and a typo must not silently start an empty store.
    (`SQLiteStore(path)` itself still creates its file: code that builds one asks for it explicitly.)
    A PostgreSQL database must exist already whatever `create` says (its tables are made on first open).
    """
    if url.startswith("sqlite:///"):
        from keyscope.store.sqlite import SQLiteStore

        path = url[len("sqlite:///"):]
        if not path:
            raise ValueError(f"store URL {url!r} names no file")
        return SQLiteStore(path, create=create)
    if url.startswith(("postgresql://", "postgres://")):
        from keyscope.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported store URL {url!r}: use sqlite:///FILE or postgresql://USER@HOST:PORT/DB")
