"""Places and the decision: every place of a request that names ids, found, checked against a key, FILL/FORCE.

A place (`Slot`) is the query string, the form, or a JSON object that holds ids. `Reading` reads the request
once (every ambiguity refused on the way) and writes FILL/FORCE ids into a place it can write; `decide`
checks every place for a linked key's entries, declared locations first, and raises the first Refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from keyscope.allowlist.table import IdLocation
from keyscope.core.errors import Refusal
from keyscope.core.limits import Limits
from keyscope.core.models import PlatformEntry
from keyscope.scope.form import Param, id_fields, pieces
from keyscope.scope.form import parse as parse_pairs
from keyscope.scope.form import rewrite as rewrite_pairs
from keyscope.scope.jsonbody import read as read_json
from keyscope.scope.locations import Target, locate, materialise, resolve
from keyscope.scope.locations import where as where_text
from keyscope.scope.multipart import Part
from keyscope.scope.multipart import fields as part_fields
from keyscope.scope.multipart import parse as parse_parts
from keyscope.scope.multipart import rewrite as rewrite_parts
from keyscope.scope.names import KINDS
from keyscope.scope.refusals import Uninspectable, refuse


class Body(NamedTuple):
    kind: str  # "none", "json", "form", "multipart" or "opaque"
    boundary: bytes = b""


NO_BODY = Body("none")
OPAQUE = Body("opaque")


class Slot:
    """A place being decided: where it is ("" until located), its ids and their names as written, whether
    FILL/FORCE can write it, its JSON object or the declared location to create, who permits it.

    Compared by identity: two places holding equal ids are still two places."""

    __slots__ = ("where", "ids", "names", "writable", "obj", "target", "path", "entries")

    def __init__(
        self,
        where: str,
        ids: dict[str, str | None],
        names: dict[str, str],
        writable: bool,
        obj: dict[str, Any] | None = None,
        target: Target | None = None,
        path: tuple[str | int, ...] | None = None,
    ) -> None:
        self.where = where
        self.ids = ids
        self.names = names
        self.writable = writable
        self.obj = obj
        self.target = target
        self.path = path
        self.entries: list[PlatformEntry] = _NONE

    def located(self) -> str:
        """`where`, from the JSON path when a declared location found the place (refusals and the
        explainer ask; a place found elsewhere is located by a walk, see `Decision.places`)."""
        if not self.where and self.path is not None:
            self.where = where_text(self.path)
        return self.where

    def field(self, name: str) -> str:
        where = self.located()
        return name if where in ("$", "query", "form") else f"{where[2:]}.{name}"


_NONE: list[PlatformEntry] = []  # no entry permits the place (yet); never changed in place


class Reading:
    """A request's places, read once; FILL/FORCE writes go through write()."""

    def __init__(self, query: bytes, body: bytes, kind: Body, linked: bool, limits: Limits) -> None:
        self.query = query
        self.body = body
        self.kind = kind
        self.query_changed = self.body_changed = False
        self.params = parse_pairs(query, "query", limits.params) if query else []
        ids, spelt = id_fields([(p.name, p.value) for p in self.params], "query string") if query else ({}, {})
        self.query_slot = Slot("query", ids, spelt, True)
        self.form_slot: Slot | None = None
        self.form_params: list[Param] = []
        self.doc: Any = None
        self.holders: list[Slot] = []
        self.parts: list[Part] = []
        if kind.kind == "opaque" and linked:
            raise refuse(415, "uninspectable_body", None, "keyscope reads only uncompressed UTF-8 JSON and forms.")
        try:
            if kind.kind == "json":
                self.doc, holders = read_json(body, limits.json_members, limits.json_depth)
                self.holders = [Slot("", h.ids, h.names, True, h.obj) for h in holders]
            elif kind.kind == "form":
                self.form_params = parse_pairs(body, "form", limits.params - pieces(query))
                ids, spelt = id_fields([(p.name, p.value) for p in self.form_params], "form")
                self.form_slot = Slot("form", ids, spelt, True)
            elif kind.kind == "multipart":
                self.parts = parse_parts(body, kind.boundary, limits.parts)
                ids, spelt = id_fields(part_fields(self.parts), "form")
                self.form_slot = Slot("form", ids, spelt, True)
        except Uninspectable as exc:
            if linked:
                raise refuse(415, "uninspectable_body", None, f"keyscope cannot read this body: {exc}.") from None
            self.kind = OPAQUE

    def write(self, slot: Slot, values: dict[str, str]) -> None:
        """FILL/FORCE `values` into a writable place, and into its ids."""
        if not values:
            return
        if slot is self.query_slot:
            rebuilt = rewrite_pairs(self.params, values)
            if rebuilt is not None:
                self.query, self.query_changed = rebuilt, True
                self.params = parse_pairs(rebuilt, "query", len(self.params) + len(values))
        elif slot is self.form_slot and self.kind.kind == "form":
            rebuilt = rewrite_pairs(self.form_params, values)
            if rebuilt is not None:
                self.body, self.body_changed = rebuilt, True
                self.form_params = parse_pairs(rebuilt, "form", len(self.form_params) + len(values))
        elif slot is self.form_slot:
            try:
                rebuilt = rewrite_parts(self.body, self.kind.boundary, self.parts, values)
            except Uninspectable as exc:
                raise refuse(415, "uninspectable_body", None, f"keyscope cannot rewrite this body: {exc}.") from None
            if rebuilt is not None:
                self.body, self.body_changed = rebuilt, True
                self.parts = parse_parts(rebuilt, self.kind.boundary, len(self.parts) + len(values))
        else:
            if slot.obj is None:
                assert slot.target is not None
                slot.obj = materialise(slot.target)
                self.body_changed = True
            obj = slot.obj
            for kind, value in values.items():
                if obj.get(kind) != value:
                    obj[kind] = value
                    self.body_changed = True
        slot.ids.update(values)
        slot.names.update({kind: kind for kind in values})

    def named(self) -> list[Slot]:
        """Every place that names an id: the query, the form, the JSON objects."""
        slots = [slot for slot in (self.query_slot, self.form_slot) if slot is not None and slot.ids]
        return slots + self.holders if slots else self.holders


