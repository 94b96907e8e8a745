"""Step 1, the request line: the method, the raw path and the query string, each refused unless canonical.

keyscope never normalises a target: what the matcher sees is byte for byte what the backend gets, so a path
that a backend could read differently (`/a/../b`, `/a%2Fb`, `//a`, `/a;x=y`) is refused. The character rules
are `keyscope.http.rfc3986`'s; this module holds the grammar built from them, and names what is wrong with
a target the grammar rejects (`keyscope.http.canonical` lists the reason codes).

`check_target()` is the full check. `PLAIN_PATH` and `COMMON_METHODS` (with `rfc3986.PLAIN_QUERY`) describe
the usual target narrowly enough that `canonical.check()` accepts it without the full check; a hypothesis test
holds the two to the same answers.
"""

from __future__ import annotations

import re

from keyscope.core.errors import Refusal
from keyscope.http.rfc3986 import (
    CANONICAL_ESCAPE,
    HEXDIG,
    PCT_ENCODED,
    QUERY,
    SEGMENT,
    SEGMENT_CHAR,
    char_class,
    escape_refusal,
)

_SEGMENT = rb"(?!\.\.?(?:/|$))(?:" + SEGMENT_CHAR + rb"|" + CANONICAL_ESCAPE + rb")+"
_PATH = re.compile(rb"/|(?:/" + _SEGMENT + rb")+/?")
_DOT_SEGMENT = re.compile(rb"(?:^|/)(?:\.|%2[eE]){1,2}(?:/|$)")
_PATH_CHAR = re.compile(char_class(SEGMENT + b"/"))
_HIGH_ESCAPE = re.compile(rb"%[89A-Fa-f]")
_QUERY_BAD = re.compile(rb"[^" + char_class(QUERY)[1:] + rb"|%(?!" + PCT_ENCODED[1:] + rb")")
_METHOD = re.compile(rb"[A-Z][A-Z_-]*")

PLAIN_PATH = re.compile(rb"(?:/" + char_class(SEGMENT.replace(b".", b"")) + SEGMENT_CHAR + rb"*)+/?")
"""Paths of plain segments: no escape, and no segment starting with `.`, so no dot segment either."""
COMMON_METHODS = frozenset(
    {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
    | {b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS"}
)
"""Methods known to be upper-case tokens, as str and bytes."""


def check_target(method: bytes | str, raw_path: bytes, query_string: bytes) -> None:
    """Raise Refusal(400) naming the first thing that is not canonical in the method, path or query."""
    if isinstance(method, str):
        method = method.encode("latin-1")
    if not _METHOD.fullmatch(method):
        _refuse("bad_method", "method", "The method must be an upper-case token.")
    if not raw_path.startswith(b"/"):
        _refuse("absolute_form", "path", "The request target must be a path starting with '/'.")
    if not _PATH.fullmatch(raw_path):
        _refuse_path(raw_path)
    if b"%" in raw_path and _HIGH_ESCAPE.search(raw_path):
        _check_utf8(raw_path)
    if query_string:
        bad = _QUERY_BAD.search(query_string)
        if bad:
            _refuse_query(bad.group())


def _refuse(reason: str, field: str, detail: str) -> None:
    raise Refusal(400, reason=reason, step="canonical", field=field, detail=detail)


def _refuse_path(path: bytes) -> None:
    """Name the first thing wrong with a path the grammar rejected."""
    if b"//" in path:
        _refuse("empty_segment", "path", "The path contains an empty segment ('//').")
    if _DOT_SEGMENT.search(path):
        _refuse("dot_segment", "path", "The path contains a '.' or '..' segment.")
    i, n = 0, len(path)
    while i < n:
        byte = path[i]
        if byte == 0x25:
            _check_escape(path[i + 1 : i + 3])
            i += 3
            continue
        if not _PATH_CHAR.fullmatch(path, i, i + 1):
            _refuse_char(byte, "path")
        i += 1
    # Every character is allowed, so what is left is a segment the grammar refused.
    _refuse("dot_segment", "path", "The path contains a '.' or '..' segment.")


def _refuse_char(byte: int, field: str) -> None:
    if byte == 0x5C:
        _refuse("backslash", field, "The path contains a backslash.")
    if byte == 0x3B:
        _refuse("semicolon", field, "The path contains ';' (path parameters are not accepted).")
    if byte == 0x23:
        _refuse("fragment", field, f"The {field} contains '#'.")
    if byte < 0x21 or byte == 0x7F:
        _refuse("control_char", field, f"The {field} contains a control character or space.")
    if byte > 0x7F:
        _refuse("non_ascii", field, f"The {field} contains a non-ASCII byte; percent-encode it.")
    _refuse("bad_char", field, f"The {field} contains {chr(byte)!r}; percent-encode it.")


def _check_escape(hex_digits: bytes) -> None:
    if len(hex_digits) != 2 or hex_digits[0] not in HEXDIG or hex_digits[1] not in HEXDIG:
        _refuse("bad_escape", "path", "The path contains a malformed percent-escape.")
    value = int(hex_digits, 16)
    reason = escape_refusal(value)
    if reason is None:
        return
    char = chr(value)
    if reason == "encoded_control":
        detail = "The path contains an encoded control character."
    elif reason == "encoded_delimiter":
        detail = f"The path contains an encoded {char!r}."
    elif reason == "encoded_unreserved":
        detail = f"The path encodes {char!r}; send the character itself."
    else:
        detail = f"The path contains an encoded {char!r} (%{hex_digits.decode()})."
    _refuse(reason, "path", detail)


def _check_utf8(path: bytes) -> None:
    data = bytearray()
    for part in path.split(b"%")[1:]:
        # An ASCII byte ends any multi-byte sequence, as it does in the decoded path.
        data.append(int(part[:2], 16) if part[0] in b"89ABCDEFabcdef" else 0x2F)
        if len(part) > 2:
            data.append(0x2F)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        _refuse("invalid_utf8", "path", "The path's percent-escapes are not valid UTF-8.")


def _refuse_query(bad: bytes) -> None:
    if bad == b"%":
        _refuse("bad_escape", "query", "The query string contains a malformed percent-escape.")
    _refuse_char(bad[0], "query")
