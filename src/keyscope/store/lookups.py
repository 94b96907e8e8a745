"""What the gateway asks of the store besides a key: which ids exist, the revision its caches follow, and when
each key was last used (written in batches, and not a revision change)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from keyscope.store.sqlbase import SQLBase, _marks, to_text

_CHUNK = 500  # ids per IN (...) list, well under every dialect's parameter limit


class Lookups(SQLBase):
    """The gateway's reads, and its one write."""

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
