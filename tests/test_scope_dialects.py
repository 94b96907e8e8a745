"""Step 4 against the ways backends read the same bytes differently: each class refused, and its neighbours.

Each test names the stack that misreads the request it refuses (issue "Backend-proof inspection"); the
differential suite (tests/differential/) sends the same classes to the real parsers.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyscope import scope
from keyscope.allowlist import table as endpoints
from keyscope.core.errors import Refusal
from keyscope.core.limits import Limits
from keyscope.core.models import ApiKey, PlatformEntry
from keyscope.scope import names

ENDPOINTS = {(e.method, e.path): e for e in endpoints.load()}
SMS_LOGS = ENDPOINTS[("GET", "/sms/1/logs")]  # query
SMS_ADVANCED = ENDPOINTS[("POST", "/sms/2/text/advanced")]  # messages[]
CREATE_CALL = ENDPOINTS[("POST", "/calls/1/calls")]  # platform
METRICS = ENDPOINTS[("POST", "/metrics/1/query-aggregate-data")]  # request.filterBy
EMAIL_SEND = ENDPOINTS[("POST", "/email/3/send")]  # form
CCAAS = ENDPOINTS[("POST", "/ccaas/1/conversations")]  # none
JSON = b"application/json"
FORM = b"application/x-www-form-urlencoded"


def key(application: str | None = "app-a", entity: str | None = None, action: str | None = None) -> ApiKey:
    platform = () if application is None and entity is None else (PlatformEntry("e0", application, entity, action),)
    return ApiKey(id="k", name="t", secret_hash=b"\0" * 32, prefix="abcd1234", allowed_ips=(), valid_from=None,
                  valid_to=None, enabled=True, platform=platform)


LINKED, PRIMARY, FILL = key(), key(None), key(action="FILL")


def run(endpoint: Any, k: ApiKey, body: Any = b"", *, query: bytes = b"", content_type: bytes | None = None,
        limits: Limits = Limits()) -> scope.Decision:
    if not isinstance(body, bytes):
        body, content_type = json.dumps(body).encode(), JSON
    return scope.inspect(endpoint, k, query=query, content_type=content_type, content_encoding=None, body=body,
                         limits=limits)


def refused(*args: Any, **kwargs: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        run(*args, **kwargs)
    assert caught.value.step == "scope" and caught.value.detail
    return caught.value


# --- names: one answer for every dialect ------------------------------------------------------------

def _ascii_folds() -> dict[str, str]:
    """Every non-ASCII character whose simple upper- or lower-case mapping is one ASCII letter (what Java's
    equalsIgnoreCase and .NET's OrdinalIgnoreCase compare by), from the Unicode database. Python applies the
    full mappings, which differ from the simple ones for one such character: U+0130 lowers to "i" and a
    combining dot in full, to "i" alone in simple (SpecialCasing.txt)."""
    found = {"\u0130": "i"}
    for code in range(0x80, sys.maxunicode + 1):
        char = chr(code)
        for mapped in (char.upper(), char.lower()):
            if len(mapped) == 1 and mapped.isascii() and mapped.isalpha():
                found[char] = mapped.lower()
    return found


def test_every_case_fold_onto_ascii_is_folded() -> None:
    folds = _ascii_folds()
    assert set(folds) == {"\u0130", "\u0131", "\u017f", "\u212a"}
    for char, letter in folds.items():
        assert names.fold(char) == letter, (hex(ord(char)), letter)


VARIANTS = {
    "i": ["i", "I", "\u0130", "\u0131", "\uff49"], "s": ["s", "S", "\u017f"], "k": ["k", "K", "\u212a"],
}


@st.composite
def id_spellings(draw: st.DrawFn) -> tuple[str, str]:
    """An id name spelt as some backend still reads it: letters in any case variant, separators between
    words, noise around it, a bracket form around it."""
    kind = draw(st.sampled_from(names.KINDS))
    head, tail = ("application", "Id") if kind == "applicationId" else ("entity", "Id")
    letters = []
    for char in head + draw(st.sampled_from(["", "_", "-", ".", " "])) + tail:
        options = VARIANTS.get(char.lower(), [char.lower(), char.upper()])
        letters.append(draw(st.sampled_from(options)))
    name = "".join(letters)
    name = draw(st.sampled_from(["", " ", "\x00", "\t"])) + name + draw(st.sampled_from(["", " ", "\x00"]))
    form = draw(st.sampled_from(["{}", "[{}]", "]{}", "{}]", "filter[{}]", "a[b][{}]"]))
    return kind, form.format(name)


@given(id_spellings())
@settings(max_examples=300)
def test_every_spelling_a_backend_binds_is_an_id_name(spelt: tuple[str, str]) -> None:
    kind, name = spelt
    assert names.classify(name) == kind


@pytest.mark.parametrize("name", ["applicationId[]", "applicationId[0]", "applicationId[x]", "APPLICATION_ID[]",
                                  "filter[applicationId][x]", "[entityId][]"])
def test_an_id_made_a_list_or_object_is_refused(name: str) -> None:
    assert names.classify(name) == names.ARRAY
    r = refused(SMS_LOGS, LINKED, query=name.encode() + b"=app-a&applicationId=app-a")
    assert (r.status, r.reason) == (400, "id_array")


@pytest.mark.parametrize("name", ["application", "applicationIds", "xapplicationId", "app_id", "id", "entity",
                                  "method", "_methods", "proto", "limit", "to"])
def test_other_names_are_not_special(name: str) -> None:
    assert names.classify(name) is None


@pytest.mark.parametrize("name", [b"application_id", b"APPLICATION-ID", b"application.id", b"application+id",
                                  b"%5BapplicationId%5D", b"]applicationId", b"applicationId]", b"filter[applicationId]",
                                  b"appl%C4%B1cation_id", b"%EF%BD%81pplicationId"])
def test_a_folded_id_name_elsewhere_must_be_in_scope(name: bytes) -> None:
    """snake_case/kebab-case binders, PHP's `.`/space to `_`, Rack's brackets: the backend reads an id."""
    r = refused(CCAAS, LINKED, query=name + b"=app-b")
    assert (r.status, r.reason) == (403, "id_out_of_scope")
    assert run(CCAAS, LINKED, query=name + b"=app-a").application_ids == {"app-a"}


@pytest.mark.parametrize("name", [b"application_id", b"ApplicationId", b"filter[applicationId]"])
def test_a_folded_id_name_at_a_declared_place_must_be_spelt_exactly(name: bytes) -> None:
    r = refused(SMS_LOGS, LINKED, query=name + b"=app-a")
    assert (r.status, r.reason) == (400, "id_name_case")


@pytest.mark.parametrize("query", [b"applicationId=app-a&application_id=app-b", b"applicationId=app-a&[applicationId]=app-b",
                                   b"applicationId=app-a&filter[applicationId]=app-a", b"entity-id=e&ENTITYID=e"])
def test_two_names_of_one_id_in_a_query_are_ambiguous(query: bytes) -> None:
    """Rack and PHP keep the last, Go and Java the first: one reading is impossible."""
    for k in (LINKED, PRIMARY):
        assert refused(SMS_LOGS, k, query=query).reason == "duplicate_id"


# --- JSON: members that collide under folding -------------------------------------------------------

@pytest.mark.parametrize(("endpoint", "body"), [
    (CREATE_CALL, {"platform": {"applicationId": "app-a"}, "Platform": None}),
    (CREATE_CALL, {"Platform": None, "platform": {"applicationId": "app-a"}}),
    (METRICS, {"request": {"filterBy": {"applicationId": "app-a"}}, "Request": {"filterBy": {}}}),
    (METRICS, {"request": {"filterBy": {"applicationId": "app-a"}, "filter_by": {}}}),
    (SMS_ADVANCED, {"messages": [{"applicationId": "app-a", "text": "x", "TEXT": "y"}]}),
    (SMS_ADVANCED, {"messages": [{"applicationId": "app-a"}], "meſſages": []}),
    (CCAAS, {"deep": [{"a": {"b_c": 1, "bC": 2}}]}),
])
def test_json_members_that_fold_alike_are_ambiguous(endpoint: Any, body: Any) -> None:
    """Jackson (ACCEPT_CASE_INSENSITIVE_PROPERTIES), System.Text.Json and Go bind both to one field."""
    for k in (LINKED, PRIMARY):
        assert refused(endpoint, k, body).reason == "name_collision"


def test_json_id_names_that_fold_alike_are_duplicate_ids() -> None:
    r = refused(CCAAS, PRIMARY, {"x": {"applicationId": "a", "application_id": "b"}})
    assert (r.reason, r.field) == ("duplicate_id", "application_id")


@given(st.sampled_from(["platform", "Platform", "PLATFORM", "plat_form", "pla-tform", "platform "]),
       st.sampled_from(["platform", "Platform", "PLATFORM", "plat_form", "pla-tform", "platform "]))
def test_any_two_spellings_of_one_member_collide(first: str, second: str) -> None:
    body = ('{"%s": {"applicationId": "app-a"}, "%s": null}' % (first, second)).encode()
    if first == second:
        assert refused(CREATE_CALL, LINKED, body, content_type=JSON).reason == "duplicate_key"
    else:
        assert refused(CREATE_CALL, LINKED, body, content_type=JSON).reason == "name_collision"


def test_distinct_members_pass() -> None:
    decision = run(CREATE_CALL, LINKED, {"platform": {"applicationId": "app-a"}, "from": "x", "to": "y"})
    assert decision.application_ids == {"app-a"} and not decision.changed


# --- method overrides and prototypes, wherever a name is read ---------------------------------------

MULTIPART_CT = b"multipart/form-data; boundary=XyZ"


def multipart(*fields: tuple[str, str], extra: str = "") -> bytes:
    body = "".join(f'--XyZ\r\nContent-Disposition: form-data; name="{n}"{extra}\r\n\r\n{v}\r\n' for n, v in fields)
    return (body + "--XyZ--\r\n").encode()


@pytest.mark.parametrize("name", ["_method", "_METHOD", "[_method]", "_method]", " _method", ".method", "_Method"])
@pytest.mark.parametrize("k", [LINKED, PRIMARY], ids=["linked", "primary"])
def test_method_overrides_are_refused_in_every_location(name: str, k: ApiKey) -> None:
    """Rack::MethodOverride and Symfony read the form, Laravel also the query and a JSON body."""
    encoded = name.replace(" ", "+").replace("[", "%5B").replace("]", "%5D").encode()
    cases = [
        dict(endpoint=SMS_LOGS, query=encoded + b"=DELETE&applicationId=app-a"),
        dict(endpoint=EMAIL_SEND, body=b"applicationId=app-a&" + encoded + b"=DELETE", content_type=FORM),
        dict(endpoint=EMAIL_SEND, body=multipart(("applicationId", "app-a"), (name, "DELETE")),
             content_type=MULTIPART_CT),
        dict(endpoint=CREATE_CALL, body={"platform": {"applicationId": "app-a"}, name: "DELETE"}),
        dict(endpoint=CREATE_CALL, body={"platform": {"applicationId": "app-a", name: "DELETE"}}),
    ]
    for case in cases:
        endpoint = case.pop("endpoint")
        r = refused(endpoint, k, **case)
        assert (r.status, r.reason) == (400, "method_override"), case


@pytest.mark.parametrize("name", ["__proto__", "x[__proto__][applicationId]", "__PROTO__"])
def test_prototype_names_are_refused(name: str) -> None:
    assert refused(CCAAS, LINKED, query=name.encode() + b"=x").reason == "prototype_name"
    assert refused(CREATE_CALL, LINKED, {"platform": {"applicationId": "app-a"}, name: {}}).reason == "prototype_name"


# --- parameter counts ---------------------------------------------------------------------------------

def test_parameters_past_the_limit_are_refused_not_truncated() -> None:
    """Node's qs/querystring and PHP keep the first 1,000 pairs and drop an id placed after them."""
    limits = Limits(params=100)
    filler = b"&".join(b"f%d=1" % i for i in range(99))
    assert run(SMS_LOGS, LINKED, query=filler + b"&applicationId=app-a", limits=limits).application_ids == {"app-a"}
    r = refused(SMS_LOGS, LINKED, query=filler + b"&x=1&applicationId=app-a", limits=limits)
    assert (r.status, r.reason) == (400, "too_many_params")
    assert refused(SMS_LOGS, LINKED, query=b"&" * 100 + b"applicationId=app-a", limits=limits).reason == "too_many_params"
    assert refused(SMS_LOGS, PRIMARY, query=b"&" * 100, limits=limits).reason == "too_many_params"


def test_query_and_form_count_together() -> None:
    limits = Limits(params=10)
    form_body = b"&".join(b"f%d=1" % i for i in range(5)) + b"&applicationId=app-a"
    assert run(EMAIL_SEND, LINKED, form_body, content_type=FORM, query=b"a=1&b=2&c=3&d=4", limits=limits)
    r = refused(EMAIL_SEND, LINKED, form_body, content_type=FORM, query=b"a=1&b=2&c=3&d=4&e=5", limits=limits)
    assert r.reason == "too_many_params"


def test_multipart_parts_past_the_limit_are_refused() -> None:
    fields = [("applicationId", "app-a")] + [(f"f{i}", "x") for i in range(4)]
    assert run(EMAIL_SEND, LINKED, multipart(*fields), content_type=MULTIPART_CT, limits=Limits(parts=5))
    r = refused(EMAIL_SEND, LINKED, multipart(*fields, ("g", "y")), content_type=MULTIPART_CT, limits=Limits(parts=5))
    assert (r.status, r.reason) == (400, "too_many_parts")


def test_json_members_past_the_limit_are_refused() -> None:
    body = {"platform": {"applicationId": "app-a"}, **{f"m{i}": i for i in range(8)}}
    assert run(CREATE_CALL, LINKED, body, limits=Limits(json_members=10))
    body["m8"] = 8
    assert refused(CREATE_CALL, LINKED, body, limits=Limits(json_members=10)).reason == "too_many_members"


def test_json_depth_past_the_limit_is_refused() -> None:
    deep: Any = {}
    for _ in range(9):
        deep = {"a": deep}
    assert run(CCAAS, LINKED, deep, limits=Limits(json_depth=10))
    assert refused(CCAAS, LINKED, {"a": deep}, limits=Limits(json_depth=10)).reason == "too_deep"


# --- multipart: delimiters and dispositions other parsers read differently ---------------------------

@pytest.mark.parametrize("smuggled", [
    b"\n--XyZ\r\nContent-Disposition: form-data; name=\"applicationId\"\r\n\r\napp-b",  # Werkzeug, PHP: LF
    b"\r--XyZ\r\nContent-Disposition: form-data; name=\"applicationId\"\r\n\r\napp-b",  # Werkzeug: CR
    b"x--XyZ",
    b"\n--XyZ--",
])
@pytest.mark.parametrize("k", [LINKED, PRIMARY], ids=["linked", "primary"])
def test_a_boundary_other_than_at_a_crlf_delimiter_is_refused(smuggled: bytes, k: ApiKey) -> None:
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"applicationId\"\r\n\r\napp-a\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nhello" + smuggled + b"\r\n--XyZ--\r\n")
    r = refused(EMAIL_SEND, k, body, content_type=MULTIPART_CT)
    assert (r.status, r.reason) == (400, "bad_multipart")


