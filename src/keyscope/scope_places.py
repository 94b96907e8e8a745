"""The long way of steps 4-5 (see `keyscope.scope`): every place of a request found, located and decided.

A place (`Slot`) is the query string, the form, or a JSON object that holds ids. `Request` reads them once
and keeps the pending FILL/FORCE rewrites; `Check` decides every place for a linked key's entries, declared
locations first, and raises the first Refusal. Writers are closures back to the request: `Request.close()`
drops them so that a request leaves no reference cycle behind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from . import scope_json
from .endpoints import IdLocation
from .errors import Refusal
from .models import PlatformEntry
from .scope_form import (
    KINDS,
    Part,
    Query,
    Uninspectable,
    id_fields,
    multipart_fields,
    parse_multipart,
    parse_query,
    refuse,
    set_multipart,
    set_params,
)


class Place(NamedTuple):
    """For the explainer: where ids were found (`query`, `form`, `$.messages[0]`), which, and who permitted them."""

    where: str
    ids: dict[str, str | None]
    entry: PlatformEntry | None


@dataclass(slots=True, eq=False)
class Slot:
    """A place being decided: its ids, how to write ids into it (None: it cannot be written), who permits it."""

    where: str
    ids: dict[str, str | None]
    names: dict[str, str]
    write: Callable[[dict[str, str]], None] | None
    entries: list[PlatformEntry] = field(default_factory=list)

    def field(self, name: str) -> str:
        return name if self.where in ("$", "query", "form") else f"{self.where[2:]}.{name}"


class Body(NamedTuple):
    kind: str  # "none", "json", "form", "multipart" or "opaque"
    boundary: bytes = b""


NO_BODY = Body("none")
OPAQUE = Body("opaque")

Outcome = tuple[bytes, bytes, bool, "PlatformEntry | None", frozenset[str], frozenset[str], list[Place]]


class Request:
    """The request's places, and the pending rewrites of its query and body."""

    def __init__(self, query: bytes, body: bytes) -> None:
        self.query = query
        self.body = body
        self.params: Query = []
        self.query_slot = Slot("query", {}, {}, self._write_query)
        self.form_slot: Slot | None = None
        self.doc: Any = None
        self.json_slots: dict[int, Slot] = {}
        self.slots: list[Slot] = []
        self.parts: list[Part] = []
        self.body_kind = NO_BODY
        self.body_changed = False
        self.query_changed = False

    def read_query(self) -> None:
        if self.query:
            self.params = parse_query(self.query)
            fields = [(param.name, param.value) for param in self.params]
            self.query_slot.ids, self.query_slot.names = id_fields(fields, "query string")

    def _write_query(self, values: dict[str, str]) -> None:
        rebuilt = set_params(self.params, values)
        if rebuilt is not None:
            self.query, self.query_changed = rebuilt, True
            self.params = parse_query(rebuilt)

    def read_body(self, body_kind: Body, linked: bool, parsed: tuple[Any, list[dict[str, Any]]] | None) -> None:
        self.body_kind = body_kind
        if body_kind.kind == "opaque" and linked:
            raise refuse(415, "uninspectable_body", None, "keyscope reads only uncompressed UTF-8 JSON and forms.")
        try:
            if body_kind.kind == "json":
                if parsed is not None:
                    self.doc, places = parsed[0], scope_json.unlocated(parsed[1])
                else:
                    self.doc, places = scope_json.read(self.body)
                for found in places:
                    writer = _json_writer(self, found.obj)
                    self.json_slots[id(found.obj)] = Slot(found.where, found.ids, found.names, writer)
            elif body_kind.kind == "form":
                params = parse_query(self.body, "form")
                ids, names = id_fields([(p.name, p.value) for p in params], "form")
                self.form_slot = Slot("form", ids, names, self._form_writer(params))
            elif body_kind.kind == "multipart":
                self.parts = parse_multipart(self.body, body_kind.boundary)
                ids, names = id_fields(multipart_fields(self.parts), "form")
                self.form_slot = Slot("form", ids, names, self._write_multipart)
        except Uninspectable as exc:
            if linked:
                raise refuse(415, "uninspectable_body", None, f"keyscope cannot read this body: {exc}.") from None
            self.body_kind = OPAQUE

    def _form_writer(self, params: Query) -> Callable[[dict[str, str]], None]:
        def write(values: dict[str, str]) -> None:
            rebuilt = set_params(params, values)
            if rebuilt is not None:
                self.body, self.body_changed = rebuilt, True
                params[:] = parse_query(rebuilt, "form")

        return write

    def _write_multipart(self, values: dict[str, str]) -> None:
        try:
            rebuilt = set_multipart(self.body, self.body_kind.boundary, self.parts, values)
        except Uninspectable as exc:
            raise refuse(415, "uninspectable_body", None, f"keyscope cannot rewrite this body: {exc}.") from None
        if rebuilt is not None:
            self.body, self.body_changed = rebuilt, True
            self.parts = parse_multipart(rebuilt, self.body_kind.boundary)

    def locate(self) -> None:
        """Give every JSON place its `where`, in document order (one walk; skipped when all are known)."""
        if all(slot.where for slot in self.json_slots.values()):
            return
        located = {}
        for found in scope_json.find(self.doc):
            slot = self.json_slots.get(id(found.obj))
            if slot is not None:
                slot.where = slot.where or found.where
                located[id(found.obj)] = slot
        self.json_slots = located

    def all_slots(self) -> list[Slot]:
        """Every place that names an id, plus the declared places the check added."""
        named = [self.query_slot, self.form_slot, *self.json_slots.values()]
        seen = {id(slot) for slot in self.slots}
        return self.slots + [s for s in named if s is not None and s.ids and id(s) not in seen]

    def close(self) -> None:
        """Drop the writers: they refer back to the request, a cycle that only the garbage collector would
        free (and a collection per few dozen requests, each walking every young object, costs more than this)."""
        self.query_slot.write = None
        if self.form_slot is not None:
            self.form_slot.write = None
        for slot in (*self.json_slots.values(), *self.slots):
            slot.write = None

    def outcome(self, entry: PlatformEntry | None) -> Outcome:
        """What `scope.Decision` holds: query, body, changed, entry, application and entity ids, places."""
        self.locate()
        if self.body_changed and self.body_kind.kind == "json":
            self.body = scope_json.dump(self.doc)
        slots = self.slots or self.all_slots()
        applications = frozenset(s.ids["applicationId"] for s in slots if s.ids.get("applicationId") is not None)
        entities = frozenset(s.ids["entityId"] for s in slots if s.ids.get("entityId") is not None)
        places = [Place(s.where, s.ids, s.entries[0] if s.entries else None) for s in slots]
        changed = self.body_changed or self.query_changed
        return self.query, self.body, changed, entry, applications, entities, places


