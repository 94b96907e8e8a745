"""Reading ids from a JSON body at any depth, and finding (or making) the objects at declared locations.

Python's `json` differs from other parsers exactly where a scope check can be fooled (duplicate keys: last
wins here, first wins in some Java and Go parsers; NaN; a BOM; UTF-16 sniffing of bytes), so the body is
decoded as strict UTF-8 first and every such difference is refused instead of resolved.
"""

from __future__ import annotations

import json
import math
import re
import threading
from typing import Any, NamedTuple

from .endpoints import JsonStep
from .errors import Refusal
from .scope_form import BY_FOLD, id_kind, refuse

MAX_DEPTH = 64
_EXACT_NAMES = frozenset({"applicationId", "entityId"})
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _duplicate(pairs)
    return obj


def _duplicate(pairs: list[tuple[str, Any]]) -> Refusal:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            break
        seen.add(key)
    return refuse(400, "duplicate_key", key, f"The JSON body repeats the key {key!r} in one object.")


def _constant(name: str) -> None:
    raise refuse(400, "non_finite_number", None, f"The JSON body contains {name}, which is not JSON.")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise refuse(400, "number_out_of_range", None, f"The JSON number {text[:40]} is out of range.")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant, parse_float=_float)


def read(body: bytes) -> tuple[Any, list[Found]]:
    """The document and the objects in it that hold ids; Refusal(400) for anything parsers could read differently.

    A Found's `where` is "" when it is not yet known: locating it takes a walk of the whole document, which
    the gateway skips when every object holding ids is at a declared location (see `find`).
    """
    plain = read_plain(body)
    if plain is not None:
        return plain[0], unlocated(plain[1])
    text = _text(body)
    if not text.isascii() or "\\u" in text:
        return _walked(text, exact=False)
    lowered = text.lower()
    applications, entities = lowered.count("applicationid"), lowered.count("entityid")
    exact = text.count('"applicationId"') == applications and text.count('"entityId"') == entities
    return _walked(text, exact)


def read_plain(body: bytes) -> tuple[Any, list[dict[str, Any]]] | None:
    """The document and its objects holding ids, for the common body; None when read() must take the long way.

    Plain: ASCII without `\\u` escapes, at most MAX_DEPTH brackets (so it cannot nest too deep), and every
    spelling of an id name in it the exact, quoted one, so that only exactly spelt keys can be ids (a key such
    as " applicationId", which a trimming backend reads as the id, is not exact). Such a body is decoded by
    the one decoder that also lists, while parsing, the objects with an exact id key, so finding them takes
    no walk. Raises the same Refusal read() does; every listed id is a string or null.
    """
    if not body.isascii() or body.find(b"\\") >= 0 and b"\\u" in body:
        return None
    if body.count(b"{") + body.count(b"[") > MAX_DEPTH:
        return None
    lowered = body.lower()
    applications, entities = lowered.count(b"applicationid"), lowered.count(b"entityid")
    text = body.decode("ascii")
    if not applications and not entities:
        return _scan(text, _DECODER), []  # no key can name an id: nothing to list
    if applications and body.count(b'"applicationId"') != applications:
        return None
    if entities and body.count(b'"entityId"') != entities:
        return None
    holders = _HOLDING.holders = []
    try:
        doc = _scan(text, _HOLDING_DECODER)
    finally:
        _HOLDING.holders = None
    for obj in holders:
        application, entity = obj.get("applicationId"), obj.get("entityId")
        if application is not None and type(application) is not str or entity is not None and type(entity) is not str:
            find(doc, True)  # raises id_not_string, naming the first such place in document order
            return None
    return doc, holders


def _walked(text: str, exact: bool) -> tuple[Any, list[Found]]:
    doc = _decode(text, _DECODER)
    return doc, find(doc, exact)


class _Holding(threading.local):
    """The list the holding decoder's hook fills for the decode running in this thread (decoding never awaits)."""

    holders: list[dict[str, Any]] | None = None


_HOLDING = _Holding()


def _holding_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Build an object, and list it when it has an exactly spelt id key."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _duplicate(pairs)
    if "applicationId" in obj or "entityId" in obj:
        _HOLDING.holders.append(obj)  # type: ignore[union-attr]
    return obj


_HOLDING_DECODER = json.JSONDecoder(object_pairs_hook=_holding_hook, parse_constant=_constant, parse_float=_float)


def unlocated(holders: list[dict[str, Any]]) -> list[Found]:
    """The objects read_plain() listed as Found entries without `where` (their ids are strings or null)."""
    found = []
    for obj in holders:
        ids = {kind: obj[kind] for kind in ("applicationId", "entityId") if kind in obj}
        found.append(Found("", obj, ids, {kind: kind for kind in ids}))
    return found


