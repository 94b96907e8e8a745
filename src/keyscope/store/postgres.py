"""The shared store: one PostgreSQL database behind several workers and gateway instances (asyncpg pool).

Every rule is SQLStore's; this module connects, spells `?` as `$n`, and translates driver errors. Each write
transaction first takes one transaction-scoped advisory lock, so writes run one at a time across every
instance, as SQLite's BEGIN IMMEDIATE makes them: the cascades' check-then-write steps rely on that, and
management writes are rare. The same lock makes concurrent start-ups migrate once: the first applies the
migrations, the others wait for its commit and then find nothing left to do.

A write that changes what a key may do also sends `NOTIFY keyscope_changes, '<revision>'` in its transaction
(delivered at commit only); `listen()` opens the dedicated connection that hears it (see `keyscope.store.watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from keyscope.store.base import StoreError, StoreUnavailable
from keyscope.store.sql import Args, ForeignKeyViolation, Row, SQLStore, Transaction, UniqueViolation

CHANNEL = "keyscope_changes"
# pg_advisory_xact_lock key: the bytes of "keyscope" as a bigint. Advisory locks are per database.
WRITE_LOCK = f"SELECT pg_advisory_xact_lock({int.from_bytes(b'keyscope', 'big') - 2**63})"
_BUMP = (
    "WITH bumped AS (UPDATE meta SET value = value + 1 WHERE name = 'revision' RETURNING value)"
    f" SELECT pg_notify('{CHANNEL}', value::text) FROM bumped"
)

# SQLSTATE classes that mean "cannot reach or use the server now", as opposed to a refused statement:
# 08 connection, 53 resources, 57 operator intervention (shutdown), 28 authorization, 3D unknown database,
# 25006 read-only (a standby), 40 transaction rollback (serialization, deadlock).
_UNAVAILABLE_CLASSES = ("08", "53", "57", "28", "3D", "40")
# A connection that died under us: the statement never ran, or ran in a transaction that died with it.
_CONNECTION_LOST = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    # a server-side kill the protocol has not noticed yet shows up as an operation "already in progress"
    asyncpg.exceptions.InternalClientError,
)


def _lost(exc: BaseException) -> bool:
    """A timeout is not a lost connection: retrying it would only multiply the wait."""
    return isinstance(exc, _CONNECTION_LOST) and not isinstance(exc, TimeoutError)


@lru_cache(maxsize=2048)
def to_dollar(sql: str) -> str:
    """`?` -> `$1, $2, ...`, skipping quoted text. A parameter tested only with IS [NOT] NULL gives
    PostgreSQL nothing to infer its type from; every such parameter in the store is an id, so it is text."""
    parts = re.split(r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")", sql)
    count = 0

    def number(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}::text{match.group(1)}" if match.group(1) else f"${count}"

    for index in range(0, len(parts), 2):  # even indexes are outside quotes
        parts[index] = re.sub(r"\?(\s+IS\s+(?:NOT\s+)?NULL\b)?", number, parts[index], flags=re.IGNORECASE)
    return "".join(parts)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _rowcount(status: str) -> int:
    """asyncpg answers a command tag such as 'UPDATE 3' or 'INSERT 0 1': the count is its last word."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresStore(SQLStore):
    dialect = "postgresql"
    migration_lock = None  # every write, the migration included, already holds WRITE_LOCK (see _write)

    def __init__(
        self,
        url: str,
        *,
        max_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.display_url = redact(url)
        self._max_size = max_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None

    # lifecycle ------------------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            # min_size=0: asyncpg then keeps no connection floor, whose background reconnects would log a
            # traceback each retry during an outage; connections made stay open (no inactive lifetime).
            # The migration below makes the first connection, so an unreachable store still fails here.
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=0,
                max_size=self._max_size,
                max_inactive_connection_lifetime=0,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                statement_cache_size=256,
                server_settings={
                    "application_name": "keyscope",
                    # a client that vanished mid-transaction (network partition) must not hold WRITE_LOCK
                    # until TCP gives up on it, which can take hours; our transactions never sit idle
                    "idle_in_transaction_session_timeout": "60000",
                    "standard_conforming_strings": "on",  # the store's LIKE patterns escape with a backslash
                },
            )
        except Exception as exc:
            raise self._translate(exc, "cannot connect to PostgreSQL store") from exc
        try:
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self._connect_timeout)
            except asyncio.CancelledError:
                pool.terminate()
                raise
            except Exception:
                pool.terminate()  # a server that does not answer the goodbye cannot hold up shutdown

    def _opened(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable(f"PostgreSQL store {self.display_url} is not open")
        return self._pool

    def _translate(self, exc: BaseException, doing: str = "PostgreSQL store") -> Exception:
        if isinstance(exc, asyncpg.exceptions.UniqueViolationError):
            return UniqueViolation(str(exc))
        if isinstance(exc, asyncpg.exceptions.ForeignKeyViolationError):
            return ForeignKeyViolation(str(exc))
        if isinstance(exc, asyncpg.exceptions.IntegrityConstraintViolationError):
            return StoreError(f"PostgreSQL store {self.display_url} refused a write: {exc}")
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, TimeoutError):
            return StoreUnavailable(f"{doing} {self.display_url}: no answer within the timeout")
        if isinstance(exc, _CONNECTION_LOST):
            return StoreUnavailable(f"{doing} {self.display_url}: {reason}")
        if isinstance(exc, asyncpg.PostgresError):
            state = exc.sqlstate or ""
            if state.startswith(_UNAVAILABLE_CLASSES) or state == "25006":
                return StoreUnavailable(f"{doing} {self.display_url}: {reason}")
            return StoreError(f"PostgreSQL store {self.display_url}: {reason}")
        return StoreUnavailable(f"{doing} {self.display_url}: {reason}")

    # writes ---------------------------------------------------------------------------------------
    @asynccontextmanager
    async def _write(self) -> AsyncIterator[Transaction]:
        async with self._transaction(write=True) as tx:
            await tx.execute(WRITE_LOCK)
            yield tx

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[Transaction]:
        async with self._transaction(write=False) as tx:
            yield tx

    @asynccontextmanager
    async def _transaction(self, *, write: bool) -> AsyncIterator[Transaction]:
        """Commits on normal exit, rolls back on any exception; a connection lost meanwhile rolls back on
        the server by itself, and the pool replaces it."""
        pool, conn, transaction = await self._begin(write)
        try:
            try:
                yield _Transaction(self, conn)
            except BaseException:
                # The original error says more; the pool resets the connection on release.
                with contextlib.suppress(Exception):
                    await transaction.rollback()
                raise
            try:
                await transaction.commit()
            except Exception as exc:
                raise self._translate(exc) from exc
        finally:
            await pool.release(conn)

    async def _begin(self, write: bool) -> tuple[asyncpg.Pool, asyncpg.Connection, Any]:
        """A pooled connection with its transaction started. Pooled connections the server has dropped are
        replaced (nothing has been sent on them yet, so that is always safe)."""
        pool = self._opened()
        attempts = 0
        while True:
            attempts += 1
            try:
                conn = await pool.acquire()
            except Exception as exc:
                raise self._translate(exc, "cannot connect to PostgreSQL store") from exc
            if write:
                transaction = conn.transaction()
            else:
                transaction = conn.transaction(isolation="repeatable_read", readonly=True)
            try:
                await transaction.start()
            except Exception as exc:
                if await self._discard(pool, conn, exc, attempts):
                    continue
                raise self._translate(exc) from exc
            return pool, conn, transaction

    async def _changed(self, tx: Transaction) -> None:
        await tx.execute(_BUMP)

    # reads on the request path --------------------------------------------------------------------
    async def _read_one(self, sql: str, args: Args = ()) -> Row | None:
        rows = await self._read_all(sql, args)
        return rows[0] if rows else None

    async def _read_all(self, sql: str, args: Args = ()) -> list[Row]:
        """One round trip. A pooled connection the server dropped (restart, idle kill) is found dead only
        when used, so a read that fails that way is tried again on another (at worst a new) connection."""
        pool = self._opened()
        query = to_dollar(sql)
        attempts = 0
        while True:
            attempts += 1
            try:
                conn = await pool.acquire()
            except Exception as exc:
                raise self._translate(exc, "cannot connect to PostgreSQL store") from exc
            try:
                records = await conn.fetch(query, *args)
            except Exception as exc:
                if await self._discard(pool, conn, exc, attempts):
                    continue
                raise self._translate(exc) from exc
            await pool.release(conn)
            return [tuple(record) for record in records]

    async def _discard(self, pool: asyncpg.Pool, conn: asyncpg.Connection, exc: BaseException, attempts: int) -> bool:
        """Returns a connection after a failure; one that may be dead is closed so the pool replaces it.
        True if the caller should try again: the connection was lost and the pool may still hold others
        that died with it (at most max_size), after which a new connection either works or fails to open."""
        lost = _lost(exc)
        if lost:
            with contextlib.suppress(asyncpg.exceptions.InterfaceError):  # closed already: the pool took it back
                conn.terminate()
        await pool.release(conn)
        return lost and attempts <= self._max_size and not pool.is_closing()

    # change announcements -------------------------------------------------------------------------
    async def listen(self, on_notify: Callable[[int], None]) -> ChangeListener:
        """A dedicated connection (outside the pool) calling on_notify(revision) for every change committed
        by any instance. Raises StoreUnavailable if it cannot connect."""
        try:
            conn = await asyncpg.connect(
                self.url, timeout=self._connect_timeout, server_settings={"application_name": "keyscope-listen"}
            )
        except Exception as exc:
            raise self._translate(exc, "cannot listen on PostgreSQL store") from exc
        listener = ChangeListener(self, conn, on_notify)
        try:
            await listener.start()
        except BaseException:
            conn.terminate()
            raise
        return listener