def decide(entries: tuple[PlatformEntry, ...], reading: Reading, locations: tuple[IdLocation, ...]) -> list[Slot]:
    """A linked key's decision over the request's places: the declared ones, then every other one that names
    ids. Returns the places, each with the entries that permit it; raises the first Refusal."""
    rules, action_at, action_ids = _rules(entries)
    action = entries[action_at].action if action_at is not None else None
    declared = _declared(reading, locations)
    if locations and not declared:
        raise refuse(403, "id_missing", locations[0].text or None, "The request names no place for its ids.")
    for slot in declared:
        for kind, name in slot.names.items():
            if name != kind:
                raise refuse(400, "id_name_case", slot.field(name), f"Write {kind} exactly as {kind!r} here.")
        if action == "FORCE" and slot.writable:
            reading.write(slot, action_ids)
        slot.entries = _requiring(entries, rules, slot.ids)
        if slot.entries:
            continue
        if action == "FILL" and slot.writable and allows(action_ids, slot.ids):
            reading.write(slot, {k: v for k, v in action_ids.items() if slot.ids.get(k) is None})
            slot.entries = _requiring(entries, rules, slot.ids)
            continue
        agreeing = next((ids for ids in rules if allows(ids, slot.ids)), None)
        if agreeing is None:
            raise out_of_scope(rules, slot)
        raise refuse(403, "id_missing", slot.field(next(k for k in agreeing if slot.ids.get(k) is None)),
                     "This key's requests must name their ids here.")
    others = [slot for slot in reading.named() if slot not in declared]
    if not others:
        return declared
    for slot in others:
        slot.entries = _allowing(entries, rules, slot.ids)
        if not slot.entries:
            raise out_of_scope(rules, slot if slot.obj is None else _first_refused(reading.doc, others, rules))
    return declared + others


def _requiring(entries: tuple[PlatformEntry, ...], rules: tuple[dict[str, str], ...], ids: dict[str, Any]) -> list[PlatformEntry]:
    if len(rules) == 1:
        return [entries[0]] if requires(rules[0], ids) else []
    return [entries[at] for at, rule in enumerate(rules) if requires(rule, ids)]


