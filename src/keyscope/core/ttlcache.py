"""The one cache type in front of the store: bounded, entries expire after a fixed time, the oldest go first.

The key cache (and its negative cache of unknown secrets) and the cache of ids known to exist are all this.
Time comes from an injectable clock, so that tests move it instead of sleeping until an entry expires.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

Clock = Callable[[], float]


class TTLCache(Generic[K, V]):
    """`get()` answers a live entry or None; `put()` makes an entry live for `ttl` seconds from now.

    A plain dict in insertion order: a hit is one dict lookup and one clock reading, and when the cache is
    full the entry put longest ago is dropped (a re-put moves an entry to the end)."""

    __slots__ = ("ttl", "maxsize", "clock", "_entries")

    def __init__(self, ttl: float, maxsize: int, clock: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self.maxsize = maxsize
        self.clock = clock
        self._entries: dict[K, tuple[V, float]] = {}

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[1] <= self.clock():
            return None
        return entry[0]

    def put(self, key: K, value: V, deadline: float | None = None) -> None:
        """Live until `deadline` (a reading of this cache's clock), by default `ttl` seconds from now."""
        entries = self._entries
        entries.pop(key, None)
        while entries and len(entries) >= self.maxsize:
            del entries[next(iter(entries))]
        entries[key] = (value, self.clock() + self.ttl if deadline is None else deadline)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