@pytest.mark.parametrize("name", ["applicationId", "application_id", "[entityId]"])
def test_an_id_part_with_a_filename_is_refused(name: str) -> None:
    """Servlets, multer and busboy make it a file: the backend sees no id where keyscope saw one."""
    body = multipart((name, "app-a"), extra='; filename="x.txt"')
    r = refused(EMAIL_SEND, LINKED, body, content_type=MULTIPART_CT)
    assert (r.status, r.reason) == (400, "id_file")


def test_name_star_is_refused() -> None:
    body = multipart(("x", "app-b"), extra="; name*=UTF-8''applicationId")
    assert refused(EMAIL_SEND, PRIMARY, body, content_type=MULTIPART_CT).reason == "bad_multipart"


def test_files_with_other_names_pass() -> None:
    body = (b'--XyZ\r\nContent-Disposition: form-data; name="applicationId"\r\n\r\napp-a\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="attachment"; filename="a.txt"\r\n'
            b"Content-Type: text/plain\r\n\r\nline\n--not-the-boundary\r\n--XyZ--\r\n")
    assert run(EMAIL_SEND, LINKED, body, content_type=MULTIPART_CT).application_ids == {"app-a"}


def test_fill_into_a_multipart_body_keeps_it_readable() -> None:
    decision = run(EMAIL_SEND, FILL, multipart(("text", "hi")), content_type=MULTIPART_CT)
    assert decision.changed
    again = run(EMAIL_SEND, LINKED, decision.body, content_type=MULTIPART_CT)
    assert again.application_ids == {"app-a"} and not again.changed


