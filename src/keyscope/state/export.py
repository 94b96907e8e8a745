"""What a store holds, as a State (`keyscope export`, and the "before" of every diff and apply).

Read through the store's ordinary list methods, page by page. Callers read inside `Store.transaction()`, so the
pages are one consistent picture (every write transaction holds the store's write lock: nothing commits in
between) and, for `apply`, the very one the plan is then applied to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from keyscope.core.models import AssociationFilter, Page
from keyscope.state.document import KeySpec, State, association_id
from keyscope.store.base import Store

T = TypeVar("T")

PAGE = 1000
"""Records per read: big enough that a store of a few thousand objects takes a handful of queries."""


async def read_state(store: Store) -> State:
    applications = await _all(lambda page: store.list_applications(page, PAGE))
    entities = await _all(lambda page: store.list_entities(page, PAGE))
    associations = await _all(lambda page: store.list_associations(AssociationFilter(), page, PAGE))
    keys = await _all(lambda page: store.list_keys(page, PAGE))
    return State(
        dict(sorted((a.application_id, a) for a in applications)),
        dict(sorted((e.entity_id, e) for e in entities)),
        dict(sorted(((association_id(a), a) for a in associations), key=lambda item: item[0])),
        dict(sorted(((k.id, KeySpec.of(k)) for k in keys), key=lambda item: item[0])),
    )


async def _all(read: Callable[[int], Awaitable[Page[T]]]) -> list[T]:
    items: list[T] = []
    page = 0
    while True:
        found = await read(page)
        items += found.items
        if len(found.items) < PAGE:
            return items
        page += 1


__all__ = ["read_state"]
