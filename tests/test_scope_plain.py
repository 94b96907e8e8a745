"""The short way of scope.inspect() (plain query, plain JSON, every place permitted as it stands, or the first
place refused) against the long way (`inspect_slowly`): the same decision, refusal, reason, field and forwarded
bytes, for every input.

Inputs are built to sit on the border of "plain": ids at and away from the declared locations, exactly and
not exactly spelt, escaped, duplicated, nested to the depth limit, with the byte-level tricks the long way
refuses (BOM, NaN, lone surrogates, trailing data, big numbers).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keyscope import scope, scope_form, scope_json
from keyscope.endpoints import Endpoint
from keyscope.errors import Refusal
from keyscope.models import ApiKey, PlatformEntry

from test_scope import (
    APPLE_EVENTS,
    CCAAS,
    CREATE_CALL,
    EMAIL_SEND,
    JSON,
    METRICS,
    PRIMARY,
    RCS_CAPABILITY,
    SEND_SMS,
    SMS_ADVANCED,
    SMS_LOGS,
    WHATSAPP_TEXT,
    key,
)

APPS = ["app-a", "app-b", "app a"]
ENTS = ["ent-1", "ent-2"]
ENDPOINTS = [SMS_ADVANCED, SEND_SMS, WHATSAPP_TEXT, CREATE_CALL, APPLE_EVENTS, RCS_CAPABILITY, METRICS, SMS_LOGS,
             CCAAS, EMAIL_SEND, None]


def outcome(decide: Any, endpoint: Endpoint | None, k: ApiKey, query: bytes, content_type: bytes | None,
            content_encoding: bytes | None, body: bytes) -> tuple[Any, ...]:
    """Everything a caller can observe of one inspection (places included), or of its refusal."""
    try:
        d = decide(endpoint, k, query=query, content_type=content_type, content_encoding=content_encoding,
                   body=body)
    except Refusal as r:
        return ("refused", r.status, r.reason, r.step, r.field, r.detail)
    return ("decided", d.query, d.body, d.changed, d.entry, d.application_ids, d.entity_ids, d.places)


def slowly(endpoint: Endpoint | None, k: ApiKey, *, query: bytes, content_type: bytes | None,
           content_encoding: bytes | None, body: bytes) -> scope.Decision:
    return scope.inspect_slowly(endpoint, k, query, content_type, content_encoding, body)


def assert_agree(endpoint: Endpoint | None, k: ApiKey, query: bytes, content_type: bytes | None,
                 content_encoding: bytes | None, body: bytes) -> str:
    """Assert both ways agree; what happened, for hypothesis's statistics."""
    args = (endpoint, k, query, content_type, content_encoding, body)
    long_way = []
    original = scope._inspect
    scope._inspect = lambda *inputs: long_way.append(True) or original(*inputs)
    try:
        fast = outcome(scope.inspect, *args)
    finally:
        scope._inspect = original
    assert fast == outcome(slowly, *args)
    if fast[0] == "refused":
        return f"refused {fast[2]} " + ("the long way" if long_way else "the short way")
    decision = scope.inspect(endpoint, k, query=query, content_type=content_type, content_encoding=content_encoding,
                             body=body)
    if decision._places is not None:
        return "decided the long way"
    assert decision.query is query and decision.body is body and not decision.changed  # the very objects
    return "decided the short way"


# --- keys --------------------------------------------------------------------------------------------------

entry_ids = st.tuples(st.sampled_from([*APPS, None]), st.sampled_from([*ENTS, None]))
actions = st.sampled_from([None, "FILL", "FORCE"])


@st.composite
def keys(draw: st.DrawFn) -> ApiKey:
    if draw(st.integers(0, 5)) == 0:
        return PRIMARY
    if draw(st.integers(0, 5)) == 0:  # several entries: always the long way, still compared
        chosen = draw(st.lists(entry_ids.filter(lambda e: e != (None, None)), min_size=2, max_size=3, unique=True))
        return key(*chosen[:-1], (*chosen[-1], draw(actions)))
    return key((*draw(entry_ids), draw(actions)))


# --- queries -----------------------------------------------------------------------------------------------