def test_unicode_database_sanity() -> None:
    assert unicodedata.normalize("NFKC", "\uff41") == "a"


@pytest.mark.parametrize(("endpoint", "body"), [
    (CREATE_CALL, {"Platform": {"applicationId": "app-b"}}),
    (CREATE_CALL, {"PLATFORM": None}),
    (METRICS, {"Request": {"filterBy": {"applicationId": "app-a"}}}),
    (METRICS, {"request": {"filter_by": {"applicationId": "app-a"}}}),
    (SMS_ADVANCED, {"meſſages": [{"applicationId": "app-b"}]}),
])
@pytest.mark.parametrize("k", [LINKED, FILL, key(action="FORCE")], ids=["linked", "fill", "force"])
def test_a_declared_location_spelt_otherwise_is_refused(endpoint: Any, body: Any, k: ApiKey) -> None:
    """Jackson and Go bind `Platform` to the declared `platform`; FILL must not add a second one beside it."""
    r = refused(endpoint, k, body)
    assert (r.status, r.reason) == (400, "id_name_case")


@pytest.mark.parametrize("other", ["[applicationId]", "applicationId]", "application_id"])
def test_two_names_of_one_id_in_a_json_object_are_ambiguous(other: str) -> None:
    body = {"messages": [{other: "app-b", "applicationId": "app-a"}]}
    assert refused(SMS_ADVANCED, LINKED, body).reason == "duplicate_id"


