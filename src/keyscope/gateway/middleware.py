"""`KeyScopeMiddleware`: keyscope's checks in front of any ASGI app, in the same process.

It runs the gateway's steps 1-5 with the gateway's own code (`keyscope.decide.checks`), answers refusals itself in
the endpoint's error family (step 7), logs one access line (step 8), and otherwise calls the wrapped app with
the request as admitted: the query and body after FILL/FORCE (the body replayed through a new `receive`), and
`scope["state"]["keyscope"]`, a `checks.Principal` (key id, name, whether primary, matched entry, endpoint).
Starlette and FastAPI read it as `request.state.keyscope`.

    app = KeyScopeMiddleware(app, store="sqlite:///keyscope.db")            # packaged endpoints.yaml
    app = KeyScopeMiddleware(app, endpoints="endpoints.yaml", store=store)  # a Store you open and close
    app = KeyScopeMiddleware(app, store=..., rate_limit_store="redis://127.0.0.1:6379/0", shadow=True)

Keys' and applications' rate limits hold here too (429 with `Retry-After`, `RateLimit-*` on the app's answers),
counted in this process (`local`) or in Redis; shadow mode logs what it would refuse as `shadow` and calls the
app anyway, with an `X-Keyscope-Shadow-Refusal` header naming the reason, as the gateway tells its upstream. As
there, `X-Keyscope-*` headers the client sent never reach the app.

A store given as a URL is opened at lifespan start-up (or on the first request) and closed at shutdown; a
`Store` object is used as given (open it before the first request). Either way the middleware hears of
changes other processes make to keys (`keyscope.store.watch`) from the first request on. WebSocket connections are
closed: they would bypass every check.

What is checked is what the app gets. Step 1 bounds the head (`limits`, the same 414/431 as `keyscope serve`)
and refuses what a server's parsing could make ambiguous. Trailers of a chunked body are never headers to the
app: uvicorn's h11 protocol drops them, its httptools protocol appends them to the scope's header list as they
arrive, so a chunked request's list is copied when step 1 has read it (trailers that arrived with the head, before
the checks ran, are then checked like any header). Memory before the app runs is the server's business: h11
bounds an incomplete head (`h11_max_incomplete_event_size`, 16 KiB), uvicorn's httptools protocol does not.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence

from keyscope.allowlist.table import Endpoint
from keyscope.allowlist.table import load as load_endpoints
from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits
from keyscope.core.types import ASGIApp, Message, Receive, Scope, Send
from keyscope.decide.admission import Admission
from keyscope.decide.checks import Checks
from keyscope.decide.ratelimit import LOCAL
from keyscope.observe import accesslog
from keyscope.store import Store, store_from_url

_perf_counter = time.perf_counter
_KEYSCOPE_PREFIX = b"x-keyscope-"


class KeyScopeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        store: Store | str,
        endpoints: Sequence[Endpoint] | str | os.PathLike[str] | None = None,
        key_cache_ttl: float = 5.0,
        trusted_proxies: Sequence[str] = (),
        max_body_size: int = 1024 * 1024,
        limits: Limits = DEFAULT_LIMITS,
        rate_limit_store: str = LOCAL,
        rate_limit_on_error: str = "allow",
        shadow: bool = False,
    ) -> None:
        self.app = app
        if endpoints is None or isinstance(endpoints, (str, os.PathLike)):
            endpoints = load_endpoints(endpoints)
        self._owns_store = isinstance(store, str)
        self.store = store_from_url(store) if isinstance(store, str) else store
        self._ready = False
        self._opening: asyncio.Lock | None = None
        self.checks = Checks.assemble(
            endpoints=endpoints, store=self.store, key_cache_ttl=key_cache_ttl, trusted_proxies=trusted_proxies,
            max_body_size=max_body_size, limits=limits, rate_limit_store=rate_limit_store,
            rate_limit_on_error=rate_limit_on_error, shadow=shadow,
        )
        self.authenticator = self.checks.authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._other(scope, receive, send)
            return
        started = _perf_counter()
        if not scope.get("raw_path"):
            raise RuntimeError("KeyScopeMiddleware needs an ASGI server that provides scope['raw_path']")
        if not self._ready:
            await self._open()
        # A chunked body may end in trailers, which uvicorn's httptools protocol appends to the scope's header
        # list as they arrive: what the checks read and the app gets is the head as checked, a copy of it.
        scope = {**scope, "headers": list(scope["headers"])}
        admission = Admission()
        if not await self.checks.handle(scope, receive, send, admission, started):
            return

        state = scope.get("state")  # `scope` is this middleware's own copy from here on: changed in place
        scope["query_string"] = admission.query
        principal = admission.principal()
        scope["state"] = {**state, "keyscope": principal} if state else {"keyscope": principal}
        headers = scope["headers"]
        if admission.shadow is not None or any(name.startswith(_KEYSCOPE_PREFIX) for name, _ in headers):
            # X-Keyscope-* headers are keyscope's word to the app, never the client's (as the gateway's upstream)
            headers = scope["headers"] = [item for item in headers if not item[0].startswith(_KEYSCOPE_PREFIX)]
            if admission.shadow is not None:
                headers.append((b"x-keyscope-shadow-refusal", admission.shadow.reason.encode("ascii")))
        body = admission.body
        if body is not None:
            if admission.changed:
                scope["headers"] = [
                    (name, value) for name, value in headers
                    if name not in (b"content-length", b"transfer-encoding")
                ] + [(b"content-length", str(len(body)).encode())]
            receive = _replay(body, receive)
        status = 0
        request_id = (b"x-request-id", (admission.request_id or "").encode("ascii"))
        extra = admission.answer_headers()  # RateLimit-* of a limited key

        async def send_and_note(message: Message) -> None:
            # the app's answer carries the request id too (the app's own X-Request-Id, if any, is replaced)
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [item for item in message.get("headers", ()) if item[0].lower() != b"x-request-id"]
                headers += extra
                headers.append(request_id)
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                admission.bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            admission.log(started, scope, accesslog.FORWARDED, status or 500, None, status or 500)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await self.app(scope, receive, send)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and self._owns_store:
                await self._open()  # a caller's store may open later, in the app's own start-up
            elif message["type"] == "lifespan.shutdown":
                await self.close()
            return message

        return wrapped

    async def _open(self) -> None:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if not self._ready:
                if self._owns_store:
                    await self.store.open()
                await self.checks.start()
                self._ready = True

    async def close(self) -> None:
        """Write pending "last used" stamps, stop hearing of changes, close the store if the middleware opened it."""
        if not self._ready:
            return
        self._ready = False
        await self.checks.stop()
        if self._owns_store:
            await self.store.close()


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body the checks read (and maybe rewrote), then the server's receive for the disconnect."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

