"""Query strings and urlencoded forms: `&`-separated `name=value` pairs, read strictly and written back.

Strict where stacks disagree: a raw `;` (a separator for some), a malformed escape, more pairs than the
limit (Node and PHP keep the first 1,000 and drop the rest silently; empty pieces count, as `qs` counts
them), an id name twice under any folding, an id made a list. `+` is a space to every form reader.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import quote

from keyscope.scope.names import KINDS, classify
from keyscope.scope.refusals import refuse, special_name, too_many

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


class Param(NamedTuple):
    """One `name=value` pair as sent and as decoded (bad UTF-8 survives as surrogates)."""

    raw_name: bytes
    raw_value: bytes | None
    name: str
    value: str


def pieces(raw: bytes) -> int:
    """How many pairs a backend counts against its parameter limit (empty pieces included)."""
    return raw.count(b"&") + 1 if raw else 0


def parse(raw: bytes, what: str, limit: int) -> list[Param]:
    """The pairs of a query string or urlencoded form; refuses `;`, bad escapes and more than `limit` pieces."""
    if pieces(raw) > limit:
        raise too_many("parameters", limit)
    if b";" in raw:
        raise refuse(400, "semicolon", what, f"The {what} contains a raw ';'; percent-encode it as %3B.")
    if b"%" in raw and _BAD_ESCAPE.search(raw):
        raise refuse(400, "bad_escape", what, f"The {what} contains a malformed percent-escape.")
    params = []
    plain = b"%" not in raw and b"+" not in raw
    for piece in raw.split(b"&"):
        if piece:
            raw_name, eq, raw_value = piece.partition(b"=")
            if plain:
                name, value = raw_name.decode("utf-8", "surrogateescape"), raw_value.decode("utf-8", "surrogateescape")
            else:
                name, value = decode(raw_name), decode(raw_value)
            params.append(_new(Param, (raw_name, raw_value if eq else None, name, value)))
    return params


_new = tuple.__new__


def decode(raw: bytes) -> str:
    if b"+" in raw:
        raw = raw.replace(b"+", b" ")
    if b"%" in raw:
        raw = _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw)
    return raw.decode("utf-8", "surrogateescape")


def encode(value: str) -> bytes:
    return quote(value, safe="-._~").encode("ascii")


def id_fields(fields: list[tuple[str, str]], what: str) -> tuple[dict[str, str | None], dict[str, str]]:
    """The ids a query string or form names: kind -> value, kind -> name as written; refuses what is ambiguous."""
    ids: dict[str, str | None] = {}
    spelt: dict[str, str] = {}
    for name, value in fields:
        kind = classify(name)
        if kind is None:
            continue
        if kind not in KINDS:
            raise special_name(kind, name, what)
        if kind in ids:
            raise refuse(400, "duplicate_id", name, f"The {what} names {kind} more than once.")
        if not utf8(value):
            raise refuse(400, "invalid_utf8", name, f"The value of {name} is not valid UTF-8.")
        ids[kind] = value
        spelt[kind] = name
    return ids, spelt


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def rewrite(params: list[Param], values: dict[str, str]) -> bytes | None:
    """The pairs rebuilt with `values` for their ids (replaced in place, else appended); None if unchanged."""
    out: list[bytes] = []
    done: set[str] = set()
    changed = False
    for param in params:
        kind = classify(param.name)
        if kind in values:
            done.add(kind)
            if param.name == kind and param.value == values[kind] and param.raw_value is not None:
                out.append(param.raw_name + b"=" + param.raw_value)
                continue
            out.append(kind.encode() + b"=" + encode(values[kind]))
            changed = True
        else:
            out.append(param.raw_name if param.raw_value is None else param.raw_name + b"=" + param.raw_value)
    for kind in KINDS:
        if kind in values and kind not in done:
            out.append(kind.encode() + b"=" + encode(values[kind]))
            changed = True
    return b"&".join(out) if changed else None
