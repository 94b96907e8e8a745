"""Path templates: the loader (`endpoints.yaml`) and the compiler (`matcher.compile`) accept exactly the same
ones, the loader says why it refuses one in lines that name the entry, and every template they accept, filled
in, is a canonical request target (step 1 lets it through) that matches its own entry."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from keyscope.allowlist import table
from keyscope.allowlist.matcher import Match, compile
from keyscope.allowlist.table import Endpoint, EndpointsError
from keyscope.http import canonical

PIECES = [
    "a", "Z", "0", "-", "_", "~", ".", "..", "!", "$", "&", "'", "(", ")", "*", "+", ",", "=", ":", "@",
    ";", ";x=1", "%", "%2", "%zz", "%20", "%2F", "%2f", "%2E", "%2e", "%41", "%C3%A9", "%c3%a9", "%25", "%3B",
    "%00", "%7F", "%5C", "é", "😀", "\u2028", " ", "?", "#", "\\", "\x00", "\n", "[", "]", "|", "^", "`", '"',
    "{", "}", "{x}", "{y}", "{_a1}", "{1}", "{}", "{a-b}", "{{x}}", "{x/y}", "/", "/", "/", "//",
]
_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")

_SEGMENTS = st.one_of(
    st.sampled_from(["{x}", "{y}", "{id}", "{_a1}", "sms", "3", "messages", "a.b", "~u", "c:d@e", "(x)"]),
    st.lists(st.sampled_from([piece for piece in PIECES if "/" not in piece]), min_size=1, max_size=3).map("".join),
)
templates = st.one_of(
    st.lists(_SEGMENTS, min_size=1, max_size=5).map(lambda segments: "/" + "/".join(segments)),
    st.lists(st.sampled_from(PIECES), max_size=10).map(lambda pieces: "/" + "".join(pieces)),
    st.lists(st.sampled_from(PIECES), max_size=6).map("".join),
    st.text(max_size=12),
    st.text(max_size=12).map(lambda text: "/" + text),
)


def loader_problems(path: str) -> tuple[str, ...]:
    raw = {"function": "f", "method": "GET", "path": path, "group": "g", "ids": "none", "errors": "legacy"}
    try:
        table.parse({"endpoints": [raw]})
    except EndpointsError as error:
        assert str(error) == "\n".join(error.problems)
        return error.problems
    return ()


def compiler_refusal(path: str) -> str | None:
    try:
        compile([Endpoint("GET", path, "f", "g", (), "legacy")])
    except ValueError as error:
        return str(error)
    return None


@settings(max_examples=1500, deadline=None)
@given(templates)
@example("/a;b")
@example("/x%20y")
@example("/a%2Fb")
@example("/caf%C3%A9")
@example("/a/{x}/b.c/{y}")
@example("/")
def test_loader_and_compiler_accept_the_same_templates(path: str) -> None:
    problems = loader_problems(path)
    refusal = compiler_refusal(path)
    assert (refusal is None) == (not problems), (path, problems, refusal)
    if problems:
        shown = path if path.isprintable() else repr(path)
        label = f"<document>: entry 1 (GET {shown}): "
        for problem in problems:
            assert problem.startswith(label), problem
            assert len(problem.splitlines()) == 1, problem
        assert refusal.endswith(": " + problems[0][len(label):]), (refusal, problems[0])  # type: ignore[union-attr]
        return
    filled = _PARAM.sub("v-1", path).encode("ascii")
    canonical.check("GET", filled, b"", [])  # raises Refusal if step 1 would never let it through
    result = compile([Endpoint("GET", path, "f", "g", (), "legacy")]).match("GET", filled)
    assert isinstance(result, Match) and result.endpoint.path == path
    assert set(result.params.values()) <= {"v-1"}


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/a;b", "';' in 'a;b': path parameters are refused in every request (step 1: semicolon)"),
        ("/a%2Fb", "'%2F' in 'a%2Fb' encodes '/', which step 1 refuses in every request (encoded_slash)"),
        ("/a%25", "'%25' in 'a%25' encodes '%', which step 1 refuses in every request (encoded_percent)"),
        ("/x%20y", "'%20' in 'x%20y': a template's segments are written unencoded"),
        ("/a%2e", "malformed percent-encoding '%2e' in 'a%2e' (lower-case hex)"),
        ("/a\nb", "character '\\n' in 'a\\nb' is not allowed in a path segment"),
    ],
)
def test_the_loader_names_what_the_compiler_cannot_serve(path: str, problem: str) -> None:
    problems = loader_problems(path)
    assert len(problems) == 1 and problem in problems[0], problems
    assert compiler_refusal(path) is not None
