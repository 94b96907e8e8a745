"""Step 1: refuse every request target and head that is not already canonical, or larger than the limits.

keyscope never normalises a target: what the matcher sees is byte-for-byte what the backend gets, so a path
that a backend could read differently from us (`/a/../b`, `/a%2Fb`, `//a`, `/a;x=y`) is refused with 400 for
every caller. API clients send canonical targets, so this is Envoy's REJECT_REQUEST policy, not a rewrite.
`check()` is the one entry: the head's size here, the request line in `keyscope.http.target`, the header
lines in `keyscope.http.headers`, with the character rules of `keyscope.http.rfc3986`.

A path is accepted when it is `/` or a run of `/segment` (an optional trailing `/` is allowed: it is simply
another path, and unlisted) where each segment is made of RFC 3986 pchars other than `;`, and each
percent-escape names a byte that must stay encoded: never an unreserved character (`%41`, `%2E`: the
canonical form is the character), never `/` `\\` NUL `%` (split views), never a control byte, never `;` `?`
`#` (Traefik's defaults), and the escaped bytes form valid UTF-8 (`%c0%af` is an overlong `/`). `%25` is
refused, as Traefik does: a backend that decodes twice turns `%252F` into `/`. Both hex cases are accepted.

The query string may hold any visible ASCII except `#`, with well-formed escapes; `;` in it is scope's
business (it refuses a raw `;` where ids are read).

Headers that make a backend see another method, path or body are refused, in any case and with `_` for `-`
(`keyscope.http.headers` says which and why).

The head's size is bounded first (`keyscope.core.limits`): `check_head()` is the one verdict on it, which
`keyscope.gateway.protocol` calls while the head arrives and `check()` calls on a whole head, in the same order (the
target, then header lines one by one), so both refuse the same requests with the same reason.

Reason codes (`Refusal.reason`, all with step "canonical"; status 400 unless given):
    too_long               414: path and query together exceed `Limits.target_bytes` bytes
    too_many_headers       431: more than `Limits.headers` header lines
    headers_too_large      431: header names and values together exceed `Limits.header_bytes` bytes
    absolute_form          the target does not start with `/` (absolute-, authority- or asterisk-form)
    bad_method             the method is not an upper-case token (letters, then letters, `-`, `_`)
    empty_segment          `//` in the path
    dot_segment            a `.` or `..` segment
    backslash              a raw `\\` in the path
    semicolon              a raw `;` in the path (path parameters)
    fragment               a `#` in the path or the query
    control_char           a control byte or space, in the path or the query
    non_ascii              a byte above 0x7E, in the path or the query
    bad_char               another character that is not an RFC 3986 path character
    bad_escape             `%` not followed by two hex digits, in the path or the query
    encoded_slash          `%2F`
    encoded_backslash      `%5C`
    encoded_nul            `%00`
    encoded_percent        `%25`
    encoded_control        an escaped control byte other than NUL
    encoded_delimiter      `%3B`, `%3F` or `%23`
    encoded_unreserved     an escaped letter, digit or `-._~` (the canonical form is the character)
    invalid_utf8           escaped bytes that are not valid UTF-8
    method_override        X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override
    rewrite_header         X-Original-URL, X-Rewrite-URL, X-Original-URI
    content_length_and_transfer_encoding
    duplicate_content_length, duplicate_host, duplicate_content_type, duplicate_content_encoding
    connection_header      a Connection token other than `close` or `keep-alive` (any case, comma-separated)
    bad_host               a Host that is not a reg-name (letters, digits, `-._`), an IPv4 address or an
                           `[IPv6]` literal, with an optional `:port` of digits; an empty Host too
"""

from __future__ import annotations

from keyscope.core.errors import Refusal
from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits
from keyscope.http import headers as _headers
from keyscope.http import rfc3986 as _rfc3986
from keyscope.http import target as _target
from keyscope.http.headers import check_connection as _check_connection
from keyscope.http.headers import check_headers as _check_headers
from keyscope.http.headers import check_host as _check_host
from keyscope.http.target import check_target as _check_target

