"""What every management handler shares: its Control (the store, the key cache, the change hook), store errors
as refusals, answers with the gateway's exact headers, and routes that answer only the methods they name.

Handlers are plain functions of (Control, Request) returning a Response; `route()` binds one to its path and
method. They raise Refusal or ValidationError for anything refused, and `admin` turns those into error bodies
of the path's family, so a handler never writes an error body itself.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyscope.core.errors import JSON_HEADERS, Refusal
from keyscope.core.types import Receive, Scope, Send
from keyscope.decide.auth import KeyAuthenticator
from keyscope.store.base import Conflict, MissingReference, NotFound, Protected, Store

log = logging.getLogger("keyscope.admin")

_JSON_HEADERS = {name.decode("latin-1"): value.decode("latin-1") for name, value in JSON_HEADERS}


@dataclass(slots=True)
class Control:
    """The state handlers work on; one per management app."""

    store: Store
    authenticator: KeyAuthenticator
    on_change: Callable[[], Any] | None = None

    async def changed(self, key_id: str | None = None, *, keys: bool = True) -> None:
        """After a write: drop cached keys it may affect, then tell the gateway (caches of ids, workers).

        The write is committed by then, so a failing hook is logged, never answered as the write's failure."""
        if keys:
            self.authenticator.invalidate(key_id)
        if self.on_change is not None:
            try:
                result = self.on_change()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_change failed after a committed write")


Handler = Callable[[Control, Request], Awaitable[Response]]


class Answer(Response):
    """A management answer: a JSON document or an empty body, with Content-Length always (0 for an empty body,
    where Starlette would leave it out of a 204) and the gateway's JSON Content-Type when there is a body."""

    def __init__(self, status: int, content: bytes = b"") -> None:
        headers = {"content-length": str(len(content)), **(_JSON_HEADERS if content else {})}
        super().__init__(content, status, headers)


def reply(status: int, doc: Any = None) -> Answer:
    """`doc` as compact UTF-8 JSON; None for an empty body."""
    if doc is None:
        return Answer(status)
    return Answer(status, json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())


class _Route(Route):
    """A route that answers exactly its methods: Starlette adds HEAD to a GET route and answers a method it
    does not have with its own plain-text 405; the platform's API has no HEAD and answers 405 in its family."""

    def __init__(self, path: str, endpoint: Callable[[Request], Awaitable[Response]], method: str, name: str) -> None:
        super().__init__(path, endpoint, methods=[method], name=name)
        self.methods = {method}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in self.methods:  # a partial match: the path is known, the method is not
            raise Refusal(405, reason="method_not_allowed", step="admin")
        await self.app(scope, receive, send)


def route(control: Control, path: str, method: str, handler: Handler) -> Route:
    return _Route(path, partial(handler, control), method, handler.__name__)


async def stored(operation: Awaitable[Any], *, missing_status: int = 400) -> Any:
    """Store errors as refusals; a missing reference is a 400 naming the field (404 where the platform says so)."""
    try:
        return await operation
    except NotFound as exc:
        raise Refusal(404, reason="not_found", step="admin", detail=str(exc)) from None
    except Conflict as exc:
        raise Refusal(409, reason="conflict", step="admin", detail=str(exc)) from None
    except MissingReference as exc:
        detail = f"{exc.ident!r} does not exist"
        reason = "missing_reference"
        raise Refusal(missing_status, reason=reason, step="admin", field=exc.field, detail=detail) from None
    except Protected as exc:
        raise Refusal(400, reason="protected", step="admin", field="applicationId", detail=str(exc)) from None
