"""JSON bodies: one strict decode that also lists the objects holding ids; declared locations found or made.

Parsers differ exactly where a scope check can be fooled: duplicate keys (last wins in Python and JavaScript,
first in some Java and Go setups), keys that differ only in case or separators (Jackson with
ACCEPT_CASE_INSENSITIVE_PROPERTIES, System.Text.Json's web defaults and Go's encoding/json bind them to one
field, so `"Platform": null` beside `"platform"` erases the ids for them), NaN, a BOM, UTF-16 sniffing. So the
body is held to the strict JSON every keyscope reader shares (`keyscope.core.jsonstrict`: strict UTF-8, no BOM,
no member twice, no NaN or Infinity) and, beyond it, every object's member names must be distinct under
`names.fold`, numbers must be finite, and nesting and member counts are bounded; every such difference is
refused instead of resolved. The decoder's object hook does all of it in the one pass that
builds the document, and lists the objects that hold ids; where each one is (`$.messages[0]`) takes a walk,
made only for the objects that need a name (a refusal, the explainer).
"""

from __future__ import annotations

import json
import math
import re
import threading
from typing import Any, NamedTuple

from keyscope.core import jsonstrict
from keyscope.core.errors import Refusal
from keyscope.core.jsonstrict import StrictJSONError, refuse_constant, unique
from keyscope.scope.names import KINDS, classify, fold
from keyscope.scope.refusals import refuse, special_name, too_many

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class Holder(NamedTuple):
    """An object holding ids: kind -> value (a string or None), kind -> member name as written."""

    obj: dict[str, Any]
    ids: dict[str, str | None]
    names: dict[str, str]


# Member names repeat across requests: what names.fold() and names.classify() say of each, for the hook.
_FOLDS: dict[str, str] = {}
_SPECIAL: dict[str, str] = {}
_KNOWN_MAX = 16384


# Objects repeat their member names across requests, in the same order: their names -> whether one is special
# (an id, or a name to refuse), for names that do not collide.
_SHAPES: dict[tuple[str, ...], bool] = {}


def _shape(obj: dict[str, Any]) -> bool:
    """Refuse members that collide under names.fold(); whether the object names something special."""
    if len(_SHAPES) > _KNOWN_MAX:
        _SHAPES.clear()
        _FOLDS.clear()
        _SPECIAL.clear()
    for key in obj:
        if key not in _FOLDS:
            special = classify(key)
            if special is not None:
                _SPECIAL[key] = special
            _FOLDS[key] = fold(key)
    if len(obj) > 1 and len(set(map(_FOLDS.__getitem__, obj))) != len(obj):
        raise _collision(obj)
    holds = any(key in _SPECIAL for key in obj)
    _SHAPES[tuple(obj)] = holds
    return holds


def _decoder() -> tuple[json.JSONDecoder, list[Holder], list[int]]:
    """A strict decoder whose object hook also lists, in `holders`, the objects holding ids."""
    holders: list[Holder] = []
    members = [0]  # members of the objects decoded so far, reset by read()
    shapes = _SHAPES

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = unique(pairs)
        members[0] += len(pairs)
        holds = shapes.get(tuple(obj))
        if holds is None:
            holds = _shape(obj)
        if holds:
            holders.append(_holder(obj))
        return obj

    return json.JSONDecoder(object_pairs_hook=hook, parse_constant=refuse_constant, parse_float=_float, parse_int=_int), holders, members


class _Decoders(threading.local):
    """One decoder per thread: its hook's list of holders belongs to the decode running in that thread."""

    def __init__(self) -> None:
        self.decoder, self.holders, self.members = _decoder()



def _collision(obj: dict[str, Any]) -> Refusal:
    seen: set[str] = set()
    for key in obj:
        fold = _FOLDS[key]
        if fold in seen:
            break
        seen.add(fold)
    special = _SPECIAL.get(key)
    if special in KINDS:
        return refuse(400, "duplicate_id", key, f"This object names {special} twice.")
    return refuse(400, "name_collision", key, f"The JSON body names {key!r} twice in one object, in another case "
                  "or spelling: some backends read only one of them.")


def _holder(obj: dict[str, Any]) -> Holder:
    ids: dict[str, str | None] = {}
    spelt: dict[str, str] = {}
    special = _SPECIAL
    for key, value in obj.items():
        kind = special.get(key)
        if kind is not None:
            if kind != "applicationId" and kind != "entityId":
                raise special_name(kind, key, "JSON body")
            if value is not None and type(value) is not str:
                raise refuse(400, "id_not_string", key, f"{key} must be a string or null.")
            if kind in ids:
                raise refuse(400, "duplicate_id", key, f"This object names {kind} twice.")
            ids[kind] = value
            spelt[kind] = key
    return _tuple(Holder, (obj, ids, spelt))