@pytest.mark.parametrize("content_type", [
    b"multipart/form-data; boundary*=other; boundary=XyZ",  # Django and PHP take boundary*
    b"multipart/form-data; boundary='XyZ'",  # PHP unquotes it
])
def test_content_type_parameters_parsers_read_differently_are_refused(content_type: bytes) -> None:
    r = refused(EMAIL_SEND, LINKED, multipart(("applicationId", "app-a")), content_type=content_type)
    assert (r.status, r.reason) == (415, "uninspectable_body")


def test_a_single_quoted_part_name_is_refused() -> None:
    """PHP reads name='applicationId' as applicationId; every other parser keeps the quotes."""
    body = b"--XyZ\r\nContent-Disposition: form-data; name='applicationId'\r\n\r\napp-b\r\n--XyZ--\r\n"
    assert refused(EMAIL_SEND, PRIMARY, body, content_type=MULTIPART_CT).reason == "bad_multipart"


def test_the_json_scanner_jsonbody_calls_is_there() -> None:
    """jsonbody decodes with JSONDecoder.scan_once (not documented, stable since Python 2.6): a Python
    release without it must fail here, by name, rather than slow every request down or break it."""
    decoder = json.JSONDecoder(object_pairs_hook=dict)
    assert callable(getattr(decoder, "scan_once", None)), "json.JSONDecoder.scan_once is gone"
    assert decoder.scan_once('{"a": [1]} ', 0) == ({"a": [1]}, 10)


