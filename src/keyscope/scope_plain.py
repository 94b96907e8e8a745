"""The short way of steps 4-5 (see `keyscope.scope`): a plain request of a key with at most one entry.

Plain: a query whose every id name is spelt exactly, once (`scope_form.plain_ids`), and no body or a plain
JSON one (`scope_json.read_plain`: ASCII, no `\\u` escapes, every id name spelt exactly). Such a request is
either permitted as it stands (`plain_decision`), or refused with the very Refusal the long way
(`keyscope.scope_places`) would raise for its first refused place (`plain_refusal`); anything else, or any
doubt, is None and goes the long way. tests/test_scope_plain.py holds both against the long way.
"""

from __future__ import annotations

from typing import Any

from . import scope_json
from .endpoints import Endpoint, IdLocation
from .errors import Refusal
from .models import PlatformEntry
from .scope_form import KINDS, refuse
from .scope_places import Slot, allows, ids_of, missing, out_of_scope, requires

_NO_IDS: frozenset[str] = frozenset()


def plain_decision(
    endpoint: Endpoint | None,
    platform: tuple[PlatformEntry, ...],
    query_ids: dict[str, str],
    parsed: tuple[Any, list[dict[str, Any]]] | None,
) -> tuple[PlatformEntry | None, frozenset[str], frozenset[str]] | None:
    """The decision when every place is permitted as it stands by the key's one entry (its entry, application
    and entity ids: nothing is rewritten); None when in doubt.

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
        return entry, _NO_IDS, _NO_IDS
    applications, entities = set(), set()
    for ids in (query_ids, *holders) if query_ids else holders:
        named = ids.get("applicationId")
        if named is not None:
            applications.add(named)
        named = ids.get("entityId")
        if named is not None:
            entities.add(named)
    return entry, frozenset(applications), frozenset(entities)


def plain_refusal(
    locations: tuple[IdLocation, ...],
    entry: PlatformEntry,
    query_ids: dict[str, str],
    parsed: tuple[Any, list[dict[str, Any]]] | None,
) -> Refusal | None:
    """The Refusal the long way raises for a plain request of a one-entry key, when that is certain; None when
    the long way must decide (a place to fill or force and nothing refused).

    It follows Check.run(): every declared place is found first (by declared(), else by resolve() itself,
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
    rule = ids_of(entry)
    action = entry.action
    declared: set[int] = set()
    for location, places in zip(locations, found):
        if places is None:
            verdict = _verdict(rule, action, query_ids, True)
            if verdict == "write":
                return None
            if verdict is not None:
                return _refused(verdict, rule, Slot("query", query_ids, _SPELT, None))
        elif type(places) is tuple:
            verdict = _verdict(rule, action, {}, False)
            if verdict is not None and verdict != "write":
                return _refused(verdict, rule, Slot(places[0], {}, {}, None))
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
                    return _refused(verdict, rule, Slot(where, obj, _SPELT, None))
    if query_ids and not allows(rule, query_ids):  # permitted already if declared
        return out_of_scope((rule,), Slot("query", query_ids, _SPELT, None))
    for obj in holders:
        if id(obj) not in declared and not allows(rule, obj):
            for place in scope_json.find(doc):  # the first in document order, named as the long way does
                if id(place.obj) not in declared and not allows(rule, place.ids):
                    return out_of_scope((rule,), Slot(place.where, place.ids, place.names, None))
    return None


# A refused plain place's slot: its ids are the object itself (only the id keys are read), spelt exactly.
_SPELT = {kind: kind for kind in KINDS}


def _verdict(rule: dict[str, str], action: str | None, ids: dict[str, Any], writable: bool) -> str | None:
    """How Check._decide_declared() ends for a declared place of a one-entry key whose ids are exactly spelt:
    None (permitted as it stands), "write" (FORCE or FILL writes it, then it is permitted), "missing" or "out"."""
    if requires(rule, ids):
        return None
    if writable and (action == "FORCE" or action == "FILL" and allows(rule, ids)):
        return "write"
    return "missing" if allows(rule, ids) else "out"


def _refused(verdict: str, rule: dict[str, str], slot: Slot) -> Refusal:
    if verdict == "out":
        return out_of_scope((rule,), slot)
    return missing(slot, next(kind for kind in rule if slot.ids.get(kind) is None))


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
