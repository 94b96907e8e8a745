"""The request body, when step 4 must read the ids in it: its framing headers and the one way to read it.

The body is bounded twice by `--max-body-size`: a declared Content-Length over it is refused before a byte is
read (by the procedure), and the bytes that arrive are counted whatever was declared (here), so that a
chunked or lying body can never grow past it in memory.
"""

from __future__ import annotations

from keyscope.core.errors import Refusal
from keyscope.core.types import Receive, Scope
from keyscope.http.canonical import HeaderMap


class ClientGone(Exception):
    """The client disconnected while its body was being read: there is nobody left to answer."""


def too_large(limit: int) -> Refusal:
    return Refusal(413, reason="body_too_large", step="body", detail=f"the body is larger than {limit} bytes")


def body_headers(scope: Scope, headers: HeaderMap | None) -> tuple[bytes | None, bytes | None, int | None]:
    """Content-Type, Content-Encoding and the declared length (step 1 already refused duplicates)."""
    if headers is not None:
        length = headers.get(b"content-length")
        return (
            headers.get(b"content-type"),
            headers.get(b"content-encoding"),
            int(length) if length is not None and length.isdigit() else None,
        )
    content_type = content_encoding = None
    content_length: int | None = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"content-encoding":
            content_encoding = value
        elif name == b"content-length":
            content_length = int(value) if value.isdigit() else None
    return content_type, content_encoding, content_length


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole body from ASGI `http.request` messages; Refusal(413) as soon as more than `limit` bytes came,
    ClientGone if the client disconnected first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body") or b""
        if chunk:
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