query_names = st.sampled_from([
    b"applicationId", b"entityId", b"applicationId", b"entityId", b"limit", b"sentSince", b"x",
    b"ApplicationId", b"applicationid", b"applicationId[]", b"xapplicationId", b"applicationId+", b"%61pplicationId",
    b"entityId%00", b"application%49d", b"", b"filter%5B0%5D", b"x%20y",
])
query_values = st.sampled_from([b"app-a", b"app-b", b"app+a", b"app%20a", b"app%2Da", b"ent-1", b"ent-2", b"", b"10",
                                 b"%ff", b"%C3%A9", b"%", b"%zz", b"a;b", b"\xff", b"x y", b"applicationId"])


@st.composite
def queries(draw: st.DrawFn) -> bytes:
    pieces = []
    for name, value, form in draw(st.lists(st.tuples(query_names, query_values, st.integers(0, 9)), max_size=3)):
        pieces.append(name if form == 0 else name + b"=" + value)
    return b"&".join(pieces)


# --- JSON bodies -------------------------------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.sampled_from(["", "x", "app-a", "a:b"]),
                    st.floats(allow_nan=False, allow_infinity=False, width=32))
id_values = st.sampled_from([*APPS, *ENTS, None, None])
id_names = {"applicationId": st.sampled_from(["applicationId"] * 6 + ["ApplicationId", "APPLICATIONID"]),
            "entityId": st.sampled_from(["entityId"] * 6 + ["EntityId"])}


@st.composite
def id_object(draw: st.DrawFn, children: st.SearchStrategy[Any] = scalars) -> dict[str, Any]:
    obj: dict[str, Any] = draw(st.dictionaries(st.sampled_from(["text", "from", "n", "meta"]), children, max_size=2))
    for kind in ("applicationId", "entityId"):
        if draw(st.integers(0, 3)):
            obj[draw(id_names[kind])] = draw(id_values)
    return obj


anything = st.recursive(scalars, lambda children: st.lists(children, max_size=2) | id_object(children), max_leaves=5)


