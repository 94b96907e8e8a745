"""keyscope's forwarding step alone (`keyscope.gateway.upstream.Upstream`), with no checks: a diagnostic row.

Set next to the bare aiohttp proxy and the full gateway, it splits keyscope's cost per request into what its
forwarding adds over the plain proxy and what the checks add over its forwarding. A POST body is read first
and forwarded as bytes, as the gateway does after checking it.

    BENCH_UPSTREAM=http://127.0.0.1:PORT uvicorn --app-dir benchmarks/gateway forward_only:app
"""

from __future__ import annotations

import os
from typing import Any

from keyscope.gateway.upstream import Upstream

upstream = Upstream(os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9"))


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await upstream.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await upstream.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = None
    if scope["method"] == "POST":  # as the gateway does once its checks have read a JSON body
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
    await upstream.forward(scope, receive, send, query=scope["query_string"], body=body)
