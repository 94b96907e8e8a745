"""Step 1, the header lines: refuse the headers that would make a backend see another method, path or body.

Names are compared in any case and with `_` for `-`, as some servers and frameworks fold them. Refused:
method overrides; `X-Original-URL`/`X-Rewrite-URL`/`X-Original-URI`; both Content-Length and
Transfer-Encoding; more than one Content-Length, Host, Content-Type or Content-Encoding (scope decides how to
read a body by the last two); a `Connection` header naming anything but `close` or `keep-alive` (a proxy drops
the headers it names: `Connection: content-type` would forward a body without the type it was inspected as);
and a `Host` that is not `uri-host[:port]` (it goes upstream as X-Forwarded-Host).

`check_headers()` scans every line. `keyscope.http.canonical.check()` skips the scan when the names are
already canonical and sent once, and then looks up `FORBIDDEN_NAMES`, `check_host()` and `check_connection()`
itself.
"""

from __future__ import annotations

import ipaddress
import re

from keyscope.core.errors import Refusal
from keyscope.http.rfc3986 import HEXDIG, HOST_NAME, char_class

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
_SPECIAL = {**{name: ("forbidden", reason) for name, reason in _FORBIDDEN_HEADERS.items()},
            **{name: ("counted", reason) for name, reason in _COUNTED.items()}}
_HOST = re.compile(rb"(?:" + char_class(HOST_NAME) + rb"+|\[" + char_class(HEXDIG + b":.") + rb"+\])(?::[0-9]{1,5})?")
_GOOD_HOSTS_MAX = 64
_CONNECTION_TOKENS = frozenset({b"close", b"keep-alive"})
UNDERSCORE = ord("_")

FORBIDDEN_NAMES = frozenset(_FORBIDDEN_HEADERS)
"""The refused header names, in canonical form."""
GOOD_HOSTS: set[bytes] = set()
"""Host values seen to be valid: a client sends the same one every time."""
PLAIN_CONNECTION = frozenset({b"close", b"keep-alive", b"Close", b"Keep-Alive"})
"""Connection values accepted as they are."""


def check_headers(headers: list[tuple[bytes, bytes]]) -> None:
    """Raise Refusal(400) for the first header rule the lines break, in any spelling of the names."""
    seen: dict[bytes, int] = {}
    hosts: list[bytes] = []
    connections: list[bytes] = []
    for name, value in headers:
        special = _SPECIAL.get(name)
        if special is None:
            if name.islower() and UNDERSCORE not in name:
                continue  # an ordinary header, already in canonical form
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
        check_host(host)
    for connection in connections:
        check_connection(connection)


def _refuse(reason: str, field: str, detail: str) -> None:
    raise Refusal(400, reason=reason, step="canonical", field=field, detail=detail)


def check_host(value: bytes) -> None:
    """RFC 9112 section 3.2: `uri-host [":" port]`; remembered in `GOOD_HOSTS` once valid."""
    if _HOST.fullmatch(value) is None or (value.startswith(b"[") and not _is_ipv6(value[1 : value.index(b"]")])):
        _refuse("bad_host", "host", "The Host header must be a host name or IP address with an optional port.")
    if len(GOOD_HOSTS) >= _GOOD_HOSTS_MAX:
        GOOD_HOSTS.clear()
    GOOD_HOSTS.add(value)


def _is_ipv6(text: bytes) -> bool:
    try:
        ipaddress.IPv6Address(text.decode("ascii"))
    except ValueError:
        return False
    return True


def check_connection(value: bytes) -> None:
    """Only `close` and `keep-alive`: any other token names a header that a proxy on the way would drop."""
    for token in value.split(b","):
        if token.strip(b" \t").lower() not in _CONNECTION_TOKENS:
            _refuse("connection_header", "connection", "The Connection header may only say close or keep-alive.")
