"""Associations: which application (and entity) a resource on a channel belongs to."""

from __future__ import annotations

from typing import Any

from keyscope.core.models import Association, AssociationFilter, Page
from keyscope.store.audit import Audit
from keyscope.store.base import Conflict, NotFound
from keyscope.store.outbox import Recorder
from keyscope.store.rows import _ASSOCIATION_COLUMNS, _exact_association
from keyscope.store.sqlbase import SQLBase, UniqueViolation, _check_paging


class Associations(SQLBase):
    """Create, delete, read and list associations; a removal writes its deletion event."""

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
