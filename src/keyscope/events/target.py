"""One receiver's delivery loop in one process: claim its lease, send its events in order, move its position on.

Every process that runs the gateway with `--events-url` runs this loop for each URL, and the lease in the store
(`keyscope.store.deliveries`) lets one of them at a time deliver: under `--workers N` one worker of the N, and
with several instances on one PostgreSQL one instance. The others look at the row every POLL seconds and take the
lease over when its holder stops renewing it (killed, or cut off from the store), `--events-lease` seconds at
most after its last renewal; a clean stop gives it back at once.

The holder sends the events after the URL's `done_seq` strictly in seq order, one at a time, and moves `done_seq`
onto each event the receiver answered 2xx: so each receiver gets every event, in the order they were written
(in order per object, and overall). A failure (no connection, timeout, any status outside 2xx) is written to
the store with when to try again (`backoff`), and the same event is tried again then: nothing after it is sent
before it, so one event a receiver keeps refusing holds back the rest for that receiver (and only for it) until
it takes it; `GET /keyscope/1/events` and the metrics show that. The lease is renewed every third of its length,
also while a POST is in flight, so a slow receiver never loses it; no store transaction is open during a POST.

At least once: a holder killed (or losing its lease) between the receiver's 2xx and the store's write of it has
the event sent again by whoever holds the lease next. Nothing else sends an event twice, and none is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from keyscope.events import signing
from keyscope.events.backoff import Backoff
from keyscope.events.sender import Outcome, Sender, shown
from keyscope.observe import metrics
from keyscope.store import deliveries
from keyscope.store.base import StoreError
from keyscope.store.outbox import Event
from keyscope.store.sql import SQLStore

log = logging.getLogger("keyscope.events")

BATCH = 100
"""Events read from the outbox at a time."""
LOG_EVERY = 10
"""A failing receiver is logged at its first failure, then every LOG_EVERY-th (and when it recovers)."""

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class LeaseLost(Exception):
    """Another instance holds this receiver's lease now: stop sending until it can be claimed again."""


@dataclass(frozen=True, slots=True)
class Timing:
    lease: float = 15.0
    backoff: Backoff = Backoff()

    @property
    def poll(self) -> float:
        """How often an idle loop looks at the outbox and the lease (and so how soon a new event leaves)."""
        return min(1.0, self.lease / 3)

    @property
    def renew_every(self) -> float:
        return self.lease / 3


class TargetLoop:
    def __init__(
        self, store: SQLStore, sender: Sender, secret: str, owner: str, timing: Timing, clock: Clock = utc_now
    ) -> None:
        self.store = store
        self.sender = sender
        self.url = sender.url
        self.secret = secret
        self.owner = owner
        self.timing = timing
        self.clock = clock
        self.holding = False
        self._renewed = 0.0
        self._store_down = False

    async def run(self) -> None:
        """Until cancelled; store errors are logged once per outage and waited out."""
        while True:
            try:
                await self.step()
                if self._store_down:
                    self._store_down = False
                    log.info("events: the store answers again; delivering to %s", shown(self.url))
            except LeaseLost:
                self.holding = False
                log.info("events: another instance delivers to %s now", shown(self.url))
            except StoreError as exc:
                self.holding = False
                if not self._store_down:
                    self._store_down = True
                    log.warning("events: store unavailable, delivery to %s paused: %s", shown(self.url), exc)
                await self._sleep(self.timing.poll)
            except Exception:  # a bug must not end delivery for good: said loudly, then tried again
                self.holding = False
                log.exception("events: delivery to %s failed unexpectedly; trying again", shown(self.url))
                await self._sleep(self.timing.poll)

    async def step(self) -> None:
        """One round: make sure of the lease, then send what is pending (or wait a poll when nothing is)."""
        now = self.clock()
        row = await deliveries.target(self.store, self.url)
        if row is None or row.owner != self.owner or row.lease_until is None or row.lease_until <= now:
            self.holding = False
            if row is not None and row.held_by_another(self.owner, now):
                await self._pending(row.done_seq)
                await self._sleep(self.timing.poll)
                return
            row = await deliveries.claim(self.store, self.url, self.owner, now, self.timing.lease)
            if row is None:
                await self._sleep(self.timing.poll)
                return
            self.holding = True
            self._renewed = time.monotonic()
        else:
            self.holding = True
            await self._keep_lease()
        if row.next_attempt is not None and row.next_attempt > now:
            wait = (row.next_attempt - now).total_seconds()
            await self._sleep(min(wait, self.timing.renew_every))
            return
        events = await deliveries.pending(self.store, row.done_seq, BATCH)
        await self._pending(row.done_seq)
        if not events:
            await self._sleep(self.timing.poll)
            return
        attempts = row.attempts
        for event in events:
            if not await self.deliver(event, attempts + 1):
                return  # its retry time is in the store: the next step waits for it
            attempts = 0

    async def deliver(self, event: Event, attempt: int) -> bool:
        """Sends one event, renewing the lease while the receiver takes its time; True when it was taken."""
        body = event.body.encode("utf-8")
        post = asyncio.ensure_future(self.sender.post(body, signing.headers(event, body, self.secret, attempt)))
        try:
            while True:
                done, _ = await asyncio.wait({post}, timeout=self.timing.renew_every)
                if done:
                    break
                await self._keep_lease()
        finally:
            if not post.done():
                post.cancel()
        outcome: Outcome = post.result()
        now = self.clock()
        if outcome.ok:
            if not await deliveries.advance(self.store, self.url, self.owner, event.seq, now, self.timing.lease):
                raise LeaseLost
            self._renewed = time.monotonic()
            metrics.event_delivered()
            if attempt > 1:
                log.info("events: %s took event %s after %d attempts", shown(self.url), event.id, attempt)
            return True
        delay = self.timing.backoff.delay(attempt)
        error = outcome.error or "failed"
        later = now + timedelta(seconds=delay)
        if not await deliveries.failed(self.store, self.url, self.owner, error, now, later, self.timing.lease):
            raise LeaseLost
        self._renewed = time.monotonic()
        metrics.event_failed()
        if attempt == 1 or attempt % LOG_EVERY == 0:
            log.warning("events: delivery of event %s to %s failed (attempt %d): %s; next attempt in %.1f s",
                        event.id, shown(self.url), attempt, error, delay)
        return False

    async def _keep_lease(self) -> None:
        if time.monotonic() - self._renewed < self.timing.renew_every:
            return
        if not await deliveries.renew(self.store, self.url, self.owner, self.clock(), self.timing.lease):
            raise LeaseLost
        self._renewed = time.monotonic()

    async def _pending(self, done_seq: int) -> None:
        if metrics.events_on():
            metrics.events_pending(shown(self.url), await deliveries.last_seq(self.store) - done_seq)

    async def _sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def release(self) -> None:
        """A clean stop: the lease goes back, so a restarted or other instance takes over at once."""
        if self.holding:
            self.holding = False
            await deliveries.release(self.store, self.url, self.owner)
