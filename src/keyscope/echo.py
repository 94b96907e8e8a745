"""A small echo backend: it answers any request with a JSON description of exactly what it received.

Run it with `python -m keyscope.echo [--host 127.0.0.1] [--port 9000]`. The demo puts it behind keyscope so people
can see what was forwarded (raw path, query, the X-Keyscope-* headers, the body); the tests use it as the real
backend and read its request log to prove what did, and did not, reach it.

Every request outside `/__echo/` is answered with

    {"method": ..., "path": <raw path>, "query": <raw query>, "headers": [[name, value], ...],
     "body": <text>, "bodyBase64": <base64, only when the body is not UTF-8>}

and recorded (the last 10,000). Special paths, never recorded (also after a prefix, such as an upstream
base path: `/base/__echo/slow` is `/__echo/slow`):

    GET    /__echo/log            the recorded requests, oldest first, as a JSON list
    DELETE /__echo/log            forget them
    ANY    /__echo/slow?seconds=S answer the echo after S seconds
    GET    /__echo/big?bytes=N    stream N bytes of `x` in 64 KiB chunks, without Content-Length
    ANY    /__echo/cookies        the echo, with two Set-Cookie headers and two X-Echo-Dup headers
    ANY    /__echo/status?code=C  the echo with status C
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from collections import deque
from urllib.parse import parse_qsl

from keyscope.core.types import Receive, Scope, Send

PREFIX = b"/__echo/"
CHUNK = 64 * 1024


class EchoApp:
    def __init__(self, keep: int = 10_000) -> None:
        self.log: deque[dict[str, object]] = deque(maxlen=keep)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        special = raw_path.find(PREFIX)
        if special >= 0:
            await self._special(scope, raw_path[special + len(PREFIX):], body, send)
            return
        record = describe(scope, body)
        self.log.append(record)
        await _json(send, 200, record)

    async def _special(self, scope: Scope, name: bytes, body: bytes, send: Send) -> None:
        params = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        method = scope["method"]
        if name == b"log" and method == "GET":
            await _json(send, 200, list(self.log))
        elif name == b"log" and method == "DELETE":
            self.log.clear()
            await _json(send, 200, [])
        elif name == b"slow":
            await asyncio.sleep(float(params.get("seconds", "1")))
            await _json(send, 200, describe(scope, body))
        elif name == b"big" and method == "GET":
            await _stream(send, int(params.get("bytes", "0")))
        elif name == b"cookies":
            extra = [
                (b"set-cookie", b"a=1; Path=/"),
                (b"set-cookie", b"b=2; Path=/"),
                (b"x-echo-dup", b"one"),
                (b"x-echo-dup", b"two"),
            ]
            await _json(send, 200, describe(scope, body), extra)
        elif name == b"status":
            await _json(send, int(params.get("code", "200")), describe(scope, body))
        else:
            await _json(send, 404, {"error": "unknown echo path"})


def describe(scope: Scope, body: bytes) -> dict[str, object]:
    record: dict[str, object] = {
        "method": scope["method"],
        "path": (scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
        "query": scope["query_string"].decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
    }
    try:
        record["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        record["body"] = None
        record["bodyBase64"] = base64.b64encode(body).decode("ascii")
    return record


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _json(send: Send, status: int, doc: object, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    payload = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": payload})


async def _stream(send: Send, size: int) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    chunk = b"x" * CHUNK
    while size > 0:
        part = chunk if size >= CHUNK else chunk[:size]
        size -= len(part)
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


app = EchoApp()


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m keyscope.echo", description="keyscope's echo backend")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", access_log=False, server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
