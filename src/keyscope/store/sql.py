"""Every store rule, written once in portable SQL over a small async transaction interface.

Subclasses (SQLite, PostgreSQL) only connect, run statements and translate driver errors: `_write()` opens a
write transaction, `_read()` a consistent read snapshot, `_read_one`/`_read_all` run a single read on the
request path. Statements use `?` placeholders; a dialect that spells them differently rewrites them.
Times are stored as ISO-8601 UTC text with microseconds and `+00:00`, so text order is time order.

The rules are mixins in modules of one concept each: `sqlbase` (the transaction machinery, the audit writer),
`rows` (rows to models), `named` (applications and entities, with their cascades), `associations`, `keys`,
`auditlog` (reading the audit trail), `lookups` (the gateway's reads) and `lifecycle` (migrations).
`SQLStore` puts them together; the names its subclasses and the outbox import are re-exported here.
"""

from __future__ import annotations

from keyscope.store.associations import Associations
from keyscope.store.auditlog import AuditLog
from keyscope.store.keys import Keys
from keyscope.store.lifecycle import Lifecycle
from keyscope.store.lookups import Lookups
from keyscope.store.named import NamedObjects
from keyscope.store.sqlbase import (
    Args,
    ForeignKeyViolation,
    Row,
    SQLBase,
    Transaction,
    UniqueViolation,
    from_text,
    to_text,
)


class SQLStore(Lifecycle, NamedObjects, Associations, Keys, AuditLog, Lookups, SQLBase):
    """The rules; a subclass supplies the connection (see the module docstring)."""

    dialect: str = "sqlite"
    # Serialises migrations across processes where BEGIN alone does not (PostgreSQL's advisory lock).
    migration_lock: str | None = None


__all__ = [
    "Args",
    "ForeignKeyViolation",
    "Row",
    "SQLStore",
    "Transaction",
    "UniqueViolation",
    "from_text",
    "to_text",
]
