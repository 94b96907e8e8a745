"""The benchmark's backend: raw ASGI, a 200-byte JSON answer, as cheap as uvicorn allows.

Every answer echoes the method, raw path, query and body length (so a wrong forward shows), padded to exactly
200 bytes. It counts what it served and the client ports it saw; `GET /__bench/count` (not counted) returns both, so
the benchmark can prove that forwarded rows reached it, that refusals did not, and see whether a proxy keeps
its upstream connections alive (ports are reused after a while, so that count is a lower bound).

    uvicorn --app-dir benchmarks/gateway backend:app
"""

from __future__ import annotations

import json
from typing import Any

SIZE = 200
COUNT_PATH = b"/__bench/count"


def _json_headers(length: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]


_HEADERS = _json_headers(SIZE)

served = 0
peers: set[int] = set()


def answer(method: str, path: bytes, query: bytes, length: int) -> bytes:
    core = {"bench": "ok", "method": method, "path": path.decode("latin-1"), "query": query.decode("latin-1"),
            "bodyLength": length, "pad": ""}
    text = json.dumps(core, separators=(",", ":")).encode()
    if len(text) >= SIZE:
        return text  # a long path or query: the answer grows rather than lose what it echoes
    return text[:-2] + b" " * (SIZE - len(text)) + b'"}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global served
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    length = 0
    more = True
    while more:
        message = await receive()
        length += len(message.get("body", b""))
        more = message.get("more_body", False)
    raw_path = scope.get("raw_path") or scope["path"].encode()
    if raw_path == COUNT_PATH:
        body = json.dumps({"served": served, "connections": len(peers)}).encode()
        headers = _json_headers(len(body))
    else:
        served += 1
        client = scope.get("client")
        if client:
            peers.add(client[1])
        body = answer(scope["method"], raw_path, scope["query_string"], length)
        headers = _HEADERS if len(body) == SIZE else _json_headers(len(body))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
