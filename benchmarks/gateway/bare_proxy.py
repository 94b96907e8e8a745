"""The peer keyscope must beat on CPU: a forwarding proxy with no checks, the cheapest plain-Python one measured.

Raw ASGI and one shared aiohttp `ClientSession` (the baseline's "aiohttp" mode): the body is buffered, hop-by-hop
headers (and those named in `Connection`) are dropped, raw path and query go upstream as they came
(`yarl.URL(..., encoded=True)`), nothing is decompressed or added, raw response headers pass through (duplicates
survive), the answer is streamed, and an unreachable upstream is a 502.

    BENCH_UPSTREAM=http://127.0.0.1:PORT uvicorn --app-dir benchmarks/gateway bare_proxy:app
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
import yarl

UPSTREAM = os.environ.get("BENCH_UPSTREAM", "").rstrip("/")
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
     b"proxy-authenticate", b"proxy-authorization", b"host", b"content-length"}
)
_BAD_GATEWAY = b'{"error":"bad gateway"}'

session: aiohttp.ClientSession | None = None


async def _lifespan(receive: Any, send: Any) -> None:
    global session
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if not UPSTREAM:
                await send({"type": "lifespan.startup.failed", "message": "BENCH_UPSTREAM is not set"})
                return
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=128, keepalive_timeout=60),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if session is not None:
                await session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


def _strip(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    named = set(HOP_BY_HOP)
    for name, value in raw:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    return [(name, value) for name, value in raw if name.lower() not in named]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    assert session is not None
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    target = UPSTREAM + (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    if scope["query_string"]:
        target += "?" + scope["query_string"].decode("latin-1")
    headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in _strip(scope["headers"])]
    try:
        response = await session.request(
            scope["method"], yarl.URL(target, encoded=True), headers=headers, data=body or None,
            allow_redirects=False,
        )
    except aiohttp.ClientError:
        await send({"type": "http.response.start", "status": 502,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(_BAD_GATEWAY)).encode())]})
        await send({"type": "http.response.body", "body": _BAD_GATEWAY})
        return
    async with response:
        await send({"type": "http.response.start", "status": response.status,
                    "headers": _strip(list(response.raw_headers))})
        while chunk := await response.content.readany():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