def at_location(steps: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """A value for a declared location's path: mostly the objects it names, sometimes absent, null or odd."""
    if not steps:
        return id_object(anything)
    step, rest = steps[0], steps[1:]
    inner = at_location(rest)
    value = st.lists(inner, max_size=3) if step.each else inner
    odd = st.sampled_from([None, "text", 1, [], {}])

    @st.composite
    def holder(draw: st.DrawFn) -> dict[str, Any]:
        obj: dict[str, Any] = draw(st.dictionaries(st.sampled_from(["text", "meta"]), anything, max_size=1))
        choice = draw(st.integers(0, 9))
        if choice < 8:
            obj[step.name] = draw(value)
        elif choice == 8:
            obj[step.name] = draw(odd)
        return obj

    return holder()


@st.composite
def documents(draw: st.DrawFn, endpoint: Endpoint | None) -> Any:
    json_locations = [loc for loc in (endpoint.ids if endpoint else ()) if loc.kind == "json"]
    if not json_locations or draw(st.integers(0, 9)) == 0:
        return draw(st.dictionaries(st.sampled_from(["a", "text", "deep"]), anything, max_size=3))
    document = draw(at_location(json_locations[-1].path))
    if len(json_locations) > 1 and type(document) is dict and type(document.get("request")) is dict:
        filter_by = document["request"].get("filterBy")  # request.filterBy itself, besides its platforms[]
        if type(filter_by) is dict:
            filter_by.update(draw(id_object()))
    return document


def dumps(document: Any, style: int) -> bytes:
    if style == 0:
        return json.dumps(document).encode()
    if style == 1:
        return json.dumps(document, indent=1).encode()
    return json.dumps(document, separators=(",", ":"), ensure_ascii=style == 2).encode()


MUTATIONS: list[tuple[bytes, bytes]] = [
    (b'"applicationId"', b'"applicationid"'),
    (b'"applicationId"', b'" applicationId"'),
    (b'"applicationId"', b'"\\u0061pplicationId"'),
    (b'"applicationId"', b'"applicationId\\u0000"'),
    (b'"applicationId"', b'"appl\xc4\xb1cationId"'),
    (b'"applicationId"', b'"appl\\u0131cationId"'),
    (b'"entityId"', b'"entity\\u0049d"'),
    (b'"applicationId"', b'"applicationId\\t"'),
    (b'"entityId"', b'"\\"entityId\\""'),
    (b'"applicationId":', b'"applicationId":"app-a","applicationId":'),
    (b'"applicationId":', b'"ApplicationId":"app-a","applicationId":'),
    (b'"entityId":', b'"n":NaN,"entityId":'),
    (b'"entityId":', b'"n":1e999,"entityId":'),
    (b'"entityId":', b'"n":' + b"1" * 4500 + b',"entityId":'),
    (b'"app-a"', b'7'),
    (b'"app-a"', b'["app-a"]'),
    (b'"app-a"', b'"app-\\u0061"'),
    (b'"app-a"', b'"app\\/a"'),
    (b'"ent-1"', b'{"id":"ent-1"}'),
    (b'"ent-1"', b'true'),
    (b'{"', b'{"dup":1,"dup":2,"'),
    (b'{"', b'{"t":"\\ud800","'),
    (b'{"', b'{"t":"\\ud83d\\ude00 \\n \\"","'),
    (b'{"', b'{"t":"caf\xc3\xa9","'),
    (b'{"', b'{"t":"\xff","'),
    (b'[', b'[1,'),
]


TWEAKS: list[tuple[bytes, bytes]] = [
    (b"", b"{}"), (b"", b" x"), (b"", b"\n"), (b"", b"\r\n\t "), (b"{", b"\xef\xbb\xbf{"), (b"{", b" {"),
    (b":[{", b":[1,{"), (b":[{", b":[null,{"), (b":[{", b":[[],{"), (b'"text"', b'"\\u0074ext"'),
    (b'"text"', b'"text","text"'),
    (b'"x"', b'"\\ud800"'), (b'"x"', b'"\\udc00\\ud800"'), (b'"x"', b'"\\ud83d\\ude00"'), (b'"x"', b'"\\"\\\\"'),
]


@st.composite
def json_bodies(draw: st.DrawFn, endpoint: Endpoint | None) -> bytes:
    raw = dumps(draw(documents(endpoint)), draw(st.integers(0, 3)))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        old, new = draw(st.sampled_from(MUTATIONS))
        if old in raw:
            at = draw(st.integers(0, raw.count(old) - 1))
            parts = raw.split(old)
            raw = old.join(parts[: at + 1]) + new + old.join(parts[at + 1:])
    wrap = draw(st.sampled_from([0] * 12 + [1, 62, 63, 64]))
    raw = b'{"w":' * wrap + raw + b"}" * wrap
    edge = draw(st.sampled_from(["none"] * 25 + ["bom", "trailing", "spaces", "newline", "truncated"]))
    if edge == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif edge == "trailing":
        raw += b"{}"
    elif edge == "spaces":
        raw = b" " + raw + b"\r\n"
    elif edge == "newline":
        raw += b"\n"
    elif edge == "truncated":
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


content_types = st.sampled_from([JSON] * 16 + [b"application/json; charset=utf-8", b"application/problem+json",
                                               b"application/json; charset=utf-16", b"text/plain", None])


@st.composite
def requests(draw: st.DrawFn) -> tuple[Endpoint | None, ApiKey, bytes, bytes | None, bytes | None, bytes]:
    endpoint = draw(st.sampled_from(ENDPOINTS))
    k = draw(keys())
    if endpoint is None and k.platform and draw(st.integers(0, 3)):
        k = PRIMARY  # a linked key without an endpoint is refused before anything is read
    query = draw(queries()) if draw(st.booleans()) or endpoint is SMS_LOGS else b""
    if endpoint is SMS_LOGS and draw(st.booleans()):
        value = draw(st.sampled_from([b"app-a", b"app-b", b"app+a"]))
        query = b"applicationId=" + value + (b"&" + query if query else b"")
    body, content_type = b"", None
    if endpoint is not SMS_LOGS or draw(st.integers(0, 4)) == 0:
        body, content_type = draw(json_bodies(endpoint)), draw(content_types)
    encoding = draw(st.sampled_from([None] * 29 + [b"gzip"]))
    return endpoint, k, query, content_type, encoding, body


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(requests())
def test_short_way_agrees_with_the_long_way(request: tuple[Any, ...]) -> None:
    event(assert_agree(*request))


def holding(entry: PlatformEntry | None) -> dict[str, Any]:
    """An object holding the entry's ids exactly, as a declared place that is permitted as it stands."""
    ids = {"applicationId": entry.application_id, "entityId": entry.entity_id} if entry else {"applicationId": "p"}
    return {kind: value for kind, value in ids.items() if value is not None}


def build(steps: tuple[Any, ...], entry: PlatformEntry | None, count: int) -> Any:
    if not steps:
        return {"text": "hi", **holding(entry)}
    step, rest = steps[0], steps[1:]
    inner = build(rest, entry, count)
    return {step.name: [json.loads(json.dumps(inner)) for _ in range(count)] if step.each else inner}


extra_names = st.sampled_from(["applicationId", "entityId", "ApplicationId", "applicationid", "ENTITYID",
                               " applicationId", "applicationId ", "xapplicationId", "text"])
extra_values = st.sampled_from([*APPS, *ENTS, None, 7, ["app-a"]])


@st.composite
def near_plain(draw: st.DrawFn) -> tuple[Endpoint | None, ApiKey, bytes, bytes | None, bytes | None, bytes]:
    """A request the short way decides, give or take one id: an extra one in the body or the query."""
    endpoint = draw(st.sampled_from([SMS_ADVANCED, SEND_SMS, WHATSAPP_TEXT, CREATE_CALL, METRICS, CCAAS, SMS_LOGS]))
    k = draw(st.sampled_from([PRIMARY, key(("app-a", None)), key(("app-a", "ent-1", "FORCE")),
                              key((None, "ent-1", "FILL")), key(("app a", None))]))
    entry = k.platform[0] if k.platform else None
    document: dict[str, Any] = {"text": "x"}
    for location in endpoint.ids:
        if location.kind == "json":
            document.update(build(location.path, entry, draw(st.integers(1, 3))))
    if draw(st.booleans()):  # one more id somewhere in the body
        extra = {draw(extra_names): draw(extra_values)}
        where = draw(st.sampled_from(["top", "nested", "list"]))
        if where == "top" and endpoint.ids and endpoint.ids[0].kind == "json" and not endpoint.ids[0].path:
            where = "nested"  # the top level is the declared place itself
        document.update(extra if where == "top" else {"meta": extra if where == "nested" else [1, extra]})
    query_ids = holding(entry) if endpoint is SMS_LOGS else {}
    pairs = [(name.encode(), value.replace(" ", "+").encode()) for name, value in query_ids.items()]
    if draw(st.booleans()):
        value = draw(st.sampled_from([*APPS, *ENTS]))
        pairs.insert(draw(st.integers(0, len(pairs))), (draw(extra_names).encode(), value.replace(" ", "+").encode()))
    query = b"&".join(name + b"=" + value for name, value in pairs)
    body = b"" if endpoint is SMS_LOGS else dumps(document, draw(st.integers(0, 3)))
    if body and draw(st.booleans()):  # one of the long way's refusals, or an odd shape at a declared place
        old, new = draw(st.sampled_from([*MUTATIONS, *TWEAKS]))
        body = body.replace(old, new, 1) if old else body + new
    wrap = draw(st.sampled_from([0] * 12 + [61, 62, 63]))  # nests the declared places too: 64 brackets or more
    body = b'[' * wrap + body + b"]" * wrap if body else body
    return endpoint, k, query, JSON if body else None, None, body


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_plain())
def test_short_way_agrees_near_its_border(request: tuple[Any, ...]) -> None:
    event(assert_agree(*request))