_tuple = tuple.__new__


def _strict(broken: StrictJSONError) -> Refusal:
    """A rule of strict JSON broken, in the scope check's words."""
    name = broken.name
    if broken.rule == "duplicate":
        return refuse(400, "duplicate_key", name, f"The JSON body repeats the key {name!r} in one object.")
    if broken.rule == "constant":
        return refuse(400, "non_finite_number", None, f"The JSON body contains {name}, which is not JSON.")
    if broken.rule == "bom":
        return refuse(400, "bom", None, "The JSON body starts with a byte order mark.")
    return refuse(400, "invalid_utf8", None, "The JSON body is not valid UTF-8.")


def _int(text: str) -> int:
    if len(text) > 309 and math.isinf(float(text)):  # PHP's json_decode reads INF, JavaScript Infinity
        raise refuse(400, "number_out_of_range", None, f"The JSON number {text[:40]} is out of range.")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise refuse(400, "number_out_of_range", None, f"The JSON number {text[:40]} is out of range.")
    return value


_DECODERS = _Decoders()


def _decode(decoder: json.JSONDecoder, text: str, holders: list[Holder], members: list[int]) -> Any:
    """decoder.decode(text), by its scanner when the document starts at the first character and only
    whitespace follows it; anything else, errors included, is decode()'s, so that its refusals are the
    same (tests/test_scope_dialects.py checks the scanner is there)."""
    try:
        doc, end = decoder.scan_once(text, 0)
    except Refusal:
        raise
    except (StopIteration, ValueError):
        end = -1
    if end == len(text) or end > 0 and not text[end:].strip(" \t\n\r"):
        return doc
    holders.clear()  # listed and counted by the attempt; decode() does it again
    members[0] = 0
    return decoder.decode(text)


def read(body: bytes, max_members: int, max_depth: int) -> tuple[Any, list[Holder]]:
    """The document and its objects holding ids, in the order their objects closed; a 400 Refusal for
    anything parsers could read differently."""
    decoders = _DECODERS
    holders, members = decoders.holders, decoders.members
    holders.clear()
    members[0] = 0
    try:
        text = jsonstrict.text(body)
        doc = _decode(decoders.decoder, text, holders, members)
    except Refusal:
        raise
    except StrictJSONError as broken:
        raise _strict(broken) from None
    except RecursionError:
        raise _too_deep(max_depth) from None
    except json.JSONDecodeError as exc:
        reason = "trailing_data" if exc.msg == "Extra data" else "invalid_json"
        raise refuse(400, reason, None, f"The JSON body is not valid JSON: {exc.msg} at {exc.pos}.") from None
    except ValueError as exc:
        raise refuse(400, "invalid_json", None, f"The JSON body is not valid JSON: {exc}.") from None
    found = holders[:]
    holders.clear()
    if members[0] > max_members:
        raise too_many("members", max_members)
    if _brackets_over(body, max_depth) and _depth(doc) > max_depth:
        raise _too_deep(max_depth)
    if b"\\" in body and "\\u" in text and _SURROGATE_ESCAPE.search(text) and not _encodable(doc):
        raise refuse(400, "lone_surrogate", None, "The JSON body escapes a lone UTF-16 surrogate.")
    return doc, found


def _brackets_over(body: bytes, limit: int) -> bool:
    """Whether the body holds more than `limit` opening brackets: only then can it nest deeper than that
    (found one at a time: bodies hold few, and a search for one byte is fast)."""
    count = 0
    for bracket in b"{[":
        at = body.find(bracket)
        while at >= 0:
            count += 1
            if count > limit:
                return True
            at = body.find(bracket, at + 1)
    return False


def _too_deep(limit: int) -> Refusal:
    return refuse(400, "too_deep", None, f"The JSON body nests deeper than {limit} levels.")


def _depth(doc: Any) -> int:
    deepest = 0
    pending = [(doc, 1)]
    while pending:
        node, depth = pending.pop()
        if type(node) is dict:
            children = node.values()
        elif type(node) is list:
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return deepest


def _encodable(doc: Any) -> bool:
    try:
        dump(doc)
    except UnicodeEncodeError:
        return False
    return True


def dump(doc: Any) -> bytes:
    """A document FILL/FORCE changed: compact, key order kept, numbers as Python writes them."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