def _text(body: bytes) -> str:
    if body.startswith(b"\xef\xbb\xbf"):
        raise refuse(400, "bom", None, "The JSON body starts with a byte order mark.")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise refuse(400, "invalid_utf8", None, "The JSON body is not valid UTF-8.") from None


def _scan(text: str, decoder: json.JSONDecoder) -> Any:
    """_decode() for a text without `\\u` escapes, calling the decoder's scanner itself when the document
    starts at the first character and only whitespace follows it (as decode() would accept); anything else,
    errors included, is left to _decode(), so that its refusals are the same."""
    try:
        doc, end = decoder.scan_once(text, 0)
    except Refusal:
        raise
    except (StopIteration, ValueError):
        doc, end = None, -1
    if end == len(text) or end > 0 and not text[end:].strip(" \t\n\r"):
        return doc
    if _HOLDING.holders:
        _HOLDING.holders.clear()  # listed by the attempt; _decode() lists them again
    return _decode(text, decoder, escapes=False)


def _decode(text: str, decoder: json.JSONDecoder, escapes: bool = True) -> Any:
    try:
        doc = decoder.decode(text)
    except Refusal:
        raise
    except RecursionError:
        raise refuse(400, "too_deep", None, f"The JSON body nests deeper than {MAX_DEPTH} levels.") from None
    except json.JSONDecodeError as exc:
        reason = "trailing_data" if exc.msg == "Extra data" else "invalid_json"
        raise refuse(400, reason, None, f"The JSON body is not valid JSON: {exc.msg} at {exc.pos}.") from None
    except ValueError as exc:
        raise refuse(400, "invalid_json", None, f"The JSON body is not valid JSON: {exc}.") from None
    if escapes and "\\u" in text and _SURROGATE_ESCAPE.search(text) and not _encodable(doc):
        raise refuse(400, "lone_surrogate", None, "The JSON body escapes a lone UTF-16 surrogate.")
    return doc


def _encodable(doc: Any) -> bool:
    try:
        dump(doc)
    except UnicodeEncodeError:
        return False
    return True


