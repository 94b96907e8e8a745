"""aiohttp reader: echoes what an aiohttp.web handler reads with `request.query`, `await request.post()` and
`await request.json()`.

`post()` decides by itself which bodies are forms (no Content-Type or an empty one, urlencoded, multipart; for
POST, PUT, PATCH, DELETE and TRACE). aiohttp's server side `json()` does not look at the Content-Type at all,
so a handler that calls it reads any body that parses as JSON; a body that does not parse counts as "no JSON"
unless the Content-Type said JSON, when the handler would fail with a 400.
"""

from __future__ import annotations

import json
import sys

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

NAME = "aiohttp"


def text(value):
    """A form value as a handler would use it: `post()` gives a part with a non-text Content-Type as bytes."""
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else value


def single(values) -> dict:
    """`MultiDictProxy.get`: the first value of each name."""
    return {name: text(values.get(name)) for name in values}


def every(values) -> dict:
    return {name: [text(value) for value in values.getall(name)] for name in values}


async def read(request: web.Request) -> dict:
    out = {"reader": NAME, "method": request.method, "path": request.path, "query": single(request.query),
           "query_all": every(request.query), "form": None, "files": [], "json": None}
    form_type = request.content_type in ("", "application/x-www-form-urlencoded", "multipart/form-data")
    if form_type and request.method in request.POST_METHODS:
        post = await request.post()
        fields = [(name, value) for name, value in post.items() if not isinstance(value, web.FileField)]
        out["form"] = {name: text(post.get(name)) for name, _ in fields}
        out["form_all"] = {name: [text(v) for n, v in fields if n == name] for name, _ in fields}
        out["files"] = [name for name, value in post.items() if isinstance(value, web.FileField)]
    body = await request.read()
    if body and not (form_type and request.method in request.POST_METHODS):
        try:
            out["json"] = await request.json()
        except ValueError:
            if request.content_type == "application/json" or request.content_type.endswith("+json"):
                raise
    return out


async def echo(request: web.Request) -> web.Response:
    try:
        out, status = await read(request), 200
    except (web.HTTPException, HttpProcessingError, ValueError) as exc:  # aiohttp answers 4xx/5xx, runs no handler
        out, status = {"reader": NAME, "error": f"{type(exc).__name__}: {exc}"}, 400
    return web.Response(text=json.dumps(out), status=status, content_type="application/json")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
