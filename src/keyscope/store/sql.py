"""Every store rule, written once in portable SQL over a small async transaction interface.

Subclasses (SQLite, PostgreSQL) only connect, run statements and translate driver errors: `_write()` opens a
write transaction, `_read()` a consistent read snapshot, `_read_one`/`_read_all` run a single read on the
request path. Statements use `?` placeholders; a dialect that spells them differently rewrites them.
Times are stored as ISO-8601 UTC text with microseconds and `+00:00`, so text order is time order.
"""

from __future__ import annotations

import abc
import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol, TypeVar

from keyscope.core import ratelimits
from keyscope.core.keys import new_entry_key
from keyscope.core.models import (
    DEFAULT_APPLICATION,
    UNSET,
    ApiKey,
    Application,
    Association,
    AssociationFilter,
    CascadeReport,
    Entity,
    KeyUpdate,
    Page,
    PlatformEntry,
    PlatformLink,
)
from keyscope.core.ratelimits import RateLimit
from keyscope.store.audit import KEEP as AUDIT_KEEP
from keyscope.store.audit import Audit, AuditRecord, object_name, split_object
from keyscope.store.base import Conflict, MissingReference, NotFound, Protected, Store, StoreUnavailable
from keyscope.store.migrations import LATEST, MIGRATIONS, VERSION_TABLE
from keyscope.store.outbox import NO_LINKS_LEFT, UPDATED, Recorder

T = TypeVar("T")
Row = tuple[Any, ...]
Args = Sequence[Any]

DEFAULT_APPLICATION_NAME = "Default"
_CHUNK = 500  # ids per IN (...) list, well under every dialect's parameter limit
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


_KEY_COLUMNS = (
    "k.id, k.name, k.secret_hash, k.prefix, k.allowed_ips, k.valid_from, k.valid_to, k.enabled,"
    " k.created_at, k.last_used_at, e.entry_key, e.application_id, e.entity_id, e.action, k.rate_limits, k.enforce"
)
_KEYS_WHERE = (
    f"SELECT {_KEY_COLUMNS} FROM api_keys k LEFT JOIN key_entries e ON e.key_id = k.id"
    " WHERE {where} ORDER BY k.id, e.position"
)
# one key with the limits of the applications its entries name, in the same round trip: what the gateway
# looks up, and what `get_key` answers (so that `explain` by key id sees the limits the gateway would count)
_KEY_WITH_LIMITS = (
    f"SELECT {_KEY_COLUMNS}, a.rate_limits FROM api_keys k LEFT JOIN key_entries e ON e.key_id = k.id"
    " LEFT JOIN applications a ON a.application_id = e.application_id"
    " WHERE {where} ORDER BY k.id, e.position"
)
_FIND_BY_HASH = _KEY_WITH_LIMITS.format(where="k.secret_hash = ?")
_GET_KEY = _KEY_WITH_LIMITS.format(where="k.id = ?")
_ASSOCIATION_COLUMNS = "resource_type, channel, application_id, entity_id, resource_id"


