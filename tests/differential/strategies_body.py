"""Hypothesis strategies for attacker requests, classes 5-6: multipart bodies that parsers split differently,
and FILL/FORCE keys with ids missing, present or out of scope at declared places."""

from __future__ import annotations

from hypothesis import strategies as st

from .attacks import CRLF, Multipart, Obj, Part, dumps, encode, form, ids, json_request, multipart, query
from .strategies import FORM, JSON_ENDPOINTS, KINDS, OUT_OF_SCOPE, QUERY, Case, name_variant

BOUNDARY = "keyscope-differential"


def smuggled(newline: str = CRLF, kind: str = "applicationId", boundary: str = BOUNDARY, padding: str = "") -> str:
    """A delimiter and a whole part naming an out-of-scope id, written with `newline`."""
    return (f"{newline}--{boundary}{padding}{newline}Content-Disposition: form-data; name=\"{kind}\""
            f"{newline}{newline}{OUT_OF_SCOPE[kind]}")


# Where the smuggled part hides: in a value (behind a delimiter only a lenient parser accepts), in the preamble
# or the epilogue, or behind a boundary that only some parsers take from the Content-Type.
HIDING = ["lf", "cr", "lf-crlf", "crlf-lf", "padding", "suffix", "case", "preamble", "preamble-suffix",
          "epilogue", "no-close", "second-boundary", "quoted-boundary", "padded-all"]


@st.composite
def hidden_part(draw: st.DrawFn) -> Multipart:
    kind = draw(st.sampled_from(KINDS))
    legit = [Part("from", "a@example.com"), *(Part(n, v) for n, v in ids())]
    style = draw(st.sampled_from(HIDING))
    carrier = "hello"
    body = {"preamble": "", "epilogue": "", "close": True, "content_type": None, "padding": ""}
    if style in ("lf", "cr"):
        carrier += smuggled("\n" if style == "lf" else "\r", kind)
    elif style == "lf-crlf":
        carrier += "\n--" + BOUNDARY + smuggled(kind=kind).split(BOUNDARY, 1)[1]
    elif style == "crlf-lf":
        carrier += smuggled(kind=kind).replace(BOUNDARY + CRLF, BOUNDARY + "\n", 1)
    elif style == "padding":
        carrier += smuggled(kind=kind, padding=draw(st.sampled_from([" ", "\t", " \t ", "  "])))
    elif style == "suffix":
        carrier += smuggled(kind=kind, boundary=BOUNDARY + draw(st.sampled_from(["x", "-", "--x", "\x00"])))
    elif style == "case":
        carrier += smuggled(kind=kind, boundary=BOUNDARY.upper())
    elif style in ("preamble", "preamble-suffix"):
        fake = smuggled("\n" if style == "preamble" else CRLF, kind,
                        boundary=BOUNDARY if style == "preamble" else BOUNDARY + "x")
        body["preamble"] = fake.lstrip("\r\n") + CRLF
    elif style == "epilogue":
        body["epilogue"] = smuggled(kind=kind).lstrip(CRLF) + f"{CRLF}--{BOUNDARY}--{CRLF}"
    elif style == "no-close":
        body["close"] = False
        carrier += smuggled(kind=kind)
    elif style == "second-boundary":  # a whole second multipart inside a value, for readers taking another boundary
        other = "other-boundary"
        carrier = f"{smuggled(kind=kind, boundary=other)}{CRLF}--{other}--{CRLF}"
        body["content_type"] = draw(st.sampled_from([
            f"multipart/form-data; boundary={BOUNDARY}; boundary={other}",
            f"multipart/form-data; boundary={other}; boundary={BOUNDARY}",
            f"multipart/form-data; boundary={BOUNDARY}; Boundary={other}",
            f"multipart/form-data; boundary*={other}; boundary={BOUNDARY}",
        ]))
    elif style == "quoted-boundary":
        body["content_type"] = draw(st.sampled_from([
            f'multipart/form-data; boundary="{BOUNDARY}"', f"multipart/form-data; boundary = {BOUNDARY}",
            f"multipart/form-data; boundary={BOUNDARY} ", f"Multipart/Form-Data; BOUNDARY={BOUNDARY}",
            f"multipart/form-data; charset=utf-8; boundary={BOUNDARY}",
        ]))
        carrier += smuggled("\n", kind)
    elif style == "padded-all":  # every delimiter padded (valid), one more part smuggled behind an LF
        body["padding"] = draw(st.sampled_from([" ", "\t", " \t"]))
        carrier += smuggled("\n", kind, padding=body["padding"])
    parts = [*legit, Part("text", carrier)]
    if draw(st.booleans()):
        parts = [parts[-1], *parts[:-1]]
    return Multipart(tuple(parts), **body)


