""""Last used" per key, kept in memory and written to the store at most once a minute, off the request path.

A request that finds the last write more than `interval` ago starts a short background write of every
pending stamp; `close()` writes what is left. No long-lived task, so it works in any event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from keyscope.store.base import Store

logger = logging.getLogger("keyscope.gateway")

USAGE_FLUSH_SECONDS = 60.0

_time = time.time


class UsageRecorder:
    def __init__(self, store: Store, interval: float = USAGE_FLUSH_SECONDS) -> None:
        self.store = store
        self.interval = interval
        self._pending: dict[str, float] = {}
        self._next = 0.0
        self._writing: asyncio.Task[None] | None = None

    def touch(self, key_id: str) -> None:
        now = _time()
        self._pending[key_id] = now
        if now >= self._next and self._writing is None:
            self._next = now + self.interval
            self._writing = asyncio.get_running_loop().create_task(self.flush())
            self._writing.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writing = None

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        last_used = {key_id: datetime.fromtimestamp(when, UTC) for key_id, when in pending.items()}
        try:
            await self.store.record_key_use(last_used)
        except Exception as exc:  # a lost "last used" stamp must never take the gateway down
            logger.warning("could not record key use: %s", exc.__class__.__name__)

    async def close(self) -> None:
        if self._writing is not None:
            await asyncio.wait([self._writing])
        await self.flush()


class NotRecorded(UsageRecorder):
    """For `explain`: explaining a request is not using the key."""

    def touch(self, key_id: str) -> None:
        return None
