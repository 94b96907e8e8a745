"""Change propagation: tell this worker when any worker or instance changed what a key may do.

Every such write bumps the store's revision. A store that announces changes (PostgreSQL: LISTEN/NOTIFY) is
heard on a dedicated connection: each announcement calls `on_change()` at once. If that connection drops,
notifications may be lost, so the watcher reconnects with backoff and calls `on_change()` once it is back;
meanwhile the key cache's TTL bounds how stale a worker can be. A slow periodic revision read on the same
connection catches a connection that died silently.

A store that cannot announce (SQLite shared by the workers of one host) is polled from the request path:
`tick()` costs one clock read per request and reads the revision at most every `interval` seconds, a local
read of microseconds. It runs before the key lookup, so a request arriving after an idle spell always sees
the latest revision.

`on_change` must be cheap and must not raise: it drops caches (the key cache, the ids cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from keyscope.observe import metrics
from keyscope.store.base import Store, StoreError

log = logging.getLogger("keyscope.watch")


@runtime_checkable
class ChangeListener(Protocol):
    lost: asyncio.Event

    async def revision(self) -> int: ...

    async def close(self) -> None: ...


@runtime_checkable
class AnnouncingStore(Protocol):
    """A store that pushes changes: `listen(on_notify)` opens a connection calling on_notify(revision)."""

    async def listen(self, on_notify: Callable[[int], None]) -> ChangeListener: ...


class ChangeWatcher:
    def __init__(
        self,
        store: Store,
        on_change: Callable[[], None],
        *,
        interval: float = 0.2,
        check_every: float = 5.0,
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self.store = store
        self.on_change = on_change
        self.interval = interval
        self.check_every = check_every
        self.backoff = backoff
        self.pushed = isinstance(store, AnnouncingStore)
        self._revision: int | None = None
        self._next_poll = 0.0
        self._listener: ChangeListener | None = None
        self._task: asyncio.Task[None] | None = None
        self.heard: float | None = None
        """time.monotonic() when the store's revision was last heard: a notification, a poll (/metrics)."""

    @property
    def revision(self) -> int | None:
        """The latest store revision this worker has heard of (None before start())."""
        return self._revision

    async def start(self) -> None:
        """Reads the current revision and, for an announcing store, starts listening. Raises StoreError if
        the store cannot be reached: start-up must fail rather than run without propagation."""
        if self.pushed:
            listener = await self.store.listen(self._notified)  # type: ignore[attr-defined]
            try:
                self._revision = await listener.revision()
            except BaseException:
                await listener.close()
                raise
            self._listener = listener
            self._task = asyncio.create_task(self._supervise(), name="keyscope-change-watcher")
        else:
            self._revision = await self.store.revision()
            self._next_poll = time.monotonic() + self.interval
        self.heard = time.monotonic()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()

    def due(self) -> bool:
        """Whether tick() would read the store now: the request path awaits it only then (one clock read)."""
        return not self.pushed and time.monotonic() >= self._next_poll

    async def tick(self, force: bool = False) -> None:
        """Called on every request, before the key lookup; a store round trip at most every `interval`.

        `force`: read the revision whether or not a read is due, e.g. right after this process changed the store,
        so that it has heard of its own write before the caller has, rather than on a later request."""
        if self.pushed:
            return
        now = time.monotonic()
        if now < self._next_poll and not force:
            return
        self._next_poll = now + self.interval
        started = time.perf_counter()
        try:
            revision = await self.store.revision()
        except StoreError as exc:
            metrics.store_call("revision", started, failed=True)
            log.warning("cannot read the store's revision: %s", exc)  # caches keep their TTL meanwhile
            return
        metrics.store_call("revision", started)
        self._seen(revision)

    # internals ------------------------------------------------------------------------------------
    def _seen(self, revision: int) -> None:
        self.heard = time.monotonic()
        if revision != self._revision:
            self._revision = revision
            self._fire()

    def _notified(self, revision: int) -> None:
        self.heard = time.monotonic()
        if self._revision is None or revision > self._revision:
            self._revision = revision
        self._fire()

    def _fire(self) -> None:
        try:
            self.on_change()
        except Exception:
            log.exception("on_change failed")

    async def _supervise(self) -> None:
        """Keeps one LISTEN connection alive: waits for it to drop (checking it now and then), reconnects."""
        delay = self.backoff[0]
        while True:
            listener = self._listener
            if listener is None:
                listener = await self._reconnect(delay)
                if listener is None:
                    delay = min(delay * 2, self.backoff[1])
                    continue
                delay = self.backoff[0]
                continue
            try:
                await asyncio.wait_for(listener.lost.wait(), self.check_every)
            except asyncio.TimeoutError:
                with contextlib.suppress(StoreError):  # revision() has marked the listener lost
                    self._seen(await listener.revision())
                if not listener.lost.is_set():
                    continue
            log.warning("change notification connection lost; caches fall back to their TTL until it is back")
            self._listener = None
            await listener.close()

    async def _reconnect(self, delay: float) -> ChangeListener | None:
        """A new listener, or None after waiting `delay`. Announcements made while none was listening are
        lost, so a successful reconnect counts as a change."""
        listener: ChangeListener | None = None
        try:
            listener = await self.store.listen(self._notified)  # type: ignore[attr-defined]
            revision = await listener.revision()
        except BaseException as exc:
            if listener is not None:
                await listener.close()
            if not isinstance(exc, Exception):
                raise  # cancelled by stop(): nothing is left open
            log.warning("change notifications unavailable, retrying in %.1fs: %s", delay, exc)
            await asyncio.sleep(delay)
            return None
        self._listener = listener
        self._revision = revision
        self.heard = time.monotonic()
        log.info("change notifications restored")
        self._fire()
        return listener


__all__ = ["AnnouncingStore", "ChangeListener", "ChangeWatcher"]
