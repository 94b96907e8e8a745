"""The character rules of `keyscope.http.rfc3986` are RFC 3986's, and the three readers built on them (step 1,
the template grammar, the matcher's parameter rule) agree byte for byte."""

from __future__ import annotations

import pytest

from keyscope.allowlist import template
from keyscope.allowlist.answers import decode_value
from keyscope.core.errors import Refusal
from keyscope.http import canonical, rfc3986


def step1(raw_path: bytes) -> str | None:
    try:
        canonical.check("GET", raw_path, b"", [])
    except Refusal as refusal:
        return refusal.reason
    return None


def test_the_classes_are_the_rfcs() -> None:
    # RFC 3986 appendix A, written out
    assert set(rfc3986.UNRESERVED) == set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    assert set(rfc3986.SUB_DELIMS) == set(b"!$&'()*+,;=")
    assert set(rfc3986.GEN_DELIMS) == set(b":/?#[]@")
    assert set(rfc3986.PCHAR) == set(rfc3986.UNRESERVED) | set(rfc3986.SUB_DELIMS) | set(b":@")
    assert set(rfc3986.SEGMENT) == set(rfc3986.PCHAR) - {ord(";")}
    assert set(rfc3986.STAY_ENCODED) == set(b" !\"$&'()*+,:<=>@[]^`{|}") | set(range(0x80, 0x100))


@pytest.mark.parametrize("value", range(0x80))
def test_step1_refuses_an_ascii_escape_exactly_as_escape_refusal_says(value: int) -> None:
    for digits in {f"{value:02X}", f"{value:02x}"}:
        assert step1(f"/a%{digits}b".encode()) == rfc3986.escape_refusal(value)


@pytest.mark.parametrize("value", range(0x80))
def test_a_parameter_value_decodes_to_anything_but_the_significant_bytes(value: int) -> None:
    decoded = decode_value(b"a%%%02X" % value)
    assert (decoded is None) == (value in rfc3986.SIGNIFICANT)


@pytest.mark.parametrize("value", range(0x20, 0x7F))
def test_a_template_holds_unescaped_exactly_what_step1_accepts_unescaped(value: int) -> None:
    char = chr(value)
    if char in "%/{}":
        return  # an escape, a separator, the parameter syntax
    accepted_by_template = not template.problems(f"/a{char}b")
    assert accepted_by_template == (step1(b"/a%cb" % value) is None) == (value in rfc3986.SEGMENT)
