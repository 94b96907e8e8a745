"""The embedded store: one SQLite file in WAL mode, shared safely by several processes.

Reads run synchronously on a query-only connection inside the async method: the gateway's lookups are
indexed and take microseconds, less than a hop to a thread would cost, and WAL readers never wait for a
writer. Writes run on one dedicated thread (BEGIN IMMEDIATE with a busy timeout), so a lock held by another
process (a second gateway worker, the CLI) delays that write but never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from keyscope.store.base import StoreError, StoreUnavailable
from keyscope.store.sql import Args, ForeignKeyViolation, Row, SQLStore, UniqueViolation

T = TypeVar("T")

_MMAP_BYTES = 1 << 30
_CACHE_KIB = 64 * 1024
_UNIQUE = {"SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"}


def _execute(conn: sqlite3.Connection, sql: str, args: Args) -> int:
    return conn.execute(sql, args).rowcount


def _executemany(conn: sqlite3.Connection, sql: str, rows: Iterable[Args]) -> None:
    conn.executemany(sql, rows)


def _fetchall(conn: sqlite3.Connection, sql: str, args: Args) -> list[Row]:
    return conn.execute(sql, args).fetchall()


def _begin(conn: sqlite3.Connection) -> None:
    # A transaction left open by a cancelled caller is abandoned here, never committed.
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")


def _commit(conn: sqlite3.Connection) -> None:
    conn.execute("COMMIT")


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    # The caller is already failing with a better error; the next BEGIN starts clean.
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


def _journal_wal(conn: sqlite3.Connection, timeout: float) -> str:
    """`PRAGMA journal_mode = WAL`, waiting as busy_timeout would: while another process is converting a fresh
    file, SQLite answers `database is locked` at once, without calling its busy handler."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchall()[0][0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class StoreMissing(StoreUnavailable):
    """The SQLite file does not exist and the store was not asked to create it (a typo must not make a store)."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"SQLite store {path!r} does not exist: create it with `keyscope init --store sqlite:///{path}`"
        )


class SQLiteStore(SQLStore):
    dialect = "sqlite"

    def __init__(self, path: str | os.PathLike[str], busy_timeout: float = 5.0, *, create: bool = True) -> None:
        """`create=False`: `open()` refuses a file that does not exist instead of making an empty store."""
        self.path = os.fspath(path)
        self.create = create
        self.url = f"sqlite:///{self.path}"
        self._busy_ms = int(busy_timeout * 1000)
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()

    # lifecycle ------------------------------------------------------------------------------------
    async def open(self) -> None:
        if self._writer is not None:
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise StoreUnavailable(f"cannot open SQLite store {self.path!r}: folder {folder!r} does not exist")
        if os.path.isdir(self.path):
            raise StoreUnavailable(f"cannot open SQLite store {self.path!r}: it is a folder, not a file")
        if not self.create and not os.path.exists(self.path):
            raise StoreMissing(self.path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyscope-sqlite-writer")
        try:
            self._writer = await asyncio.get_running_loop().run_in_executor(self._executor, self._connect, False)
            await self._migrate()
            self._reader = self._connect(True)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Waits for a write in progress, so the writer thread is never closed mid-transaction."""
        if self._writer is not None:
            async with self._lock:
                await self._close()
        else:
            await self._close()

    async def _close(self) -> None:
        reader, writer, executor = self._reader, self._writer, self._executor
        self._reader = self._writer = self._executor = None
        if reader is not None:
            reader.close()
        if executor is not None:
            if writer is not None:
                # The last connection to close checkpoints the WAL: do that off the event loop.
                await asyncio.get_running_loop().run_in_executor(executor, writer.close)
            executor.shutdown(wait=False)

    def _connect(self, query_only: bool) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, cached_statements=256)
            try:
                conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
                conn.execute("PRAGMA foreign_keys = ON")
                mode = _journal_wal(conn, self._busy_ms / 1000)
                if str(mode).lower() != "wal":
                    raise StoreUnavailable(f"cannot open SQLite store {self.path!r}: WAL mode refused ({mode})")
                conn.execute("PRAGMA synchronous = NORMAL")
                if query_only:
                    conn.execute("PRAGMA query_only = ON")
                    # Lookups hit random keys: map the file and keep a large page cache, so that a lookup
                    # costs no read() system calls once the pages are warm.
                    conn.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
                    conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            except BaseException:
                conn.close()
                raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path!r}: {exc}") from exc
        return conn

    def _translate(self, exc: sqlite3.Error) -> Exception:
        if isinstance(exc, sqlite3.IntegrityError):
            name = getattr(exc, "sqlite_errorname", "")
            if name in _UNIQUE:
                return UniqueViolation(str(exc))
            if name == "SQLITE_CONSTRAINT_FOREIGNKEY":
                return ForeignKeyViolation(str(exc))
            return StoreError(f"SQLite store {self.path!r} refused a write: {exc}")
        return StoreUnavailable(f"SQLite store {self.path!r}: {exc}")

    # writes: one transaction at a time on the writer thread ---------------------------------------
    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        writer, executor = self._writer, self._executor
        if writer is None or executor is None:
            raise StoreUnavailable(f"SQLite store {self.path!r} is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, writer, *args)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[_WriteTransaction]:
        async with self._lock:
            try:
                await self._on_writer(_begin)
                yield _WriteTransaction(self)
                await self._on_writer(_commit)
            except BaseException:
                self._abandon()
                raise

    def _abandon(self) -> None:
        """Queues a rollback on the writer thread without waiting for it.

        A statement already handed to that thread (a BEGIN waiting for another process's lock, say) runs
        to its end whatever happens to the task that sent it; a cancelled caller must not wait for it. The
        rollback runs right behind it, before any later write (the thread takes jobs in order), so the
        file's write lock is never left held by an abandoned transaction.
        """
        writer, executor = self._writer, self._executor
        if writer is not None and executor is not None:
            executor.submit(_rollback_quietly, writer)

    # reads: synchronous, on the query-only connection ---------------------------------------------
    def _query(self, sql: str, args: Args) -> list[Row]:
        reader = self._reader
        if reader is None:
            raise StoreUnavailable(f"SQLite store {self.path!r} is not open")
        try:
            return reader.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    async def _read_one(self, sql: str, args: Args = ()) -> Row | None:
        rows = self._query(sql, args)
        return rows[0] if rows else None

    async def _read_all(self, sql: str, args: Args = ()) -> list[Row]:
        return self._query(sql, args)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[_ReadTransaction]:
        """Nothing in here awaits for real, so no other task can use the reader in between."""
        self._query("BEGIN", ())
        try:
            yield _ReadTransaction(self)
        finally:
            self._query("COMMIT", ())


class _WriteTransaction:
    __slots__ = ("_store",)

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    async def execute(self, sql: str, args: Args = ()) -> int:
        return await self._store._on_writer(_execute, sql, args)

    async def executemany(self, sql: str, rows: Iterable[Args]) -> None:
        await self._store._on_writer(_executemany, sql, list(rows))

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None:
        rows = await self._store._on_writer(_fetchall, sql, args)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]:
        return await self._store._on_writer(_fetchall, sql, args)


class _ReadTransaction:
    __slots__ = ("_store",)

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    async def execute(self, sql: str, args: Args = ()) -> int:
        return len(self._store._query(sql, args))

    async def executemany(self, sql: str, rows: Iterable[Args]) -> None:
        for args in rows:
            self._store._query(sql, args)

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None:
        rows = self._store._query(sql, args)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]:
        return self._store._query(sql, args)