@st.composite
def odd_disposition(draw: st.DrawFn) -> Multipart:
    """An id-named part that is a file to some parsers and a field to others, or named through `name*=`."""
    kind = draw(st.sampled_from(KINDS))
    bad = OUT_OF_SCOPE[kind]
    disposition = draw(st.sampled_from([
        f'form-data; name="{kind}"; filename="id.txt"', f'form-data; name="{kind}"; filename=""',
        f"form-data; name=\"{kind}\"; filename*=UTF-8''id.txt", f'form-data; name="{kind}"; filename',
        f'form-data; filename="id.txt"; name="{kind}"', f'form-data; name="{kind}"; FILENAME="id.txt"',
        f"form-data; name*=UTF-8''{kind}", f"form-data; name=\"other\"; name*=UTF-8''{kind}",
        f"form-data; name=\"{kind}\"; name*=UTF-8''other", f'form-data; name="other"; name="{kind}"',
        f'form-data; name="{kind}"; name="other"', f"form-data; name={kind}", f'form-data; NAME="{kind}"',
        f'form-data;name="x";;name="{kind}"', f'attachment; name="{kind}"', f'form-data; name="{kind}\\"x"',
        f"form-data; name='{kind}'", f'form-data; name="{kind}"; filename="a"; filename*=UTF-8\'\'b',
    ]))
    headers = draw(st.sampled_from([(), ("Content-Type: text/plain",), ("Content-Type: application/octet-stream",)]))
    odd = Part(kind, bad, disposition=disposition, headers=headers)
    legit = [Part(n, v) for n, v in ids()] if draw(st.booleans()) else []
    parts = [odd, *legit] if draw(st.booleans()) else [*legit, odd]
    return Multipart((Part("from", "a@example.com"), *parts))


@st.composite
def many_parts(draw: st.DrawFn) -> Multipart:
    count = draw(st.one_of(st.sampled_from([20, 99, 100, 101, 999, 1000, 1001]), st.integers(0, 1100)))
    fillers = tuple(Part(f"f{i}", "v") for i in range(count))
    late = draw(st.sampled_from([(), (Part("applicationId", "app-b"),)]))
    return Multipart((*(Part(n, v) for n, v in ids()), *fillers, *late))


@st.composite
def multipart_bodies(draw: st.DrawFn) -> Case:
    body = draw(st.one_of(hidden_part(), odd_disposition(), many_parts()))
    has_ids = any(part.name in KINDS and part.disposition is None for part in body.parts)
    key = draw(st.sampled_from(["pair", "force"] if has_ids else ["app_fill", "pair_fill", "force"]))
    return Case(multipart(FORM.path, body), key, FORM)


# 6. FILL and FORCE -------------------------------------------------------------------------------------------
VALUE_STATES = ["missing", "in", "in", "out", "null", "empty", "number", "variant"]
JSON_TYPES = ["application/json", "application/json", "application/json; charset=utf-8",
              "application/json;charset=UTF-8",
              "text/json", "application/vnd.api+json", "Application/JSON", "application/json; charset=\"utf-8\""]


@st.composite
def id_members(draw: st.DrawFn) -> list[tuple[str, object]]:
    members = []
    for kind in KINDS:
        state = draw(st.sampled_from(VALUE_STATES))
        value = {"in": "app-a" if kind == "applicationId" else "ent-a", "out": OUT_OF_SCOPE[kind], "null": None,
                 "empty": "", "number": 7, "variant": OUT_OF_SCOPE[kind]}.get(state)
        if state == "variant":
            members.append((draw(name_variant(kind)), value))
        elif state != "missing":
            members.append((kind, value))
    return members


@st.composite
def fill_document(draw: st.DrawFn, steps: tuple[tuple[str, bool], ...]) -> Obj:
    """A body reaching a declared location, with 1-3 elements for each array and ids drawn per place."""
    if not steps:
        return Obj(("text", "hi"), *draw(id_members()))
    (name, each), rest = steps[0], steps[1:]
    if each:
        value = draw(st.lists(fill_document(rest), min_size=1, max_size=3))
    else:
        value = draw(fill_document(rest))
    return Obj((name, value))


@st.composite
def fill_force(draw: st.DrawFn) -> Case:
    key = draw(st.sampled_from(["app_fill", "pair_fill", "force"]))
    where = draw(st.sampled_from(["query", "urlencoded", "multipart", "json", "json", "json"]))
    chunked = draw(st.booleans()) and where != "query"
    if where == "json":
        target = draw(st.sampled_from(JSON_ENDPOINTS))
        # metrics declares two places: ids in the filterBy, or in each of its platforms[]
        doc = draw(fill_document(draw(st.sampled_from([loc.steps for loc in target.locations if loc.kind == "json"]))))
        return Case(json_request(target.path, doc, content_type=draw(st.sampled_from(JSON_TYPES)), chunked=chunked),
                    key, target)
    members = draw(id_members())
    pieces = [f"{encode(n)}={encode(v if isinstance(v, str) else dumps(v))}" for n, v in members]
    if where == "query":
        return Case(query(QUERY.path, ["limit=10", *pieces]), key, QUERY)
    if where == "urlencoded":
        return Case(form(FORM.path, ["from=a%40example.com", *pieces], chunked=chunked), key, FORM)
    parts = tuple(Part(n, v if isinstance(v, str) else dumps(v)) for n, v in members)
    return Case(multipart(FORM.path, Multipart((Part("from", "a@example.com"), *parts)), chunked=chunked), key, FORM)
