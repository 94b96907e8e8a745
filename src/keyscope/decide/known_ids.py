"""Step 5: every application and entity id a request names must exist.

Asked of the store only for ids not seen to exist within the last `ttl` seconds. Only existence is cached,
never absence: ids only disappear through deletes, which clear this cache in the process that made them
(other processes within `ttl`, or at once where the store notifies them of changes).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from keyscope.core.errors import Refusal
from keyscope.core.ttlcache import Clock, TTLCache
from keyscope.observe import metrics
from keyscope.store.base import Store, StoreUnavailable


class KnownIds:
    def __init__(self, store: Store, *, ttl: float = 5.0, maxsize: int = 100_000, clock: Clock = time.monotonic):
        self.store = store
        self._applications: TTLCache[str, bool] = TTLCache(ttl, maxsize, clock)
        self._entities: TTLCache[str, bool] = TTLCache(ttl, maxsize, clock)

    def unknown(
        self, application_ids: Iterable[str], entity_ids: Iterable[str]
    ) -> tuple[list[str], list[str]] | None:
        """The ids not known to exist, to pass to `look_up()`; None when every one is known (nearly always:
        then nothing is allocated)."""
        known_application, known_entity = self._applications.get, self._entities.get
        for ident in application_ids:
            if known_application(ident) is None:
                break
        else:
            for ident in entity_ids:
                if known_entity(ident) is None:
                    break
            else:
                return None
        return (
            [ident for ident in application_ids if known_application(ident) is None],
            [ident for ident in entity_ids if known_entity(ident) is None],
        )

    async def look_up(self, applications: Sequence[str], entities: Sequence[str]) -> None:
        """Ask the store; remember what exists; Refusal(400) naming the first missing id (503 if no store)."""
        started = time.perf_counter()
        try:
            missing_apps, missing_entities = await self.store.missing_ids(applications, entities)
        except StoreUnavailable:
            metrics.store_call("missing_ids", started, failed=True)
            raise Refusal(503, reason="store_unavailable", step="existence", detail="the store is unavailable")
        except Exception:
            metrics.store_call("missing_ids", started, failed=True)
            raise
        metrics.store_call("missing_ids", started)
        for ident in applications:
            if ident not in missing_apps:
                self._applications.put(ident, True)
        for ident in entities:
            if ident not in missing_entities:
                self._entities.put(ident, True)
        if missing_apps:
            ident = sorted(missing_apps)[0]
            raise Refusal(400, "unknown_application", "existence", "applicationId", f"no application {ident!r}")
        if missing_entities:
            ident = sorted(missing_entities)[0]
            raise Refusal(400, "unknown_entity", "existence", "entityId", f"no entity {ident!r}")

    def clear(self) -> None:
        self._applications.clear()
        self._entities.clear()