def _exact_association(
    resource_type: str, channel: str, application_id: str, resource_id: str, entity_id: str | None
) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause naming exactly one association (no untyped `? IS NULL`: PostgreSQL refuses it)."""
    where = "resource_type = ? AND channel = ? AND resource_id = ? AND application_id = ?"
    args = (resource_type, channel, resource_id, application_id)
    if entity_id is None:
        return f"{where} AND entity_id IS NULL", args
    return f"{where} AND entity_id = ?", (*args, entity_id)


def _keys_from_rows(rows: list[Row]) -> list[ApiKey]:
    """Groups joined key/entry rows (ordered by key id, then entry position) into keys."""
    keys: list[ApiKey] = []
    current: Row | None = None
    entries: list[PlatformEntry] = []
    applications: dict[str, tuple[RateLimit, ...]] = {}  # with _FIND_BY_HASH: the entries' applications' limits
    for row in rows:
        if current is None or row[0] != current[0]:
            if current is not None:
                keys.append(_key(current, entries, applications))
            current, entries, applications = row, [], {}
        if row[10] is not None:
            entries.append(PlatformEntry(row[10], row[11], row[12], row[13]))
            if len(row) > 16 and row[16] is not None and row[16] != "[]":
                applications[row[11]] = _rate_limits(row[16])
    if current is not None:
        keys.append(_key(current, entries, applications))
    return keys


@lru_cache(maxsize=4096)
def _rate_limits(text: str) -> tuple[RateLimit, ...]:
    """A stored `rate_limits` column (JSON, written by keyscope itself)."""
    return tuple(RateLimit(item["requests"], item["per"]) for item in json.loads(text)) if text != "[]" else ()


def _rate_limits_text(limits: Sequence[RateLimit]) -> str:
    return json.dumps(ratelimits.to_doc(limits))


@lru_cache(maxsize=4096)
def _allowed_ips(text: str) -> tuple[str, ...]:
    """Most keys share a handful of IP lists: parse each once (it is on the lookup path)."""
    return tuple(json.loads(text))


def _key(row: Row, entries: list[PlatformEntry], applications: dict[str, tuple[RateLimit, ...]]) -> ApiKey:
    return ApiKey(
        id=row[0],
        name=row[1],
        secret_hash=bytes.fromhex(row[2]),
        prefix=row[3],
        allowed_ips=_allowed_ips(row[4]),
        valid_from=datetime.fromisoformat(row[5]),
        valid_to=datetime.fromisoformat(row[6]),
        enabled=bool(row[7]),
        platform=tuple(entries),
        created_at=datetime.fromisoformat(row[8]),
        last_used=datetime.fromisoformat(row[9]) if row[9] is not None else None,
        rate_limits=_rate_limits(row[14]),
        enforce=bool(row[15]),
        application_limits=tuple(applications.items()),
    )


class SQLStore(Store):
    """The rules; a subclass supplies the connection (see the module docstring)."""

    dialect: str = "sqlite"
    # Serialises migrations across processes where BEGIN alone does not (PostgreSQL's advisory lock).
    migration_lock: str | None = None

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

    # lifecycle ------------------------------------------------------------------------------------
    async def _migrate(self) -> None:
        """Applies pending migrations and makes sure `default` exists, in one transaction.

        The version is read inside the write transaction, so of several processes starting at once one
        migrates and the others then find nothing left to do.
        """
        async with self._write() as tx:
            if self.migration_lock is not None:
                await tx.execute(self.migration_lock)
            await tx.execute(VERSION_TABLE)
            row = await tx.fetchone("SELECT MAX(version) FROM schema_version")
            current = row[0] if row is not None and row[0] is not None else 0
            if current > LATEST:
                raise StoreUnavailable(
                    f"store schema version {current} is newer than this keyscope understands ({LATEST})"
                )
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                for statement in migration.sql(self.dialect):
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.description, to_text(datetime.now(UTC))),
                )
            await tx.execute(
                "INSERT INTO applications (application_id, application_name) VALUES (?, ?)"
                " ON CONFLICT (application_id) DO NOTHING",
                (DEFAULT_APPLICATION, DEFAULT_APPLICATION_NAME),
            )

    # applications and entities --------------------------------------------------------------------
    async def create_application(self, app: Application, *, audit: Audit | None = None) -> None:
        await self._create_named("applications", "application_id", "application", app.application_id,
                                 app.application_name, audit, {"rate_limits": _rate_limits_text(app.rate_limits)})

    async def get_application(self, application_id: str) -> Application:
        row = await self._one(
            "SELECT application_id, application_name, rate_limits FROM applications WHERE application_id = ?",
            (application_id,),
        )
        if row is None:
            raise NotFound("application", application_id)
        return Application(row[0], row[1], _rate_limits(row[2]))

    async def list_applications(self, page: int, size: int, search: str | None = None) -> Page[Application]:
        total, rows = await self._list_named("applications", "application_id", page, size, search, ", rate_limits")
        return Page([Application(row[0], row[1], _rate_limits(row[2])) for row in rows], page, size, total)

    async def set_application_rate_limits(
        self, application_id: str, limits: Sequence[RateLimit], *, audit: Audit | None = None
    ) -> None:
        """Replaces the application's limits; a revision change, since key records carry them (the gateway's
        cached keys are dropped)."""
        async with self._writing() as tx:
            changed = await tx.execute("UPDATE applications SET rate_limits = ? WHERE application_id = ?",
                                       (_rate_limits_text(limits), application_id))
            if not changed:
                raise NotFound("application", application_id)
            await self._changed(tx)
            await self._audit(tx, audit)

    async def rename_application(
        self, application_id: str, name: str | None, *, audit: Audit | None = None
    ) -> None:
        await self._rename("applications", "application_id", "application", application_id, name, audit)

    async def delete_application(self, application_id: str, *, audit: Audit | None = None) -> CascadeReport:
        if application_id == DEFAULT_APPLICATION:
            raise Protected(f"the {DEFAULT_APPLICATION!r} application cannot be deleted")
        return await self._delete_named("applications", "application_id", "application", application_id, audit)

    async def create_entity(self, entity: Entity, *, audit: Audit | None = None) -> None:
        await self._create_named("entities", "entity_id", "entity", entity.entity_id, entity.entity_name, audit)

    async def get_entity(self, entity_id: str) -> Entity:
        row = await self._one("SELECT entity_id, entity_name FROM entities WHERE entity_id = ?", (entity_id,))
        if row is None:
            raise NotFound("entity", entity_id)
        return Entity(row[0], row[1])

    async def list_entities(self, page: int, size: int, search: str | None = None) -> Page[Entity]:
        total, rows = await self._list_named("entities", "entity_id", page, size, search)
        return Page([Entity(row[0], row[1]) for row in rows], page, size, total)

    async def rename_entity(self, entity_id: str, name: str | None, *, audit: Audit | None = None) -> None:
        await self._rename("entities", "entity_id", "entity", entity_id, name, audit)

    async def delete_entity(self, entity_id: str, *, audit: Audit | None = None) -> CascadeReport:
        return await self._delete_named("entities", "entity_id", "entity", entity_id, audit)

    async def _create_named(
        self, table: str, column: str, kind: str, ident: str, name: str | None, audit: Audit | None = None,
        more: dict[str, Any] | None = None,
    ) -> None:
        name_column = column.replace("_id", "_name")
        more = more or {}
        columns = ", ".join((column, name_column, *more))
        try:
            async with self._writing() as tx:
                await tx.execute(f"INSERT INTO {table} ({columns}) VALUES ({_marks(2 + len(more))})",
                                 (ident, name, *more.values()))
                await self._audit(tx, audit)
        except UniqueViolation:
            raise Conflict(kind, ident) from None

    async def _list_named(
        self, table: str, column: str, page: int, size: int, search: str | None, more: str = ""
    ) -> tuple[int, list[Row]]:
        _check_paging(page, size)
        name_column = column.replace("_id", "_name")
        where, args = "", ()
        if search:
            pattern = _like(search)
            where = (
                f" WHERE LOWER({column}) LIKE ? ESCAPE '\\'"
                f" OR LOWER(COALESCE({name_column}, '')) LIKE ? ESCAPE '\\'"
            )
            args = (pattern, pattern)
        async with self._reading() as tx:
            total = await tx.fetchone(f"SELECT COUNT(*) FROM {table}{where}", args)
            rows = await tx.fetchall(
                f"SELECT {column}, {name_column}{more} FROM {table}{where} ORDER BY {column} LIMIT ? OFFSET ?",
                (*args, size, page * size),
            )
        return (total[0] if total else 0), rows

    async def _rename(
        self, table: str, column: str, kind: str, ident: str, name: str | None, audit: Audit | None = None
    ) -> None:
        name_column = column.replace("_id", "_name")
        async with self._writing() as tx:
            changed = await tx.execute(f"UPDATE {table} SET {name_column} = ? WHERE {column} = ?", (name, ident))
            if not changed:
                raise NotFound(kind, ident)
            await self._audit(tx, audit)

    async def _delete_named(
        self, table: str, column: str, kind: str, ident: str, audit: Audit | None = None
    ) -> CascadeReport:
        return await self._retrying(lambda: self._cascade_delete(table, column, kind, ident, audit))

    async def _cascade_delete(
        self, table: str, column: str, kind: str, ident: str, audit: Audit | None = None
    ) -> CascadeReport:
        """Removes the id with everything naming it, in one transaction.

        A key entry naming a pair goes when either part goes. A key losing its last entry is disabled in
        the same transaction, before its entries disappear, so no reader ever sees it as primary. The
        deletion events (`outbox`) are written in it too, from what it reads before deleting: the deletion
        itself, then each association and key link removed, then each key it disables (one that was
        enabled: an already disabled key only loses its links).
        """
        naming = f"EXISTS (SELECT 1 FROM key_entries e WHERE e.key_id = k.id AND e.{column} = ?)"
        only_naming = (
            f"NOT EXISTS (SELECT 1 FROM key_entries e WHERE e.key_id = k.id"
            f" AND (e.{column} IS NULL OR e.{column} <> ?))"
        )
        async with self._writing() as tx:
            if await tx.fetchone(f"SELECT 1 FROM {table} WHERE {column} = ?", (ident,)) is None:
                raise NotFound(kind, ident)
            emptied = await tx.fetchall(
                f"SELECT k.id, k.enabled FROM api_keys k WHERE {naming} AND {only_naming} ORDER BY k.id",
                (ident, ident),
            )
            touched = await self._cascade_reach(tx, column, ident) if audit is not None else None
            events = await self._cascade_events(tx, kind, column, ident, emptied)
            await tx.execute(f"UPDATE api_keys SET enabled = 0 WHERE id IN (SELECT k.id FROM api_keys k"
                             f" WHERE {naming} AND {only_naming})", (ident, ident))
            associations = await tx.execute(f"DELETE FROM associations WHERE {column} = ?", (ident,))
            entries = await tx.execute(f"DELETE FROM key_entries WHERE {column} = ?", (ident,))
            await tx.execute(f"DELETE FROM {table} WHERE {column} = ?", (ident,))
            await self._changed(tx)
            await events.write(tx)
            report = CascadeReport(associations, entries, tuple(row[0] for row in emptied))
            if touched is not None:
                unlinked, related = touched
                cascade = {
                    "associationsRemoved": associations,
                    "entriesRemoved": entries,
                    "keysUnlinked": unlinked,
                    "keysDisabled": list(report.keys_disabled),
                }
                await self._audit(tx, audit, related=related, cascade=cascade)
        return report

    async def _cascade_events(
        self, tx: Transaction, kind: str, column: str, ident: str, emptied: Sequence[Row]
    ) -> Recorder:
        """The deletion events of a cascade, read before it deletes anything (`emptied`: the keys it leaves
        without links, with whether each is enabled); written by the caller once it has deleted."""
        events = Recorder()
        cause = events.application_deleted(ident) if kind == "application" else events.entity_deleted(ident)
        for row in await tx.fetchall(
            f"SELECT {_ASSOCIATION_COLUMNS} FROM associations WHERE {column} = ?"
            " ORDER BY resource_type, channel, resource_id", (ident,)
        ):
            resource_type, channel, application_id, entity_id, resource_id = row
            events.association_removed(resource_type, channel, resource_id, application_id, entity_id, cause)
        for key_id, application_id, entity_id, action in await tx.fetchall(
            f"SELECT key_id, application_id, entity_id, action FROM key_entries WHERE {column} = ?"
            " ORDER BY key_id, position", (ident,)
        ):
            events.link_removed(key_id, application_id, entity_id, action, cause)
        for key_id, enabled in emptied:
            if enabled:
                events.key_disabled(key_id, NO_LINKS_LEFT, cause)
        return events

    async def _cascade_reach(self, tx: Transaction, column: str, ident: str) -> tuple[list[str], list[str]]:
        """For the audit record, before a cascade runs: the keys that lose entries, and every object the
        cascade touches (those keys, and the ids paired with `ident` in the associations and entries it
        removes), as `kind:id` names."""
        other, other_kind = ("entity_id", "entity") if column == "application_id" else ("application_id", "application")
        keys = [row[0] for row in await tx.fetchall(
            f"SELECT DISTINCT key_id FROM key_entries WHERE {column} = ? ORDER BY key_id", (ident,)
        )]
        paired = await tx.fetchall(
            f"SELECT {other} FROM associations WHERE {column} = ? AND {other} IS NOT NULL"
            f" UNION SELECT {other} FROM key_entries WHERE {column} = ? AND {other} IS NOT NULL ORDER BY 1",
            (ident, ident),
        )
        related = [object_name("key", key) for key in keys] + [object_name(other_kind, row[0]) for row in paired]
        return keys, related

    # associations ---------------------------------------------------------------------------------
    async def create_association(self, association: Association, *, audit: Audit | None = None) -> None:
        await self._retrying(lambda: self._create_association(association, audit))

    async def _create_association(self, a: Association, audit: Audit | None = None) -> None:
        try:
            async with self._writing() as tx:
                await self._require(tx, "applications", "application_id", a.application_id, "applicationId")
                if a.entity_id is not None:
                    await self._require(tx, "entities", "entity_id", a.entity_id, "entityId")
                await tx.execute(
                    f"INSERT INTO associations ({_ASSOCIATION_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                    (a.resource_type, a.channel, a.application_id, a.entity_id, a.resource_id),
                )
                await self._audit(tx, audit)
        except UniqueViolation:
            raise Conflict("association", f"{a.resource_type}/{a.channel}/{a.resource_id}") from None

    async def delete_association(self, association: Association, *, audit: Audit | None = None) -> None:
        a = association
        where, args = _exact_association(a.resource_type, a.channel, a.application_id, a.resource_id, a.entity_id)
        async with self._writing() as tx:
            removed = await tx.execute(f"DELETE FROM associations WHERE {where}", args)
            if not removed:
                raise NotFound("association", f"{a.resource_type}/{a.channel}/{a.resource_id}")
            events = Recorder()  # a direct removal: no cause
            events.association_removed(a.resource_type, a.channel, a.resource_id, a.application_id, a.entity_id)
            await events.write(tx)
            await self._audit(tx, audit)

    async def get_association(
        self, resource_type: str, channel: str, application_id: str, resource_id: str, entity_id: str | None
    ) -> Association:
        where, args = _exact_association(resource_type, channel, application_id, resource_id, entity_id)
        row = await self._one(f"SELECT {_ASSOCIATION_COLUMNS} FROM associations WHERE {where}", args)
        if row is None:
            raise NotFound("association", f"{resource_type}/{channel}/{resource_id}")
        return Association(*row)

    async def list_associations(self, filters: AssociationFilter, page: int, size: int) -> Page[Association]:
        _check_paging(page, size)
        conditions: list[str] = []
        args: list[Any] = []
        for column in ("resource_type", "channel", "application_id", "entity_id", "resource_id"):
            value = getattr(filters, column)
            if value is not None:
                conditions.append(f"{column} = ?")
                args.append(value)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        async with self._reading() as tx:
            total = await tx.fetchone(f"SELECT COUNT(*) FROM associations{where}", args)
            rows = await tx.fetchall(
                f"SELECT {_ASSOCIATION_COLUMNS} FROM associations{where}"
                " ORDER BY resource_type, channel, resource_id LIMIT ? OFFSET ?",
                (*args, size, page * size),
            )
        return Page([Association(*row) for row in rows], page, size, total[0] if total else 0)

    # keys -----------------------------------------------------------------------------------------
    async def create_key(self, key: ApiKey, *, audit: Audit | None = None) -> ApiKey:
        return await self._retrying(lambda: self._create_key(key, audit))

    async def _create_key(self, key: ApiKey, audit: Audit | None = None) -> ApiKey:
        entries = tuple(
            PlatformEntry(new_entry_key(), entry.application_id, entry.entity_id, entry.action)
            for entry in key.platform
        )
        created = key.created_at or datetime.now(UTC)
        try:
            async with self._writing() as tx:
                await self._require_links(tx, entries)
                await tx.execute(
                    "INSERT INTO api_keys (id, name, secret_hash, prefix, allowed_ips, valid_from, valid_to,"
                    " enabled, created_at, last_used_at, rate_limits, enforce)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key.id,
                        key.name,
                        key.secret_hash.hex(),
                        key.prefix,
                        json.dumps(list(key.allowed_ips)),
                        to_text(key.valid_from),
                        to_text(key.valid_to),
                        int(key.enabled),
                        to_text(created),
                        to_text(key.last_used) if key.last_used is not None else None,
                        _rate_limits_text(key.rate_limits),
                        int(key.enforce),
                    ),
                )
                await self._insert_entries(tx, key.id, entries)
                await self._changed(tx)
                await self._audit(tx, audit)
                return await self._key_in(tx, key.id)
        except UniqueViolation:
            raise Conflict("apiKey", key.id) from None

    async def get_key(self, key_id: str) -> ApiKey:
        keys = _keys_from_rows(await self._all(_GET_KEY, (key_id,)))
        if not keys:
            raise NotFound("apiKey", key_id)
        return keys[0]

    async def find_key_by_hash(self, secret_hash: bytes) -> ApiKey | None:
        rows = await self._all(_FIND_BY_HASH, (secret_hash.hex(),))
        if not rows:
            return None
        return _keys_from_rows(rows)[0]

    async def list_keys(
        self, page: int, size: int, name: str | None = None, enabled: bool | None = None
    ) -> Page[ApiKey]:
        """`name` matches a substring of the key's name, case-insensitively."""
        _check_paging(page, size)
        conditions: list[str] = []
        args: list[Any] = []
        if name:
            conditions.append("LOWER(name) LIKE ? ESCAPE '\\'")
            args.append(_like(name))
        if enabled is not None:
            conditions.append("enabled = ?")
            args.append(int(enabled))
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        async with self._reading() as tx:
            total = await tx.fetchone(f"SELECT COUNT(*) FROM api_keys{where}", args)
            rows = await tx.fetchall(
                f"SELECT {_KEY_COLUMNS} FROM (SELECT * FROM api_keys{where} ORDER BY id LIMIT ? OFFSET ?) k"
                " LEFT JOIN key_entries e ON e.key_id = k.id ORDER BY k.id, e.position",
                (*args, size, page * size),
            )
        return Page(_keys_from_rows(rows), page, size, total[0] if total else 0)

    async def update_key(self, key_id: str, update: KeyUpdate, *, audit: Audit | None = None) -> ApiKey:
        return await self._retrying(lambda: self._update_key(key_id, update, audit))

    async def _update_key(self, key_id: str, update: KeyUpdate, audit: Audit | None = None) -> ApiKey:
        columns: dict[str, Any] = {}
        if update.name is not UNSET:
            columns["name"] = update.name
        if update.allowed_ips is not UNSET:
            columns["allowed_ips"] = json.dumps(list(update.allowed_ips))  # type: ignore[arg-type]
        if update.valid_from is not UNSET:
            columns["valid_from"] = to_text(update.valid_from)  # type: ignore[arg-type]
        if update.valid_to is not UNSET:
            columns["valid_to"] = to_text(update.valid_to)  # type: ignore[arg-type]
        if update.enabled is not UNSET:
            columns["enabled"] = int(bool(update.enabled))
        if update.rate_limits is not UNSET:
            columns["rate_limits"] = _rate_limits_text(update.rate_limits)  # type: ignore[arg-type]
        if update.enforce is not UNSET:
            columns["enforce"] = int(bool(update.enforce))
        async with self._writing() as tx:
            found = await tx.fetchone("SELECT enabled FROM api_keys WHERE id = ?", (key_id,))
            if found is None:
                raise NotFound("apiKey", key_id)
            # deletion events: a key disabled here, and the application/entity pairs a re-link drops
            events = Recorder()
            if found[0] and update.enabled is not UNSET and not update.enabled:
                events.key_disabled(key_id, UPDATED)
            if columns:
                assignments = ", ".join(f"{column} = ?" for column in columns)
                await tx.execute(f"UPDATE api_keys SET {assignments} WHERE id = ?", (*columns.values(), key_id))
            if update.platform is not UNSET:
                links: tuple[PlatformLink, ...] = update.platform  # type: ignore[assignment]
                entries = tuple(
                    PlatformEntry(new_entry_key(), link.application_id, link.entity_id, link.action)
                    for link in links
                )
                await self._require_links(tx, entries)
                kept = {(entry.application_id, entry.entity_id) for entry in entries}
                for application_id, entity_id, action in await tx.fetchall(
                    "SELECT application_id, entity_id, action FROM key_entries WHERE key_id = ? ORDER BY position",
                    (key_id,),
                ):
                    if (application_id, entity_id) not in kept:
                        events.link_removed(key_id, application_id, entity_id, action)
                await tx.execute("DELETE FROM key_entries WHERE key_id = ?", (key_id,))
                await self._insert_entries(tx, key_id, entries)
            await self._changed(tx)
            await events.write(tx)
            await self._audit(tx, audit)
            return await self._key_in(tx, key_id)

    async def delete_key(self, key_id: str, *, audit: Audit | None = None) -> None:
        async with self._writing() as tx:
            related: list[str] = []
            # what the key was linked to, read before it goes: for the audit record and its key.deleted event
            links = await tx.fetchall(
                "SELECT application_id, entity_id, action FROM key_entries WHERE key_id = ? ORDER BY position",
                (key_id,),
            )
            if audit is not None:
                for row in links:
                    related += [object_name(kind, ident) for kind, ident in zip(("application", "entity"), row[:2])
                                if ident is not None]
            if not await tx.execute("DELETE FROM api_keys WHERE id = ?", (key_id,)):
                raise NotFound("apiKey", key_id)
            await self._changed(tx)
            events = Recorder()
            events.key_deleted(key_id, [tuple(row) for row in links])
            await events.write(tx)
            await self._audit(tx, audit, related=related)

    async def keys_for_application(self, application_id: str) -> list[ApiKey]:
        return await self._keys_naming("application_id", application_id)

    async def keys_for_entity(self, entity_id: str) -> list[ApiKey]:
        return await self._keys_naming("entity_id", entity_id)

    async def _keys_naming(self, column: str, ident: str) -> list[ApiKey]:
        where = f"k.id IN (SELECT key_id FROM key_entries WHERE {column} = ?)"
        return _keys_from_rows(await self._all(_KEYS_WHERE.format(where=where), (ident,)))

    async def _key_in(self, tx: Transaction, key_id: str) -> ApiKey:
        return _keys_from_rows(await tx.fetchall(_KEYS_WHERE.format(where="k.id = ?"), (key_id,)))[0]

    async def _insert_entries(self, tx: Transaction, key_id: str, entries: Sequence[PlatformEntry]) -> None:
        if entries:
            await tx.executemany(
                "INSERT INTO key_entries (key_id, position, entry_key, application_id, entity_id, action)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (key_id, position, entry.key, entry.application_id, entry.entity_id, entry.action)
                    for position, entry in enumerate(entries)
                ],
            )

    async def _require_links(self, tx: Transaction, entries: Sequence[PlatformEntry]) -> None:
        for index, entry in enumerate(entries):
            if entry.application_id is not None:
                await self._require(
                    tx, "applications", "application_id", entry.application_id, f"platform[{index}].applicationId"
                )
            if entry.entity_id is not None:
                await self._require(tx, "entities", "entity_id", entry.entity_id, f"platform[{index}].entityId")

    async def _require(self, tx: Transaction, table: str, column: str, ident: str, field: str) -> None:
        if await tx.fetchone(f"SELECT 1 FROM {table} WHERE {column} = ?", (ident,)) is None:
            raise MissingReference(field, ident)

    # the gateway's other reads --------------------------------------------------------------------
    async def missing_ids(
        self, application_ids: Iterable[str], entity_ids: Iterable[str]
    ) -> tuple[frozenset[str], frozenset[str]]:
        apps = frozenset(application_ids)
        ents = frozenset(entity_ids)
        return (
            apps - await self._existing("applications", "application_id", apps),
            ents - await self._existing("entities", "entity_id", ents),
        )

    async def _existing(self, table: str, column: str, idents: frozenset[str]) -> set[str]:
        found: set[str] = set()
        ordered = sorted(idents)
        for start in range(0, len(ordered), _CHUNK):
            chunk = ordered[start : start + _CHUNK]
            rows = await self._all(f"SELECT {column} FROM {table} WHERE {column} IN ({_marks(len(chunk))})", chunk)
            found.update(row[0] for row in rows)
        return found

    async def revision(self) -> int:
        row = await self._one("SELECT value FROM meta WHERE name = 'revision'")
        return int(row[0]) if row is not None else 0

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

    async def list_audit(
        self, object_id: str | None, page: int, size: int, kind: str | None = None
    ) -> Page[AuditRecord]:
        _check_paging(page, size)
        where, args = "", ()
        if object_id is not None:
            by_kind = " AND kind = ?" if kind is not None else ""
            where = f" WHERE seq IN (SELECT seq FROM audit_objects WHERE object_id = ?{by_kind})"
            args = (object_id, kind) if kind is not None else (object_id,)
        async with self._reading() as tx:
            total = await tx.fetchone(f"SELECT COUNT(*) FROM audit_log{where}", args)
            rows = await tx.fetchall(
                f"SELECT seq, at, principal, action, record FROM audit_log{where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                (*args, size, page * size),
            )
        records = [AuditRecord.from_row(int(r[0]), from_text(r[1]), r[2], r[3], r[4]) for r in rows]
        return Page(records, page, size, total[0] if total else 0)

    async def record_key_use(self, last_used: dict[str, datetime]) -> None:
        """Keeps the latest time per key; a key deleted meanwhile is skipped. Not a revision change."""
        if not last_used:
            return
        rows = []
        for key_id, moment in sorted(last_used.items()):
            text = to_text(moment)
            rows.append((text, key_id, text))
        async with self._writing() as tx:
            await tx.executemany(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                rows,
            )


__all__ = ["ForeignKeyViolation", "SQLStore", "Transaction", "UniqueViolation", "from_text", "to_text"]