def _json_writer(request: Request, obj: dict[str, Any]) -> Callable[[dict[str, str]], None]:
    def write(values: dict[str, str]) -> None:
        for kind, value in values.items():
            if obj.get(kind) != value:
                obj[kind] = value
                request.body_changed = True

    return write


class Check:
    """A linked key's decision over the request's places; raises the first Refusal."""

    def __init__(self, entries: tuple[PlatformEntry, ...], request: Request) -> None:
        self.request = request
        ids, action_at, self.action_ids = _rules(entries)
        # The key's own entry objects, not the cached ones: an equal key loaded later is another object,
        # and entry_of() tells the entries that permitted each place apart by identity.
        self.rules: list[Rule] = list(zip(entries, ids))
        self.action = entries[action_at] if action_at is not None else None

    def run(self, locations: tuple[IdLocation, ...]) -> None:
        request = self.request
        for location in locations:
            for slot in self._declared(location):
                if all(slot is not other for other in request.slots):
                    request.slots.append(slot)
        if locations and not request.slots:
            raise refuse(403, "id_missing", locations[0].text or None, "The request names no place for its ids.")
        for slot in request.slots:
            self._decide_declared(slot)
        request.locate()
        declared = len(request.slots)
        request.slots = request.all_slots()
        for slot in request.slots[declared:]:
            self._decide_elsewhere(slot)

    def _declared(self, location: IdLocation) -> list[Slot]:
        request = self.request
        if location.kind == "query":
            return [request.query_slot]
        if location.kind == "form":
            return [request.form_slot or Slot("form", {}, {}, None)]
        if request.doc is None:
            return [Slot("$." + location.text if location.path else "$", {}, {}, None)]
        slots = []
        for target in scope_json.resolve(request.doc, location.path):
            existing = request.json_slots.get(id(target.obj)) if target.obj is not None else None
            if existing is None:
                existing = Slot(scope_json.where(target.path), {}, {}, _target_writer(request, target))
            elif not existing.where:
                existing.where = scope_json.where(target.path)
            slots.append(existing)
        return slots

    def _decide_declared(self, slot: Slot) -> None:
        for kind, name in slot.names.items():
            if name != kind:
                raise refuse(400, "id_name_case", slot.field(name), f"Write {kind} exactly as {kind!r} here.")
        action, write = self.action, slot.write
        if action is not None and write is not None and action.action == "FORCE":
            self._write(slot, write, self.action_ids)
        slot.entries = [entry for entry, ids in self.rules if requires(ids, slot.ids)]
        if slot.entries:
            return
        if action is not None and write is not None and action.action == "FILL" and allows(self.action_ids, slot.ids):
            self._write(slot, write, {k: v for k, v in self.action_ids.items() if slot.ids.get(k) is None})
            slot.entries = [entry for entry, ids in self.rules if requires(ids, slot.ids)]
            return
        agreeing = next((ids for _, ids in self.rules if allows(ids, slot.ids)), None)
        if agreeing is None:
            raise out_of_scope([ids for _, ids in self.rules], slot)
        raise missing(slot, next(k for k in agreeing if slot.ids.get(k) is None))

    def _decide_elsewhere(self, slot: Slot) -> None:
        slot.entries = [entry for entry, ids in self.rules if allows(ids, slot.ids)]
        if not slot.entries:
            raise out_of_scope([ids for _, ids in self.rules], slot)

    @staticmethod
    def _write(slot: Slot, write: Callable[[dict[str, str]], None], values: dict[str, str]) -> None:
        if not values:
            return
        write(values)
        slot.ids.update(values)
        slot.names.update({kind: kind for kind in values})