# --- refusals ----------------------------------------------------------------------------------------------

OTHER = {"applicationId": ["app-b", "app a", "", "app-a"], "entityId": ["ent-2", "", "ent-1"]}


@st.composite
def place_ids(draw: st.DrawFn, entry: PlatformEntry | None) -> dict[str, Any]:
    """A place's ids: mostly the entry's, else another id, none (missing) or null, kind by kind."""
    ids: dict[str, Any] = {}
    for kind, own in (("applicationId", entry.application_id if entry else None),
                      ("entityId", entry.entity_id if entry else None)):
        choice = draw(st.integers(0, 6))
        if choice <= 2 and own is not None:
            ids[kind] = own
        elif choice in (3, 4):
            ids[kind] = draw(st.sampled_from(OTHER[kind]))
        elif choice == 5:
            ids[kind] = None
    return ids


def with_ids(draw: st.DrawFn, entry: PlatformEntry | None, obj: dict[str, Any], chance: int) -> dict[str, Any]:
    """`obj` with ids of its own one time in `chance` (an undeclared place), before or after its other keys."""
    if draw(st.integers(0, chance - 1)):
        return obj
    ids = draw(place_ids(entry))
    return {**ids, **obj} if draw(st.booleans()) else {**obj, **ids}


def declared_places(draw: st.DrawFn, steps: tuple[Any, ...], entry: PlatformEntry | None) -> Any:
    """The objects a declared location names, each with ids of its own; ids on the way there too, now and then,
    and once in a while the location broken off (absent or null: the long way's to fill or refuse)."""
    if not steps:
        return {"text": "hi", **draw(place_ids(entry))}
    step, rest = steps[0], steps[1:]
    shape = draw(st.integers(0, 19))
    if shape == 0:
        return with_ids(draw, entry, {}, 3)
    if shape == 1:
        return with_ids(draw, entry, {step.name: None}, 3)
    if step.each:
        child: Any = [declared_places(draw, rest, entry) for _ in range(draw(st.sampled_from([0, 1, 1, 2, 2, 3])))]
    else:
        child = declared_places(draw, rest, entry)
    return with_ids(draw, entry, {step.name: child}, 4)