def _allowing(entries: tuple[PlatformEntry, ...], rules: tuple[dict[str, str], ...], ids: dict[str, Any]) -> list[PlatformEntry]:
    if len(rules) == 1:
        return [entries[0]] if allows(rules[0], ids) else []
    return [entries[at] for at, rule in enumerate(rules) if allows(rule, ids)]


def _first_refused(doc: Any, slots: list[Slot], rules: Sequence[dict[str, str]]) -> Slot:
    """The refused JSON place that comes first in the document, located (refusals name their place)."""
    refused = {id(s.obj): s for s in slots if s.obj is not None and not any(allows(ids, s.ids) for ids in rules)}
    located = locate(doc, set(refused))
    first = next(iter(located))
    refused[first].where = located[first]
    return refused[first]


def _declared(reading: Reading, locations: tuple[IdLocation, ...]) -> list[Slot]:
    """The places at the endpoint's declared locations, each once, in the locations' order."""
    slots: list[Slot] = []
    holders = None
    for location in locations:
        if location.kind == "query":
            found = [reading.query_slot]
        elif location.kind == "form":
            found = [reading.form_slot or Slot("form", {}, {}, False)]
        elif reading.doc is None:
            found = [Slot("$." + location.text if location.path else "$", {}, {}, False)]
        else:
            if holders is None:
                holders = {id(slot.obj): slot for slot in reading.holders} if reading.holders else {}
            found = []
            for target in resolve(reading.doc, location.path):
                slot = holders.get(id(target.obj)) if target.obj is not None else None
                if slot is None:
                    slot = Slot("", {}, {}, True, target.obj, target, target.path)
                else:
                    slot.path = target.path
                found.append(slot)
        for slot in found:
            if slot not in slots:  # Slots compare by identity
                slots.append(slot)
    return slots


def out_of_scope(rules: Sequence[dict[str, str]], slot: Slot) -> Refusal:
    """403 naming the id no entry accepts on its own, else the first id of the place."""
    ids = slot.ids
    first = kind = None
    for named in KINDS:
        value = ids.get(named)
        if value is not None:
            first = first or named
            if all(rule.get(named, value) != value for rule in rules):
                kind = named
                break
    kind = kind or first
    assert kind is not None
    return refuse(403, "id_out_of_scope", slot.field(slot.names[kind]), f"This key may not use {kind} {ids[kind]!r}.")


_RULES: dict[int, tuple[tuple[PlatformEntry, ...], tuple[dict[str, str], ...], int | None, dict[str, str]]] = {}


def _rules(entries: tuple[PlatformEntry, ...]) -> tuple[tuple[dict[str, str], ...], int | None, dict[str, str]]:
    """The ids each entry sets, and the action entry's position and ids: once per key record (a cached key
    brings the same tuple of entries to each of its requests; the cache holds it, so its id stays its own).

    Shared between requests: nothing may change them (they are read only).
    """
    known = _RULES.get(id(entries))
    if known is not None and known[0] is entries:
        return known[1], known[2], known[3]
    action_at = next((at for at, entry in enumerate(entries) if entry.action), None)
    action_ids = ids_of(entries[action_at]) if action_at is not None else {}
    rules = tuple(ids_of(entry) for entry in entries)
    if len(_RULES) >= 4096:
        _RULES.clear()
    _RULES[id(entries)] = (entries, rules, action_at, action_ids)
    return rules, action_at, action_ids


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
        return _agreement(entries)
    permitting = [set(map(id, slot.entries)) for slot in slots]
    common = [entry for entry in entries if all(id(entry) in ids for ids in permitting)]
    if common:
        return next((entry for entry in common if entry.action), common[0])
    return _agreement([slot.entries[0] for slot in slots])


def _agreement(chosen: Sequence[PlatformEntry]) -> PlatformEntry:
    application = {entry.application_id for entry in chosen}
    entity = {entry.entity_id for entry in chosen}
    return PlatformEntry(
        key="",
        application_id=application.pop() if len(application) == 1 else None,
        entity_id=entity.pop() if len(entity) == 1 else None,
    )
