"""The matcher's rules, one test each, the real allowlist, and a property test against a reference matcher."""

from __future__ import annotations

import csv
import random
import re
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyscope.allowlist.matcher import NOT_FOUND, Match, Matcher, MethodNotAllowed, compile
from keyscope.allowlist.table import Endpoint, load

SEED = Path(__file__).parent / "data" / "seed_endpoints.tsv"


def endpoint(method: str, path: str) -> Endpoint:
    return Endpoint(method, path, f"{method} {path}", "test", (), "legacy")


def table(*entries: str) -> Matcher:
    """table("GET /a/{x}", "POST /a/b") compiles those templates."""
    return compile([endpoint(*entry.split(" ", 1)) for entry in entries])


def matched(result: object) -> tuple[str, str]:
    assert isinstance(result, Match), result
    return result.endpoint.method, result.endpoint.path


# -- answers and their convention ------------------------------------------------------------------------------


def test_static_hit_answers_the_entry_for_bytes_and_str() -> None:
    m = table("GET /sms/3/logs", "POST /sms/3/messages")
    for raw in (b"/sms/3/logs", "/sms/3/logs"):
        result = m.match("GET", raw)
        assert matched(result) == ("GET", "/sms/3/logs")
        assert result.params == {} and result.raw_params == {}


def test_parameter_hit_gives_decoded_and_raw_values() -> None:
    m = table("DELETE /ccaas/1/conversations/{conversationId}/tags/{tagName}")
    result = m.match("DELETE", b"/ccaas/1/conversations/c-42/tags/caf%C3%A9%20bar")
    assert matched(result) == ("DELETE", "/ccaas/1/conversations/{conversationId}/tags/{tagName}")
    assert result.params == {"conversationId": "c-42", "tagName": "café bar"}
    assert result.raw_params == {"conversationId": "c-42", "tagName": "caf%C3%A9%20bar"}


def test_only_a_match_is_truthy_and_the_three_answers_are_told_apart() -> None:
    m = table("GET /a/{x}")
    hit, wrong_method, missing = m.match("GET", b"/a/1"), m.match("POST", b"/a/1"), m.match("GET", b"/b/1")
    assert hit and isinstance(hit, Match)
    assert not wrong_method and isinstance(wrong_method, MethodNotAllowed) and wrong_method is not NOT_FOUND
    assert not missing and missing is NOT_FOUND


# -- the rules --------------------------------------------------------------------------------------------------


def test_encoded_slash_and_backslash_are_never_separators() -> None:
    m = table("GET /a/{x}/{y}", "GET /a/b/c", "GET /a/{x}")
    for raw in (b"/a/b%2Fc", b"/a/b%2fc", b"/a/b%5Cc", b"/a/b%5cc"):
        assert m.match("GET", raw) is NOT_FOUND, raw
    assert m.match("GET", b"/a/b\\c") is NOT_FOUND


def test_a_parameter_is_exactly_one_non_empty_segment() -> None:
    m = table("GET /a/{x}", "GET /b/{x}/c")
    assert m.match("GET", b"/a/") is NOT_FOUND
    assert m.match("GET", b"/a/1/2") is NOT_FOUND
    assert m.match("GET", b"/b//c") is NOT_FOUND
    assert matched(m.match("GET", b"/b/1/c")) == ("GET", "/b/{x}/c")


def test_static_wins_at_the_first_differing_position_with_backtracking() -> None:
    m = table("GET /a/{x}/c", "GET /a/b/{y}")
    assert matched(m.match("GET", b"/a/b/c")) == ("GET", "/a/b/{y}")
    assert matched(m.match("GET", b"/a/b/d")) == ("GET", "/a/b/{y}")
    assert matched(m.match("GET", b"/a/z/c")) == ("GET", "/a/{x}/c")
    deeper = table("GET /a/b/{y}/e", "GET /a/{x}/c/d")
    assert matched(deeper.match("GET", b"/a/b/c/d")) == ("GET", "/a/{x}/c/d")
    assert matched(deeper.match("GET", b"/a/b/c/e")) == ("GET", "/a/b/{y}/e")


def test_a_fully_static_template_beats_parameterised_ones() -> None:
    m = table("GET /a/{x}", "GET /a/b", "POST /{p}/b")
    assert matched(m.match("GET", b"/a/b")) == ("GET", "/a/b")
    assert m.match("POST", b"/a/b").allowed == ("GET",)


