"""Which names a backend could read as an id, a method override or a prototype: one answer for every dialect.

keyscope reads a name (a query or form parameter, a multipart part, a JSON member) the way the most lenient
mainstream backend would, and refuses what it cannot read as exactly one thing:

- case, in every dialect: ASCII, Unicode's simple mappings, and the folds Java's `equalsIgnoreCase` and .NET's
  `OrdinalIgnoreCase` make onto ASCII letters (`İ` U+0130 and `ı` U+0131 to `i`, `ſ` U+017F to `s`, the
  Kelvin sign U+212A to `k`), with NFKC for compatibility forms (fullwidth letters);
- noise: control and format characters anywhere (a backend written in C stops at NUL), and spaces;
- separators: `_`, `-`, `.` and space (snake_case and kebab-case naming strategies bind `application_id` and
  `application-id`; PHP turns `.` and space into `_`);
- brackets, as Rack, PHP and `qs` build nested parameters: `[applicationId]`, `]applicationId` and
  `applicationId]` are `applicationId` to Rack 2.2; `filter[applicationId]` carries an id one level down;
  `applicationId[]` or `applicationId[x]` turns the id into a list or an object (refused).

`_method` (Rails' Rack::MethodOverride, Laravel, Symfony) and `__proto__` (a JavaScript object's prototype)
change how a backend reads the rest of the request; both are refused wherever a name is read.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

KINDS = ("applicationId", "entityId")
ARRAY = "[]"
"""classify(): the name makes an id a list or an object (`applicationId[]`, `applicationId[x]`)."""
OVERRIDE = "_method"
"""classify(): the name overrides the request method."""
PROTO = "__proto__"
"""classify(): the name is a JavaScript prototype."""

_BY_FOLD = {"applicationid": "applicationId", "entityid": "entityId"}
# Non-ASCII letters whose simple upper- or lower-case mapping is an ASCII letter (Java and .NET compare so);
# tests/scope/test_names.py derives the list from the Unicode database and holds it equal to this one.
_TO_ASCII = {"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"}
_SEPARATORS = str.maketrans("", "", "_-. ")
_UNDERSCORES = str.maketrans("-. ", "___")
_COMPONENT = re.compile(r"[^\[\]]+")


def _plain(name: str) -> str:
    """The name without noise, in lower case: what it is to a backend that trims and ignores case."""
    if name.isascii():
        if not name.isprintable():
            name = "".join(c for c in name if c.isprintable())
        return name.strip(" ").lower()
    name = unicodedata.normalize("NFKC", name)
    kept = [_TO_ASCII.get(c, c) for c in name if unicodedata.category(c)[0] not in "CZ" or c == " "]
    return "".join(kept).strip(" ").lower()


@lru_cache(maxsize=16384)
def fold(name: str) -> str:
    """The form under which two names are the same name to some backend (JSON members that fold alike collide)."""
    return _plain(name).translate(_SEPARATORS)


def _special(component: str) -> str | None:
    plain = _plain(component)
    kind = _BY_FOLD.get(plain.translate(_SEPARATORS))
    if kind is not None:
        return kind
    underscored = plain.translate(_UNDERSCORES)
    if underscored == "_method":
        return OVERRIDE
    if underscored == "__proto__":
        return PROTO
    return None


@lru_cache(maxsize=16384)
def classify(name: str) -> str | None:
    """"applicationId" or "entityId" when a backend could read the name as that id; ARRAY, OVERRIDE or PROTO
    when it is to be refused; None for any other name."""
    if "[" not in name and "]" not in name:
        return _special(name)
    components = _COMPONENT.findall(name)
    if not components:
        return None
    found = [_special(component) for component in components]
    for special in found:
        if special == OVERRIDE or special == PROTO:
            return special
    first, last = found[0], found[-1]
    if first in _BY_FOLD.values() and "[" in name[name.index(components[0]) + len(components[0]):]:
        return ARRAY  # the id itself becomes a list or an object
    if any(special is not None for special in found[:-1]):
        return ARRAY  # an id with something nested under it
    if last is None:
        # PHP reads an unclosed `[` as `_` (`entity[id` is entity_id); others keep the name as written
        return _special("".join(components))
    return last
