"""Every store rule, written once in portable SQL over a small async transaction interface.

Subclasses (SQLite, PostgreSQL) only connect, run statements and translate driver errors: `_write()` opens a
write transaction, `_read()` a consistent read snapshot, `_read_one`/`_read_all` run a single read on the
request path. Statements use `?` placeholders; a dialect that spells them differently rewrites them.
Times are stored as ISO-8601 UTC text with microseconds and `+00:00`, so text order is time order.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol, TypeVar

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
from keyscope.store.base import Conflict, MissingReference, NotFound, Protected, Store, StoreUnavailable
from keyscope.store.migrations import LATEST, MIGRATIONS, VERSION_TABLE

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
    " k.created_at, k.last_used_at, e.entry_key, e.application_id, e.entity_id, e.action"
)
_KEYS_WHERE = (
    f"SELECT {_KEY_COLUMNS} FROM api_keys k LEFT JOIN key_entries e ON e.key_id = k.id"
    " WHERE {where} ORDER BY k.id, e.position"
)
_FIND_BY_HASH = _KEYS_WHERE.format(where="k.secret_hash = ?")
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
    for row in rows:
        if current is None or row[0] != current[0]:
            if current is not None:
                keys.append(_key(current, entries))
            current, entries = row, []
        if row[10] is not None:
            entries.append(PlatformEntry(row[10], row[11], row[12], row[13]))
    if current is not None:
        keys.append(_key(current, entries))
    return keys


@lru_cache(maxsize=4096)
def _allowed_ips(text: str) -> tuple[str, ...]:
    """Most keys share a handful of IP lists: parse each once (it is on the lookup path)."""
    return tuple(json.loads(text))


def _key(row: Row, entries: list[PlatformEntry]) -> ApiKey:
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

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Runs a write again when a concurrent delete broke a reference it had just checked.

        Only a store whose transactions overlap (PostgreSQL) gets here; the next attempt sees the delete and
        either cascades it or raises the proper MissingReference.
        """
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
    async def create_application(self, app: Application) -> None:
        await self._create_named("applications", "application_id", "application", app.application_id,
                                 app.application_name)

    async def get_application(self, application_id: str) -> Application:
        row = await self._read_one(
            "SELECT application_id, application_name FROM applications WHERE application_id = ?",
            (application_id,),
        )
        if row is None:
            raise NotFound("application", application_id)
        return Application(row[0], row[1])

    async def list_applications(self, page: int, size: int, search: str | None = None) -> Page[Application]:
        total, rows = await self._list_named("applications", "application_id", page, size, search)
        return Page([Application(row[0], row[1]) for row in rows], page, size, total)

    async def rename_application(self, application_id: str, name: str | None) -> None:
        await self._rename("applications", "application_id", "application", application_id, name)

    async def delete_application(self, application_id: str) -> CascadeReport:
        if application_id == DEFAULT_APPLICATION:
            raise Protected(f"the {DEFAULT_APPLICATION!r} application cannot be deleted")
        return await self._delete_named("applications", "application_id", "application", application_id)

    async def create_entity(self, entity: Entity) -> None:
        await self._create_named("entities", "entity_id", "entity", entity.entity_id, entity.entity_name)

    async def get_entity(self, entity_id: str) -> Entity:
        row = await self._read_one("SELECT entity_id, entity_name FROM entities WHERE entity_id = ?", (entity_id,))
        if row is None:
            raise NotFound("entity", entity_id)
        return Entity(row[0], row[1])

    async def list_entities(self, page: int, size: int, search: str | None = None) -> Page[Entity]:
        total, rows = await self._list_named("entities", "entity_id", page, size, search)
        return Page([Entity(row[0], row[1]) for row in rows], page, size, total)

    async def rename_entity(self, entity_id: str, name: str | None) -> None:
        await self._rename("entities", "entity_id", "entity", entity_id, name)

    async def delete_entity(self, entity_id: str) -> CascadeReport:
        return await self._delete_named("entities", "entity_id", "entity", entity_id)

    async def _create_named(self, table: str, column: str, kind: str, ident: str, name: str | None) -> None:
        name_column = column.replace("_id", "_name")
        try:
            async with self._write() as tx:
                await tx.execute(f"INSERT INTO {table} ({column}, {name_column}) VALUES (?, ?)", (ident, name))
        except UniqueViolation:
            raise Conflict(kind, ident) from None

    async def _list_named(
        self, table: str, column: str, page: int, size: int, search: str | None
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
        async with self._read() as tx:
            total = await tx.fetchone(f"SELECT COUNT(*) FROM {table}{where}", args)
            rows = await tx.fetchall(
                f"SELECT {column}, {name_column} FROM {table}{where} ORDER BY {column} LIMIT ? OFFSET ?",
                (*args, size, page * size),
            )
        return (total[0] if total else 0), rows

    async def _rename(self, table: str, column: str, kind: str, ident: str, name: str | None) -> None:
        name_column = column.replace("_id", "_name")
        async with self._write() as tx:
            changed = await tx.execute(f"UPDATE {table} SET {name_column} = ? WHERE {column} = ?", (name, ident))
            if not changed:
                raise NotFound(kind, ident)

    async def _delete_named(self, table: str, column: str, kind: str, ident: str) -> CascadeReport:
        return await self._retrying(lambda: self._cascade_delete(table, column, kind, ident))

    async def _cascade_delete(self, table: str, column: str, kind: str, ident: str) -> CascadeReport:
        """Removes the id with everything naming it, in one transaction.

        A key entry naming a pair goes when either part goes. A key losing its last entry is disabled in
        the same transaction, before its entries disappear, so no reader ever sees it as primary.
        """
        naming = f"EXISTS (SELECT 1 FROM key_entries e WHERE e.key_id = k.id AND e.{column} = ?)"
        only_naming = (
            f"NOT EXISTS (SELECT 1 FROM key_entries e WHERE e.key_id = k.id"
            f" AND (e.{column} IS NULL OR e.{column} <> ?))"
        )
        async with self._write() as tx:
            if await tx.fetchone(f"SELECT 1 FROM {table} WHERE {column} = ?", (ident,)) is None:
                raise NotFound(kind, ident)
            emptied = await tx.fetchall(
                f"SELECT k.id FROM api_keys k WHERE {naming} AND {only_naming} ORDER BY k.id", (ident, ident)
            )
            await tx.execute(f"UPDATE api_keys SET enabled = 0 WHERE id IN (SELECT k.id FROM api_keys k"
                             f" WHERE {naming} AND {only_naming})", (ident, ident))
            associations = await tx.execute(f"DELETE FROM associations WHERE {column} = ?", (ident,))
            entries = await tx.execute(f"DELETE FROM key_entries WHERE {column} = ?", (ident,))
            await tx.execute(f"DELETE FROM {table} WHERE {column} = ?", (ident,))
            await self._changed(tx)
        return CascadeReport(associations, entries, tuple(row[0] for row in emptied))

    # associations ---------------------------------------------------------------------------------
    async def create_association(self, association: Association) -> None:
        await self._retrying(lambda: self._create_association(association))

    async def _create_association(self, a: Association) -> None:
        try:
            async with self._write() as tx:
                await self._require(tx, "applications", "application_id", a.application_id, "applicationId")
                if a.entity_id is not None:
                    await self._require(tx, "entities", "entity_id", a.entity_id, "entityId")
                await tx.execute(
                    f"INSERT INTO associations ({_ASSOCIATION_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                    (a.resource_type, a.channel, a.application_id, a.entity_id, a.resource_id),
                )
        except UniqueViolation:
            raise Conflict("association", f"{a.resource_type}/{a.channel}/{a.resource_id}") from None

    async def delete_association(self, association: Association) -> None:
        a = association
        where, args = _exact_association(a.resource_type, a.channel, a.application_id, a.resource_id, a.entity_id)
        async with self._write() as tx:
            removed = await tx.execute(f"DELETE FROM associations WHERE {where}", args)
            if not removed:
                raise NotFound("association", f"{a.resource_type}/{a.channel}/{a.resource_id}")

    async def get_association(
        self, resource_type: str, channel: str, application_id: str, resource_id: str, entity_id: str | None
    ) -> Association:
        where, args = _exact_association(resource_type, channel, application_id, resource_id, entity_id)
        row = await self._read_one(f"SELECT {_ASSOCIATION_COLUMNS} FROM associations WHERE {where}", args)
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
        async with self._read() as tx:
            total = await tx.fetchone(f"SELECT COUNT(*) FROM associations{where}", args)
            rows = await tx.fetchall(
                f"SELECT {_ASSOCIATION_COLUMNS} FROM associations{where}"
                " ORDER BY resource_type, channel, resource_id LIMIT ? OFFSET ?",
                (*args, size, page * size),
            )
        return Page([Association(*row) for row in rows], page, size, total[0] if total else 0)

    # keys -----------------------------------------------------------------------------------------
    async def create_key(self, key: ApiKey) -> ApiKey:
        return await self._retrying(lambda: self._create_key(key))

    async def _create_key(self, key: ApiKey) -> ApiKey:
        entries = tuple(
            PlatformEntry(new_entry_key(), entry.application_id, entry.entity_id, entry.action)
            for entry in key.platform
        )
        created = key.created_at or datetime.now(UTC)
        try:
            async with self._write() as tx:
                await self._require_links(tx, entries)
                await tx.execute(
                    "INSERT INTO api_keys (id, name, secret_hash, prefix, allowed_ips, valid_from, valid_to,"
                    " enabled, created_at, last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    ),
                )
                await self._insert_entries(tx, key.id, entries)
                await self._changed(tx)
                return await self._key_in(tx, key.id)
        except UniqueViolation:
            raise Conflict("apiKey", key.id) from None

    async def get_key(self, key_id: str) -> ApiKey:
        keys = _keys_from_rows(await self._read_all(_KEYS_WHERE.format(where="k.id = ?"), (key_id,)))
        if not keys:
            raise NotFound("apiKey", key_id)
        return keys[0]

    async def find_key_by_hash(self, secret_hash: bytes) -> ApiKey | None:
        rows = await self._read_all(_FIND_BY_HASH, (secret_hash.hex(),))
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
        async with self._read() as tx:
            total = await tx.fetchone(f"SELECT COUNT(*) FROM api_keys{where}", args)
            rows = await tx.fetchall(
                f"SELECT {_KEY_COLUMNS} FROM (SELECT * FROM api_keys{where} ORDER BY id LIMIT ? OFFSET ?) k"
                " LEFT JOIN key_entries e ON e.key_id = k.id ORDER BY k.id, e.position",
                (*args, size, page * size),
            )
        return Page(_keys_from_rows(rows), page, size, total[0] if total else 0)

    async def update_key(self, key_id: str, update: KeyUpdate) -> ApiKey:
        return await self._retrying(lambda: self._update_key(key_id, update))

    async def _update_key(self, key_id: str, update: KeyUpdate) -> ApiKey:
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
        async with self._write() as tx:
            if await tx.fetchone("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)) is None:
                raise NotFound("apiKey", key_id)
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
                await tx.execute("DELETE FROM key_entries WHERE key_id = ?", (key_id,))
                await self._insert_entries(tx, key_id, entries)
            await self._changed(tx)
            return await self._key_in(tx, key_id)

    async def delete_key(self, key_id: str) -> None:
        async with self._write() as tx:
            if not await tx.execute("DELETE FROM api_keys WHERE id = ?", (key_id,)):
                raise NotFound("apiKey", key_id)
            await self._changed(tx)

    async def keys_for_application(self, application_id: str) -> list[ApiKey]:
        return await self._keys_naming("application_id", application_id)

    async def keys_for_entity(self, entity_id: str) -> list[ApiKey]:
        return await self._keys_naming("entity_id", entity_id)

    async def _keys_naming(self, column: str, ident: str) -> list[ApiKey]:
        where = f"k.id IN (SELECT key_id FROM key_entries WHERE {column} = ?)"
        return _keys_from_rows(await self._read_all(_KEYS_WHERE.format(where=where), (ident,)))

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
            rows = await self._read_all(f"SELECT {column} FROM {table} WHERE {column} IN ({_marks(len(chunk))})", chunk)
            found.update(row[0] for row in rows)
        return found

    async def revision(self) -> int:
        row = await self._read_one("SELECT value FROM meta WHERE name = 'revision'")
        return int(row[0]) if row is not None else 0

    async def record_key_use(self, last_used: dict[str, datetime]) -> None:
        """Keeps the latest time per key; a key deleted meanwhile is skipped. Not a revision change."""
        if not last_used:
            return
        rows = []
        for key_id, moment in sorted(last_used.items()):
            text = to_text(moment)
            rows.append((text, key_id, text))
        async with self._write() as tx:
            await tx.executemany(
                "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                rows,
            )


__all__ = ["ForeignKeyViolation", "SQLStore", "Transaction", "UniqueViolation", "from_text", "to_text"]
