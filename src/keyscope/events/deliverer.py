"""The deliverers of one process: a `TargetLoop` per `--events-url`, started and stopped with the gateway.

`attach()` is called where `keyscope serve` (and `keyscope authorize`, which has the same store) builds its app,
in each process that serves it: one process, or each of `--workers N`. It adds the loops to the app's own
start-up and shutdown, after the store is opened and before it is closed, so the gateway's lifespan
(`gateway.lifespan`) stays as it is. Each process names itself (`owner`: host, pid and a random tag) in the leases
it takes, so the events listing shows which one delivers.

Without `--events-url` nothing runs here, and deletions still write their events (listed at
`GET /keyscope/1/events`, and sent once a URL is configured: a new URL starts with what the outbox still holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from keyscope.core.settings import Settings
from keyscope.events.backoff import Backoff
from keyscope.events.sender import Sender, shown
from keyscope.events.target import Clock, TargetLoop, Timing, utc_now
from keyscope.observe import metrics
from keyscope.store.sql import SQLStore

log = logging.getLogger("keyscope.events")

STOP_SECONDS = 2.0
"""How long a stop waits to give the leases back before leaving them to lapse."""


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Deliverer:
    def __init__(
        self, store: Any, urls: Sequence[str], secret: str, *, timeout: float = 10.0, timing: Timing = Timing(),
        clock: Clock = utc_now, owner: str | None = None,
    ) -> None:
        if not isinstance(store, SQLStore):
            raise TypeError("deletion events need a SQL store (SQLite or PostgreSQL)")
        self.store = store
        self.owner = owner or owner_name()
        self.loops = [TargetLoop(store, Sender(url, timeout), secret, self.owner, timing, clock)
                      for url in dict.fromkeys(urls)]
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_settings(cls, store: Any, settings: Settings) -> Deliverer:
        assert settings.events_secret is not None  # settings.validate refuses a URL without a secret
        timing = Timing(lease=settings.events_lease, backoff=Backoff(cap=settings.events_retry_max))
        return cls(store, settings.events_url, settings.events_secret, timeout=settings.events_timeout, timing=timing)

    def start(self) -> None:
        for loop in self.loops:
            self._tasks.append(asyncio.create_task(loop.run(), name=f"keyscope-events {shown(loop.url)}"))
        log.info("events: delivering to %s", ", ".join(shown(loop.url) for loop in self.loops))

    async def stop(self) -> None:
        """Stops the loops (an event in flight is sent again later, by whoever holds its lease next), gives
        the leases back, closes the connections."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for loop in self.loops:
            try:
                await asyncio.wait_for(loop.release(), STOP_SECONDS)
            except Exception as exc:  # the store is gone: the lease lapses by itself
                log.info("events: lease on %s not given back (%s); it lapses by itself", shown(loop.url), exc)
            loop.sender.close()


def attach(app: Any, settings: Settings) -> Deliverer | None:
    """Runs the deliverers with `app` (a Gateway or an Authorizer: anything with `store`, `startup()` and
    `shutdown()`), when `--events-url` names receivers."""
    if not settings.events_url:
        return None
    deliverer = Deliverer.from_settings(app.store, settings)
    startup: Callable[[], Awaitable[None]] = app.startup
    shutdown: Callable[[], Awaitable[None]] = app.shutdown

    async def start() -> None:
        await startup()
        deliverer.start()

    async def stop() -> None:
        try:
            await deliverer.stop()
        finally:
            await shutdown()

    app.startup, app.shutdown = start, stop
    metrics.events_targets(shown(url) for url in settings.events_url)
    return deliverer
