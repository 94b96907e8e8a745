"""State as code's two operations on a store, each in one transaction: `export` (the store as a document) and
`sync` (a document's plan, and with `dry_run` False its writes). The management API serves them at
`/keyscope/1/state` (`keyscope.control.state`), which is how the CLI's `export`, `diff` and `apply` reach them,
in-process or over HTTP alike.

One transaction for reading and writing: the plan is computed from what the transaction reads and run on the
same view, so nothing another writer commits can fall between the diff and the writes (every write transaction
holds the store's write lock), and a failure anywhere leaves the store as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from keyscope.state.apply import Applied, run
from keyscope.state.document import StateInvalid, parse, to_doc
from keyscope.state.export import read_state
from keyscope.state.plan import Plan, compute
from keyscope.store.base import Store


@dataclass(frozen=True, slots=True)
class Outcome:
    plan: Plan
    applied: Applied | None
    """None when nothing was written: a dry run, or a plan with no changes."""


async def export(store: Store) -> dict[str, Any]:
    """The store as a state document (`document.to_doc`), read as one consistent picture."""
    async with store.transaction() as tx:
        return to_doc(await read_state(tx))


async def sync(store: Store, doc: Any, *, prune: bool, dry_run: bool, principal: str) -> Outcome:
    """The plan that makes the store match `doc`, applied unless `dry_run`. StateInvalid (every problem, from
    the document alone or against the store) before anything is written; a store error rolls everything back."""
    try:
        desired, problems = parse(doc), []
    except StateInvalid as invalid:
        if invalid.partial is None:  # not even a document: nothing to check against the store
            raise
        desired, problems = invalid.partial, invalid.problems
    now = datetime.now(UTC).replace(microsecond=0)  # as the API stamps a new key
    async with store.transaction() as tx:
        try:
            plan = compute(await read_state(tx), desired, prune=prune, now=now)
        except StateInvalid as invalid:
            problems = problems + invalid.problems
        if problems:  # every problem at once, those of the document alone and those against the store
            raise StateInvalid(problems)
        if dry_run or not plan.changes:
            return Outcome(plan, None)
        applied = await run(tx, plan, principal, now)
    return Outcome(plan, applied)


__all__ = ["Outcome", "export", "sync"]
