"""What every SQL store rule stands on: the small async transaction interface a subclass implements, the one
stored form of a time, and the base class that runs statements in the caller's transaction or a fresh one.

The rules themselves are mixins on `SQLBase` in their own modules (`named`, `associations`, `keys`, `auditlog`,
`lookups`, `lifecycle`); `sql.SQLStore` puts them together. The audit writer lives here, not with the audit
trail's reads, because every write calls it.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from keyscope.store.audit import KEEP as AUDIT_KEEP
from keyscope.store.audit import Audit, AuditRecord, split_object
from keyscope.store.base import MissingReference, Store, StoreUnavailable

T = TypeVar("T")
Row = tuple[Any, ...]
Args = Sequence[Any]

_RACE_ATTEMPTS = 3


class UniqueViolation(Exception):
    """A driver's unique/primary-key violation, translated by the subclass."""


class ForeignKeyViolation(Exception):
    """A driver's foreign-key violation, translated by the subclass."""


class Transaction(Protocol):
    async def execute(self, sql: str, args: Args = ()) -> int:
        """Runs a statement; returns the number of rows it changed."""

    async def executemany(self, sql: str, rows: Iterable[Args]) -> None: ...

    async def fetchone(self, sql: str, args: Args = ()) -> Row | None: ...

    async def fetchall(self, sql: str, args: Args = ()) -> list[Row]: ...


@asynccontextmanager
async def _joined(tx: Transaction) -> AsyncIterator[Transaction]:
    """An enclosing transaction, entered again: it neither commits nor rolls back here."""
    yield tx


def to_text(moment: datetime) -> str:
    """The one stored form of a time; a naive time is taken as UTC (the design's input rule)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def from_text(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _like(search: str) -> str:
    escaped = search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _check_paging(page: int, size: int) -> None:
    if page < 0 or size < 1:
        raise ValueError(f"paging out of range: page={page} (min 0), size={size} (min 1)")


def _marks(count: int) -> str:
    return ", ".join("?" * count)


class SQLBase(Store):
    """The transaction machinery the rules share; a subclass supplies the connection (see `sql`'s docstring)."""

    # what a subclass provides ---------------------------------------------------------------------
    @abc.abstractmethod
    def _write(self) -> AbstractAsyncContextManager[Transaction]:
        """A write transaction: commits on normal exit, rolls back on any exception."""

    @abc.abstractmethod
    def _read(self) -> AbstractAsyncContextManager[Transaction]:
        """A read-only transaction whose statements all see one snapshot."""

    @abc.abstractmethod
    async def _read_one(self, sql: str, args: Args = ()) -> Row | None: ...

    @abc.abstractmethod
    async def _read_all(self, sql: str, args: Args = ()) -> list[Row]: ...

    # one transaction for many writes ---------------------------------------------------------------
    _tx: Transaction | None = None
    """Set on the store `transaction()` yields: every statement of that copy runs in this transaction."""

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Store]:
        """A view of this store whose writes and reads all run in one transaction, committed when the block
        ends and rolled back whole if it raises. The methods and their rules are the store's own; only where
        the statements run differs. An error from a write ends the transaction (PostgreSQL aborts it), so
        callers let it propagate rather than catch it and go on."""
        if self._tx is not None:
            raise RuntimeError("transactions do not nest")
        async with self._write() as tx:
            bound = copy.copy(self)
            bound._tx = tx
            yield bound

    def _writing(self) -> AbstractAsyncContextManager[Transaction]:
        return _joined(self._tx) if self._tx is not None else self._write()

    def _reading(self) -> AbstractAsyncContextManager[Transaction]:
        return _joined(self._tx) if self._tx is not None else self._read()

    async def _one(self, sql: str, args: Args = ()) -> Row | None:
        if self._tx is not None:
            return await self._tx.fetchone(sql, args)
        return await self._read_one(sql, args)

    async def _all(self, sql: str, args: Args = ()) -> list[Row]:
        if self._tx is not None:
            return await self._tx.fetchall(sql, args)
        return await self._read_all(sql, args)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Runs a write again when a concurrent delete broke a reference it had just checked.

        Only a store whose transactions overlap (PostgreSQL) gets here; the next attempt sees the delete and
        either cascades it or raises the proper MissingReference. Inside `transaction()` there is no next
        attempt: the transaction is lost with the statement that failed.
        """
        if self._tx is not None:
            try:
                return await attempt()
            except ForeignKeyViolation:
                raise StoreUnavailable("a concurrent change broke a reference; retry the whole change") from None
        for _ in range(_RACE_ATTEMPTS - 1):
            try:
                return await attempt()
            except ForeignKeyViolation:
                continue
        try:
            return await attempt()
        except ForeignKeyViolation:
            raise StoreUnavailable("concurrent changes to the same ids kept conflicting; retry later") from None

    async def _changed(self, tx: Transaction) -> None:
        """Bumps the revision; PostgreSQL also announces it."""
        await tx.execute("UPDATE meta SET value = value + 1 WHERE name = 'revision'")

    # a check the rules share ---------------------------------------------------------------------
    async def _require(self, tx: Transaction, table: str, column: str, ident: str, field: str) -> None:
        if await tx.fetchone(f"SELECT 1 FROM {table} WHERE {column} = ?", (ident,)) is None:
            raise MissingReference(field, ident)

    # the audit trail ------------------------------------------------------------------------------
    async def _audit(
        self,
        tx: Transaction,
        audit: Audit | None,
        *,
        related: Sequence[str] = (),
        cascade: dict[str, Any] | None = None,
    ) -> None:
        """Writes the change's record in its transaction (nothing without an `audit`), keeps the last
        AUDIT_KEEP records, and leaves the record on `audit.record` (the caller logs it once committed)."""
        if audit is None:
            return
        objects = tuple(dict.fromkeys([*audit.objects, *related]))
        row = await tx.fetchone("UPDATE meta SET value = value + 1 WHERE name = 'audit' RETURNING value")
        assert row is not None
        seq = int(row[0])
        now = datetime.now(UTC)
        record = AuditRecord(seq, now, audit.principal, audit.action, objects, audit.details, cascade)
        await tx.execute(
            "INSERT INTO audit_log (seq, at, principal, action, record) VALUES (?, ?, ?, ?, ?)",
            (seq, to_text(now), audit.principal, audit.action, record.stored()),
        )
        await tx.executemany(
            "INSERT INTO audit_objects (object_id, kind, seq) VALUES (?, ?, ?)",
            [(ident, kind, seq) for kind, ident in map(split_object, objects)],
        )
        if seq > AUDIT_KEEP:
            await tx.execute("DELETE FROM audit_objects WHERE seq <= ?", (seq - AUDIT_KEEP,))
            await tx.execute("DELETE FROM audit_log WHERE seq <= ?", (seq - AUDIT_KEEP,))
        audit.record = record


__all__ = [
    "Args",
    "ForeignKeyViolation",
    "Row",
    "SQLBase",
    "Transaction",
    "UniqueViolation",
    "from_text",
    "to_text",
]
