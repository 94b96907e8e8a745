"""ChangeWatcher.due(): the request path awaits tick() only when it says so, and then tick() reads the store."""

from __future__ import annotations

import pytest

from keyscope.store.watch import ChangeWatcher

pytestmark = pytest.mark.anyio


class _PolledStore:
    def __init__(self) -> None:
        self.reads = 0
        self.current = 1

    async def revision(self) -> int:
        self.reads += 1
        return self.current


async def test_due_exactly_when_tick_would_read_the_store() -> None:
    store = _PolledStore()
    changes: list[int] = []
    watcher = ChangeWatcher(store, lambda: changes.append(store.current), interval=3600)  # type: ignore[arg-type]
    await watcher.start()
    assert store.reads == 1 and not watcher.due()
    await watcher.tick()
    assert store.reads == 1  # not due: no read
    watcher._next_poll = 0.0  # the interval has passed
    assert watcher.due()
    store.current = 2
    await watcher.tick()
    assert store.reads == 2 and changes == [2] and not watcher.due()


async def test_an_announcing_store_is_never_due() -> None:
    store = _PolledStore()
    watcher = ChangeWatcher(store, lambda: None)  # type: ignore[arg-type]
    watcher.pushed = True
    assert not watcher.due()
