"""API keys and their platform entries: a key's entries are rewritten whole, checked against the applications and
entities they name, and a change that disables or unlinks a key writes its deletion events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from keyscope.core.keys import new_entry_key
from keyscope.core.models import UNSET, ApiKey, KeyUpdate, Page, PlatformEntry, PlatformLink
from keyscope.store.audit import Audit, object_name
from keyscope.store.base import Conflict, NotFound
from keyscope.store.outbox import UPDATED, Recorder
from keyscope.store.rows import _FIND_BY_HASH, _GET_KEY, _KEY_COLUMNS, _KEYS_WHERE, _keys_from_rows, _rate_limits_text
from keyscope.store.sqlbase import SQLBase, Transaction, UniqueViolation, _check_paging, _like, to_text


class Keys(SQLBase):
    """Create, read, find by hash, list, update and delete keys."""

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
