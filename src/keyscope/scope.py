"""Steps 4-5: collect every applicationId/entityId a request carries, check them against a key's entries, FILL/FORCE.

Collecting. Ids are read wherever a backend could read one: the query string, a JSON body at any depth,
urlencoded and multipart form fields; names are compared case-insensitively (`ApplicationID` counts).
Ambiguity is 400 for every key, primary keys included, because step 5 checks the ids of primary keys too
and needs one reading of the request: a raw `;` in the query or form, a malformed escape, an id name twice
in the query, a form or one JSON object (in any case), `applicationId[]`, a duplicate key in any JSON
object, NaN/Infinity, an out-of-range number, invalid UTF-8, a BOM, trailing data, nesting deeper than 64,
a lone surrogate, an id that is neither a string nor null (null counts as missing), a malformed multipart
body. A linked key's body that keyscope does not read (another content type, a charset other than UTF-8,
any Content-Encoding, XML, a multipart part with a transfer encoding) is 415; a primary key's is forwarded
untouched and only its query ids are collected.

Places. Each JSON object holding an id key, the query string and the form is a place. A place is permitted
by an entry when every id it names equals that entry's id of the same kind (a kind the entry leaves unset is
unconstrained). One place no entry permits refuses the request: 403 `id_out_of_scope`. An empty string is an
id like any other (it matches no entry, and step 5 finds no application of that name).

Declared locations (the endpoint's `ids`). There, a kind an entry sets is also required: an entry permits a
declared place only if the place names that kind. If no entry does, the key's action entry decides: FILL
writes the missing ids there (creating `options`/`platform` objects, appending `&applicationId=` to a query,
adding a multipart part), otherwise 403 `id_missing`. FORCE first overwrites the ids at every declared
place with its own, whatever they were. Ids found elsewhere are checked all the same. An id at a declared
location must be spelt exactly (`applicationId`), because a case-sensitive backend would not see
`ApplicationID` there and would act outside the scope: 400 `id_name_case`. A linked key's request must
present at least one declared place (a batch with no messages is 403 `id_missing`); an absent array, such as
the metrics `filterBy.platforms[]`, is no place. `ids: none` endpoints have no declared places.

Rewriting. A JSON body FILL/FORCE changed is re-serialised compactly, key order kept, numbers as Python
writes them (exact for every double); an unchanged request keeps its original bytes (the same objects).

Cost. Most requests are plain (ASCII, ids spelt exactly where declared, a key with one entry) and already
permitted as they stand: inspect() decides those without building places, with one parse of the body. The
common refusal, a plain request of a one-entry key naming an id outside its entry or missing its ids, is
refused the same way and as cheaply, with the full reading's Refusal. Anything else, parse included, goes
to the full reading above (see `inspect`).

Reasons: 400 semicolon, bad_escape, duplicate_id, id_array, invalid_utf8, id_not_string, duplicate_key,
non_finite_number, number_out_of_range, bom, trailing_data, invalid_json, too_deep, lone_surrogate,
bad_multipart, bad_location (a declared location holds a non-object), id_name_case; 403 not_allowlisted
(a linked key without an endpoint), id_out_of_scope, id_missing; 415 uninspectable_body.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from . import scope_json
from .endpoints import Endpoint, IdLocation
from .errors import Refusal
from .models import ApiKey, PlatformEntry
from .scope_form import (
    KINDS,
    Part,
    Query,
    Uninspectable,
    id_fields,
    media_type,
    multipart_fields,
    parse_multipart,
    parse_query,
    plain_ids,
    refuse,
    set_multipart,
    set_params,
)

__all__ = ["Decision", "Place", "Query", "inspect", "needs_body", "parse_query"]

_JSON_TYPES = frozenset({"application/json", "text/json"})
_UTF8 = (b"utf-8", b"utf8", b"us-ascii")


class Place(NamedTuple):
    """For the explainer: where ids were found (`query`, `form`, `$.messages[0]`), which, and who permitted them."""

    where: str
    ids: dict[str, str | None]
    entry: PlatformEntry | None


class Decision:
    """What to forward. `query`/`body` are the objects passed in unless FILL/FORCE rewrote them (`changed`);
    `entry` is what X-Keyscope-Application-Id/-Entity-Id carry (None for primary keys; an entry with key ""
    holding only the kinds the places agree on when they used different entries); the id sets are what
    step 5 checks for existence; `places` is for the explainer. Read only.

    A request decided the short way (see `inspect`) gets its places on first use, by deciding it again the
    long way: only the explainer asks, and locating places can take a walk of the whole body.
    """

    __slots__ = ("query", "body", "changed", "entry", "application_ids", "entity_ids", "_places", "_inputs")

    def __init__(
        self,
        query: bytes,
        body: bytes,
        changed: bool,
        entry: PlatformEntry | None,
        application_ids: frozenset[str],
        entity_ids: frozenset[str],
        places: list[Place] | None,
        inputs: _Inputs | None = None,
    ) -> None:
        self.query = query
        self.body = body
        self.changed = changed
        self.entry = entry
        self.application_ids = application_ids
        self.entity_ids = entity_ids
        self._places = places
        self._inputs = inputs

    @property
    def places(self) -> list[Place]:
        if self._places is None:
            assert self._inputs is not None
            self._places = inspect_slowly(*self._inputs).places
        return self._places

    def __repr__(self) -> str:
        return (
            f"Decision(query={self.query!r}, body={self.body[:60]!r}, changed={self.changed}, entry={self.entry}, "
            f"application_ids={set(self.application_ids)}, entity_ids={set(self.entity_ids)})"
        )


# inspect()'s arguments: endpoint, key, query, content_type, content_encoding, body
_Inputs = tuple["Endpoint | None", ApiKey, bytes, "bytes | None", "bytes | None", bytes]


@dataclass(slots=True, eq=False)
class _Slot:
    """A place being decided: its ids, how to write ids into it (None: it cannot be written), who permits it."""

    where: str
    ids: dict[str, str | None]
    names: dict[str, str]
    write: Callable[[dict[str, str]], None] | None
    entries: list[PlatformEntry] = field(default_factory=list)

    def field(self, name: str) -> str:
        return name if self.where in ("$", "query", "form") else f"{self.where[2:]}.{name}"


class _Body(NamedTuple):
    kind: str  # "none", "json", "form", "multipart" or "opaque"
    boundary: bytes = b""


def _body_kind(content_type: bytes | None, content_encoding: bytes | None, body: bytes) -> _Body:
    if not body:
        return _NO_BODY
    if content_encoding is not None and content_encoding.strip() or content_type is None:
        return _OPAQUE
    return _media_kind(content_type)


@lru_cache(maxsize=256)
def _media_kind(content_type: bytes) -> _Body:
    """How a body of this Content-Type is read (cached: clients send a handful of distinct values)."""
    try:
        mime, params = media_type(content_type)
    except Uninspectable:
        return _OPAQUE
    charset = params.get("charset", b"utf-8").lower()
    if mime in _JSON_TYPES or mime.endswith("+json"):
        return _Body("json") if charset in _UTF8 else _OPAQUE
    if mime == "application/x-www-form-urlencoded":
        return _Body("form") if charset in _UTF8 else _OPAQUE
    if mime == "multipart/form-data" and params.get("boundary"):
        return _Body("multipart", params["boundary"])
    return _OPAQUE


_NO_BODY = _Body("none")
_OPAQUE = _Body("opaque")


def needs_body(
    endpoint: Endpoint | None, key: ApiKey, content_type: bytes | None, content_encoding: bytes | None = None
) -> bool:
    """Whether the gateway must buffer the body for inspect(); otherwise it may stream it untouched."""
    if key.platform:
        return True
    return _body_kind(content_type, content_encoding, b"-").kind != "opaque"


def inspect(
    endpoint: Endpoint | None,
    key: ApiKey,
    *,
    query: bytes,
    content_type: bytes | None,
    content_encoding: bytes | None,
    body: bytes,
) -> Decision:
    """Collect the request's ids; for a linked key also check, FILL or FORCE them. Raises Refusal.

    The short way first: a primary key or a key with one entry, a plain query (`plain_ids`), no body or a
    plain JSON one (`scope_json.read_plain`), and every place simply permitted as it stands: nothing to
    fill, force or refuse. It builds no places and rewrites nothing. A plain request of a one-entry key that
    a place refuses (an id outside the entry, a declared place without the entry's ids and nothing to fill
    it, no declared place at all) is refused the short way too, with the long way's Refusal for the first
    such place in the long way's order (`_plain_refusal`): refusals are what an attacker sends, so they
    must cost no more than what is forwarded. Anything else, or any doubt, is decided the long way
    (`inspect_slowly`), which the short way agrees with (tests/test_scope_plain.py); a JSON body already
    parsed is handed over, not parsed twice.
    """
    platform = key.platform
    if platform and endpoint is None:
        raise _not_allowlisted()
    body_kind = _body_kind(content_type, content_encoding, body)
    parsed = None
    if len(platform) <= 1:
        query_ids = plain_ids(query)
        if query_ids is not None:
            kind = body_kind.kind
            if kind == "json":
                parsed = scope_json.read_plain(body)
            if parsed is not None or kind == "none" or kind == "opaque" and not platform:
                decision = _plain_decision(endpoint, platform, query, body, query_ids, parsed)
                if decision is not None:
                    decision._inputs = (endpoint, key, query, content_type, content_encoding, body)
                    return decision
                if platform:
                    assert endpoint is not None
                    refusal = _plain_refusal(endpoint.ids, platform[0], query_ids, parsed)
                    if refusal is not None:
                        try:
                            raise refusal
                        finally:  # this frame, in the traceback, must not hold its own exception: a cycle for the GC
                            del refusal
    return _inspect(endpoint, key, query, body, body_kind, parsed)


def inspect_slowly(
    endpoint: Endpoint | None,
    key: ApiKey,
    query: bytes,
    content_type: bytes | None,
    content_encoding: bytes | None,
    body: bytes,
) -> Decision:
    """What inspect() decides, always the long way: every place found, located and checked."""
    if key.platform and endpoint is None:
        raise _not_allowlisted()
    return _inspect(endpoint, key, query, body, _body_kind(content_type, content_encoding, body), None)


def _inspect(
    endpoint: Endpoint | None,
    key: ApiKey,
    query: bytes,
    body: bytes,
    body_kind: _Body,
    parsed: tuple[Any, list[dict[str, Any]]] | None,
) -> Decision:
    linked = bool(key.platform)
    request = _Request(query, body)
    try:
        request.read_query()
        request.read_body(body_kind, linked, parsed)
        if endpoint is None or not linked:
            return request.decision(None)
        _Check(key.platform, request).run(endpoint.ids)
        return request.decision(_entry_of(request.slots, key.platform))
    finally:
        request.close()


def _not_allowlisted() -> Refusal:
    return refuse(403, "not_allowlisted", None, "This key may not call this endpoint.")


_NO_IDS: frozenset[str] = frozenset()


def _plain_decision(
    endpoint: Endpoint | None,
    platform: tuple[PlatformEntry, ...],
    query: bytes,
    body: bytes,
    query_ids: dict[str, str],
    parsed: tuple[Any, list[dict[str, Any]]] | None,
) -> Decision | None:
    """The decision when every place is permitted as it stands by the key's one entry; None when in doubt.

    Every id here is exactly spelt (plain query, plain JSON), so the declared places need only hold the
    entry's ids (then FILL has nothing to add and FORCE nothing to change) and every other place must agree
    with them. The query and the objects holding ids are all the places that name ids.
    """
    doc, holders = parsed if parsed is not None else (None, ())
    entry = None
    if platform:
        assert endpoint is not None
        entry = platform[0]
        application, entity = entry.application_id, entry.entity_id
        declared = False
        for location in endpoint.ids:
            if location.kind == "query":
                if not _holds(query_ids, application, entity):
                    return None
                declared = True
            elif location.kind == "json" and doc is not None:
                objects = scope_json.declared(doc, location.path)
                if objects is None:
                    return None
                for obj in objects:
                    if not _holds(obj, application, entity):
                        return None
                declared = declared or bool(objects)
            else:
                return None
        if endpoint.ids and not declared:
            return None
        if query_ids and not _agrees(query_ids, application, entity):
            return None
        for obj in holders:
            if not _agrees(obj, application, entity):
                return None
    if not query_ids and not holders:
        return Decision(query, body, False, entry, _NO_IDS, _NO_IDS, None)
    applications, entities = set(), set()
    for ids in (query_ids, *holders) if query_ids else holders:
        named = ids.get("applicationId")
        if named is not None:
            applications.add(named)
        named = ids.get("entityId")
        if named is not None:
            entities.add(named)
    return Decision(query, body, False, entry, frozenset(applications), frozenset(entities), None)


def _plain_refusal(
    locations: tuple[IdLocation, ...],
    entry: PlatformEntry,
    query_ids: dict[str, str],
    parsed: tuple[Any, list[dict[str, Any]]] | None,
) -> Refusal | None:
    """The Refusal the long way raises for a plain request of a one-entry key, when that is certain; None when
    the long way must decide (a place to fill or force and nothing refused).

    It follows _Check.run(): every declared place is found first (by declared(), else by resolve() itself,
    whose 400 for a shape it refuses is then the long way's too, raised before any place is decided), then
    `id_missing` when there is none, then the declared places in order, then the places elsewhere: the
    query, then the JSON objects in document order. Every id here is exactly spelt, so no place is a 400
    `id_name_case`. A write is harmless on the way (the long way's writes to JSON objects cannot fail and
    change no other place), except the query's: rebuilding it is left to the long way.
    """
    doc, holders = parsed if parsed is not None else (None, ())
    # each declared location's places: None stands for the query, (where,) for the empty place the long way
    # makes, and cannot write, for a form location (the body is no form here) or a JSON location without a
    # document; a list holds the objects there, or resolve()'s targets when declared() was in doubt (an
    # object to create is a target without one)
    found: list[list[dict[str, Any]] | list[scope_json.Target] | tuple[str] | None] = []
    named = False
    for location in locations:
        if location.kind == "query":
            found.append(None)
            named = True
        elif location.kind == "form":
            found.append(("form",))
            named = True
        elif location.kind != "json":
            return None
        elif doc is None:
            found.append(("$." + location.text if location.path else "$",))
            named = True
        else:
            objects = scope_json.declared(doc, location.path)
            places = scope_json.resolve(doc, location.path) if objects is None else objects
            found.append(places)
            named = named or bool(places)
    if locations and not named:
        return refuse(403, "id_missing", locations[0].text or None, "The request names no place for its ids.")
    rule = _ids_of(entry)
    action = entry.action
    declared: set[int] = set()
    for location, places in zip(locations, found):
        if places is None:
            verdict = _verdict(rule, action, query_ids, True)
            if verdict == "write":
                return None
            if verdict is not None:
                return _refused(verdict, rule, _Slot("query", query_ids, _SPELT, None))
        elif type(places) is tuple:
            verdict = _verdict(rule, action, {}, False)
            if verdict is not None and verdict != "write":
                return _refused(verdict, rule, _Slot(places[0], {}, {}, None))
        else:
            for place in places:
                obj = place if type(place) is dict else place.obj  # type: ignore[union-attr]
                if obj is None:
                    obj = {}
                else:
                    declared.add(id(obj))
                verdict = _verdict(rule, action, obj, True)
                if verdict is not None and verdict != "write":
                    if type(place) is dict:
                        where = scope_json.where_of(doc, location.path, obj)
                    else:
                        where = scope_json.where(place.path)  # type: ignore[union-attr]
                    return _refused(verdict, rule, _Slot(where, obj, _SPELT, None))
    if query_ids and not _allows(rule, query_ids):  # permitted already if declared
        return _out_of_scope((rule,), _Slot("query", query_ids, _SPELT, None))
    for obj in holders:
        if id(obj) not in declared and not _allows(rule, obj):
            for place in scope_json.find(doc):  # the first in document order, named as the long way does
                if id(place.obj) not in declared and not _allows(rule, place.ids):
                    return _out_of_scope((rule,), _Slot(place.where, place.ids, place.names, None))
    return None


# A refused plain place's slot: its ids are the object itself (only the id keys are read), spelt exactly.
_SPELT = {kind: kind for kind in KINDS}


def _verdict(rule: dict[str, str], action: str | None, ids: dict[str, Any], writable: bool) -> str | None:
    """How _Check._decide_declared() ends for a declared place of a one-entry key whose ids are exactly spelt:
    None (permitted as it stands), "write" (FORCE or FILL writes it, then it is permitted), "missing" or "out"."""
    if _requires(rule, ids):
        return None
    if writable and (action == "FORCE" or action == "FILL" and _allows(rule, ids)):
        return "write"
    return "missing" if _allows(rule, ids) else "out"


def _refused(verdict: str, rule: dict[str, str], slot: _Slot) -> Refusal:
    if verdict == "out":
        return _out_of_scope((rule,), slot)
    return _missing(slot, next(kind for kind in rule if slot.ids.get(kind) is None))


def _holds(ids: dict[str, Any], application: str | None, entity: str | None) -> bool:
    """The place names the entry's every id (its declared place is permitted as it stands)."""
    return (application is None or ids.get("applicationId") == application) and (
        entity is None or ids.get("entityId") == entity
    )


def _agrees(ids: dict[str, Any], application: str | None, entity: str | None) -> bool:
    """Every id the place names is the entry's (a place elsewhere is permitted)."""
    if application is not None:
        named = ids.get("applicationId")
        if named is not None and named != application:
            return False
    if entity is not None:
        named = ids.get("entityId")
        if named is not None and named != entity:
            return False
    return True


class _Request:
    """The request's places, and the pending rewrites of its query and body."""

    def __init__(self, query: bytes, body: bytes) -> None:
        self.query = query
        self.body = body
        self.params: Query = []
        self.query_slot = _Slot("query", {}, {}, self._write_query)
        self.form_slot: _Slot | None = None
        self.doc: Any = None
        self.json_slots: dict[int, _Slot] = {}
        self.slots: list[_Slot] = []
        self.parts: list[Part] = []
        self.body_kind = _NO_BODY
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

    def read_body(self, body_kind: _Body, linked: bool, parsed: tuple[Any, list[dict[str, Any]]] | None) -> None:
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
                    self.json_slots[id(found.obj)] = _Slot(found.where, found.ids, found.names, writer)
            elif body_kind.kind == "form":
                params = parse_query(self.body, "form")
                ids, names = id_fields([(p.name, p.value) for p in params], "form")
                self.form_slot = _Slot("form", ids, names, self._form_writer(params))
            elif body_kind.kind == "multipart":
                self.parts = parse_multipart(self.body, body_kind.boundary)
                ids, names = id_fields(multipart_fields(self.parts), "form")
                self.form_slot = _Slot("form", ids, names, self._write_multipart)
        except Uninspectable as exc:
            if linked:
                raise refuse(415, "uninspectable_body", None, f"keyscope cannot read this body: {exc}.") from None
            self.body_kind = _OPAQUE

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

    def all_slots(self) -> list[_Slot]:
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

    def decision(self, entry: PlatformEntry | None) -> Decision:
        self.locate()
        if self.body_changed and self.body_kind.kind == "json":
            self.body = scope_json.dump(self.doc)
        slots = self.slots or self.all_slots()
        applications = frozenset(s.ids["applicationId"] for s in slots if s.ids.get("applicationId") is not None)
        entities = frozenset(s.ids["entityId"] for s in slots if s.ids.get("entityId") is not None)
        places = [Place(s.where, s.ids, s.entries[0] if s.entries else None) for s in slots]
        changed = self.body_changed or self.query_changed
        return Decision(self.query, self.body, changed, entry, applications, entities, places)


def _json_writer(request: _Request, obj: dict[str, Any]) -> Callable[[dict[str, str]], None]:
    def write(values: dict[str, str]) -> None:
        for kind, value in values.items():
            if obj.get(kind) != value:
                obj[kind] = value
                request.body_changed = True

    return write


class _Check:
    """A linked key's decision over the request's places; raises the first Refusal."""

    def __init__(self, entries: tuple[PlatformEntry, ...], request: _Request) -> None:
        self.request = request
        ids, action_at, self.action_ids = _rules(entries)
        # The key's own entry objects, not the cached ones: an equal key loaded later is another object,
        # and _entry_of() tells the entries that permitted each place apart by identity.
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

    def _declared(self, location: IdLocation) -> list[_Slot]:
        request = self.request
        if location.kind == "query":
            return [request.query_slot]
        if location.kind == "form":
            return [request.form_slot or _Slot("form", {}, {}, None)]
        if request.doc is None:
            return [_Slot("$." + location.text if location.path else "$", {}, {}, None)]
        slots = []
        for target in scope_json.resolve(request.doc, location.path):
            existing = request.json_slots.get(id(target.obj)) if target.obj is not None else None
            if existing is None:
                existing = _Slot(scope_json.where(target.path), {}, {}, _target_writer(request, target))
            elif not existing.where:
                existing.where = scope_json.where(target.path)
            slots.append(existing)
        return slots

    def _decide_declared(self, slot: _Slot) -> None:
        for kind, name in slot.names.items():
            if name != kind:
                raise refuse(400, "id_name_case", slot.field(name), f"Write {kind} exactly as {kind!r} here.")
        action, write = self.action, slot.write
        if action is not None and write is not None and action.action == "FORCE":
            self._write(slot, write, self.action_ids)
        slot.entries = [entry for entry, ids in self.rules if _requires(ids, slot.ids)]
        if slot.entries:
            return
        if action is not None and write is not None and action.action == "FILL" and _allows(self.action_ids, slot.ids):
            self._write(slot, write, {k: v for k, v in self.action_ids.items() if slot.ids.get(k) is None})
            slot.entries = [entry for entry, ids in self.rules if _requires(ids, slot.ids)]
            return
        agreeing = next((ids for _, ids in self.rules if _allows(ids, slot.ids)), None)
        if agreeing is None:
            raise _out_of_scope([ids for _, ids in self.rules], slot)
        raise _missing(slot, next(k for k in agreeing if slot.ids.get(k) is None))

    def _decide_elsewhere(self, slot: _Slot) -> None:
        slot.entries = [entry for entry, ids in self.rules if _allows(ids, slot.ids)]
        if not slot.entries:
            raise _out_of_scope([ids for _, ids in self.rules], slot)

    @staticmethod
    def _write(slot: _Slot, write: Callable[[dict[str, str]], None], values: dict[str, str]) -> None:
        if not values:
            return
        write(values)
        slot.ids.update(values)
        slot.names.update({kind: kind for kind in values})


def _out_of_scope(rules: Sequence[dict[str, str]], slot: _Slot) -> Refusal:
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


def _missing(slot: _Slot, kind: str) -> Refusal:
    """403: a declared place without the key's `kind`, and nothing to fill it."""
    return refuse(403, "id_missing", slot.field(kind), f"This key's requests must name their {kind} here.")


def _target_writer(request: _Request, target: scope_json.Target) -> Callable[[dict[str, str]], None]:
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
    action_ids = _ids_of(entries[action_at]) if action_at is not None else {}
    return tuple(_ids_of(entry) for entry in entries), action_at, action_ids


def _ids_of(entry: PlatformEntry) -> dict[str, str]:
    ids = {}
    if entry.application_id is not None:
        ids["applicationId"] = entry.application_id
    if entry.entity_id is not None:
        ids["entityId"] = entry.entity_id
    return ids


def _allows(entry_ids: dict[str, str], ids: dict[str, str | None]) -> bool:
    """Every id the place names agrees with the entry's (missing ids are fine)."""
    for kind, value in entry_ids.items():
        named = ids.get(kind)
        if named is not None and named != value:
            return False
    return True


def _requires(entry_ids: dict[str, str], ids: dict[str, str | None]) -> bool:
    """The place names every kind the entry sets, with the entry's value."""
    for kind, value in entry_ids.items():
        if ids.get(kind) != value:
            return False
    return True


def _entry_of(slots: list[_Slot], entries: tuple[PlatformEntry, ...]) -> PlatformEntry:
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
