"""Hypothesis strategies for attacker requests, classes 1-4: id names varied, JSON containers duplicated,
parameter counts around the limits, `_method` overrides. Each draws a `Case`: a request, the key it is sent
with and the endpoint it is judged against. Out-of-scope values are always ids that exist (app-b, ent-b), so
step 5 cannot refuse them for a reason that has nothing to do with scope.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from .attacks import Attack, Multipart, Obj, Part, declared, encode, form, ids, json_request, multipart, query
from .oracle import Endpoint, Location, endpoint

QUERY = endpoint("GET", "/sms/1/logs")
FORM = endpoint("POST", "/email/3/send")
MESSAGES = endpoint("POST", "/sms/2/text/advanced")
NESTED = endpoint("POST", "/sms/3/messages")
PLATFORM = endpoint("POST", "/calls/1/calls")
ROOT = endpoint("POST", "/whatsapp/1/message/text")
OPTIONS = endpoint("POST", "/rcs/2/capability-check/query")
EVENTS = endpoint("POST", "/apple-mfb/1/events")
METRICS = endpoint("POST", "/metrics/1/query-aggregate-data")
JSON_ENDPOINTS = (MESSAGES, NESTED, PLATFORM, ROOT, OPTIONS, EVENTS, METRICS)
OUT_OF_SCOPE = {"applicationId": "app-b", "entityId": "ent-b"}
KINDS = ("applicationId", "entityId")


@dataclass(frozen=True)
class Case:
    attack: Attack
    key: str
    endpoint: Endpoint

    def __repr__(self) -> str:
        return f"Case({self.key} key, {self.endpoint.method} {self.endpoint.template}):\n{self.attack}"


# names --------------------------------------------------------------------------------------------------------
# Characters some comparison takes for an ASCII letter: dotted/dotless i, long s, Kelvin sign, and fullwidth forms.
TWINS = {"i": "\u0131\u0130", "I": "\u0130\u0131", "s": "\u017f", "S": "\u017f", "k": "\u212a", "K": "\u212a"}
PADDING = [" ", "\t", "\x00", "\n", "\r", "\x0b", "\x0c", "\xa0", "\u3000", "  "]
SEPARATED = {
    "applicationId": ["application_id", "APPLICATION_ID", "application-id", "APPLICATION-ID", "Application-Id",
                      "application.id", "application id", "applicationid", "APPLICATIONID", "application__id"],
    "entityId": ["entity_id", "ENTITY_ID", "entity-id", "ENTITY-ID", "Entity-Id", "entity.id", "entity id",
                 "entityid", "ENTITYID"],
}
BRACKETED = ["[{}]", "]{}", "{}]", "{}[]", "{}[0]", "{}[x]", "filter[{}]", "a[b][{}]", "{}[", "[{}", "{}[]]"]


@st.composite
def case_variant(draw: st.DrawFn, base: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(base), max_size=len(base)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(base, flips))


@st.composite
def unicode_variant(draw: st.DrawFn, base: str) -> str:
    chars = list(draw(case_variant(base)))
    for index in draw(st.lists(st.integers(0, len(chars) - 1), min_size=1, max_size=3)):
        options = TWINS.get(chars[index], "") + (chr(ord(chars[index]) + 0xFEE0) if chars[index].isascii() else "")
        if options:
            chars[index] = draw(st.sampled_from(options))
    return "".join(chars)


@st.composite
def padded_variant(draw: st.DrawFn, base: str) -> str:
    return draw(st.sampled_from(["", *PADDING])) + base + draw(st.sampled_from(["", *PADDING]))


def name_variant(base: str) -> st.SearchStrategy[str]:
    """A name a lenient reader may take for `base` (applicationId, entityId, _method, platform, ...)."""
    return st.one_of(
        case_variant(base), unicode_variant(base), padded_variant(base),
        st.sampled_from(SEPARATED.get(base, [base.lower(), base.upper()])),
        st.sampled_from(BRACKETED).map(lambda form: form.format(base)),
    )


def raw_ok(text: str) -> bool:
    return all(c.isascii() and (c.isalnum() or c in "[]._-") for c in text)


@st.composite
def written(draw: st.DrawFn, name: str) -> str:
    """A query/form name as sent: percent-encoded, or as it stands where that is possible."""
    return encode(name, raw=raw_ok(name) and draw(st.booleans()))


# 1. id names varied -----------------------------------------------------------------------------------------
@st.composite
def id_names(draw: st.DrawFn) -> Case:
    """In-scope ids spelt exactly (or none, for a FILL key) plus a near-name of an id holding another value."""
    kind = draw(st.sampled_from(KINDS))
    name = draw(name_variant(kind))
    key = draw(st.sampled_from(["pair", "pair", "force", "app_fill", "pair_fill", "entity"]))
    exact = ids() if key in ("pair", "force", "entity") or draw(st.booleans()) else []
    extra = (name, OUT_OF_SCOPE[kind])
    members = [extra, *exact] if draw(st.booleans()) else [*exact, extra]
    where = draw(st.sampled_from(["query", "urlencoded", "multipart", "json"]))
    if where == "json":
        target = draw(st.sampled_from(JSON_ENDPOINTS))
        return Case(json_request(target.path, declared(target.locations, members)), key, target)
    pieces = [f"{draw(written(n))}={encode(v)}" for n, v in members]
    if where == "query":
        return Case(query(QUERY.path, pieces), key, QUERY)
    if where == "urlencoded":
        return Case(form(FORM.path, pieces), key, FORM)
    parts = tuple(Part(n, v) for n, v in members)
    return Case(multipart(FORM.path, Multipart(parts)), key, FORM)


# 2. JSON containers duplicated --------------------------------------------------------------------------------
@st.composite
def json_twins(draw: st.DrawFn) -> Case:
    """A declared container (or an id) next to a twin named the same, or the same but for case or separators,
    holding null, nothing, or out-of-scope ids: `{"platform": {...}, "Platform": null}`."""
    target = draw(st.sampled_from(JSON_ENDPOINTS))
    key = draw(st.sampled_from(["pair", "force", "pair_fill", "app_fill"]))
    steps = next(location.steps for location in target.locations if location.kind == "json")
    doc = declared(target.locations, ids())
    depth = draw(st.integers(0, len(steps)))  # len(steps): twin an id member inside the declared object
    if depth == len(steps):
        kind = draw(st.sampled_from(KINDS))
        twin = (draw(st.one_of(st.just(kind), name_variant(kind))), OUT_OF_SCOPE[kind])
    else:
        name, each = steps[depth]
        bad = declared([Location("json", steps[depth + 1:])], list(OUT_OF_SCOPE.items()))
        value = draw(st.sampled_from([None, [], [bad], bad, "x", Obj()] if each else [None, Obj(), [], bad, "x"]))
        twin = (draw(st.one_of(st.just(name), name_variant(name))), value)
    first = draw(st.booleans())
    return Case(json_request(target.path, insert(doc, [n for n, _ in steps[:depth]], twin, first)), key, target)


def insert(doc: Obj, path: list[str], member: tuple, first: bool) -> Obj:
    """`doc` with `member` added to the object at `path` (through the first element of arrays)."""
    if not path:
        return doc.plus(member, first=first)
    out = []
    for name, value in doc.members:
        if name == path[0]:
            if isinstance(value, list):
                value = [insert(value[0], path[1:], member, first), *value[1:]]
            else:
                value = insert(value, path[1:], member, first)
        out.append((name, value))
    return Obj(*out)


# 3. parameter counts around the limits -------------------------------------------------------------------------
COUNTS = [0, 1, 50, 97, 98, 99, 100, 101, 102, 998, 999, 1000, 1001]


@st.composite
def param_counts(draw: st.DrawFn) -> Case:
    """Filler pairs and empty pieces around keyscope's 100 and the backends' 1,000, then an out-of-scope id last
    (after in-scope ones first), or nothing for a FILL key to append after them."""
    fillers = draw(st.one_of(st.sampled_from(COUNTS), st.integers(0, 1010)))
    empties = draw(st.sampled_from([0, 0, 1, 3, 50, 1000]))
    late = draw(st.sampled_from([None, "applicationId", "entityId"]))
    key = draw(st.sampled_from(["app_fill", "pair_fill"])) if late is None else draw(st.sampled_from(["pair", "force"]))
    middle = [f"f{i}=v" for i in range(fillers)] + [""] * empties
    head = [f"{n}={v}" for n, v in ids()] if late else []
    tail = [f"{late}={OUT_OF_SCOPE[late]}"] if late else []
    where = draw(st.sampled_from(["query", "form", "split"]))
    if where == "query":
        return Case(query(QUERY.path, head + middle + tail), key, QUERY)
    if where == "form":
        return Case(form(FORM.path, head + middle + tail), key, FORM)
    cut = draw(st.integers(0, len(middle)))
    return Case(form(FORM.path, head + middle[cut:] + tail, target_query=middle[:cut] or ["q=1"]), key, FORM)


# 4. method overrides --------------------------------------------------------------------------------------------
OVERRIDE_HEADERS = ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "x-http-method-override"]


@st.composite
def method_overrides(draw: st.DrawFn) -> Case:
    """A `_method` (or a near-name) asking for another method, on allowlisted POST endpoints with in-scope ids."""
    name = draw(st.one_of(st.just("_method"), name_variant("_method"), st.sampled_from(["method", "__method"])))
    value = draw(st.sampled_from(["DELETE", "PUT", "PATCH", "GET", "delete", "put", "HEAD", "OPTIONS", "PURGE"]))
    where = draw(st.sampled_from(["query", "urlencoded", "multipart", "json", "header"]))
    headers = ((draw(st.sampled_from(OVERRIDE_HEADERS)), value),) if where == "header" else ()
    override = [f"{draw(written(name))}={encode(value)}"]
    target_query = override if where == "query" else []
    if where in ("urlencoded", "multipart") or (where in ("query", "header") and draw(st.booleans())):
        if where == "multipart":
            parts = (Part(name, value), *(Part(n, v) for n, v in ids()))
            attack = multipart(FORM.path, Multipart(parts), target_query=target_query, headers=headers)
            return Case(attack, "pair", FORM)
        pieces = (override if where == "urlencoded" else []) + [f"{n}={v}" for n, v in ids()]
        return Case(form(FORM.path, pieces, target_query=target_query, headers=headers), "pair", FORM)
    target = draw(st.sampled_from([MESSAGES, ROOT, PLATFORM]))
    base = ((name, value),) if where == "json" else ()
    doc = declared(target.locations, ids(), base)
    return Case(json_request(target.path, doc, target_query=target_query, headers=headers), "pair", target)
