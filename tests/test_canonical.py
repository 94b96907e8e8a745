"""Step 1: which raw request targets and header sets are refused, and that whatever passes is canonical.

Also the head's size limits: 414 past the target's bytes, 431 past the header lines or their bytes, decided in
the order a server meets them (target, then header lines one by one), with any `Limits`.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyscope.core.errors import Refusal
from keyscope.core.limits import DEFAULT, Limits
from keyscope.http import canonical

STATUS = {"too_long": 414, "too_many_headers": 431, "headers_too_large": 431}


def reason(raw_path: bytes, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None,
           method: bytes | str = b"GET", limits: Limits = DEFAULT) -> str | None:
    try:
        canonical.check(method, raw_path, query, headers or [], limits)
    except Refusal as refusal:
        assert refusal.status == STATUS.get(refusal.reason, 400)
        assert refusal.step == "canonical"
        assert refusal.detail
        return refusal.reason
    return None


ACCEPTED = [
    b"/",
    b"/sms/3/messages",
    b"/sms/3/messages/",  # trailing slash: just another (unlisted) path
    b"/A/B/C",  # Envoy: no case folding
    b"/.well-known/x",
    b"/a/.b/..c/c..",
    b"/a/b.c",
    b"/ccaas/1/conversations/abc-123_x~y",
    b"/a/%20b",
    b"/a/%c3%a9",  # lower-case hex is accepted
    b"/a/%C3%A9",
    b"/a/!$&'()*+,=:@",
    b"/a/%21%24%26%27%28%29%2A%2B%2C%3A%3D%40",  # encoded sub-delims stay as sent
    b"/a/%22%3C%3E%5B%5D%5E%60%7B%7C%7D",
]

REFUSED = [
    # absolute-, authority- and asterisk-form
    (b"http://example.com/sms/3/messages", "absolute_form"),
    (b"example.com:443", "absolute_form"),
    (b"*", "absolute_form"),
    (b"", "absolute_form"),
    (b"a/b/../c", "absolute_form"),  # Envoy vector
    # empty segments
    (b"//", "empty_segment"),
    (b"//admin", "empty_segment"),
    (b"/a//b", "empty_segment"),
    (b"/a/b//", "empty_segment"),
    # dot segments, literal and in every encoding (Envoy vectors included)
    (b"/.", "dot_segment"),
    (b"/..", "dot_segment"),
    (b"/a/.", "dot_segment"),
    (b"/a/..", "dot_segment"),
    (b"/a/./b", "dot_segment"),
    (b"/a/b/../c", "dot_segment"),
    (b"/a/b/../../../../c", "dot_segment"),
    (b"/a/b/%2E%2E/c", "dot_segment"),
    (b"/a/b/%2e%2e/c", "dot_segment"),
    (b"/a/b/%2E./c", "dot_segment"),
    (b"/a/b/.%2e/c", "dot_segment"),
    (b"/a/b/%2e/c", "dot_segment"),
    (b"/a/b/%2E", "dot_segment"),
    (b"/info/%2e%2E/private", "dot_segment"),
    # backslash (Envoy treats it as a separator: /a/..\c -> /c)
    (b"/a/..\\c", "backslash"),
    (b"/a\\b", "backslash"),
    # encoded separators, NUL and percent
    (b"/a/%2F%2f/c", "encoded_slash"),
    (b"/admin%2F..", "encoded_slash"),
    (b"/a%2fb", "encoded_slash"),
    (b"/a%5Cb", "encoded_backslash"),
    (b"/%5c%25", "encoded_backslash"),
    (b"/a%00", "encoded_nul"),
    (b"/xyz/.%00../abc", "encoded_nul"),
    (b"/xyz/%00.%00./abc", "encoded_nul"),
    (b"/a%25", "encoded_percent"),
    (b"/a%252F..", "encoded_percent"),
    (b"/a%0A", "encoded_control"),
    (b"/a%0d", "encoded_control"),
    (b"/a%7F", "encoded_control"),
    (b"/a%3Bb", "encoded_delimiter"),
    (b"/a%3fb", "encoded_delimiter"),
    (b"/a%23b", "encoded_delimiter"),
    # escapes of unreserved characters are not canonical
    (b"/%41dmin", "encoded_unreserved"),
    (b"/a%2eb", "encoded_unreserved"),
    (b"/a%7e", "encoded_unreserved"),
    (b"/a%5F", "encoded_unreserved"),
    (b"/a%2D", "encoded_unreserved"),
    (b"/a%30", "encoded_unreserved"),
    # overlong and otherwise invalid UTF-8 in escapes
    (b"/%c0%af", "invalid_utf8"),
    (b"/%e0%80%af", "invalid_utf8"),
    (b"/%c3", "invalid_utf8"),
    (b"/%c3x%a9", "invalid_utf8"),
    (b"/%ff", "invalid_utf8"),
    # path parameters, fragments
    (b"/admin;x=y/action", "semicolon"),
    (b"/a;", "semicolon"),
    (b"/abc#fragment", "fragment"),
    # control, space, non-ASCII, other characters
    (b"/a b", "control_char"),
    (b"/a\tb", "control_char"),
    (b"/a\x00b", "control_char"),
    (b"/a\x7f", "control_char"),
    (b"/caf\xc3\xa9", "non_ascii"),
    (b"/a\xff", "non_ascii"),
    (b'/a"b', "bad_char"),
    (b"/a<b>", "bad_char"),
    (b"/a{b}", "bad_char"),
    (b"/a|b", "bad_char"),
    (b"/a^b", "bad_char"),
    (b"/a`b", "bad_char"),
    (b"/a[0]", "bad_char"),
    # malformed escapes (Envoy: /xyz/AAAAA%%0000/abc)
    (b"/a%", "bad_escape"),
    (b"/a%4", "bad_escape"),
    (b"/a%G1", "bad_escape"),
    (b"/a%1G", "bad_escape"),
    (b"/xyz/AAAAA%%0000/abc", "bad_escape"),
]


@pytest.mark.parametrize("raw_path", ACCEPTED)
def test_canonical_paths_are_accepted(raw_path: bytes) -> None:
    assert reason(raw_path) is None


@pytest.mark.parametrize(("raw_path", "expected"), REFUSED)
def test_non_canonical_paths_are_refused(raw_path: bytes, expected: str) -> None:
    assert reason(raw_path) == expected


def test_refusal_names_the_field() -> None:
    with pytest.raises(Refusal) as caught:
        canonical.check("GET", b"/a/../b", b"", [])
    assert caught.value.field == "path"
    with pytest.raises(Refusal) as caught:
        canonical.check("GET", b"/a", b"a=%zz", [])
    assert caught.value.field == "query"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"a=///c", None),  # Envoy: slashes in the query are not the path's business
        (b"applicationId=app-a&entityId=e%20f", None),
        (b"a=b+c&d=%C3%A9&e[]=1&f={x}|y", None),
        (b"a=1;b=2", None),  # refused by scope, where ids are read, not here
        (b"a=%2F%00%25", None),
        (b"a=b#frag", "fragment"),
        (b"a=b c", "control_char"),
        (b"a=\x01", "control_char"),
        (b"a=\x7f", "control_char"),
        (b"a=caf\xc3\xa9", "non_ascii"),
        (b"a=%", "bad_escape"),
        (b"a=%4", "bad_escape"),
        (b"a=%G1", "bad_escape"),
    ],
)
def test_query_strings(query: bytes, expected: str | None) -> None:
    assert reason(b"/sms/1/logs", query) == expected


def test_over_long_targets_are_414() -> None:
    # 414 since the limits came (it was a 400 before): the status says what to fix
    half = DEFAULT.target_bytes // 2
    path = b"/" + b"a" * (half - 1)
    assert reason(path, b"q" * half) is None
    assert reason(path, b"q" * (half + 1)) == "too_long"
    assert reason(b"/" + b"a" * DEFAULT.target_bytes) == "too_long"
    assert reason(b"/" + b"a" * 99, limits=Limits(target_bytes=100)) is None
    assert reason(b"/" + b"a" * 99, b"q", limits=Limits(target_bytes=100)) == "too_long"
    assert reason(b"/a%zz" + b"a" * DEFAULT.target_bytes) == "too_long"  # the size is decided first


def test_header_lines_and_bytes_are_bounded() -> None:
    lines = [(b"x-%d" % i, b"v") for i in range(DEFAULT.headers)]
    assert reason(b"/a", headers=lines) is None
    assert reason(b"/a", headers=[*lines, (b"x-one-more", b"v")]) == "too_many_headers"
    assert reason(b"/a", headers=[*lines, (b"x-one-more", b"v")], limits=Limits(headers=101)) is None
    name = b"x-big"
    exact = [(name, b"v" * (DEFAULT.header_bytes - len(name)))]
    assert reason(b"/a", headers=exact) is None
    assert reason(b"/a", headers=[(name, exact[0][1] + b"v")]) == "headers_too_large"
    assert reason(b"/a", headers=[(b"a", b"b"), (b"a", b"bc")], limits=Limits(header_bytes=4)) == "headers_too_large"
    # sizes come before every other rule, as a server refuses them before it has the whole head
    assert reason(b"/a", headers=[*lines, (b"x-http-method-override", b"PUT")]) == "too_many_headers"


def _first_crossing(target: int, headers: list[tuple[bytes, bytes]], limits: Limits) -> str | None:
    """The reference: what a server counting as the head arrives meets first."""
    if target > limits.target_bytes:
        return "too_long"
    size = 0
    for count, (name, value) in enumerate(headers, 1):
        size += len(name) + len(value)
        if count > limits.headers:
            return "too_many_headers"
        if size > limits.header_bytes:
            return "headers_too_large"
    return None


_SIZED_HEADERS = st.lists(
    st.tuples(st.sampled_from([b"a", b"host", b"X-Long-Name", b"b_c", b"content-type"]),
              st.binary(min_size=0, max_size=12).map(lambda v: v.replace(b"\n", b"").replace(b"\r", b""))),
    max_size=12,
)


@settings(max_examples=500)
@given(st.integers(0, 40), _SIZED_HEADERS, st.integers(1, 30), st.integers(1, 8), st.integers(1, 80))
def test_size_verdicts_are_the_first_limit_a_server_meets(
    target: int, headers: list[tuple[bytes, bytes]], target_bytes: int, count: int, header_bytes: int
) -> None:
    limits = Limits(target_bytes=target_bytes, headers=count, header_bytes=header_bytes)
    expected = _first_crossing(target, headers, limits)
    try:
        canonical.check("GET", b"/" + b"a" * max(0, target - 1), b"", headers, limits)
    except Refusal as refusal:
        if expected is not None:
            assert refusal.reason == expected
        else:
            assert refusal.status == 400  # some other rule, never a size
        return
    assert expected is None


@pytest.mark.parametrize(("method", "expected"), [
    (b"GET", None), ("POST", None), (b"PATCH", None), (b"VERSION-CONTROL", None), (b"get", "bad_method"),
    (b"GE T", "bad_method"), (b"-GET", "bad_method"), (b"GET/", "bad_method"),
    (b"", "bad_method"), ("DEL\u00c9TE", "bad_method"),
])
def test_methods(method: bytes | str, expected: str | None) -> None:
    assert reason(b"/a", method=method) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"host", b"a"), (b"content-length", b"3"), (b"content-type", b"application/json")], None),
        ([(b"x-forwarded-for", b"1.2.3.4"), (b"accept", b"*/*"), (b"accept", b"text/plain")], None),
        ([(b"x-http-method-override", b"DELETE")], "method_override"),
        ([(b"X-HTTP-Method-Override", b"DELETE")], "method_override"),
        ([(b"x_http_method_override", b"DELETE")], "method_override"),
        ([(b"x-http-method", b"PUT")], "method_override"),
        ([(b"X-Method-Override", b"PUT")], "method_override"),
        ([(b"x_method_override", b"PUT")], "method_override"),
        ([(b"x-original-url", b"/admin")], "rewrite_header"),
        ([(b"X-Rewrite-URL", b"/admin")], "rewrite_header"),
        ([(b"x_rewrite_url", b"/admin")], "rewrite_header"),
        ([(b"x-original-uri", b"/admin")], "rewrite_header"),
        ([(b"content-length", b"3"), (b"transfer-encoding", b"chunked")], "content_length_and_transfer_encoding"),
        ([(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")], "content_length_and_transfer_encoding"),
        ([(b"content-length", b"3"), (b"transfer_encoding", b"chunked")], "content_length_and_transfer_encoding"),
        ([(b"content-length", b"3"), (b"content-length", b"3")], "duplicate_content_length"),
        ([(b"content-length", b"3"), (b"Content_Length", b"4")], "duplicate_content_length"),
        ([(b"host", b"a"), (b"Host", b"b")], "duplicate_host"),
        ([(b"content-type", b"application/json"), (b"content-type", b"text/xml")], "duplicate_content_type"),
        ([(b"content-encoding", b"gzip"), (b"content-encoding", b"br")], "duplicate_content_encoding"),
        ([(b"transfer-encoding", b"chunked")], None),
        ([(b"connection", b"close")], None),
        ([(b"connection", b"Keep-Alive")], None),
        ([(b"Connection", b"keep-alive, CLOSE")], None),
        ([(b"connection", b" close ,keep-alive\t")], None),
        ([(b"connection", b"content-type")], "connection_header"),
        ([(b"connection", b"close, Content-Type")], "connection_header"),
        ([(b"connection", b"keep-alive, x-http-method-override")], "connection_header"),
        ([(b"connection", b"upgrade")], "connection_header"),
        ([(b"connection", b"te")], "connection_header"),
        ([(b"connection", b"close,")], "connection_header"),
        ([(b"connection", b"")], "connection_header"),
        ([(b"connection", b"close"), (b"connection", b"authorization")], "connection_header"),
        ([(b"CONNECTION", b"x-forwarded-for")], "connection_header"),
    ],
)
def test_headers(headers: list[tuple[bytes, bytes]], expected: str | None) -> None:
    assert reason(b"/sms/3/messages", headers=headers) == expected


GOOD_HOSTS = [b"gateway.test", b"gateway.test:8080", b"127.0.0.1", b"127.0.0.1:80", b"[::1]", b"[::1]:8080",
              b"[2001:db8::7]:443", b"a_b.example", b"EXAMPLE.COM", b"x", b"[::ffff:192.0.2.1]"]
BAD_HOSTS = [b"", b"a@b/provisioning/1/applications", b"a@b", b"a b", b"a%20b", b"a%2Fb", b"a/b", b"a:b",
             b"a:", b"a:80:80", b"a:123456", b"[::1", b"::1", b"[zz::1]", b"[1.2.3.4]", b"[::1]x", b"a\tb",
             b"caf\xc3\xa9.example", b"a\\b", b"a?b", b"a#b", b"user:pw@a", b"a,b", b"a;b", b" a", b"a "]


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_valid_hosts_are_accepted(host: bytes) -> None:
    assert reason(b"/a", headers=[(b"host", host)]) is None
    assert reason(b"/a", headers=[(b"Host", host), (b"x_y", b"1")]) is None  # the scanning path too


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_invalid_hosts_are_refused(host: bytes) -> None:
    assert reason(b"/a", headers=[(b"host", host)]) == "bad_host"
    assert reason(b"/a", headers=[(b"Host", host), (b"x_y", b"1")]) == "bad_host"
    assert reason(b"/a", headers=[(b"host", b"ok"), (b"connection", b"close")]) is None


@settings(max_examples=500)
@given(st.binary(max_size=24))
def test_accepted_hosts_are_a_host_and_a_port(host: bytes) -> None:
    if reason(b"/a", headers=[(b"host", host)]) is not None:
        return
    name, _, port = host.rpartition(b":") if not host.endswith(b"]") else (host, b"", b"")
    if b"]" in name or name.startswith(b"["):
        assert name.startswith(b"[") and name.endswith(b"]")
    elif not name:
        name, port = host, b""
    assert port == b"" or port.isdigit()
    assert re.fullmatch(rb"\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+", name)


def test_reasons_are_documented() -> None:
    reasons = {expected for _, expected in REFUSED} | {"too_long", "bad_method", "method_override", "rewrite_header"}
    reasons |= {"too_many_headers", "headers_too_large", "connection_header", "bad_host"}
    for code in reasons:
        assert code in (canonical.__doc__ or ""), code


# --- property: whatever check() accepts is already canonical -------------------------------------------

_UNRESERVED = re.compile(rb"%([46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DdEe]|5[Ff]|7[Ee])")


def _decode_unreserved(path: bytes) -> bytes:
    def one(match: re.Match[bytes]) -> bytes:
        value = int(match.group(1), 16)
        char = bytes((value,))
        return char if char.isalnum() or char in b"-._~" else match.group(0)

    return _UNRESERVED.sub(one, path)


def _remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 section 5.2.4, written out as the RFC states it."""
    out: list[bytes] = []
    data = path
    while data:
        if data.startswith(b"../"):
            data = data[3:]
        elif data.startswith(b"./"):
            data = data[2:]
        elif data.startswith(b"/./"):
            data = data[2:]
        elif data == b"/.":
            data = b"/"
        elif data.startswith(b"/../"):
            data = data[3:]
            if out:
                out.pop()
        elif data == b"/..":
            data = b"/"
            if out:
                out.pop()
        elif data in (b".", b".."):
            data = b""
        else:
            start = 1 if data.startswith(b"/") else 0
            end = data.find(b"/", start)
            end = len(data) if end < 0 else end
            out.append(data[:end])
            data = data[end:]
    return b"".join(out)