def test_wide_nodes_dispatch_through_tables_and_still_backtrack() -> None:
    entries = [f"GET /r/k{i}/{{x}}/z" for i in range(10)] + [f"POST /r/k{i}/{{x}}/w{i}" for i in range(10)]
    entries += [f"PUT /s/{{y}}/t{i}" for i in range(10)] + ["GET /r/{y}/q/z", "GET /{p}/k3/v/z"]
    m = table(*entries)
    assert matched(m.match("GET", b"/r/k3/v/z")) == ("GET", "/r/k3/{x}/z")
    assert matched(m.match("POST", b"/r/k7/v/w7")) == ("POST", "/r/k7/{x}/w7")
    assert matched(m.match("GET", b"/r/k3/q/z")) == ("GET", "/r/k3/{x}/z")
    assert matched(m.match("GET", b"/r/k99/q/z")) == ("GET", "/r/{y}/q/z")
    assert matched(m.match("GET", b"/x/k3/v/z")) == ("GET", "/{p}/k3/v/z")
    assert matched(m.match("PUT", b"/s/1/t9")) == ("PUT", "/s/{y}/t9")
    assert m.match("GET", b"/s/1/t9").allowed == ("PUT",)
    assert m.match("GET", b"/r/k3/v/w3").allowed == ("POST",)
    assert m.match("GET", b"/s/1/t10") is NOT_FOUND


def test_matching_is_case_sensitive() -> None:
    m = table("GET /sms/3/logs", "GET /people/3/segments/{id}")
    for raw in (b"/SMS/3/logs", b"/sms/3/Logs", b"/People/3/segments/1"):
        assert m.match("GET", raw) is NOT_FOUND, raw
    assert m.match("GET", b"/people/3/segments/AbC").params == {"id": "AbC"}


@pytest.mark.parametrize(
    "raw",
    [b"/sms/3/logs/", b"//sms/3/logs", b"/sms//3/logs", b"/sms/3/logs//", b"/sms/3/./logs", b"/sms/3/logs/.",
     b"/sms/3/x/../logs", b"/sms/3/%2e/logs", b"/sms/3/%2E%2e/../logs", b"sms/3/logs", b"/sms/3/logs?x=1",
     b"/ccaas/1/tags/", b"/ccaas/1/tags//", b"//ccaas/1/tags/t", b"/ccaas/1/tags/t/"],
)
def test_trailing_slash_empty_and_dot_segments_never_match_static(raw: bytes) -> None:
    m = table("GET /sms/3/logs", "GET /ccaas/1/tags/{tagName}", "GET /ccaas/1/tags")
    assert m.match("GET", raw) is NOT_FOUND


@pytest.mark.parametrize("value", [b".", b"..", b"%2e", b"%2E", b"%2e%2e", b"%2E%2e", b".%2e", b"%2e.", b".%2E"])
def test_dot_segments_and_their_encodings_are_never_parameter_values(value: bytes) -> None:
    m = table("GET /a/{x}/c", "GET /a/{x}")
    assert m.match("GET", b"/a/" + value + b"/c") is NOT_FOUND
    assert m.match("GET", b"/a/" + value) is NOT_FOUND
    assert m.match("GET", b"/a/" + value + b"x").params == {"x": urllib.parse.unquote(value.decode()) + "x"}


@pytest.mark.parametrize(
    "value",
    [b"a\n", b"a\r", b"a\t", b"a\x00", b"a b", b"\x7f", b"%0a", b"%0D", b"%00", b"%7F", b"a;b", b"..;x", b"%3B",
     b"%25", b"%252e%252e", b"%3F", b"%23", b"a?b", b"a#b", b"a%", b"a%2", b"a%zz", b"a\"b", b"a<b"],
)
def test_control_and_path_significant_characters_never_match(value: bytes) -> None:
    m = table("GET /a/{x}", "GET /a/b")
    assert m.match("GET", b"/a/" + value) is NOT_FOUND
    assert m.match("GET", b"/a/b" + value) is NOT_FOUND


def test_a_trailing_newline_never_matches() -> None:
    m = table("GET /sms/3/logs", "GET /a/{x}")
    for raw in (b"/sms/3/logs\n", b"/sms/3/logs\r\n", "/sms/3/logs\n", b"/a/1\n", "/a/1\n"):
        assert m.match("GET", raw) is NOT_FOUND, raw


