"""Strict JSON: the rules every JSON document keyscope reads is held to, written once.

Parsers disagree about the same bytes exactly where these rules refuse, so a document that breaks one has no
single reading and is never guessed at: the bytes must be strict UTF-8 without a byte order mark (some parsers
skip it, others sniff UTF-16 from it), no object may name a member twice (the first wins in some parsers, the
last in others) and `NaN`, `Infinity` and `-Infinity` are not JSON (Python and some others read them anyway).

The management API decodes with `loads()`; the scope check (`keyscope.scope.jsonbody`) builds its own decoder
on `unique()` and `refuse_constant()`, adding the rules only a scope check needs. Each reports a broken rule
in its own words: a `StrictJSONError` says which rule, and the name that broke it.
"""

from __future__ import annotations

import json
from typing import Any, Literal, NoReturn

Rule = Literal["utf8", "bom", "duplicate", "constant"]

_BOM = "\ufeff"


class StrictJSONError(Exception):
    """A rule broken: `rule` which one, `name` the repeated member name or the constant (None for utf8, bom).

    Not a ValueError: a decoder's callers treat ValueError as malformed JSON, and this is well-formed JSON that
    is refused, so it passes through their handlers to the one that words it."""

    def __init__(self, rule: Rule, name: str | None = None) -> None:
        super().__init__(rule if name is None else f"{rule}: {name!r}")
        self.rule: Rule = rule
        self.name = name


def text(raw: bytes) -> str:
    """The document's text: strict UTF-8, no byte order mark."""
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StrictJSONError("utf8") from None
    if decoded.startswith(_BOM):
        raise StrictJSONError("bom")
    return decoded


def repeated_name(pairs: list[tuple[str, Any]]) -> str:
    """The first member name written a second time (the caller knows one is)."""
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            return name
        seen.add(name)
    raise AssertionError("no member name repeats")


def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object_pairs_hook: the object, refused when a member name repeats."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise StrictJSONError("duplicate", repeated_name(pairs))
    return obj


def refuse_constant(name: str) -> NoReturn:
    """A parse_constant: NaN, Infinity and -Infinity are refused."""
    raise StrictJSONError("constant", name)


_DECODER = json.JSONDecoder(object_pairs_hook=unique, parse_constant=refuse_constant)


def loads(raw: bytes) -> Any:
    """The document, or StrictJSONError for a broken rule; json.JSONDecodeError for text that is not JSON and
    RecursionError for nesting past Python's stack, as json.loads() raises them."""
    return _DECODER.decode(text(raw))