class ChangeListener:
    """One LISTEN connection. `lost` is set once it is closed, by either side; it is never reused."""

    def __init__(self, store: PostgresStore, conn: asyncpg.Connection, on_notify: Callable[[int], None]) -> None:
        self._store = store
        self._conn = conn
        self._on_notify = on_notify
        self.lost = asyncio.Event()

    async def start(self) -> None:
        self._conn.add_termination_listener(self._terminated)
        try:
            await self._conn.add_listener(CHANNEL, self._notified)
        except Exception as exc:
            raise self._store._translate(exc, "cannot listen on PostgreSQL store") from exc

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._on_notify(int(payload) if payload.isdigit() else 0)

    def _terminated(self, conn: Any) -> None:
        self.lost.set()

    async def revision(self, timeout: float = 5.0) -> int:
        """The current revision, read on this connection: also proves the connection is alive."""
        try:
            value = await self._conn.fetchval("SELECT value FROM meta WHERE name = 'revision'", timeout=timeout)
        except Exception as exc:
            self.lost.set()
            self._conn.terminate()
            raise self._store._translate(exc) from exc
        return int(value) if value is not None else 0

    async def close(self) -> None:
        self.lost.set()
        if self._conn.is_closed():
            return
        try:
            await asyncio.wait_for(self._conn.close(), 2.0)
        except Exception:
            self._conn.terminate()


class _Transaction:
    __slots__ = ("_conn", "_store")

    def __init__(self, store: PostgresStore, conn: asyncpg.Connection) -> None:
        self._store = store
        self._conn = conn

    async def execute(self, sql: str, args: Args = ()) -> int:
        try:
            return _rowcount(await self._conn.execute(to_dollar(sql), *args))
        except Exception as exc:
            raise self._store._translate(exc) from exc

    async def executemany(self, sql: str, rows: Iterable[Args]) -> None:
        try:
            await self._conn.executemany(to_dollar(sql), list(rows))
        except Exception as exc:
            raise self._store._translate(exc) from exc

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None:
        rows = await self.fetchall(sql, args)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]:
        try:
            return [tuple(record) for record in await self._conn.fetch(to_dollar(sql), *args)]
        except Exception as exc:
            raise self._store._translate(exc) from exc


__all__ = ["CHANNEL", "ChangeListener", "PostgresStore", "redact", "to_dollar"]
