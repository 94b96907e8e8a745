"""Deletion events: what each one says, and how the store writes them in the transaction of the deletion.

A deletion (an application, an entity, an association, a key) and everything its cascade removes are told to the
services behind keyscope as events (`keyscope.events` delivers them). They are written by the store's own rules
(`sql.SQLStore`), in the very transaction that deletes, from what that transaction read before deleting: an event
exists exactly when its deletion committed, and a rolled-back deletion leaves none (the transactional outbox
pattern). So nothing is lost between "deleted" and "told", whatever crashes in between.

Types (the `type` field; README "Deletion events"):

    application.deleted   applicationId
    entity.deleted        entityId
    association.removed   resourceType, channel, resourceId, applicationId, entityId (null when none)
    key.link.removed      keyId, applicationId, entityId (either may be null), action (FILL, FORCE or null)
    key.disabled          keyId, reason: `no_links_left` (a cascade removed its last link) or `updated`
                          (disabled by a management update: `keys revoke`, `PUT {"enabled": false}`)
    key.deleted           keyId, links: the links it had ([{applicationId, entityId, action}])

Every body also has `id` (a UUID4, the same on every retry: receivers deduplicate on it), `type`, `time` (when the
deleting transaction wrote it, ISO 8601 UTC) and `seq` (the outbox's order, gapless); events a cascade caused
carry `causeId`, the id of the `application.deleted` or `entity.deleted` event that caused them (null for a
direct change). A cascade writes its cause first, then the associations, the links and the disabled keys, in
that order. Only changes that remove something are events: creations and renames are not (the audit trail has
them), nor are re-links that keep every application/entity pair.

`seq` comes from the `events` counter in `meta`, bumped in the deleting transaction; every such transaction holds
the store's write lock (SQLite's single writer, PostgreSQL's advisory lock) and the counter's row until it
commits, so events become visible in `seq` order: a reader that has seen `seq` N has seen every event below it.
The body is stored as the exact text sent, so a retry sends (and signs) the same bytes.

Bounded: the outbox keeps the last KEEP events for `GET /keyscope/1/events`, but never drops one that some
receiver (`event_targets`, `keyscope.store.deliveries`) has not acknowledged yet.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

APPLICATION_DELETED = "application.deleted"
ENTITY_DELETED = "entity.deleted"
ASSOCIATION_REMOVED = "association.removed"
KEY_LINK_REMOVED = "key.link.removed"
KEY_DISABLED = "key.disabled"
KEY_DELETED = "key.deleted"
TYPES = (APPLICATION_DELETED, ENTITY_DELETED, ASSOCIATION_REMOVED, KEY_LINK_REMOVED, KEY_DISABLED, KEY_DELETED)

NO_LINKS_LEFT = "no_links_left"
UPDATED = "updated"
"""`key.disabled` reasons: a cascade removed the key's last link, or a management update disabled it."""

KEEP = 10_000
"""Events kept for listing once every receiver has them: a deletion that writes event N removes those at or below
N - KEEP that every receiver has acknowledged. The audit trail is the long history; this is a delivery queue."""