def elsewhere(draw: st.DrawFn, entry: PlatformEntry | None) -> dict[str, Any]:
    """Objects holding ids away from every declared location (no endpoint declares `meta` or `extra`)."""
    extra: dict[str, Any] = {}
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        obj = draw(place_ids(entry)) or {"applicationId": draw(st.sampled_from(OTHER["applicationId"]))}
        if draw(st.booleans()):
            extra.setdefault("meta", []).append({"n": 1, **obj})
        else:
            extra.setdefault("extra", {}).setdefault("deep", {}).update(obj)
    return extra


@st.composite
def refused_requests(draw: st.DrawFn) -> tuple[Endpoint | None, ApiKey, bytes, bytes | None, bytes | None, bytes]:
    """Plain requests of one-entry keys that places refuse, or not: the entry's ids, others and none at the
    declared places, in batches, with ids elsewhere (before and after the declared places), in the query too."""
    endpoint = draw(st.sampled_from([SMS_ADVANCED, SMS_ADVANCED, SEND_SMS, WHATSAPP_TEXT, CREATE_CALL, APPLE_EVENTS,
                                     RCS_CAPABILITY, METRICS, SMS_LOGS, CCAAS, EMAIL_SEND]))
    which = draw(st.integers(0, 19))
    if which == 0:
        k = PRIMARY
    elif which == 1:
        k = key(("app-a", None), ("app-b", "ent-1", draw(actions)))
    else:
        k = key((*draw(entry_ids), draw(st.sampled_from([None, None, None, "FILL", "FORCE"]))))
    entry = k.platform[0] if k.platform else None
    document: dict[str, Any] = {}
    top_declared = any(location.kind == "json" and not location.path for location in endpoint.ids)
    if not top_declared:
        document.update(with_ids(draw, entry, {}, 5))
    json_locations = [location for location in endpoint.ids if location.kind == "json"]
    if json_locations:  # the deepest: METRICS's request.filterBy.platforms[] goes through request.filterBy
        document.update(declared_places(draw, json_locations[-1].path, entry))
        request = document.get("request")
        if len(json_locations) > 1 and type(request) is dict and type(request.get("filterBy")) is dict:
            request["filterBy"].update(draw(place_ids(entry)))
    if draw(st.booleans()):
        document.update(elsewhere(draw, entry))
    if not top_declared and draw(st.booleans()):
        document = dict(reversed(list(document.items())))  # the declared places after the others
    pairs = [(name, value) for name, value in draw(place_ids(entry)).items() if value is not None]
    if endpoint is not SMS_LOGS and draw(st.booleans()):
        pairs = []
    query = b"&".join(name.encode() + b"=" + value.replace(" ", "+").encode() for name, value in pairs)
    if draw(st.integers(0, 5)) == 0:
        query = (query + b"&" if query else b"") + b"limit=5"
    body_shape = draw(st.integers(0, 14))
    if endpoint is SMS_LOGS or body_shape == 0:
        body = b""
    elif body_shape == 1:
        body = b"null"
    else:
        body = dumps(document, draw(st.integers(0, 3)))
        if body_shape == 2:  # not plain any more: the long way's
            old, new = draw(st.sampled_from([*MUTATIONS, *TWEAKS]))
            body = body.replace(old, new, 1) if old else body + new
    content_type = b"application/x-www-form-urlencoded" if endpoint is EMAIL_SEND and body_shape == 3 else JSON
    return endpoint, k, query, content_type if body else None, None, body


