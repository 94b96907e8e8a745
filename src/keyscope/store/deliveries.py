"""Where each receiver of deletion events stands, kept in the store so that every instance sees it alike.

One `event_targets` row per receiver URL: every event up to `done_seq` has been acknowledged (a 2xx), and
`attempts`, `last_error`, `next_attempt_at` describe the retries of the next one. Delivering to a URL is one
instance's job at a time: the one holding the row's lease (`owner`, `lease_until`). `claim()` takes a lease that
is free or has lapsed; the holder renews it (`renew()`, and every `advance()`/`failed()`) well before it lapses,
and gives it back on a clean stop (`release()`), so a killed instance's lease lapses by itself after its length.
Every update a holder makes names itself as the owner, so an instance whose lease another one took (it stalled
past its lease) finds out at its next write and stops: it may have sent one event twice, never out of order.

On PostgreSQL `claim()` reads the row `FOR UPDATE SKIP LOCKED`: an instance that finds another claiming or
renewing at that instant moves on instead of waiting for it. These transactions do not take the store-wide
write lock the management writes take (`postgres.WRITE_LOCK`): row locks are all they need, and a deliverer
never waits behind a management change or holds one up. No transaction is ever open while a receiver is asked.
On SQLite, BEGIN IMMEDIATE makes each of them one at a time across processes, which is the same thing.

A row whose URL no instance has named for RETIRE (no claim, renewal or attempt updated `seen_at`) is removed by
the next claim anywhere, so a receiver taken out of every configuration stops holding events in the outbox. A
URL configured (again) starts at `done_seq` 0, which is every event the outbox still holds.

Times are the deliverers' clocks (passed in, so tests inject theirs), compared as the store's fixed-form text:
instances' clocks must agree well within a lease (NTP does).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keyscope.core.models import Page
from keyscope.store.outbox import COLUMNS, Event, stored_time
from keyscope.store.sql import SQLStore, Transaction

RETIRE = timedelta(days=7)
"""A receiver URL no instance has named for this long is forgotten (and no longer holds events back)."""

_TARGET_COLUMNS = (
    "url, done_seq, delivered, attempts, last_error, last_attempt_at, next_attempt_at, delivered_at, owner,"
    " lease_until, seen_at"
)


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text is not None else None


@dataclass(frozen=True, slots=True)
class Target:
    """One receiver's row: `done_seq` acknowledged, the lease, and the retries of the event after it."""

    url: str
    done_seq: int
    delivered: int
    attempts: int
    last_error: str | None
    last_attempt: datetime | None
    next_attempt: datetime | None
    delivered_at: datetime | None
    owner: str | None
    lease_until: datetime | None
    seen_at: datetime

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Target:
        return cls(row[0], int(row[1]), int(row[2]), int(row[3]), row[4], _time(row[5]), _time(row[6]),
                   _time(row[7]), row[8], _time(row[9]), datetime.fromisoformat(row[10]))

    def held_by_another(self, owner: str, now: datetime) -> bool:
        return self.owner not in (None, owner) and self.lease_until is not None and self.lease_until > now


def _delivering(store: SQLStore) -> AbstractAsyncContextManager[Transaction]:
    """A short write transaction without PostgreSQL's store-wide write lock (see the module docstring)."""
    if store.dialect == "postgresql":
        return store._transaction(write=True)  # type: ignore[attr-defined]
    return store._write()


async def claim(store: SQLStore, url: str, owner: str, now: datetime, lease: float) -> Target | None:
    """The URL's row with its lease now `owner`'s, or None when another instance holds it (or is claiming it at
    this instant, on PostgreSQL). A URL not seen before gets its row here, at `done_seq` 0."""
    skip = " FOR UPDATE SKIP LOCKED" if store.dialect == "postgresql" else ""
    at = stored_time(now)
    async with _delivering(store) as tx:
        await tx.execute(
            "DELETE FROM event_targets WHERE url IN"
            f" (SELECT url FROM event_targets WHERE seen_at < ? AND url <> ?{skip})",
            (stored_time(now - RETIRE), url),
        )
        await tx.execute(
            "INSERT INTO event_targets (url, done_seq, delivered, attempts, seen_at, created_at)"
            " VALUES (?, 0, 0, 0, ?, ?) ON CONFLICT (url) DO NOTHING",
            (url, at, at),
        )
        row = await tx.fetchone(f"SELECT {_TARGET_COLUMNS} FROM event_targets WHERE url = ?{skip}", (url,))
        if row is None:
            return None
        target = Target.from_row(row)
        if target.held_by_another(owner, now):
            await tx.execute("UPDATE event_targets SET seen_at = ? WHERE url = ?", (at, url))
            return None
        until = now + timedelta(seconds=lease)
        await tx.execute("UPDATE event_targets SET owner = ?, lease_until = ?, seen_at = ? WHERE url = ?",
                         (owner, stored_time(until), at, url))
    return Target(target.url, target.done_seq, target.delivered, target.attempts, target.last_error,
                  target.last_attempt, target.next_attempt, target.delivered_at, owner, until, now)


