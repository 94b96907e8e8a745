"""Middleware mode: a minimal Starlette app answering like the backend, with or without KeyScopeMiddleware.

The two rows differ only by the middleware, so their CPU per request gives what the middleware adds in-process.

    BENCH_MIDDLEWARE=0 uvicorn --app-dir benchmarks/gateway mw_app:app              # the bare app
    BENCH_MIDDLEWARE=1 BENCH_STORE=sqlite:////abs/keyscope.db uvicorn ... mw_app:app  # behind the checks
"""

from __future__ import annotations

import os

from backend import answer
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def echo(request: Request) -> Response:
    body = await request.body()
    payload = answer(request.method, request.scope["raw_path"], request.scope["query_string"], len(body))
    return Response(payload, media_type="application/json")


def _middleware() -> list[Middleware]:
    if os.environ.get("BENCH_MIDDLEWARE") != "1":
        return []
    from keyscope.gateway.middleware import KeyScopeMiddleware

    store = os.environ.get("BENCH_STORE")
    if not store:
        raise SystemExit("mw_app: BENCH_MIDDLEWARE=1 needs BENCH_STORE=sqlite:////abs/path.db")
    return [Middleware(KeyScopeMiddleware, store=store)]


app = Starlette(
    routes=[Route("/sms/2/text/advanced", echo, methods=["POST"]), Route("/sms/1/logs", echo)],
    middleware=_middleware(),
)