@pytest.mark.parametrize("name", ["entity[id", "application[Id", "applicationI[d", "entity]id", "entity[]id",
                                  "entity][id", "a[pplicationId"])
def test_an_id_name_split_by_brackets_is_an_id_name(name: str) -> None:
    """PHP reads an unclosed `[` as `_` (`entity[id` is entity_id); snake_case binders read that as the id."""
    assert names.classify(name) in names.KINDS
    pair = key("app-a", "ent-a")
    assert refused(CCAAS, pair, query=name.replace("[", "%5B").replace("]", "%5D").encode() + b"=other").status == 403


@pytest.mark.parametrize("charset", [b"utf-7", b'"utf-7"', b"utf-16", b"iso-8859-1"])
def test_a_multipart_body_in_another_charset_is_not_read(charset: bytes) -> None:
    """Django and Starlette decode part names by the charset parameter: UTF-7 spells applicationId anew."""
    content_type = b"multipart/form-data; boundary=XyZ; charset=" + charset
    r = refused(EMAIL_SEND, LINKED, multipart(("applicationId", "app-a")), content_type=content_type)
    assert (r.status, r.reason) == (415, "uninspectable_body")


def test_an_integer_beyond_a_double_is_out_of_range() -> None:
    """PHP's json_decode reads it as INF, JavaScript as Infinity."""
    body = b'{"platform":{"applicationId":"app-a"},"n":' + b"9" * 400 + b"}"
    assert refused(CREATE_CALL, LINKED, body, content_type=JSON).reason == "number_out_of_range"
    assert run(CREATE_CALL, LINKED, b'{"platform":{"applicationId":"app-a"},"n":' + b"9" * 300 + b"}",
               content_type=JSON)
