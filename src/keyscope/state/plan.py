"""The plan: what `apply` would create, change and delete to make a store match a document, in the order it would,
with each deletion's cascade, and what it leaves alone. `diff` and `apply --dry-run` show it; `apply` runs it.

Computed from two States (the store's, read in the transaction the plan will run in, and the document's), so a
plan is exact for that transaction. The document's references are checked against both here, before anything is
written: an association or key link must name an application or entity the document holds, `default` (which
always exists), or, without `prune`, one the store holds and keeps. Every problem is reported at once.

Deletions happen only with `prune` (`kept` lists what is left alone otherwise), and last: keys and associations
are brought to what the document says before an application or entity goes, so a deletion's cascade reaches
nothing the document keeps. Its `cascade` is still shown: what in the store names the object now (the same
counts as the audit record of a deletion), each of which the plan also removes or changes.

Order: applications and entities created or changed; associations removed (pruned, or about to name another
application or entity) then created; keys created or changed, then removed; entities then applications removed.
An association's application or entity cannot be changed in place: a change is a removal and a creation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from keyscope.core.models import DEFAULT_APPLICATION, Association
from keyscope.documents.fields import ValidationError, check_validity, one_year_after
from keyscope.state.document import (
    KeySpec,
    Problem,
    State,
    StateInvalid,
    application_doc,
    association_doc,
    entity_doc,
    key_doc,
    link_doc,
    spell_association,
)

Op = Literal["create", "update", "delete"]
Kind = Literal["application", "entity", "association", "key"]


@dataclass(frozen=True, slots=True)
class Change:
    """One write. `fields`: for an update, document field -> (before, after); for a creation, what it sets."""

    op: Op
    kind: Kind
    id: str
    fields: dict[str, Any] = field(default_factory=dict)
    after: Any = None
    """The record to write (Application, Entity, Association, KeySpec with its validity resolved)."""
    before: Any = None
    """The stored record an update or deletion starts from."""
    cascade: dict[str, Any] | None = None

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"op": self.op, "kind": self.kind, "id": self.id}
        if self.kind == "key":  # a key's id says little to a person
            doc["name"] = (self.after or self.before).name
        if self.op == "create":
            doc["set"] = self.fields
        elif self.op == "update":
            doc["fields"] = {name: {"before": b, "after": a} for name, (b, a) in self.fields.items()}
        if self.cascade is not None:
            doc["cascade"] = self.cascade
        return doc


@dataclass(frozen=True, slots=True)
class Kept:
    """A stored object the document does not name, left as it is: without `prune`, or `default`."""

    kind: Kind
    id: str
    reason: str
    name: str | None = None
    """A key's name (a key's id says little to a person)."""

    def to_doc(self) -> dict[str, Any]:
        doc = {"kind": self.kind, "id": self.id, "reason": self.reason}
        if self.name is not None:
            doc["name"] = self.name
        return doc


@dataclass(frozen=True, slots=True)
class Plan:
    changes: tuple[Change, ...]
    kept: tuple[Kept, ...]
    prune: bool

    def summary(self) -> dict[str, int]:
        counts = {"create": 0, "update": 0, "delete": 0}
        for change in self.changes:
            counts[change.op] += 1
        return {**counts, "kept": len(self.kept)}

    def to_doc(self) -> dict[str, Any]:
        return {
            "prune": self.prune,
            "changes": [change.to_doc() for change in self.changes],
            "kept": [kept.to_doc() for kept in self.kept],
            "summary": self.summary(),
        }


def compute(current: State, desired: State, *, prune: bool, now: datetime) -> Plan:
    """The plan that makes `current` into `desired`; StateInvalid with every problem if it cannot be run.
    `now` is a new key's default validity start (the API's: now, to one year on)."""
    problems = _references(current, desired, prune)
    keys = _keys(current, desired, now, problems)
    if problems:
        raise StateInvalid(problems)
    changes: list[Change] = []
    changes += _named("application", current.applications, desired.applications, _app_fields, application_doc)
    changes += _named("entity", current.entities, desired.entities, _entity_fields, entity_doc)
    changes += _associations(current, desired, prune)
    changes += keys
    if prune:
        changes += [Change("delete", "key", k, before=spec) for k, spec in current.keys.items() if k not in desired.keys]
        for kind, column, stored, wanted in (("entity", "entity_id", current.entities, desired.entities),
                                             ("application", "application_id", current.applications,
                                              desired.applications)):
            for ident, record in stored.items():
                if ident not in wanted and (kind, ident) != ("application", DEFAULT_APPLICATION):
                    changes.append(Change("delete", kind, ident, before=record,  # type: ignore[arg-type]
                                          cascade=_cascade(current, column, ident)))
    return Plan(tuple(changes), _kept(current, desired, prune), prune)


def _references(current: State, desired: State, prune: bool) -> list[Problem]:
    problems: list[Problem] = []

    def check(kind: str, ident: str | None, path: str) -> None:
        if ident is None:
            return
        section, wanted, stored = (("applications", desired.applications, current.applications)
                                   if kind == "application" else ("entities", desired.entities, current.entities))
        if ident in wanted or (kind == "application" and ident == DEFAULT_APPLICATION):
            return
        if (section, ident) in desired.refused:  # in the file, but refused: its own problem says so
            return
        if ident not in stored:
            problems.append(Problem(path, f"{ident!r} does not exist and the file does not create it"))
        elif prune:
            problems.append(Problem(path, f"{ident!r} is not in the file, so --prune would delete it"))

    for ident, association in desired.associations.items():
        where = desired.where("associations", ident)
        check("application", association.application_id, f"{where}.applicationId")
        check("entity", association.entity_id, f"{where}.entityId")
    for ident, spec in desired.keys.items():
        where = desired.where("keys", ident)
        for index, link in enumerate(spec.platform):
            check("application", link.application_id, f"{where}.platform[{index}].applicationId")
            check("entity", link.entity_id, f"{where}.platform[{index}].entityId")
    return problems


def _named(kind: Kind, stored: dict[str, Any], wanted: dict[str, Any], full: Any, shown: Any) -> list[Change]:
    """Creations and updates of applications or entities (records compared whole, shown field by field)."""
    changes = []
    for ident, record in wanted.items():
        before = stored.get(ident)
        if before is None:
            changes.append(Change("create", kind, ident, _without(shown(record), _IDS), after=record))
        elif before != record:
            changes.append(Change("update", kind, ident, _changed(full(before), full(record)), record, before))
    return changes


def _app_fields(app: Any) -> dict[str, Any]:
    return {"applicationName": None, "rateLimits": [], **application_doc(app)}


def _entity_fields(entity: Any) -> dict[str, Any]:
    return {"entityName": None, **entity_doc(entity)}


def _associations(current: State, desired: State, prune: bool) -> list[Change]:
    removals, creations = [], []
    for ident, association in desired.associations.items():
        before = current.associations.get(ident)
        if before is None:
            creations.append(Change("create", "association", spell_association(ident),
                                    _without(association_doc(association), _TRIPLE), after=association))
        elif before != association:
            removals.append(Change("update", "association", spell_association(ident),
                                   _changed(_association_fields(before), _association_fields(association)),
                                   after=association, before=before))
    if prune:
        removals += [Change("delete", "association", spell_association(ident), before=association)
                     for ident, association in current.associations.items() if ident not in desired.associations]
    removals.sort(key=lambda change: change.id)
    return removals + creations


def _association_fields(association: Association) -> dict[str, Any]:
    return {"entityId": None, **association_doc(association)}


def _keys(current: State, desired: State, now: datetime, problems: list[Problem]) -> list[Change]:
    """Key creations and updates; a validity window that would end before it starts is a problem. A new key's
    window left out is the API's default (now, to one year on); an existing key's left out is kept."""
    changes = []
    for ident, spec in desired.keys.items():
        before = current.keys.get(ident)
        if before is None:
            start = spec.valid_from or now
            resolved = replace(spec, valid_from=start, valid_to=spec.valid_to or one_year_after(now))
        else:
            resolved = replace(spec, valid_from=spec.valid_from or before.valid_from,
                               valid_to=spec.valid_to or before.valid_to)
        try:
            check_validity(resolved.valid_from, resolved.valid_to)  # type: ignore[arg-type]
        except ValidationError as exc:
            problems.append(Problem(f"{desired.where('keys', ident)}.{exc.field}", exc.detail))
            continue
        if before is None:
            changes.append(Change("create", "key", ident, _without(key_doc(resolved), _IDS), after=resolved))
        elif before != resolved:
            changes.append(Change("update", "key", ident, _changed(_key_fields(before), _key_fields(resolved)),
                                  after=resolved, before=before))
    return changes


def _key_fields(spec: KeySpec) -> dict[str, Any]:
    return {"enabled": True, "enforce": True, "allowedIPs": [], "rateLimits": [], **key_doc(spec),
            "platform": [link_doc(link) for link in spec.platform]}


def _cascade(current: State, column: str, ident: str) -> dict[str, Any]:
    """What deleting the object takes with it, counted as the store's cascade counts it (`CascadeReport` and
    the audit record's `cascade`): associations and key links naming it, keys that lose links, and keys left
    with none (disabled, never made primary)."""
    attr = column
    associations = sum(1 for a in current.associations.values() if getattr(a, attr) == ident)
    entries, unlinked, disabled = 0, [], []
    for key_id, spec in current.keys.items():
        naming = [link for link in spec.platform if getattr(link, attr) == ident]
        if naming:
            entries += len(naming)
            unlinked.append(key_id)
            if len(naming) == len(spec.platform):
                disabled.append(key_id)
    return {"associationsRemoved": associations, "entriesRemoved": entries, "keysUnlinked": unlinked,
            "keysDisabled": disabled}


def _kept(current: State, desired: State, prune: bool) -> tuple[Kept, ...]:
    if prune:
        if DEFAULT_APPLICATION in desired.applications:
            return ()
        return (Kept("application", DEFAULT_APPLICATION, "always exists"),)
    kept: list[Kept] = []
    reason = "not in the file (--prune would delete it)"
    kept += [Kept("application", i, "always exists" if i == DEFAULT_APPLICATION else reason)
             for i in current.applications if i not in desired.applications]
    kept += [Kept("entity", i, reason) for i in current.entities if i not in desired.entities]
    kept += [Kept("association", spell_association(i), reason) for i in current.associations
             if i not in desired.associations]
    kept += [Kept("key", i, reason, spec.name) for i, spec in current.keys.items() if i not in desired.keys]
    return tuple(kept)


_IDS = ("applicationId", "entityId", "id")
_TRIPLE = ("resourceType", "channel", "resourceId")


def _without(doc: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """A creation's fields, less those its id already says."""
    return {name: value for name, value in doc.items() if name not in names}


def _changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {name: (before.get(name), value) for name, value in after.items() if before.get(name) != value}


__all__ = ["Change", "Kept", "Plan", "compute"]