class Writes(Protocol):
    """The part of a store transaction (`sqlbase.Transaction`) the outbox writes with."""

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> int: ...

    async def executemany(self, sql: str, rows: Any) -> None: ...

    async def fetchone(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None: ...


def stored_time(moment: datetime) -> str:
    """The store's one form of a time (`sqlbase.to_text`'s: ISO 8601 UTC, microseconds, `+00:00`)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def object_of(kind: str, ident: str) -> str:
    return f"{kind}:{ident}"


def association_object(resource_type: str, channel: str, resource_id: str) -> str:
    """An association is named by its resource (at most one association per resource)."""
    return f"association:{resource_type}/{channel}/{resource_id}"


@dataclass(frozen=True, slots=True)
class Event:
    """One event as stored: `body` is the JSON delivered, byte for byte once UTF-8 encoded."""

    seq: int
    id: str
    time: datetime
    type: str
    object: str
    body: str

    def doc(self) -> dict[str, Any]:
        return json.loads(self.body)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Event:
        """From `seq, id, at, type, object, body`."""
        return cls(int(row[0]), row[1], datetime.fromisoformat(row[2]), row[3], row[4], row[5])


COLUMNS = "seq, id, at, type, object, body"


class Recorder:
    """The events of one deleting transaction, gathered while it runs and written by `write(tx)` before it ends.

    The store's deletion rules call the builders below with what they read before deleting; each returns the
    event's id, which a cascade passes as the `cause` of what follows."""

    __slots__ = ("_events",)

    def __init__(self) -> None:
        self._events: list[tuple[str, str, str, dict[str, Any]]] = []  # (id, type, object, fields)

    def __len__(self) -> int:
        return len(self._events)

    def add(self, kind: str, obj: str, fields: dict[str, Any], cause: str | None = None) -> str:
        ident = str(uuid.uuid4())
        if cause is not None:
            fields = {**fields, "causeId": cause}
        self._events.append((ident, kind, obj, fields))
        return ident

    def application_deleted(self, application_id: str) -> str:
        return self.add(APPLICATION_DELETED, object_of("application", application_id),
                        {"applicationId": application_id})

    def entity_deleted(self, entity_id: str) -> str:
        return self.add(ENTITY_DELETED, object_of("entity", entity_id), {"entityId": entity_id})

    def association_removed(
        self, resource_type: str, channel: str, resource_id: str, application_id: str, entity_id: str | None,
        cause: str | None = None,
    ) -> str:
        fields = {"resourceType": resource_type, "channel": channel, "resourceId": resource_id,
                  "applicationId": application_id, "entityId": entity_id}
        return self.add(ASSOCIATION_REMOVED, association_object(resource_type, channel, resource_id), fields, cause)

    def link_removed(
        self, key_id: str, application_id: str | None, entity_id: str | None, action: str | None,
        cause: str | None = None,
    ) -> str:
        fields = {"keyId": key_id, "applicationId": application_id, "entityId": entity_id, "action": action}
        return self.add(KEY_LINK_REMOVED, object_of("key", key_id), fields, cause)

    def key_disabled(self, key_id: str, reason: str, cause: str | None = None) -> str:
        return self.add(KEY_DISABLED, object_of("key", key_id), {"keyId": key_id, "reason": reason}, cause)

    def key_deleted(self, key_id: str, links: Sequence[tuple[str | None, str | None, str | None]]) -> str:
        shown = [{"applicationId": app, "entityId": entity, "action": action} for app, entity, action in links]
        return self.add(KEY_DELETED, object_of("key", key_id), {"keyId": key_id, "links": shown})

    async def write(self, tx: Writes, now: datetime | None = None) -> list[Event]:
        """Writes the gathered events in `tx` (the deleting transaction), numbered in the order they were added,
        and trims the outbox (KEEP, never past what a receiver still needs). Returns them as stored."""
        if not self._events:
            return []
        count = len(self._events)
        row = await tx.fetchone("UPDATE meta SET value = value + ? WHERE name = 'events' RETURNING value", (count,))
        assert row is not None, "the events counter is missing (migration 4)"
        last = int(row[0])
        moment = now or datetime.now(UTC)
        at = stored_time(moment)
        events = []
        for offset, (ident, kind, obj, fields) in enumerate(self._events):
            seq = last - count + 1 + offset
            body = json.dumps({"id": ident, "type": kind, "time": at, "seq": seq, **fields},
                              separators=(",", ":"), ensure_ascii=False)
            events.append(Event(seq, ident, moment, kind, obj, body))
        await tx.executemany(
            f"INSERT INTO event_outbox ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            [(e.seq, e.id, at, e.type, e.object, e.body) for e in events],
        )
        if last > KEEP:
            # the oldest, but none that a receiver has not acknowledged (a lower done_seq holds them)
            floor = last - KEEP
            await tx.execute(
                "DELETE FROM event_outbox WHERE seq <= ? AND seq <= COALESCE((SELECT MIN(done_seq) FROM event_targets), ?)",
                (floor, floor),
            )
        self._events.clear()
        return events


__all__ = [
    "APPLICATION_DELETED", "ASSOCIATION_REMOVED", "COLUMNS", "ENTITY_DELETED", "KEEP", "KEY_DELETED", "KEY_DISABLED",
    "KEY_LINK_REMOVED", "NO_LINKS_LEFT", "TYPES", "UPDATED", "Event", "Recorder", "association_object", "object_of",
    "stored_time",
]