# Bound by assignment, not `import ... as`: CPython 3.11 compiles a method call on an imported name as an
# attribute load (as for a module), and `check()` calls methods of these.
_FORBIDDEN_NAMES = _headers.FORBIDDEN_NAMES
_GOOD_HOSTS = _headers.GOOD_HOSTS
_PLAIN_CONNECTION = _headers.PLAIN_CONNECTION
_UNDERSCORE = _headers.UNDERSCORE
_PLAIN_QUERY = _rfc3986.PLAIN_QUERY
_COMMON_METHODS = _target.COMMON_METHODS
_PLAIN_PATH = _target.PLAIN_PATH

HeaderMap = dict[bytes, bytes]


def check(
    method: bytes | str,
    raw_path: bytes,
    query_string: bytes,
    headers: list[tuple[bytes, bytes]],
    limits: Limits = DEFAULT_LIMITS,
) -> HeaderMap | None:
    """Return if the request head is within `limits` and canonical; raise Refusal (414, 431, 400) otherwise.

    What it returns is `header_map(headers)`, for the later steps to look headers up instead of scanning them.
    """
    # header_map(), written out to measure the names it joins anyway
    found: HeaderMap | None = dict(headers)
    size = -1
    if len(found) == len(headers):
        names = b"".join(found)
        size = len(names) + len(b"".join(found.values()))
        if _UNDERSCORE in names or not names.islower():
            found = None
    else:
        found = None
    target = len(raw_path) + len(query_string)
    if size < 0 or size > limits.header_bytes or target > limits.target_bytes or len(headers) > limits.headers:
        _check_sizes(target, headers, limits)
    # The usual target (a common method, plain segments, a plain query) is accepted as it is; anything else
    # takes the full check, which also names what is wrong.
    if not (
        method in _COMMON_METHODS
        and _PLAIN_PATH.fullmatch(raw_path) is not None
        and (not query_string or not query_string.translate(None, _PLAIN_QUERY))
    ):
        _check_target(method, raw_path, query_string)
    if (
        found is None
        or not _FORBIDDEN_NAMES.isdisjoint(found)
        or (b"content-length" in found and b"transfer-encoding" in found)
    ):
        _check_headers(headers)  # names in canonical form and each sent once cannot be duplicates
        return found
    host = found.get(b"host")
    if host is not None and host not in _GOOD_HOSTS:
        _check_host(host)
    connection = found.get(b"connection")
    if connection is not None and connection not in _PLAIN_CONNECTION:
        _check_connection(connection)
    return found


def check_head(limits: Limits, target_bytes: int, headers: int = 0, header_bytes: int = 0) -> None:
    """The verdict on a request head's size so far: the target's bytes (path and query, without the `?`), the
    header lines and their names' and values' bytes. Raises Refusal 414 or 431 past a limit."""
    if target_bytes > limits.target_bytes:
        raise Refusal(414, "too_long", "canonical", "path",
                      f"The request target is longer than {limits.target_bytes} bytes.")
    if headers > limits.headers:
        raise Refusal(431, "too_many_headers", "canonical", "headers",
                      f"The request has more than {limits.headers} header lines.")
    if header_bytes > limits.header_bytes:
        raise Refusal(431, "headers_too_large", "canonical", "headers",
                      f"The request's headers are larger than {limits.header_bytes} bytes.")


def _check_sizes(target: int, headers: list[tuple[bytes, bytes]], limits: Limits) -> None:
    """`check_head()` as a server calls it while the head arrives: the target, then each header line."""
    check_head(limits, target)
    size = 0
    for count, (name, value) in enumerate(headers, 1):
        size += len(name) + len(value)
        check_head(limits, 0, count, size)


def header_map(headers: list[tuple[bytes, bytes]]) -> HeaderMap | None:
    """The headers by name when every name is lower case, without `_`, and sent once, which is what servers
    hand over: then a name is found with one lookup, in no other spelling. None otherwise (scan the list)."""
    found = dict(headers)
    if len(found) != len(headers):
        return None
    names = b"".join(found)
    if _UNDERSCORE in names or not names.islower():  # islower() is false for names without a letter, too
        return None
    return found
