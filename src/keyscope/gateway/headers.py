"""The heads keyscope writes: the request head sent upstream and the answer's headers passed back.

Upstream: the client's headers minus what must not pass, plus keyscope's own (X-Forwarded-*, the upstream's
own credentials, the identity headers, X-Request-Id). The headers dropped are a fixed set: step 1 admits a
`Connection` header only when it says `close` or `keep-alive`, so it never names an end-to-end header the
checks read (a proxy that dropped the headers named there would forward a body without the Content-Type it was
inspected as). The Host step 1 validated goes up as X-Forwarded-Host.

Back: the upstream's headers minus hop-by-hop ones and those its Connection header names, in their order, so
duplicates such as two Set-Cookie survive.
"""

from __future__ import annotations

from collections.abc import Sequence

from keyscope.core.networks import IPNetwork, parse_address, within
from keyscope.core.types import Scope

# Request headers never forwarded as the client sent them: hop-by-hop ones, the client's credentials, framing
# (keyscope frames the body it sends) and the forwarding headers keyscope writes itself.
_DROP_REQUEST = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
        b"proxy-authorization", b"proxy-authenticate", b"host", b"content-length", b"expect", b"authorization",
        b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-request-id",
    }
)
_DROP_RESPONSE = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
        b"proxy-authenticate",
    }
)
_KEYSCOPE_PREFIX = b"x-keyscope-"
_NO_LENGTH = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_CRLF = b"\r\n"


def request_headers(
    scope: Scope,
    identity: Sequence[tuple[str, str]],
    request_id: str | None,
    authorization: tuple[bytes, bytes] | None,
    trusted: tuple[IPNetwork, ...],
) -> list[tuple[bytes, bytes]]:
    """The headers the backend gets; X-Forwarded-For is extended only when the peer is a trusted proxy."""
    host = b""
    client_forwarded_for = b""
    headers: list[tuple[bytes, bytes]] = []
    for name, value in scope["headers"]:
        plain = name.replace(b"_", b"-") if b"_" in name else name
        if plain in _DROP_REQUEST:
            if plain == b"host" and plain is name:
                host = value
            elif plain == b"x-forwarded-for" and plain is name:
                client_forwarded_for = value if not client_forwarded_for else client_forwarded_for + b", " + value
            continue
        if plain.startswith(_KEYSCOPE_PREFIX):
            continue
        headers.append((name, value))
    peer = scope.get("client")
    peer_host = peer[0].encode("latin-1") if peer else b""
    forwarded_for = peer_host
    if client_forwarded_for and trusted and peer:
        address = parse_address(peer[0])
        if address is not None and within(address, trusted):
            forwarded_for = client_forwarded_for + b", " + peer_host
    if forwarded_for:
        headers.append((b"X-Forwarded-For", forwarded_for))
    headers.append((b"X-Forwarded-Proto", scope.get("scheme", "http").encode("latin-1")))
    if host:
        headers.append((b"X-Forwarded-Host", host))
    if authorization is not None:
        headers.append(authorization)
    for name_text, value_text in identity:
        headers.append((name_text.encode("latin-1"), value_text.encode("utf-8")))
    if request_id is not None:
        headers.append((b"X-Request-Id", request_id.encode("ascii")))
    return headers


def request_head(method: str, path: bytes, host_line: bytes, headers: list[tuple[bytes, bytes]], length: int) -> bytes:
    """The request line and headers as bytes; a CR or LF inside any of them is refused (ValueError).

    `length` is the in-memory body's, or -1 when the body is streamed (its framing is among `headers`)."""
    lines = [method.encode("ascii"), b" ", path, b" HTTP/1.1\r\n", host_line]
    for name, value in headers:
        lines += (name, b": ", value, _CRLF)
    count = len(headers) + 3
    if length > 0 or (length == 0 and method not in _NO_LENGTH):  # Content-Length: 0 where a body may be
        lines += (b"Content-Length: ", str(length).encode("ascii"), _CRLF)
        count += 1
    lines.append(_CRLF)
    head = b"".join(lines)
    if head.count(b"\n") != count or head.count(b"\r") != count:
        raise ValueError("a CR or LF inside the request line or a header")
    return head


def response_headers(raw: Sequence[tuple[bytes, bytes]], request_id: str | None = None) -> list[tuple[bytes, bytes]]:
    """The upstream's headers minus hop-by-hop ones; with a request id, its X-Request-Id replaced by that one."""
    named: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    out = []
    for name, value in raw:
        lower = name.lower()
        if lower in _DROP_RESPONSE or lower in named:
            continue
        if request_id is not None and lower == b"x-request-id":
            continue
        out.append((lower, value))
    if request_id is not None:
        out.append((b"x-request-id", request_id.encode("ascii")))
    return out