async def renew(store: SQLStore, url: str, owner: str, now: datetime, lease: float) -> bool:
    """Extends `owner`'s lease; False when it is no longer `owner`'s (it lapsed and another took it)."""
    async with _delivering(store) as tx:
        return bool(await tx.execute(
            "UPDATE event_targets SET lease_until = ?, seen_at = ? WHERE url = ? AND owner = ?",
            (stored_time(now + timedelta(seconds=lease)), stored_time(now), url, owner),
        ))


async def advance(store: SQLStore, url: str, owner: str, seq: int, now: datetime, lease: float) -> bool:
    """Event `seq` was acknowledged: the URL's position moves to it, its retries are forgotten and the lease is
    renewed. False when the lease is no longer `owner`'s (nothing changes then)."""
    at = stored_time(now)
    async with _delivering(store) as tx:
        return bool(await tx.execute(
            "UPDATE event_targets SET done_seq = ?, delivered = delivered + 1, attempts = 0, last_error = NULL,"
            " next_attempt_at = NULL, delivered_at = ?, lease_until = ?, seen_at = ?"
            " WHERE url = ? AND owner = ? AND done_seq < ?",
            (seq, at, stored_time(now + timedelta(seconds=lease)), at, url, owner, seq),
        ))


async def failed(
    store: SQLStore, url: str, owner: str, error: str, now: datetime, next_attempt: datetime, lease: float
) -> bool:
    """An attempt at the next event failed: counted, with its error and when to try again (kept in the store, so a
    restart or another instance keeps the back-off). False when the lease is no longer `owner`'s."""
    at = stored_time(now)
    async with _delivering(store) as tx:
        return bool(await tx.execute(
            "UPDATE event_targets SET attempts = attempts + 1, last_error = ?, last_attempt_at = ?,"
            " next_attempt_at = ?, lease_until = ?, seen_at = ? WHERE url = ? AND owner = ?",
            (error, at, stored_time(next_attempt), stored_time(now + timedelta(seconds=lease)), at, url, owner),
        ))


async def release(store: SQLStore, url: str, owner: str) -> None:
    """Gives the lease back (a clean stop), so another instance, or this one restarted, takes over at once."""
    async with _delivering(store) as tx:
        await tx.execute("UPDATE event_targets SET owner = NULL, lease_until = NULL WHERE url = ? AND owner = ?",
                         (url, owner))


async def target(store: SQLStore, url: str) -> Target | None:
    row = await store._one(f"SELECT {_TARGET_COLUMNS} FROM event_targets WHERE url = ?", (url,))
    return Target.from_row(row) if row is not None else None


async def targets(store: SQLStore) -> list[Target]:
    rows = await store._all(f"SELECT {_TARGET_COLUMNS} FROM event_targets ORDER BY url")
    return [Target.from_row(row) for row in rows]


async def pending(store: SQLStore, after: int, limit: int) -> list[Event]:
    """The next events after `after`, in order."""
    rows = await store._all(f"SELECT {COLUMNS} FROM event_outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
    return [Event.from_row(row) for row in rows]


async def last_seq(store: SQLStore) -> int:
    """The newest event's seq (0 before the first): what a receiver at `done_seq` still has to get is the
    difference, since seqs have no gaps."""
    row = await store._one("SELECT value FROM meta WHERE name = 'events'")
    return int(row[0]) if row is not None else 0


async def list_events(
    store: SQLStore, page: int, size: int, *, kind: str | None = None, obj: str | None = None,
    undelivered: bool = False,
) -> tuple[Page[Event], list[Target]]:
    """Events newest first (of a type, about an object, or only those some receiver still lacks), with every
    receiver's row, read in one snapshot."""
    if page < 0 or size < 1:
        raise ValueError(f"paging out of range: page={page} (min 0), size={size} (min 1)")
    conditions, args = [], []
    if kind is not None:
        conditions.append("type = ?")
        args.append(kind)
    if obj is not None:
        conditions.append("object = ?")
        args.append(obj)
    if undelivered:
        conditions.append("seq > (SELECT MIN(done_seq) FROM event_targets)")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    async with store._reading() as tx:
        total = await tx.fetchone(f"SELECT COUNT(*) FROM event_outbox{where}", args)
        rows = await tx.fetchall(f"SELECT {COLUMNS} FROM event_outbox{where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                                 (*args, size, page * size))
        receivers = await tx.fetchall(f"SELECT {_TARGET_COLUMNS} FROM event_targets ORDER BY url")
    found = Page([Event.from_row(row) for row in rows], page, size, total[0] if total else 0)
    return found, [Target.from_row(row) for row in receivers]


__all__ = ["RETIRE", "Target", "advance", "claim", "failed", "last_seq", "list_events", "pending", "release",
           "renew", "target", "targets"]