def _normalise(path: bytes) -> bytes:
    path = _decode_unreserved(path)
    path = re.sub(rb"/{2,}", b"/", path)
    return _remove_dot_segments(path)


_PIECES = [b"/", b"a", b"Z", b"0", b".", b"..", b"%2e", b"%2E", b"%2F", b"%2f", b"%41", b"%61", b"%7e", b"%7E",
           b"%5c", b"%00", b"%25", b"%20", b"%c3%a9", b"%C3", b"%a9", b";", b"\\", b"%", b"%G", b"~", b"-", b"_",
           b":", b"@", b"!", b"=", b"+", b"#", b" ", b"\xc3\xa9", b"%3B", b"%2D", b"%5F"]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_PIECES), max_size=12).map(b"".join))
def test_accepted_paths_are_unchanged_by_normalisation(raw: bytes) -> None:
    path = raw if raw.startswith(b"/") else b"/" + raw
    if reason(path) is None:
        assert _normalise(path) == path


_SEGMENT_CHARS = st.sampled_from([b"a", b"B", b"7", b"-", b"_", b"~", b".", b"!", b"$", b"'", b"(", b"*", b",",
                                  b"=", b":", b"@", b"%20", b"%C3%A9", b"%e2%82%ac", b"%2B"])
_SEGMENT = st.lists(_SEGMENT_CHARS, min_size=1, max_size=6).map(b"".join).filter(lambda s: s not in (b".", b".."))