@pytest.mark.parametrize(
    "raw",
    [b"/a/\xff", b"/a/\xc3\xa9", b"/a/%ff", b"/a/%C3", b"/a/%ED%A0%80", b"/\xff/b", "/a/\udc80", "/a/é", b"\xff"],
)
def test_bytes_that_are_not_ascii_or_utf8_never_match_and_never_raise(raw: bytes | str) -> None:
    m = table("GET /a/{x}", "GET /a/b", "GET /{y}/b")
    assert m.match("GET", raw) is NOT_FOUND


def test_a_method_matches_only_when_listed() -> None:
    m = table("GET /sms/3/logs", "POST /sms/3/logs", "GET /a/{x}", "DELETE /a/{x}")
    assert m.match("HEAD", b"/sms/3/logs").allowed == ("GET", "POST")
    assert m.match("get", b"/sms/3/logs").allowed == ("GET", "POST")
    assert m.match("HEAD", b"/a/1").allowed == ("DELETE", "GET")
    assert matched(m.match("DELETE", b"/a/1")) == ("DELETE", "/a/{x}")


def test_same_shape_with_other_parameter_names_keeps_each_methods_names() -> None:
    m = table("GET /a/{id}", "PUT /a/{name}")
    assert m.match("GET", b"/a/1").params == {"id": "1"}
    assert m.match("PUT", b"/a/1").params == {"name": "1"}
    assert m.match("POST", b"/a/1").allowed == ("GET", "PUT")


@pytest.mark.parametrize(
    "entries",
    [["GET /a", "GET /a"], ["GET /a/{x}", "GET /a/{y}"], ["GET a/b"], ["GET /a//b"], ["GET /a/"], ["GET /a/./b"],
     ["GET /a/../b"], ["get /a"], ["GET /a b"], ["GET /a%2Fb"], ["GET /a/{x}/{x}"], ["GET /a/{x"], ["GET /a/x{y}"]],
)
def test_templates_that_could_never_match_or_clash_are_refused(entries: list[str]) -> None:
    with pytest.raises(ValueError):
        table(*entries)


def test_describe_shows_the_tables_and_the_generated_source() -> None:
    text = table("GET /sms/3/logs", "GET /a/{x}/c", "POST /a/b/{y}").describe()
    assert "/sms/3/logs  [GET]" in text
    assert "{param}" in text and "-> GET=/a/{x}/c" in text and "-> POST=/a/b/{y}" in text
    assert "def match(method, raw_path):" in text


# -- the real allowlist -----------------------------------------------------------------------------------------


def test_the_allowlist_holds_every_seed_row() -> None:
    with SEED.open(encoding="utf-8") as file:
        seed = {(row["method"], row["path"], row["function"]) for row in csv.DictReader(file, delimiter="\t")}
    loaded = {(e.method, e.path, ("Deprecated " if e.deprecated else "") + e.function) for e in load()}
    assert len(seed) == 128
    assert len(load()) == 128
    assert loaded == seed


def test_every_allowlisted_template_filled_in_matches_its_own_entry() -> None:
    endpoints = load()
    m = compile(endpoints)
    methods: dict[str, set[str]] = {}
    for e in endpoints:
        methods.setdefault(e.path, set()).add(e.method)
    samples = ["42", "3f2b8c1e-5d4a-4e2b-9c1a-1234567890ab", "caf%C3%A9", "a.b_c~d"]
    for e in endpoints:
        for sample in samples:
            raw = re.sub(r"\{[^}]+\}", sample, e.path)
            for given_path in (raw.encode(), raw):
                result = m.match(e.method, given_path)
                assert isinstance(result, Match) and result.endpoint is e, (e, raw)
                assert set(result.raw_params.values()) <= {sample}
                assert set(result.params.values()) <= {urllib.parse.unquote(sample)}
        other = next(x for x in ("PATCH", "DELETE", "PUT", "GET", "POST") if x not in methods[e.path])
        assert m.match(other, re.sub(r"\{[^}]+\}", "1", e.path).encode()).allowed == tuple(sorted(methods[e.path]))


# -- property: the compiled trie answers as a plain reference matcher does ------------------------------------------

PLAIN_VALUE = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,=:@]|%[0-9A-Fa-f]{2})+")
POOL = ["a", "b", "c", "ab", "A", "", ".", "..", "%2e", "%2E%2e", ".%2e", "x%2Fy", "%41", "%C3%A9", "%ff", "a\n",
        "é", "a;b", "%3B", "z%20z", "-", "1-2", "%0a", "%", "a%2"]


