"""RFC 3986's character rules, and the choices keyscope makes among them, written once.

Three readers depend on them and must never disagree: step 1 (`keyscope.http.target`) accepts a request
target only when it is already canonical; the allowlist loader and compiler (`keyscope.allowlist.template`)
accept a path template only when canonical targets can match it; the matcher decides which parameter values
it matches (`keyscope.allowlist.answers`). Each class is a `bytes` of its members (for `in` and
`bytes.translate`), and `char_class()` / `escape_pattern()` turn one into a regular expression, so a reader's
compiled pattern is built from the same bytes as every other reader's.

Where keyscope is narrower than the RFC, it is to refuse what some backend reads differently:

- A path segment holds no `;`. RFC 3986 section 3.3 leaves `;` to the scheme; Tomcat, Jetty and Spring strip
  `;params` from a segment, so `/admin;x=/..` is another path to them.
- A path's escape names a byte that must stay encoded (section 2.4; section 6.2.2.2 normalises the rest away):
  never an unreserved character (`%41`, `%2E`), never a byte that splits, ends or re-escapes a path once
  decoded (`/ \\ ; ? # %`, NUL and the other controls). `escape_refusal()` says which is which.

Where it is wider: the query may hold any visible ASCII but `#` (section 3.4 allows only pchar, `/` and `?`,
but clients send `[]`, `{}` and `|` unescaped, and the query's meaning is decided by `keyscope.scope`).
"""

from __future__ import annotations

import re

ALPHA = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DIGIT = b"0123456789"
HEXDIG = DIGIT + b"ABCDEFabcdef"
"""Section 2.1: a percent-escape's digits, either case (upper case is what URI producers should write)."""
HEXDIG_UPPER = DIGIT + b"ABCDEF"

UNRESERVED = ALPHA + DIGIT + b"-._~"
"""Section 2.3: characters that mean the same escaped or not, so the canonical form never escapes them."""
GEN_DELIMS = b":/?#[]@"
"""Section 2.2: the delimiters of the generic syntax."""
SUB_DELIMS = b"!$&'()*+,;="
"""Section 2.2: delimiters a scheme or a server may give a meaning inside a component."""
PCHAR = UNRESERVED + SUB_DELIMS + b":@"
"""Section 3.3: `pchar`'s literal characters (its fourth alternative, `pct-encoded`, is the escapes)."""

SEGMENT = PCHAR.replace(b";", b"")
"""keyscope: what a path segment may hold unescaped, `pchar` without `;` (path parameters)."""
CONTROLS = bytes(range(0x20)) + b"\x7f"
VISIBLE = bytes(range(0x21, 0x7F))
"""RFC 5234 VCHAR: printable ASCII without space."""
QUERY = VISIBLE.replace(b"#", b"")
"""keyscope: what a query string may hold (with `%` only as the start of a well-formed escape)."""
PLAIN_QUERY = QUERY.replace(b"%", b"")
"""A query made of these alone has no escape to check."""
HOST_NAME = UNRESERVED.replace(b"~", b"")
"""keyscope: a Host's name (section 3.2.2 reg-name without escapes, sub-delims or `~`)."""
SIGNIFICANT = b"/\\;?#%" + CONTROLS
"""Bytes that, once decoded, make a backend split, end, cut or decode again a path: never escaped in a
canonical path, never in a decoded parameter value."""

PCT_ENCODED = rb"%[0-9A-Fa-f]{2}"
"""Section 2.1: a well-formed percent-escape, as a regex."""

_ESCAPE_REASONS = {0x2F: "encoded_slash", 0x5C: "encoded_backslash", 0x00: "encoded_nul", 0x25: "encoded_percent"}


def escape_refusal(value: int) -> str | None:
    """Why a canonical path may not carry byte `value` percent-encoded (step 1's reason code), or None.

    `%2F`, `%5C`, `%00` split views of the path; `%25` turns into a new escape for a backend that decodes twice;
    a control byte, `;`, `?` or `#` would cut or end the path once decoded; an unreserved character's canonical
    form is the character itself (section 6.2.2.2), so `%41dmin` is refused rather than read as `Admin`.
    """
    if value in UNRESERVED:
        return "encoded_unreserved"
    if value not in SIGNIFICANT:
        return None
    if value in _ESCAPE_REASONS:
        return _ESCAPE_REASONS[value]
    return "encoded_delimiter" if value in b";?#" else "encoded_control"


STAY_ENCODED = bytes(value for value in range(256) if escape_refusal(value) is None)
"""The bytes a canonical path carries only escaped: the rest of printable ASCII, and every byte above 0x7F."""


def char_class(chars: bytes) -> bytes:
    """A regex character class (`[...]`) matching exactly `chars`; use `.decode()` for a str pattern."""
    values = sorted(set(chars))
    parts: list[str] = []
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and values[end + 1] == values[end] + 1:
            end += 1
        first, last = _literal(values[start]), _literal(values[end])
        parts.append(first if start == end else first + last if end == start + 1 else f"{first}-{last}")
        start = end + 1
    return ("[" + "".join(parts) + "]").encode("ascii")


def _literal(value: int) -> str:
    return chr(value) if chr(value).isascii() and chr(value).isalnum() else f"\\x{value:02x}"


def escape_pattern(values: bytes) -> bytes:
    """A regex for `%XX`, in either hex case, naming exactly one of `values`."""
    by_high: dict[int, set[str]] = {}
    for value in values:
        by_high.setdefault(value >> 4, set()).add(f"{value & 15:X}")
    alternatives = []
    for high, lows in sorted(by_high.items()):
        highs = "".join(sorted({f"{high:X}", f"{high:x}"}))
        digits = "".join(sorted(lows | {low.lower() for low in lows}))
        alternatives.append(f"[{highs}][{digits}]")
    return ("%(?:" + "|".join(alternatives) + ")").encode("ascii")


SEGMENT_CHAR = char_class(SEGMENT)
"""One unescaped character of a path segment, as a regex."""
CANONICAL_ESCAPE = escape_pattern(STAY_ENCODED)
"""One escape a canonical path may carry, as a regex (UTF-8 validity is checked apart)."""
DECODED_SIGNIFICANT = re.compile(char_class(SIGNIFICANT).decode("ascii"))
"""Finds a `SIGNIFICANT` character in decoded text."""
