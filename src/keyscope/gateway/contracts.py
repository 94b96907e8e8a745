"""What a check request means under each contract of `keyscope authorize` (keyscope.gateway.authorizer).

Envoy's ext_authz HTTP service sends the original request itself, its body only with `with_request_body`;
nginx's auth_request describes it in headers its configuration sets (docs/nginx.conf) and never sends the body.
Here: the original request read from an nginx check, the body as each contract delivers it (what cannot come is
refused when the checks ask for it, and only then), nginx's status mapping and its replay of a refusal, and the
refusals that only an authorizer makes.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote_to_bytes

from keyscope.core.errors import Refusal
from keyscope.core.types import Message, Receive, Scope, Send
from keyscope.decide.answers import refusal_headers

REFUSAL_PATH = b"/refusal"
"""nginx: the check request path that answers a refusal with its true status and body (`error_page`)."""
ORIGINAL_URI = b"x-original-uri"
ORIGINAL_METHOD = b"x-original-method"
ORIGINAL_BODY = b"x-original-body"
PARTIAL_BODY = b"x-envoy-auth-partial-body"
HEADERS_TO_REMOVE = b"x-envoy-auth-headers-to-remove"
STATUS_HEADER = b"x-keyscope-status"
REFUSAL_HEADER = b"x-keyscope-refusal"
_FRAMING = (b"content-length", b"transfer-encoding")
_REPLAYED = frozenset({b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset", b"retry-after"})
"""The headers of a refusal besides its own that `/refusal` gives back (those of a rate-limited key)."""
IDENTITY = ("X-Keyscope-Application-Id", "X-Keyscope-Entity-Id", "X-Keyscope-Shadow-Refusal")
_EMPTY: Message = {"type": "http.request", "body": b"", "more_body": False}

REWRITE_NEEDS_GATEWAY = Refusal(
    403, "rewrite_needs_gateway", "scope", "action",
    "This key's FILL/FORCE action would rewrite the request, which an authorizer cannot do: name the ids, or "
    "send the request through keyscope serve.")
BODY_NOT_FORWARDED = Refusal(
    403, "body_not_forwarded", "body", "body",
    "The ids of this request may be in its body, which the proxy does not send to keyscope.")
PARTIAL = Refusal(413, "partial_body", "body", "body", "The proxy sent only part of the body.")
MANAGEMENT = Refusal(
    403, "management_not_here", "canonical", "path",
    "The management API is not served through the authorizer: use the keyscope CLI or keyscope serve.")


class ContractError(Exception):
    """A check request without what the contract says it carries (a proxy configured otherwise): 500."""


def original_request(scope: Scope) -> tuple[Scope, bool]:
    """nginx: the original request as the check request describes it, and whether it declared a body.

    Its headers are the check request's without the contract's own and without the check request's framing
    (nginx passes or clears the client's Content-Length as configured); the original's framing is put back
    from `X-Original-Body`, so step 1 sees it as the gateway would."""
    uri = method = body = None
    headers: list[tuple[bytes, bytes]] = []
    for name, value in scope["headers"]:
        name = name.lower()
        if name in (ORIGINAL_URI, ORIGINAL_METHOD, ORIGINAL_BODY):
            if (name == ORIGINAL_URI and uri is not None or name == ORIGINAL_METHOD and method is not None
                    or name == ORIGINAL_BODY and body is not None):
                raise ContractError(f"{name.decode()} twice")
            if name == ORIGINAL_URI:
                uri = value
            elif name == ORIGINAL_METHOD:
                method = value
            else:
                body = value
        elif name not in _FRAMING:
            headers.append((name, value))
    for header, value in ((ORIGINAL_URI, uri), (ORIGINAL_METHOD, method), (ORIGINAL_BODY, body)):
        if value is None:
            raise ContractError(f"no {header.decode()} header")
    assert uri is not None and method is not None and body is not None
    if not method or not method.isascii() or not method.decode().isprintable() or b" " in method:
        raise ContractError(f"x-original-method {method!r} is not a method")  # step 1 judges the rest
    length, comma, encoding = body.partition(b",")
    if not comma or (length and not length.isdigit()):
        raise ContractError("x-original-body must be $content_length,$http_transfer_encoding")
    if length:
        headers.append((b"content-length", length))
    if encoding.strip():
        headers.append((b"transfer-encoding", encoding.strip()))
    raw_path, _, query = uri.partition(b"?")
    original = {**scope, "method": method.decode("ascii"), "raw_path": raw_path, "query_string": query,
                "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"), "headers": headers}
    return original, bool(length.strip(b"0")) or bool(encoding.strip())


def nginx_body(declared: bool) -> Receive:
    """nginx never sends the body: an original without one reads as empty, one with one is refused when the
    checks must read it (they ask only then)."""

    async def receive() -> Message:
        if declared:
            raise BODY_NOT_FORWARDED
        return _EMPTY

    return receive


def envoy_body(headers: list[tuple[bytes, bytes]], receive: Receive) -> Receive:
    """Envoy sends the body (`with_request_body`) with `x-envoy-auth-partial-body` set by itself: `false` is
    the whole body, `true` a part (refused). Without the marker Envoy sent no body: empty, unless the request
    has a Content-Type, which says that a body was there and not sent (`with_request_body` is off)."""
    markers = [value for name, value in headers if name.lower() == PARTIAL_BODY]
    typed = any(name.lower() == b"content-type" for name, _ in headers)

    async def body() -> Message:
        if markers == [b"false"]:
            return await receive()
        if markers or typed:
            raise PARTIAL if markers == [b"true"] else BODY_NOT_FORWARDED
        return await receive()  # Envoy's Content-Length: 0

    return body


def auth_request_status(send: Send) -> Send:
    """nginx's auth_request relays 401 and 403 and turns any other status into 500: every refusal but 401 is
    answered 403, with its true status in X-Keyscope-Status and the rest of it in X-Keyscope-Refusal (base64url
    of its rate-limit header lines, a blank line and its body), for `error_page` to have `/refusal` answer it
    as the gateway would (`replay_refusal`)."""
    held: Message | None = None

    async def mapped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message["status"] != 200:
            held = message  # sent with the body, once the body is known
            return
        if held is not None and message["type"] == "http.response.body":
            status, headers = held["status"], list(held.get("headers", ()))
            lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers if name in _REPLAYED)
            refusal = base64.urlsafe_b64encode(lines + b"\r\n" + message.get("body", b""))
            headers += [(STATUS_HEADER, str(status).encode()), (REFUSAL_HEADER, refusal)]
            await send({**held, "status": 401 if status == 401 else 403, "headers": headers})
            held = None
        await send(message)

    return mapped


async def replay_refusal(scope: Scope, send: Send) -> None:
    """nginx's `error_page` for a refused check: the refusal as the check answered it (status, body, rate-limit
    headers, request id), from the headers nginx took from that answer (`auth_request_set`). Nothing is decided,
    counted or logged again: the check did all three. Whatever came otherwise, the answer is a refusal."""
    values = {name.lower(): value for name, value in scope["headers"]}
    status_text = values.get(STATUS_HEADER, b"")
    status = int(status_text) if status_text.isdigit() and len(status_text) == 3 else 403
    try:
        # a CRLF before: without rate-limit lines, the blank line then ends an empty block of them
        lines, _, body = (b"\r\n" + base64.urlsafe_b64decode(values.get(REFUSAL_HEADER, b""))).partition(b"\r\n\r\n")
    except (binascii.Error, ValueError):
        lines = body = b""
    if not 400 <= status <= 599:
        status, lines, body = 403, b"", b""
    # nginx has already copied a 401's WWW-Authenticate from the check's answer to this one
    headers = [(name, value) for name, value in refusal_headers(status, len(body)) if name != b"www-authenticate"]
    for line in lines.split(b"\r\n"):
        name, colon, value = line.partition(b": ")
        if colon and name in _REPLAYED and value.isdigit():
            headers.append((name, value))
    request_id = values.get(b"x-request-id")
    if request_id:
        headers.append((b"x-request-id", request_id))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
