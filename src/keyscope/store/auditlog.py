"""The audit trail, read: newest first, optionally only the records naming one object. (Each write records itself
through `SQLBase._audit`, in the transaction that makes it.)"""

from __future__ import annotations

from keyscope.core.models import Page
from keyscope.store.audit import AuditRecord
from keyscope.store.sqlbase import SQLBase, _check_paging, from_text


class AuditLog(SQLBase):
    """Pages of the audit trail."""

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
