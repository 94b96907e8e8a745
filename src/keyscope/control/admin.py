"""The management API: applications, entities, associations (`/provisioning/1/*`) and keys (`/settings/2/api-keys*`).

Paths, bodies and status codes are the platform's, so its clients work unchanged. Who may call: the admin
token (`Authorization: Bearer ...`) everything; a primary API key the provisioning paths only (no API key may
mint or widen keys); a linked key nothing. Errors use the legacy family on `/provisioning/*` and the api-error
family on `/settings/*`, built by `keyscope.core.errors` so they match the gateway's byte for byte. Every request is
authenticated before anything else is looked at (an unknown path included: it tells a stranger nothing), and
nothing is written unless the whole document is valid.

Routing is Starlette's (`handling.route`, one module of handlers per resource); what Starlette would answer by
itself (a plain-text 404 or 405, a redirect for a trailing slash, HEAD for GET) is answered in the path's error
family instead, as the gateway answers.

`call()` runs the application in-process without a server: the CLI and the web interface use it, so they and
HTTP clients go through exactly the same checks.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from starlette.requests import ClientDisconnect
from starlette.routing import Router

from keyscope.control import applications, associations, entities, keys, state
from keyscope.control import audit as _audit
from keyscope.control import events as _events
from keyscope.control.bodies import MAX_BODY
from keyscope.control.handling import Answer, Control
from keyscope.core.errors import Family, Refusal, body, refusal_body
from keyscope.core.types import ASGIApp, Message, Receive, Scope, Send
from keyscope.decide.auth import KeyAuthenticator, authorization_header, split_credentials
from keyscope.documents.fields import ValidationError
from keyscope.store.base import Store, StoreUnavailable

__all__ = ["MAX_BODY", "AdminApp", "call", "create_app"]

log = logging.getLogger("keyscope.admin")


async def _no_such_path(scope: Scope, receive: Receive, send: Send) -> None:
    raise Refusal(404, reason="no_such_path", step="admin")


class AdminApp:
    def __init__(
        self,
        store: Store,
        *,
        admin_token: str | None,
        authenticator: KeyAuthenticator,
        on_change: Callable[[], Any] | None = None,
    ) -> None:
        self.control = Control(store, authenticator, on_change)
        self._admin_token = admin_token.encode() if admin_token else None
        routes = [
            *applications.routes(self.control),
            *entities.routes(self.control),
            *associations.routes(self.control),
            *keys.routes(self.control),
            *_audit.routes(self.control),
            *_events.routes(self.control),
            *state.routes(self.control),
        ]
        self.router = Router(routes, redirect_slashes=False, default=_no_such_path)

    @property
    def store(self) -> Store:
        return self.control.store

    @property
    def authenticator(self) -> KeyAuthenticator:
        return self.control.authenticator

    @property
    def on_change(self) -> Callable[[], Any] | None:
        """The change hook, which the web interface beside the gateway shares (`serve.web`)."""
        return self.control.on_change

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # The store's lifecycle belongs to whoever made it: the router only acknowledges startup and shutdown.
            await self.router({**scope}, receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        lowered = path.lower()
        keys_path = lowered.startswith("/settings/")  # in any case: a gateway may route /SETTINGS/ here too
        family: Family = "api-error" if keys_path else "legacy"
        try:
            principal = await self._check_caller(scope, keys=keys_path, own=lowered.startswith(_audit.PREFIX))
            await self.router(_routed(scope, principal), receive, send)
        except ClientDisconnect:
            return
        except Refusal as refusal:
            await Answer(refusal.status, refusal_body(refusal, family))(scope, receive, send)
        except ValidationError as exc:
            await Answer(400, body(400, family, exc.field, exc.detail))(scope, receive, send)
        except StoreUnavailable:
            log.warning("store unavailable during %s %s", scope["method"], path)
            await Answer(503, body(503, family))(scope, receive, send)

    async def _check_caller(self, scope: Scope, *, keys: bool, own: bool = False) -> str:
        """The principal, as the audit trail names it: `admin` for the admin token (or whom an in-process
        caller with it names, `audit.principal_for_admin`), the key's id for a primary key."""
        scheme, credentials = split_credentials(authorization_header(scope))
        if scheme == b"bearer":
            if self._admin_token is None or not hmac.compare_digest(credentials, self._admin_token):
                raise Refusal(401, reason="bad_admin_token", step="auth", detail="wrong admin token")
            return _audit.principal_for_admin(scope)
        key = await self.control.authenticator.authenticate(scope)
        if keys:
            raise Refusal(403, reason="key_management_needs_admin", step="auth", detail="API keys cannot manage keys")
        if own:  # /keyscope/...: the audit trail, the state of the store, the deletion events
            raise Refusal(403, reason="keyscope_api_needs_admin", step="auth",
                          detail="keyscope's own API (/keyscope/) takes the admin token, never an API key")
        if not key.is_primary:
            raise Refusal(403, reason="linked_key", step="auth", detail="linked keys cannot call management APIs")
        return key.id


def _routed(scope: Scope, principal: str) -> Scope:
    """The scope the router sees: a copy, since Starlette writes its route and path parameters into it and the
    caller's scope (the gateway's, logged after) stays as it was. Routes match the whole path, as the gateway's
    `is_management` did (no root_path taken off), and no exception handler of an enclosing Starlette app may
    answer a refusal in place of this app. It carries the principal for the audit trail."""
    routed = {**scope, "root_path": "", _audit.PRINCIPAL: principal}
    routed.pop("starlette.exception_handlers", None)
    return routed


def create_app(
    store: Store,
    *,
    admin_token: str | None,
    authenticator: KeyAuthenticator,
    on_change: Callable[[], Any] | None = None,
) -> AdminApp:
    return AdminApp(store, admin_token=admin_token, authenticator=authenticator, on_change=on_change)


async def call(
    app: ASGIApp,
    method: str,
    path: str,
    body: Any = None,
    query: Mapping[str, str] | None = None,
    token: str | None = None,
    principal: str | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run one request through the app in-process: (status, headers, body). `body` is encoded as JSON.

    `principal` names the caller in the audit trail in place of `admin` when `token` is the admin token (the
    CLI's `cli:<user>`, the web interface's `web:<sign-in>`); only an in-process caller can say so."""
    headers: list[tuple[bytes, bytes]] = []
    if token is not None:
        headers.append((b"authorization", b"Bearer " + token.encode()))
    content = b""
    if body is not None:
        content = json.dumps(body).encode()
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": urlencode(query or {}).encode(),
        "root_path": "",
        "headers": headers,
        "client": None,
        "server": None,
    }
    if principal is not None:
        scope[_audit.ON_BEHALF_OF] = principal
    sent = False
    response: dict[str, Any] = {"status": 500, "headers": [], "body": b""}

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": content, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            response["status"] = message["status"]
            response["headers"] = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            response["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return response["status"], response["headers"], response["body"]