@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(refused_requests())
def test_short_way_refuses_as_the_long_way(request: tuple[Any, ...]) -> None:
    event(assert_agree(*request))


# --- examples ----------------------------------------------------------------------------------------------

def bench_body(application: str) -> bytes:
    message = {"destinations": [{"to": "41793026727"}], "from": "InfoSMS", "text": "x" * 900,
               "applicationId": application}
    return json.dumps({"messages": [message]}, separators=(",", ":")).encode()


@pytest.mark.parametrize(("endpoint", "k", "query", "body"), [
    (SMS_ADVANCED, key(("app-a", None)), b"", bench_body("app-a")),
    (SMS_ADVANCED, key(("app-a", None, "FORCE")), b"", bench_body("app-a")),
    (SMS_ADVANCED, key(("app-a", None, "FILL")), b"", bench_body("app-a")),
    (SMS_ADVANCED, PRIMARY, b"applicationId=app-b", bench_body("app-a")),
    (SMS_LOGS, key(("app-a", None)), b"applicationId=app-a&limit=5", b""),
    (SMS_LOGS, key((None, "ent-1", "FORCE")), b"entityId=ent-1", b""),
    (SMS_LOGS, PRIMARY, b"applicationId=app-a", b""),
    (None, PRIMARY, b"applicationId=app-a", b""),
    (CCAAS, key(("app-a", None)), b"", b'{"topic":"x"}'),
    (CCAAS, key(("app-a", None)), b"", b'{"x":[{"applicationId":"app-a"}]}'),
    (METRICS, key(("app-a", None)), b"", b'{"request":{"filterBy":{"applicationId":"app-a"}}}'),
])
def test_common_requests_are_decided_the_short_way(endpoint: Endpoint | None, k: ApiKey, query: bytes,
                                                   body: bytes) -> None:
    content_type = JSON if body else None
    decision = scope.inspect(endpoint, k, query=query, content_type=content_type, content_encoding=None, body=body)
    assert decision._places is None
    assert decision.query is query and decision.body is body and not decision.changed
    assert decision.entry == (k.platform[0] if k.platform else None)
    slow = scope.inspect_slowly(endpoint, k, query, content_type, None, body)
    assert decision.places == slow.places  # computed the long way on first use
    assert (decision.application_ids, decision.entity_ids) == (slow.application_ids, slow.entity_ids)


@pytest.mark.parametrize(("endpoint", "k", "query", "body"), [
    (SMS_ADVANCED, key(("app-a", None, "FILL")), b"", b'{"messages":[{"text":"x"}]}'),
    (SMS_ADVANCED, key(("app-a", None, "FORCE")), b"", bench_body("app-b")),
    (SMS_LOGS, key(("app-a", None)), b"ApplicationId=app-a", b""),
    (SMS_LOGS, key(("app-a", None)), b"applicationId=app-a&applicationId=app-a", b""),
    (SMS_LOGS, key(("app-a", None)), b"applicationId=app-a;x=1", b""),
    (CCAAS, key(("app-a", None)), b"", b'{"x":{"ApplicationId":"app-b"}}'),
    (WHATSAPP_TEXT, key(("app-a", None)), b"", b'{"applicationId":"app-a","applicationId":"app-b"}'),
    (WHATSAPP_TEXT, PRIMARY, b"", b'{"applicationId":"app-a"} {}'),
    (EMAIL_SEND, key(("app-a", None)), b"", b"applicationId=app-a"),
])
def test_the_rest_is_decided_the_long_way_alike(endpoint: Endpoint | None, k: ApiKey, query: bytes,
                                                body: bytes) -> None:
    content_type = b"application/x-www-form-urlencoded" if endpoint is EMAIL_SEND else JSON
    assert_agree(endpoint, k, query, content_type, None, body)


