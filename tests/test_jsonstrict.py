"""Strict JSON written once: `core.jsonstrict` holds the rules, and both readers of JSON bodies, the management
API (`control.bodies.parse_json`) and the scope check (`scope.jsonbody.read`), refuse what they refuse, each in
its own words; beyond them each keeps what is its own."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyscope.control.bodies import parse_json
from keyscope.documents.fields import ValidationError
from keyscope.core import jsonstrict
from keyscope.core.errors import Refusal
from keyscope.core.jsonstrict import StrictJSONError
from keyscope.scope.jsonbody import read

# body, the rule it breaks, the name that breaks it
BROKEN = [
    (b'{"a": 1, "a": 2}', "duplicate", "a"),
    (b'{"a": 1, "b": 2, "b": 3, "a": 4}', "duplicate", "b"),
    (b'{"outer": [{"x": null, "x": null}]}', "duplicate", "x"),
    (b'{"n": NaN}', "constant", "NaN"),
    (b"[Infinity]", "constant", "Infinity"),
    (b"-Infinity", "constant", "-Infinity"),
    (b"\xef\xbb\xbf{}", "bom", None),
    (b'{"a": "\xff"}', "utf8", None),
    (b"\xff\xfe{\x00}\x00", "utf8", None),
]

# what the management API says of each rule, and the scope check's reason for it
ADMIN_WORDS = {
    "duplicate": "is given more than once",
    "constant": "is not valid JSON",
    "bom": "must not start with a byte order mark",
    "utf8": "is not valid UTF-8",
}
SCOPE_REASONS = {"duplicate": "duplicate_key", "constant": "non_finite_number", "bom": "bom", "utf8": "invalid_utf8"}


@pytest.mark.parametrize(("raw", "rule", "name"), BROKEN)
def test_the_shared_rules_refuse_naming_the_rule_and_the_name(raw: bytes, rule: str, name: str | None) -> None:
    with pytest.raises(StrictJSONError) as broken:
        jsonstrict.loads(raw)
    assert (broken.value.rule, broken.value.name) == (rule, name)


@pytest.mark.parametrize(("raw", "rule", "name"), BROKEN)
def test_both_readers_refuse_what_the_rules_refuse_in_their_own_words(raw: bytes, rule: str, name: str | None) -> None:
    with pytest.raises(ValidationError) as admin:
        parse_json(raw)
    assert admin.value.field == (name if rule == "duplicate" else "body")
    assert admin.value.detail.endswith(ADMIN_WORDS[rule])
    with pytest.raises(Refusal) as scope:
        read(raw, 1000, 64)
    assert (scope.value.status, scope.value.reason) == (400, SCOPE_REASONS[rule])
    assert scope.value.field == (name if rule == "duplicate" else None)


def test_a_constant_is_named_in_the_management_apis_words() -> None:
    with pytest.raises(ValidationError) as refused:
        parse_json(b'{"applicationName": -Infinity}')
    assert (refused.value.field, refused.value.detail) == ("body", "-Infinity is not valid JSON")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"platform": 1, "Platform": 2}', "name_collision"),  # names folded alike: the scope check's own rule
        (b"[1e400]", "number_out_of_range"),
        (b"[" * 70 + b"]" * 70, "too_deep"),
    ],
)
def test_the_scope_checks_own_rules_stay_its_own(raw: bytes, reason: str) -> None:
    """The management API reads documents no backend sees, so it keeps accepting what only the scope check
    must refuse (the shared core did not widen either reader)."""
    assert parse_json(raw) is not None
    with pytest.raises(Refusal) as refused:
        read(raw, 1000, 64)
    assert refused.value.reason == reason


def test_text_that_is_not_json_is_not_a_broken_rule() -> None:
    with pytest.raises(json.JSONDecodeError):
        jsonstrict.loads(b'{"a": ')
    with pytest.raises(ValidationError) as refused:
        parse_json(b'{"a": ')
    assert refused.value.field == "body" and refused.value.detail.startswith("is not valid JSON (")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@given(_JSON)
def test_strict_json_reads_any_document_json_writes(doc: Any) -> None:
    raw = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:  # a lone surrogate written raw is not UTF-8: refused as such
        with pytest.raises(StrictJSONError):
            jsonstrict.loads(raw)
        return
    assert jsonstrict.loads(raw) == doc == parse_json(raw)