def reference(entries: list[tuple[str, str]], method: str, path: str) -> tuple:
    """Each template as an anchored regex, values checked on their own; the winner by static-first order."""
    found = []
    for m, template in entries:
        segments = template[1:].split("/")
        regex = "/" + "/".join("([^/]+)" if s.startswith("{") else re.escape(s) for s in segments)
        hit = re.fullmatch(regex, path)
        if hit is None:
            continue
        values = [reference_value(raw) for raw in hit.groups()]
        if None in values:
            continue
        names = [s[1:-1] for s in segments if s.startswith("{")]
        kinds = tuple(s.startswith("{") for s in segments)
        found.append((kinds, m, template, dict(zip(names, values)), dict(zip(names, hit.groups()))))
    if not found:
        return ("404",)
    best = min(kinds for kinds, *_ in found)
    winners = [f for f in found if f[0] == best]
    for _, m, template, params, raws in winners:
        if m == method:
            return ("match", m, template, params, raws)
    return ("405", tuple(sorted(m for _, m, *_ in winners)))


def reference_value(raw: str) -> str | None:
    if not PLAIN_VALUE.fullmatch(raw):
        return None
    try:
        value = urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if value in (".", "..") or any(c in "/\\;%?#" or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return None
    return value


def answer(result: object) -> tuple:
    if isinstance(result, Match):
        e = result.endpoint
        return ("match", e.method, e.path, result.params, result.raw_params)
    if isinstance(result, MethodNotAllowed):
        return ("405", result.allowed)
    assert result is NOT_FOUND
    return ("404",)


def shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def tables(alphabet: list[str], most: int) -> st.SearchStrategy[list[tuple[str, str]]]:
    """Random templates over a small alphabet (so that they overlap), one entry per (method, shape)."""
    template = st.lists(st.sampled_from(alphabet + ["{p}"]), min_size=1, max_size=4).map(
        lambda segs: "/" + "/".join(f"{{p{i}}}" if s == "{p}" else s for i, s in enumerate(segs))
    )
    entries = st.lists(st.tuples(st.sampled_from(["GET", "POST", "PUT"]), template), min_size=1, max_size=most)
    return entries.map(lambda found: list({(m, shape(t)): (m, t) for m, t in found}.values()))


NARROW = tables(["a", "b", "c"], 12)
WIDE = tables(list("abcdefghij"), 40)  # nodes with more than six static children: the dict-dispatch code


def request(rng: random.Random, entries: list[tuple[str, str]]) -> tuple[str, bytes | str]:
    """A request near the table: a template filled in (often mutated), or segments drawn from the pool."""
    if rng.random() < 0.6:
        _, t = rng.choice(entries)
        segments = [rng.choice(POOL + ["a", "b"]) if s.startswith("{") else s for s in t[1:].split("/")]
        mutation = rng.choice(["none", "none", "slash", "extra", "drop", "change", "empty"])
        if mutation == "slash":
            segments.append("")
        elif mutation == "extra":
            segments.append(rng.choice(POOL))
        elif mutation == "drop" and len(segments) > 1:
            segments.pop()
        elif mutation == "change":
            segments[rng.randrange(len(segments))] = rng.choice(POOL)
        elif mutation == "empty":
            segments.insert(rng.randint(0, len(segments)), "")
    else:
        segments = [rng.choice(POOL) for _ in range(rng.randint(0, 5))]
    path = "/" + "/".join(segments)
    method = rng.choice(["GET", "POST", "PUT", "HEAD"])
    return method, (path.encode("utf-8") if rng.random() < 0.5 else path)


def agree(entries: list[tuple[str, str]], seed: int) -> None:
    m = compile([endpoint(method, path) for method, path in entries])
    rng = random.Random(seed)
    for _ in range(50):
        method, raw = request(rng, entries)
        text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        assert answer(m.match(method, raw)) == reference(entries, method, text), (entries, method, raw)


@settings(max_examples=200, deadline=None)
@given(entries=NARROW, seed=st.integers(0, 2**32))
def test_the_compiled_trie_agrees_with_the_reference_matcher(entries: list[tuple[str, str]], seed: int) -> None:
    """Hypothesis shrinks the table; the requests come from a seeded generator so that each table meets many."""
    agree(entries, seed)


@settings(max_examples=60, deadline=None)
@given(entries=WIDE, seed=st.integers(0, 2**32))
def test_wide_tables_agree_with_the_reference_matcher(entries: list[tuple[str, str]], seed: int) -> None:
    agree(entries, seed)