@pytest.mark.parametrize(("endpoint", "k", "query", "body", "reason", "field"), [
    (SMS_ADVANCED, key(("app-a", None)), b"", bench_body("app-b"), "id_out_of_scope", "messages[0].applicationId"),
    (SMS_ADVANCED, key(("app-a", "ent-1")), b"", b'{"messages":[{"applicationId":"app-a"},{"entityId":"ent-1"}]}',
     "id_missing", "messages[0].entityId"),
    (SMS_ADVANCED, key(("app-a", None)), b"", b'{"messages":[]}', "id_missing", "messages[]"),
    (SMS_ADVANCED, key(("app-a", None, "FORCE")), b"",
     b'{"messages":[{"applicationId":"app-b"}],"meta":[{"applicationId":"app-a"},{"applicationId":"app-b"}]}',
     "id_out_of_scope", "meta[1].applicationId"),
    (SMS_ADVANCED, key(("app-a", "ent-1", "FILL")), b"entityId=ent-2", b'{"messages":[{"text":"x"}]}',
     "id_out_of_scope", "entityId"),
    (SEND_SMS, key(("app-a", None)), b"", b"", "id_missing", "messages[].options.platform.applicationId"),
    (SEND_SMS, key(("app-a", None)), b"", b'{"messages":[{"text":"x"}]}', "id_missing",
     "messages[0].options.platform.applicationId"),
    (SEND_SMS, key(("app-a", None)), b"", b'{"messages":[{"options":[]}]}', "bad_location", "messages[0].options"),
    (METRICS, key(("app-a", None)), b"", b'{"request":{"filterBy":{"platforms":[{"applicationId":"app-b"}]}}}',
     "id_missing", "request.filterBy.applicationId"),
    (SMS_LOGS, key(("app-a", None)), b"applicationId=app-b&limit=5", b"", "id_out_of_scope", "applicationId"),
    (SMS_LOGS, key(("app-a", None)), b"limit=5", b"", "id_missing", "applicationId"),
    (EMAIL_SEND, key(("app-a", None)), b"", b'{"applicationId":"app-a"}', "id_missing", "applicationId"),
    (CCAAS, key(("app-a", None, "FORCE")), b"", b'{"x":{"applicationId":"app-b"}}', "id_out_of_scope",
     "x.applicationId"),
])
def test_common_refusals_are_decided_the_short_way(monkeypatch: pytest.MonkeyPatch, endpoint: Endpoint | None,
                                                   k: ApiKey, query: bytes, body: bytes, reason: str,
                                                   field: str) -> None:
    content_type = JSON if body else None
    with pytest.raises(Refusal) as slow:
        scope.inspect_slowly(endpoint, k, query, content_type, None, body)
    assert (slow.value.reason, slow.value.field) == (reason, field)
    monkeypatch.setattr(scope, "_inspect", None)  # the long way is not taken
    with pytest.raises(Refusal) as fast:
        scope.inspect(endpoint, k, query=query, content_type=content_type, content_encoding=None, body=body)
    assert fast.value == slow.value


def test_plain_ids() -> None:
    assert scope_form.plain_ids(b"") == {}
    assert scope_form.plain_ids(b"limit=5&x") == {}
    assert scope_form.plain_ids(b"applicationId=app+a&entityId=e&&limit=5") == {"applicationId": "app a",
                                                                                "entityId": "e"}
    assert scope_form.plain_ids(b"text=applicationId") == {}
    assert scope_form.plain_ids(b"applicationId=app%2Da&sentSince=2026-01-01T00%3A00") == {"applicationId": "app-a"}
    assert scope_form.plain_ids(b"entityId=%C3%A9") == {"entityId": "\u00e9"}
    for query in (b"ApplicationId=a", b"applicationId", b"applicationId=a&applicationId=a", b"applicationId[]=a",
                  b"%61pplicationId=a", b"x%20=1", b"x=1;y=2", b"x=\xff", b"x=a\x00", b"x y=1", b"x=%zz", b"x=%",
                  b"applicationId=%ff", b" applicationId=a"):
        assert scope_form.plain_ids(query) is None, query


