"""Starlette reader (what FastAPI reads): echoes a request as a Starlette app under uvicorn parses it.

The query is `request.query_params`, the form `await request.form()` (python-multipart), and the JSON body
is decided the way FastAPI decides it before binding a body model: no Content-Type, or an `application/*`
type whose subtype is `json` or ends in `+json`, is parsed with `await request.json()`.
"""

from __future__ import annotations

import email.message
import json
import sys

import uvicorn
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response

NAME = "starlette"
FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data")


def is_json(content_type: str | None) -> bool:
    """FastAPI's own test (fastapi/routing.py) for whether a body is read as JSON."""
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


async def read(request: Request) -> dict:
    params = request.query_params
    out = {"reader": NAME, "method": request.method, "path": request.scope["path"],
           "query": {name: params.get(name) for name in params},
           "query_all": {name: params.getlist(name) for name in params},
           "form": None, "files": [], "json": None}
    content_type = request.headers.get("content-type")
    if parse_options_header(content_type)[0] in FORM_TYPES:
        form = await request.form()
        fields = [(name, value) for name, value in form.multi_items() if not isinstance(value, UploadFile)]
        out["form"] = {name: form.get(name) for name, _ in fields}
        out["form_all"] = {name: [v for n, v in fields if n == name] for name, _ in fields}
        out["files"] = [name for name, value in form.multi_items() if isinstance(value, UploadFile)]
    elif await request.body() and is_json(content_type):
        out["json"] = await request.json()
    return out


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    request = Request(scope, receive)
    try:
        out, status = await read(request), 200
    except (HTTPException, MultiPartException, FormParserError, ValueError) as exc:  # FastAPI: 400/422, no view
        out = {"reader": NAME, "error": f"{type(exc).__name__}: {getattr(exc, 'detail', None) or exc}"}
        status = 400
    await Response(json.dumps(out), status, media_type="application/json")(scope, receive, send)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
