"""Hypothesis strategies for the neighbours the other strategies do not draw (found by a hand hunt):

- an id name split by a bracket inside it (`entity[id`, `application]Id`, `entity[]id`, `applicationI[d`):
  keyscope's bracket reading looks at the components between brackets, none of which is an id, so it ignores
  the name; PHP turns an unclosed `[` into `_` (`entity_id`) and every other reader keeps the name as written,
  which a snake_case or loose binder reads as the id;
- a multipart body whose Content-Type carries a charset other than UTF-8 (`charset=utf-7`): Django and
  Starlette decode part names (and values) with it, so `+AGE-pplicationId` is `applicationId` to them.
"""

from __future__ import annotations

from hypothesis import strategies as st

from .attacks import Multipart, Part, declared, encode, form, ids, json_request, multipart, query
from .strategies import FORM, JSON_ENDPOINTS, KINDS, OUT_OF_SCOPE, QUERY, Case
from .strategies_body import BOUNDARY

BRACKETS = ["[", "]", "[]", "][", "[[", "]]", "[x]"]


@st.composite
def bracket_split(draw: st.DrawFn, base: str) -> str:
    """`base` with a bracket run inserted strictly inside it (never at either end)."""
    at = draw(st.integers(1, len(base) - 1))
    return base[:at] + draw(st.sampled_from(BRACKETS)) + base[at:]


@st.composite
def split_id_names(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(KINDS))
    name = draw(bracket_split(kind))
    key = draw(st.sampled_from(["pair", "force", "pair_fill", "app_fill", "entity"]))
    exact = ids() if key in ("pair", "force", "entity") or draw(st.booleans()) else []
    extra = (name, OUT_OF_SCOPE[kind])
    members = [extra, *exact] if draw(st.booleans()) else [*exact, extra]
    where = draw(st.sampled_from(["query", "urlencoded", "multipart", "json"]))
    if where == "json":
        target = draw(st.sampled_from(JSON_ENDPOINTS))
        return Case(json_request(target.path, declared(target.locations, members)), key, target)
    raw = draw(st.booleans())
    pieces = [f"{encode(n, raw=raw and n != '[x]')}={encode(v)}" for n, v in members]
    if where == "query":
        return Case(query(QUERY.path, pieces), key, QUERY)
    if where == "urlencoded":
        return Case(form(FORM.path, pieces), key, FORM)
    return Case(multipart(FORM.path, Multipart(tuple(Part(n, v) for n, v in members))), key, FORM)


# UTF-7 spellings of an id name: one letter written as a base64 block of its UTF-16 code unit.
UTF7 = {
    "applicationId": ["+AGE-pplicationId", "applic+AGE-tionId", "application+AEk-d", "+AGEAcABw-licationId"],
    "entityId": ["+AGU-ntityId", "entit+AHk-Id", "entity+AEk-d", "+AGUAbg-tityId"],
}
CHARSETS = ["utf-7", "UTF-7", '"utf-7"', "utf7", "unicode-1-1-utf-7"]


@st.composite
def multipart_charsets(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(KINDS))
    name = draw(st.sampled_from(UTF7[kind]))
    key = draw(st.sampled_from(["pair", "force", "pair_fill", "app_fill"]))
    exact = [Part(n, v) for n, v in ids()] if key in ("pair", "force") or draw(st.booleans()) else []
    smuggled = Part(name, OUT_OF_SCOPE[kind])
    parts = [Part("from", "a@example.com"), *exact]
    parts.insert(draw(st.integers(0, len(parts))), smuggled)
    charset = draw(st.sampled_from(CHARSETS))
    content_type = draw(st.sampled_from([
        f"multipart/form-data; boundary={BOUNDARY}; charset={charset}",
        f"multipart/form-data; charset={charset}; boundary={BOUNDARY}",
    ]))
    return Case(multipart(FORM.path, Multipart(tuple(parts), content_type=content_type)), key, FORM)
