"""What many users would write: the widely copied Starlette + httpx reverse-proxy snippet, no checks.

Kept as the tutorials have it (Starlette `Request`, a shared `httpx.AsyncClient`, `send(stream=True)`,
`StreamingResponse(aiter_raw(), headers=r.headers)`), flaws included: the baseline notes list them (it forwards
the client's Host, merges duplicate headers, sends GETs chunked). It is the throughput yardstick, not a model.

    BENCH_UPSTREAM=http://127.0.0.1:PORT uvicorn --app-dir benchmarks/gateway tutorial_proxy:app
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

client = httpx.AsyncClient(base_url=os.environ.get("BENCH_UPSTREAM", ""))


async def _reverse_proxy(request: Request) -> StreamingResponse:
    url = httpx.URL(path=request.url.path, query=request.url.query.encode("utf-8"))
    rp_req = client.build_request(request.method, url, headers=request.headers.raw, content=request.stream())
    rp_resp = await client.send(rp_req, stream=True)
    return StreamingResponse(
        rp_resp.aiter_raw(),
        status_code=rp_resp.status_code,
        headers=rp_resp.headers,
        background=BackgroundTask(rp_resp.aclose),
    )


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await client.aclose()


app = Starlette(
    routes=[Route("/{path:path}", _reverse_proxy, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])],
    lifespan=_lifespan,
)