def out_of_scope(rules: Sequence[dict[str, str]], slot: Slot) -> Refusal:
    """403 naming the id no entry accepts on its own, else the first id of the place."""
    ids = slot.ids
    first = kind = None
    for named in KINDS:
        value = ids.get(named)
        if value is not None:
            first = first or named
            for rule in rules:
                if rule.get(named, value) == value:
                    break
            else:
                kind = named
                break
    kind = kind or first
    assert kind is not None
    return refuse(403, "id_out_of_scope", slot.field(slot.names[kind]), f"This key may not use {kind} {ids[kind]!r}.")


def missing(slot: Slot, kind: str) -> Refusal:
    """403: a declared place without the key's `kind`, and nothing to fill it."""
    return refuse(403, "id_missing", slot.field(kind), f"This key's requests must name their {kind} here.")


def _target_writer(request: Request, target: scope_json.Target) -> Callable[[dict[str, str]], None]:
    def write(values: dict[str, str]) -> None:
        _json_writer(request, scope_json.materialise(target))(values)
        request.body_changed = True

    return write


Rule = tuple[PlatformEntry, dict[str, str]]


@lru_cache(maxsize=4096)
def _rules(entries: tuple[PlatformEntry, ...]) -> tuple[tuple[dict[str, str], ...], int | None, dict[str, str]]:
    """The ids each entry sets, and the action entry's position and ids: once per distinct key link set.

    Shared between requests: nothing may change them (they are read only).
    """
    action_at = next((at for at, entry in enumerate(entries) if entry.action), None)
    action_ids = ids_of(entries[action_at]) if action_at is not None else {}
    return tuple(ids_of(entry) for entry in entries), action_at, action_ids


def ids_of(entry: PlatformEntry) -> dict[str, str]:
    ids = {}
    if entry.application_id is not None:
        ids["applicationId"] = entry.application_id
    if entry.entity_id is not None:
        ids["entityId"] = entry.entity_id
    return ids


def allows(entry_ids: dict[str, str], ids: dict[str, str | None]) -> bool:
    """Every id the place names agrees with the entry's (missing ids are fine)."""
    for kind, value in entry_ids.items():
        named = ids.get(kind)
        if named is not None and named != value:
            return False
    return True


def requires(entry_ids: dict[str, str], ids: dict[str, str | None]) -> bool:
    """The place names every kind the entry sets, with the entry's value."""
    for kind, value in entry_ids.items():
        if ids.get(kind) != value:
            return False
    return True


def entry_of(slots: list[Slot], entries: tuple[PlatformEntry, ...]) -> PlatformEntry:
    """The entry the forwarded headers describe: one that permits every place, else what the places agree on."""
    if len(entries) == 1:  # every place was permitted by it, or the request was refused
        return entries[0]
    if not slots:
        return entries[0] if len(entries) == 1 else _agreement(entries)
    permitting = [set(map(id, slot.entries)) for slot in slots]
    common = [entry for entry in entries if all(id(entry) in ids for ids in permitting)]
    if common:
        return next((entry for entry in common if entry.action), common[0])
    return _agreement([slot.entries[0] for slot in slots])


def _agreement(chosen: list[PlatformEntry] | tuple[PlatformEntry, ...]) -> PlatformEntry:
    application = {entry.application_id for entry in chosen}
    entity = {entry.entity_id for entry in chosen}
    return PlatformEntry(
        key="",
        application_id=application.pop() if len(application) == 1 else None,
        entity_id=entity.pop() if len(entity) == 1 else None,
    )

