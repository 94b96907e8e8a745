"""Applications and entities: the two named objects, one set of statements for both, and the cascade that deleting
one runs over the associations and key entries naming it (with its deletion events and audit record)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keyscope.core.models import DEFAULT_APPLICATION, Application, CascadeReport, Entity, Page
from keyscope.core.ratelimits import RateLimit
from keyscope.store.audit import Audit, object_name
from keyscope.store.base import Conflict, NotFound, Protected
from keyscope.store.outbox import NO_LINKS_LEFT, Recorder
from keyscope.store.rows import _ASSOCIATION_COLUMNS, _rate_limits, _rate_limits_text
from keyscope.store.sqlbase import Row, SQLBase, Transaction, UniqueViolation, _check_paging, _like, _marks


class NamedObjects(SQLBase):
    """Create, read, list, rename and delete (with its cascade) applications and entities."""

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