@settings(max_examples=300, deadline=None)
@given(st.lists(_SEGMENT, min_size=1, max_size=6), st.booleans())
def test_canonical_paths_are_always_accepted(segments: list[bytes], trailing: bool) -> None:
    path = b"/" + b"/".join(segments) + (b"/" if trailing else b"")
    assert reason(path) is None
    assert _normalise(path) == path


# --- property: the fast path and the header map agree with the full check -----------------------------


def _full(method: bytes | str, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]]) -> str | None:
    """The reference: every target rule, then the header scan, with no fast path."""
    try:
        canonical._check_target(method, raw_path, query)
        canonical._check_headers(headers)
    except Refusal as refusal:
        return refusal.reason
    return None


_HEADER_NAMES = st.sampled_from([
    b"host", b"Host", b"content-length", b"Content-Length", b"content_length", b"content-type", b"content-encoding",
    b"transfer-encoding", b"Transfer_Encoding", b"authorization", b"Authorization", b"accept", b"x-forwarded-for",
    b"x-http-method-override", b"X-HTTP-Method", b"x_method_override", b"x-original-url", b"x-rewrite-url",
    b"x-original-uri", b"x-custom", b"X-Custom", b"x_custom", b"123", b"", b"connection", b"Connection",
])
_HEADER_VALUES = st.sampled_from([b"1", b"a", b"close", b"Keep-Alive", b"close, te", b"a@b", b"[::1]:80", b""])
_HEADERS = st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), max_size=6)
_TARGET_BYTES = st.lists(st.sampled_from([b"/", b"a", b".", b"..", b"%2e", b"%41", b"%20", b"%c3%a9", b"%", b";",
                                          b"\\", b"#", b" ", b"\x7f", b"\xc3", b"~", b"-", b"_", b"=", b"&", b"%2F"]),
                         max_size=12).map(b"".join)
_METHODS = st.sampled_from(["GET", "POST", b"PUT", "get", "PROPFIND", "", b"DELETE", "M\u00e9"])


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(_METHODS, _TARGET_BYTES.map(lambda path: b"/" + path), _TARGET_BYTES, _HEADERS)
def test_fast_path_refuses_exactly_what_the_full_check_refuses(
    method: bytes | str, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    try:
        expected = _full(method, raw_path, query, headers)
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            canonical.check(method, raw_path, query, headers)
        return
    assert reason(raw_path, query, headers, method) == expected


@settings(max_examples=1000)
@given(_HEADERS)
def test_header_map_only_for_names_that_need_no_scan(headers: list[tuple[bytes, bytes]]) -> None:
    found = canonical.header_map(headers)
    names = [name for name, _ in headers]
    if found is None:
        assert len(set(names)) < len(names) or any(name.lower() != name or b"_" in name for name in names) or (
            not b"".join(names).islower()
        )
        return
    assert found == dict(headers)
    assert len(set(names)) == len(names)
    assert all(name.lower() == name and b"_" not in name for name in names)
    if _full("GET", b"/a", b"", headers) is None:
        assert canonical.check("GET", b"/a", b"", headers) == found
