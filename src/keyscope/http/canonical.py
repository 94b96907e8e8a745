"""Step 1: refuse every request target and head that is not already canonical, or larger than the limits.

keyscope never normalises a target: what the matcher sees is byte-for-byte what the backend gets, so a path
that a backend could read differently from us (`/a/../b`, `/a%2Fb`, `//a`, `/a;x=y`) is refused with 400 for
every caller. API clients send canonical targets, so this is Envoy's REJECT_REQUEST policy, not a rewrite.

A path is accepted when it is `/` or a run of `/segment` (an optional trailing `/` is allowed: it is simply
another path, and unlisted) where each segment is made of RFC 3986 pchars other than `;`, and each
percent-escape names a byte that must stay encoded: never an unreserved character (`%41`, `%2E`: the
canonical form is the character), never `/` `\\` NUL `%` (split views), never a control byte, never `;` `?`
`#` (Traefik's defaults), and the escaped bytes form valid UTF-8 (`%c0%af` is an overlong `/`). `%25` is
refused, as Traefik does: a backend that decodes twice turns `%252F` into `/`. Both hex cases are accepted.

The query string may hold any visible ASCII except `#`, with well-formed escapes; `;` in it is scope's
business (it refuses a raw `;` where ids are read).

Headers that make a backend see another method, path or body are refused, in any case and with `_` for `-`:
method overrides, `X-Original-URL`/`X-Rewrite-URL`/`X-Original-URI`, both Content-Length and
Transfer-Encoding, more than one Content-Length, Host, Content-Type or Content-Encoding (scope decides how to
read a body by the last two), a `Connection` header naming anything but `close` or `keep-alive` (a proxy drops
the headers it names: `Connection: content-type` would forward a body without the type it was inspected as),
and a `Host` that is not `uri-host[:port]` (it goes upstream as X-Forwarded-Host).

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

import ipaddress
import re

from keyscope.core.errors import Refusal
from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits

# The whole accepted path grammar, so the common case is one fullmatch.
_PCHAR = rb"[A-Za-z0-9\-._~!$&'()*+,=:@]"
_STAY_ENCODED = b" !\"$&'()*+,:<=>@[]^`{|}" + bytes(range(0x80, 0x100))


def _escape_pattern(values: bytes) -> bytes:
    """A regex for `%XX` (either hex case) naming exactly one of `values`."""
    by_high: dict[int, set[str]] = {}
    for value in values:
        by_high.setdefault(value >> 4, set()).add(f"{value & 15:X}")
    alternatives = []
    for high, lows in sorted(by_high.items()):
        highs = "".join(sorted({f"{high:X}", f"{high:x}"}))
        digits = "".join(sorted(lows | {low.lower() for low in lows}))
        alternatives.append(f"[{highs}][{digits}]")
    return ("%(?:" + "|".join(alternatives) + ")").encode()


_GOOD_ESCAPE = _escape_pattern(_STAY_ENCODED)
_SEGMENT = rb"(?!\.\.?(?:/|$))(?:" + _PCHAR + rb"|" + _GOOD_ESCAPE + rb")+"
_PATH = re.compile(rb"/|(?:/" + _SEGMENT + rb")+/?")
_DOT_SEGMENT = re.compile(rb"(?:^|/)(?:\.|%2[eE]){1,2}(?:/|$)")
_PATH_CHAR = re.compile(_PCHAR + rb"|/")
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPED = {0x2F: "encoded_slash", 0x5C: "encoded_backslash", 0x00: "encoded_nul", 0x25: "encoded_percent"}
_DELIMITERS = frozenset(b";?#")
_HIGH_ESCAPE = re.compile(rb"%[89A-Fa-f]")

_QUERY_BAD = re.compile(rb"[^\x21-\x7e]|#|%(?![0-9A-Fa-f]{2})")
_METHOD = re.compile(rb"[A-Z][A-Z_-]*")

# The fast path's subsets of the grammar above. A plain segment is pchars without `%`, not starting with `.`,
# so it can be neither a dot segment nor hold an escape; a plain query is visible ASCII without `#` and `%`.
_PLAIN_PATH = re.compile(rb"(?:/" + _PCHAR.replace(b".", b"") + _PCHAR + rb"*)+/?")
_PLAIN_QUERY = bytes(byte for byte in range(0x21, 0x7F) if byte not in b"#%")
_UNDERSCORE = ord("_")  # `int in bytes` is a memchr; `b"_" in bytes` costs several times more
_COMMON_METHODS = frozenset(
    {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
    | {b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS"}
)

_FORBIDDEN_HEADERS = {
    b"x-http-method-override": "method_override",
    b"x-http-method": "method_override",
    b"x-method-override": "method_override",
    b"x-original-url": "rewrite_header",
    b"x-rewrite-url": "rewrite_header",
    b"x-original-uri": "rewrite_header",
}
_COUNTED = {
    b"content-length": "duplicate_content_length",
    b"host": "duplicate_host",
    b"content-type": "duplicate_content_type",
    b"content-encoding": "duplicate_content_encoding",
    b"transfer-encoding": "",
    b"connection": "",
}
_HOST = re.compile(rb"(?:[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_GOOD_HOSTS: set[bytes] = set()  # Host values seen to be valid: a client sends the same one every time
_GOOD_HOSTS_MAX = 64
_CONNECTION_TOKENS = frozenset({b"close", b"keep-alive"})
_PLAIN_CONNECTION = frozenset({b"close", b"keep-alive", b"Close", b"Keep-Alive"})


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
    # The common case first, in a few C calls: a usual method, a path of plain segments (no escape, no segment
    # starting with `.`), a query of plain characters. Anything else takes the full check below, which also
    # names what is wrong.
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
    if _UNDERSCORE in names or not names.islower():  # islower(): no A-Z (and some a-z: false only for odd names)
        return None
    return found


def _check_target(method: bytes | str, raw_path: bytes, query_string: bytes) -> None:
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
    """Name the first thing wrong with a path the grammar rejected (only refusals take this slow path)."""
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
    if len(hex_digits) != 2 or hex_digits[0] not in _HEX or hex_digits[1] not in _HEX:
        _refuse("bad_escape", "path", "The path contains a malformed percent-escape.")
    value = int(hex_digits, 16)
    if value in _ESCAPED:
        _refuse(_ESCAPED[value], "path", f"The path contains an encoded {chr(value)!r} (%{hex_digits.decode()}).")
    if value < 0x20 or value == 0x7F:
        _refuse("encoded_control", "path", "The path contains an encoded control character.")
    if value in _DELIMITERS:
        _refuse("encoded_delimiter", "path", f"The path contains an encoded {chr(value)!r}.")
    if value in _UNRESERVED:
        _refuse("encoded_unreserved", "path", f"The path encodes {chr(value)!r}; send the character itself.")


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


_FORBIDDEN_NAMES = frozenset(_FORBIDDEN_HEADERS)
_SPECIAL = {**{name: ("forbidden", reason) for name, reason in _FORBIDDEN_HEADERS.items()},
            **{name: ("counted", reason) for name, reason in _COUNTED.items()}}


def _check_headers(headers: list[tuple[bytes, bytes]]) -> None:
    seen: dict[bytes, int] = {}
    hosts: list[bytes] = []
    connections: list[bytes] = []
    for name, value in headers:
        special = _SPECIAL.get(name)
        if special is None:
            if name.islower() and _UNDERSCORE not in name:
                continue  # the common case: an ordinary header, already in canonical form
            name = name.lower().replace(b"_", b"-")
            special = _SPECIAL.get(name)
            if special is None:
                continue
        kind, reason = special
        if kind == "forbidden":
            _refuse(reason, name.decode("latin-1"), "This header would make the backend see another method or path.")
        seen[name] = seen.get(name, 0) + 1
        if name == b"host":
            hosts.append(value)
        elif name == b"connection":
            connections.append(value)
    if not seen:
        return
    if b"content-length" in seen and b"transfer-encoding" in seen:
        _refuse(
            "content_length_and_transfer_encoding",
            "content-length",
            "A request must not carry both Content-Length and Transfer-Encoding.",
        )
    for name, count in seen.items():
        if count > 1 and _COUNTED[name]:
            header = name.decode("latin-1")
            _refuse(_COUNTED[name], header, f"The request carries more than one {header} header.")
    for host in hosts:
        _check_host(host)
    for connection in connections:
        _check_connection(connection)


def _check_host(value: bytes) -> None:
    """RFC 9112 section 3.2: `uri-host [":" port]`; remembered once valid."""
    if _HOST.fullmatch(value) is None or (value.startswith(b"[") and not _is_ipv6(value[1 : value.index(b"]")])):
        _refuse("bad_host", "host", "The Host header must be a host name or IP address with an optional port.")
    if len(_GOOD_HOSTS) >= _GOOD_HOSTS_MAX:
        _GOOD_HOSTS.clear()
    _GOOD_HOSTS.add(value)


def _is_ipv6(text: bytes) -> bool:
    try:
        ipaddress.IPv6Address(text.decode("ascii"))
    except ValueError:
        return False
    return True


def _check_connection(value: bytes) -> None:
    """Only `close` and `keep-alive`: any other token names a header that a proxy on the way would drop."""
    for token in value.split(b","):
        if token.strip(b" \t").lower() not in _CONNECTION_TOKENS:
            _refuse("connection_header", "connection", "The Connection header may only say close or keep-alive.")
