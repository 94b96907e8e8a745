"""A refusal as the client receives it: the endpoint's error family, as ASGI messages or as HTTP/1.1 bytes.

Both forms come from one encoding, so an early answer (bytes written before any ASGI task exists) and an
answer through the ASGI app are the same bytes. An attacker repeats his refusal, so each distinct refusal is
encoded once and kept (bounded).
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus

from keyscope.core.errors import JSON_HEADERS, Family, Refusal, refusal_body
from keyscope.core.types import Send

_Fields = tuple[int, str, str, str | None, str, Family]
_ANSWERS: dict[_Fields, tuple[tuple[tuple[bytes, bytes], ...], bytes]] = {}
_HTTP_ANSWERS: dict[_Fields, tuple[bytes, bytes, bool]] = {}
_ANSWERS_MAX = 1024


def refusal_headers(status: int, length: int) -> list[tuple[bytes, bytes]]:
    headers = [JSON_HEADERS[0], (b"content-length", str(length).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"App"))
    elif status == 413:
        headers.append((b"connection", b"close"))  # the rest of the body is never read
    return headers


def _answer(refusal: Refusal, family: Family) -> tuple[tuple[tuple[bytes, bytes], ...], bytes]:
    """A refusal's headers and body."""
    key = (refusal.status, refusal.reason, refusal.step, refusal.field, refusal.detail, family)
    answer = _ANSWERS.get(key)
    if answer is None:
        payload = refusal_body(refusal, family)
        answer = (tuple(refusal_headers(refusal.status, len(payload))), payload)
        if len(_ANSWERS) >= _ANSWERS_MAX:
            _ANSWERS.clear()
        _ANSWERS[key] = answer
    return answer


def _http_answer(refusal: Refusal, family: Family) -> tuple[bytes, bytes, bool]:
    """The refusal as HTTP/1.1 in two parts, the status line and headers (each line ending in CRLF), and the
    blank line and body; and whether the connection closes after it."""
    key = (refusal.status, refusal.reason, refusal.step, refusal.field, refusal.detail, family)
    answer = _HTTP_ANSWERS.get(key)
    if answer is None:
        headers, payload = _answer(refusal, family)
        phrase = HTTPStatus(refusal.status).phrase.encode("ascii")
        lines = [b"HTTP/1.1 %d %s\r\n" % (refusal.status, phrase)]
        lines += [name + b": " + value + b"\r\n" for name, value in headers]
        answer = (b"".join(lines), b"\r\n" + payload, (b"connection", b"close") in headers)
        if len(_HTTP_ANSWERS) >= _ANSWERS_MAX:
            _HTTP_ANSWERS.clear()
        _HTTP_ANSWERS[key] = answer
    return answer


def refusal_answer(
    refusal: Refusal, family: Family, request_id: str | None = None, extra: Sequence[tuple[bytes, bytes]] = ()
) -> tuple[bytes, bool]:
    """The refusal as a complete HTTP/1.1 answer, as uvicorn would write it from `refuse()`'s two messages (with
    the same `request_id` and `extra` headers), and whether the connection must close after it (413: the rest of
    the body is never read). `extra` (the rate-limit headers) and then the X-Request-Id line are the last
    headers, where `refuse()` puts them."""
    head, rest, close = _http_answer(refusal, family)
    if extra:
        head += b"".join(name + b": " + value + b"\r\n" for name, value in extra)
    if request_id is None:
        return head + rest, close
    return b"".join((head, b"x-request-id: ", request_id.encode("ascii"), b"\r\n", rest)), close


async def refuse(
    send: Send, refusal: Refusal, family: Family, request_id: str | None = None,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> int:
    """Answer with the refusal's body in the endpoint's error family; nothing has been forwarded. Returns the
    body's length. `extra`: headers after the refusal's own (the rate-limit headers), before X-Request-Id."""
    headers, payload = _answer(refusal, family)
    sent = list(headers)  # a fresh list each time: a server or middleware may add to the headers it is given
    sent += extra
    if request_id is not None:
        sent.append((b"x-request-id", request_id.encode("ascii")))
    await send({"type": "http.response.start", "status": refusal.status, "headers": sent})
    await send({"type": "http.response.body", "body": payload})
    return len(payload)