def dump(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Found(NamedTuple):
    """A JSON object holding ids: where it is (`$.messages[0]`), kind -> value, kind -> key as written."""

    where: str
    obj: dict[str, Any]
    ids: dict[str, str | None]
    names: dict[str, str]


def find(doc: Any, exact: bool = False) -> list[Found]:
    """Every object that holds an applicationId/entityId key (any case), in document order.

    With `exact` the caller guarantees no key spells an id name other than exactly, so objects without an
    exact id key are only searched for children.
    """
    found: list[Found] = []
    if type(doc) is dict:
        _walk_object(doc, 1, [], found, exact)
    elif type(doc) is list:
        _walk_array(doc, 1, [], found, exact)
    return found


def _too_deep(path: list[str | int]) -> Refusal:
    return refuse(400, "too_deep", where(path)[2:] or None, f"The JSON body nests deeper than {MAX_DEPTH} levels.")


def _walk_object(node: dict[str, Any], depth: int, path: list[str | int], found: list[Found], exact: bool) -> None:
    if depth > MAX_DEPTH:
        raise _too_deep(path)
    if exact and _EXACT_NAMES.isdisjoint(node):
        for key, value in node.items():
            if type(value) is dict:
                path.append(key)
                _walk_object(value, depth + 1, path, found, exact)
                path.pop()
            elif type(value) is list:
                path.append(key)
                _walk_array(value, depth + 1, path, found, exact)
                path.pop()
        return
    ids: dict[str, str | None] | None = None
    names: dict[str, str] = {}
    for key, value in node.items():
        lowered = key.lower()
        kind = BY_FOLD.get(lowered)
        if kind is None and (
            not key.isascii() or not key.isprintable() or "applicationid" in lowered or "entityid" in lowered
        ):
            kind = id_kind(key)
        if kind is not None:
            if ids is None:
                ids = {}
                found.append(Found(where(path), node, ids, names))
            if kind in ids:
                raise refuse(400, "duplicate_id", field(path, key), f"This object names {kind} twice.")
            if value is not None and type(value) is not str:
                raise refuse(400, "id_not_string", field(path, key), f"{key} must be a string or null.")
            ids[kind] = value
            names[kind] = key
        elif type(value) is dict:
            path.append(key)
            _walk_object(value, depth + 1, path, found, exact)
            path.pop()
        elif type(value) is list:
            path.append(key)
            _walk_array(value, depth + 1, path, found, exact)
            path.pop()


def _walk_array(node: list[Any], depth: int, path: list[str | int], found: list[Found], exact: bool) -> None:
    if depth > MAX_DEPTH:
        raise _too_deep(path)
    for index, value in enumerate(node):
        if type(value) is dict:
            path.append(index)
            _walk_object(value, depth + 1, path, found, exact)
            path.pop()
        elif type(value) is list:
            path.append(index)
            _walk_array(value, depth + 1, path, found, exact)
            path.pop()


def where(path: list[str | int] | tuple[str | int, ...]) -> str:
    return "$" + "".join([f"[{step}]" if type(step) is int else f".{step}" for step in path])


def field(path: list[str | int] | tuple[str | int, ...], key: str) -> str:
    return (where(path)[2:] + "." + key) if path else key


class Target(NamedTuple):
    """A declared location's object, or (obj None) the deepest existing object and the keys still missing."""

    path: tuple[str | int, ...]
    obj: dict[str, Any] | None
    parent: dict[str, Any] | None = None
    missing: tuple[str, ...] = ()


def resolve(doc: Any, steps: tuple[JsonStep, ...]) -> list[Target]:
    """The objects a declared location names; `[]` expands each element, an absent array yields none."""
    if type(doc) is not dict:
        raise refuse(400, "bad_location", None, "The JSON body must be an object.")
    missing: list[Target] = []
    current: list[tuple[tuple[str | int, ...], dict[str, Any]]] = [((), doc)]
    for position, step in enumerate(steps):
        following: list[tuple[tuple[str | int, ...], dict[str, Any]]] = []
        for path, node in current:
            child = node.get(step.name)
            here = (*path, step.name)
            if child is None:
                rest = steps[position:]
                if not any(later.each for later in rest):
                    names = tuple(later.name for later in rest)
                    missing.append(Target((*path, *names), None, node, names))
            elif step.each:
                if type(child) is not list:
                    raise refuse(400, "bad_location", field(path, step.name), "Expected an array here.")
                for index, element in enumerate(child):
                    if type(element) is not dict:
                        raise refuse(400, "bad_location", where((*here, index))[2:], "Expected an object here.")
                    following.append(((*here, index), element))
            elif type(child) is dict:
                following.append((here, child))
            else:
                raise refuse(400, "bad_location", field(path, step.name), "Expected an object here.")
        current = following
    targets = [Target(path, node) for path, node in current]
    return sorted(targets + missing, key=lambda target: target.path) if missing else targets


def where_of(doc: dict[str, Any], steps: tuple[JsonStep, ...], obj: dict[str, Any]) -> str:
    """resolve()'s `where` for one of the objects declared(doc, steps) returned, found by a walk down the
    location that stops there: naming a refused place without resolving every other one."""
    found = _where_in(doc, steps, 0, obj, "$")
    assert found is not None
    return found


def _where_in(
    node: dict[str, Any], steps: tuple[JsonStep, ...], at: int, obj: dict[str, Any], prefix: str
) -> str | None:
    """where() of the path taken so far is `prefix`, built as where() builds it (`.name`, `[index]`)."""
    if at == len(steps):
        return prefix if node is obj else None
    step = steps[at]
    child = node.get(step.name)
    if child is None:
        return None
    prefix = f"{prefix}.{step.name}"
    if not step.each:
        return _where_in(child, steps, at + 1, obj, prefix)
    for index, element in enumerate(child):
        found = _where_in(element, steps, at + 1, obj, f"{prefix}[{index}]")
        if found is not None:
            return found
    return None


def materialise(target: Target) -> dict[str, Any]:
    """The target's object, creating the missing ones (a `null` on the way counts as missing)."""
    if target.obj is not None:
        return target.obj
    node = target.parent
    assert node is not None
    for name in target.missing:
        child = node.get(name)
        if type(child) is not dict:
            child = node[name] = {}
        node = child
    return node


def declared(doc: Any, steps: tuple[JsonStep, ...]) -> list[dict[str, Any]] | None:
    """The objects at a declared location when all of them are there (an absent array holds none); None when
    resolve() must decide: an object to create, a null on the way, or a shape it refuses."""
    if type(doc) is not dict:
        return None
    nodes: list[dict[str, Any]] = [doc]
    position = 0
    for step in steps:
        following: list[dict[str, Any]] = []
        for node in nodes:
            child = node.get(step.name)
            if child is None:
                if not any(later.each for later in steps[position:]):
                    return None
            elif step.each:
                if type(child) is not list:
                    return None
                for element in child:
                    if type(element) is not dict:
                        return None
                following += child
            elif type(child) is dict:
                following.append(child)
            else:
                return None
        nodes = following
        position += 1
    return nodes