def test_read_plain_lists_holders_and_refuses_like_read() -> None:
    doc, holders = scope_json.read_plain(b'{"a":[{"applicationId":"x"},{"b":{"entityId":null}}]}')
    assert holders == [{"applicationId": "x"}, {"entityId": None}] and doc["a"][0] is holders[0]
    assert scope_json.read_plain(b'{"a":1}\n') == ({"a": 1}, [])
    for raw in (b'{"ApplicationId":"x"}', b'{"t":"\\u0061"}', b'{"t":"\xc3\xa9"}', b"[" * 65 + b"]" * 65):
        assert scope_json.read_plain(raw) is None
    for raw, reason in ((b'{"a":1,"a":2}', "duplicate_key"), (b'{"applicationId":7}', "id_not_string"),
                        (b'{"n":NaN}', "non_finite_number"), (b'{"a":1} x', "trailing_data"),
                        (b' {"a":1,}', "invalid_json"), (b'{"x":[{"entityId":[]}]}', "id_not_string")):
        with pytest.raises(Refusal) as plain:
            scope_json.read_plain(raw)
        with pytest.raises(Refusal) as full:
            scope_json.read(raw)
        assert plain.value == full.value and plain.value.reason == reason


def test_declared_objects() -> None:
    steps = SEND_SMS.ids[0].path
    doc = {"messages": [{"options": {"platform": {"applicationId": "a"}}}, {"options": {"platform": {}}}]}
    assert scope_json.declared(doc, steps) == [{"applicationId": "a"}, {}]
    assert scope_json.declared({"bulkId": 1}, steps) == []  # an absent array holds no place
    for odd in ({"messages": [{"options": {}}]}, {"messages": [{"options": None}]}, {"messages": {}},
                {"messages": [1]}, {"messages": [{"options": []}]}, []):
        assert scope_json.declared(odd, steps) is None
    assert scope_json.declared({"platform": None}, CREATE_CALL.ids[0].path) is None


def test_primary_with_an_unread_body_collects_query_ids() -> None:
    decision = scope.inspect(CCAAS, PRIMARY, query=b"applicationId=app-a", content_type=b"application/xml",
                             content_encoding=None, body=b"<applicationId>app-b</applicationId>")
    assert decision._places is None and decision.application_ids == {"app-a"}
    assert decision.places == [scope.Place("query", {"applicationId": "app-a"}, None)]


def test_a_plain_body_parsed_once_is_handed_to_the_long_way(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(scope_json, "read", lambda body: calls.append(body))
    decision = scope.inspect(SMS_ADVANCED, key(("app-a", None, "FILL")), query=b"", content_type=JSON,
                             content_encoding=None, body=b'{"messages":[{"text":"x"}]}')
    assert decision.changed and json.loads(decision.body) == {"messages": [{"text": "x", "applicationId": "app-a"}]}
    assert calls == []


def test_entry_without_ids_agrees() -> None:
    k = ApiKey(id="k", name="n", secret_hash=b"\0" * 32, prefix="p", allowed_ips=(), valid_from=PRIMARY.valid_from,
               valid_to=PRIMARY.valid_to, enabled=True, platform=(PlatformEntry("e", None, None, "FILL"),))
    for endpoint, query, body in ((SMS_LOGS, b"", b""), (SMS_ADVANCED, b"", b'{"messages":[{}]}'),
                                  (WHATSAPP_TEXT, b"", b""), (CREATE_CALL, b"", b"{}")):
        assert_agree(endpoint, k, query, JSON if body else None, None, body)


def test_entry_is_the_keys_own_when_an_equal_key_was_seen_before() -> None:
    """The per-link-set rules are cached by value; the entry reported must still be this key's object."""
    body = {"messages": [{"applicationId": "app-a", "entityId": "ent-2"}]}
    for _ in range(2):
        k = key(("app-a", "ent-1"), ("app-a", "ent-2", "FILL"))
        decision = scope.inspect(SMS_ADVANCED, k, query=b"", content_type=JSON, content_encoding=None,
                                 body=json.dumps(body).encode())
        assert decision.entry is k.platform[1]
        assert decision.places[0].entry is k.platform[1]
