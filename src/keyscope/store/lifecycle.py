"""Opening a store: its schema migrated to the latest version and the `default` application made sure of."""

from __future__ import annotations

from datetime import UTC, datetime

from keyscope.core.models import DEFAULT_APPLICATION
from keyscope.store.base import StoreUnavailable
from keyscope.store.migrations import LATEST, MIGRATIONS, VERSION_TABLE
from keyscope.store.sqlbase import SQLBase, to_text

DEFAULT_APPLICATION_NAME = "Default"


class Lifecycle(SQLBase):
    """Migrations, run by the subclass's `open()`."""

    # set by `sql.SQLStore` (and its subclasses)
    dialect: str
    migration_lock: str | None

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
