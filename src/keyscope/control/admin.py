"""The management API: applications, entities, associations (`/provisioning/1/*`) and keys (`/settings/2/api-keys*`).

Paths, bodies and status codes are the platform's, so its clients work unchanged. Who may call: the admin
token (`Authorization: Bearer ...`) everything; a primary API key the provisioning paths only (no API key may
mint or widen keys); a linked key nothing. Errors use the legacy family on `/provisioning/*` and the api-error
family on `/settings/*`, built by `keyscope.core.errors` so they match the gateway's byte for byte. Every request is
authenticated before anything else is looked at, and nothing is written unless the whole document is valid.

`call()` runs the application in-process without a server: the CLI uses it, so the CLI and HTTP clients go
through exactly the same checks.
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from keyscope.control import schema
from keyscope.core.errors import JSON_HEADERS, Family, Refusal, body, refusal_body
from keyscope.core.keys import display_prefix, hash_secret, new_key_id, new_secret
from keyscope.core.models import ApiKey, PlatformEntry
from keyscope.core.types import ASGIApp, Message, Receive, Scope, Send
from keyscope.decide.auth import KeyAuthenticator, authorization_header, split_credentials
from keyscope.store.base import Conflict, MissingReference, NotFound, Protected, Store, StoreUnavailable

log = logging.getLogger("keyscope.admin")

MAX_BODY = 64 * 1024
PROVISIONING_MAX_SIZE = 1000
PROVISIONING_DEFAULT_SIZE = 20
KEYS_MAX_SIZE = 100
KEYS_DEFAULT_SIZE = 100

_PAGING = frozenset({"page", "size"})
_ASSOCIATION_QUERY = frozenset({"resourceType", "channel", "applicationId", "entityId", "resourceId"})
_KEYS_QUERY = frozenset({"page", "size", "name", "enabled"})


class _Disconnected(Exception):
    """The client went away while sending its body; there is nobody to answer."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    doc: Any = None  # None: an empty body


@dataclass(slots=True)
class Call:
    """One management request, as the handlers see it."""

    scope: Scope
    receive: Receive
    params: dict[str, str]
    family: Family

    def query(self, allowed: frozenset[str]) -> dict[str, str]:
        raw = self.scope.get("query_string", b"")
        try:
            items = parse_qsl(raw.decode("ascii"), keep_blank_values=True, errors="strict", max_num_fields=64)
        except (UnicodeError, ValueError):
            raise schema.ValidationError("query", "is not a valid query string") from None
        return schema.query_params(items, allowed)

    async def json(self) -> Any:
        return parse_json(await read_body(self.scope, self.receive))


Handler = Callable[[Call], Awaitable[Reply]]


async def read_body(scope: Scope, receive: Receive) -> bytes:
    """The JSON body, at most MAX_BODY bytes counted as they arrive (Content-Length is only a first hint)."""
    content_type = b""
    for name, value in scope["headers"]:
        lowered = name.lower()
        if lowered == b"content-type":
            content_type = value
        elif lowered == b"content-length":
            if not value.isdigit():
                raise Refusal(400, reason="bad_content_length", step="admin", field="Content-Length")
            if int(value) > MAX_BODY:
                raise Refusal(413, reason="body_too_large", step="admin")
    if content_type.split(b";", 1)[0].strip().lower() != b"application/json":
        raise Refusal(415, reason="not_json", step="admin")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise Refusal(413, reason="body_too_large", step="admin")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        name = next(n for i, (n, _) in enumerate(pairs) if any(n == m for m, _ in pairs[:i]))
        raise schema.ValidationError(name, "is given more than once")
    return doc


def _no_constants(name: str) -> Any:
    raise schema.ValidationError("body", f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8 without BOM, no duplicate names, no NaN/Infinity; anything else names `body`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise schema.ValidationError("body", "is not valid UTF-8") from None
    if text.startswith("\ufeff"):
        raise schema.ValidationError("body", "must not start with a byte order mark")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise schema.ValidationError("body", f"is not valid JSON ({exc.msg} at position {exc.pos})") from None
    except RecursionError:
        raise schema.ValidationError("body", "is nested too deeply") from None


def _route(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")


class AdminApp:
    def __init__(
        self,
        store: Store,
        *,
        admin_token: str | None,
        authenticator: KeyAuthenticator,
        on_change: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        self.authenticator = authenticator
        self.on_change = on_change
        self._admin_token = admin_token.encode() if admin_token else None
        self.routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (_route("/provisioning/1/applications"), {"GET": self.list_applications, "POST": self.create_application}),
            (
                _route("/provisioning/1/applications/{id}"),
                {"GET": self.get_application, "PUT": self.rename_application, "DELETE": self.delete_application},
            ),
            (_route("/provisioning/1/entities"), {"GET": self.list_entities, "POST": self.create_entity}),
            (
                _route("/provisioning/1/entities/{id}"),
                {"GET": self.get_entity, "PUT": self.rename_entity, "DELETE": self.delete_entity},
            ),
            (
                _route("/provisioning/1/associations"),
                {"GET": self.list_associations, "POST": self.create_association, "DELETE": self.delete_association},
            ),
            (_route("/provisioning/1/associations/single"), {"GET": self.get_association}),
            (_route("/settings/2/api-keys"), {"GET": self.list_keys, "POST": self.create_key}),
            (
                _route("/settings/2/api-keys/{id}"),
                {"GET": self.get_key, "PUT": self.update_key, "DELETE": self.delete_key},
            ),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        keys = path.lower().startswith("/settings/")  # in any case: a gateway may route /SETTINGS/ here too
        family: Family = "api-error" if keys else "legacy"
        try:
            await self._check_caller(scope, keys=keys)
            handler, params = self._match(scope["method"], path)
            reply = await handler(Call(scope, receive, params, family))
        except _Disconnected:
            return
        except Refusal as refusal:
            await _send(send, refusal.status, refusal_body(refusal, family))
            return
        except schema.ValidationError as exc:
            await _send(send, 400, body(400, family, exc.field, exc.detail))
            return
        except StoreUnavailable:
            log.warning("store unavailable during %s %s", scope["method"], path)
            await _send(send, 503, body(503, family))
            return
        status = reply.status
        if reply.doc is None:
            await _send(send, status, b"")
        else:
            await _send(send, status, json.dumps(reply.doc, separators=(",", ":"), ensure_ascii=False).encode())

    # who may call -----------------------------------------------------------------------------------
    async def _check_caller(self, scope: Scope, *, keys: bool) -> None:
        scheme, credentials = split_credentials(authorization_header(scope))
        if scheme == b"bearer":
            if self._admin_token is None or not hmac.compare_digest(credentials, self._admin_token):
                raise Refusal(401, reason="bad_admin_token", step="auth", detail="wrong admin token")
            return
        key = await self.authenticator.authenticate(scope)
        if keys:
            raise Refusal(403, reason="key_management_needs_admin", step="auth", detail="API keys cannot manage keys")
        if not key.is_primary:
            raise Refusal(403, reason="linked_key", step="auth", detail="linked keys cannot call management APIs")

    def _match(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        for pattern, methods in self.routes:
            found = pattern.match(path)
            if found is None:
                continue
            handler = methods.get(method)
            if handler is None:
                raise Refusal(405, reason="method_not_allowed", step="admin")
            return handler, found.groupdict()
        raise Refusal(404, reason="no_such_path", step="admin")

    async def _changed(self, key_id: str | None = None, *, keys: bool = True) -> None:
        """After a write: drop cached keys it may affect, then tell the gateway (caches of ids, workers)."""
        if keys:
            self.authenticator.invalidate(key_id)
        if self.on_change is not None:
            try:
                result = self.on_change()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_change failed after a committed write")

    # applications and entities ---------------------------------------------------------------------
    async def list_applications(self, call: Call) -> Reply:
        page, size = schema.parse_paging(call.query(_PAGING), PROVISIONING_DEFAULT_SIZE, PROVISIONING_MAX_SIZE)
        return Reply(200, schema.render_page(await self.store.list_applications(page, size), schema.render_application))

    async def create_application(self, call: Call) -> Reply:
        app = schema.parse_application(await call.json())
        await _store(self.store.create_application(app))
        await self._changed(keys=False)
        return Reply(201)

    async def get_application(self, call: Call) -> Reply:
        return Reply(200, schema.render_application(await _store(self.store.get_application(call.params["id"]))))

    async def rename_application(self, call: Call) -> Reply:
        name = schema.parse_application_update(await call.json(), call.params["id"])
        await _store(self.store.rename_application(call.params["id"], name))
        await self._changed(keys=False)
        return Reply(204)

    async def delete_application(self, call: Call) -> Reply:
        report = await _store(self.store.delete_application(call.params["id"]))
        await self._changed()
        return Reply(200, schema.render_cascade(report))

    async def list_entities(self, call: Call) -> Reply:
        page, size = schema.parse_paging(call.query(_PAGING), PROVISIONING_DEFAULT_SIZE, PROVISIONING_MAX_SIZE)
        return Reply(200, schema.render_page(await self.store.list_entities(page, size), schema.render_entity))

    async def create_entity(self, call: Call) -> Reply:
        entity = schema.parse_entity(await call.json())
        await _store(self.store.create_entity(entity))
        await self._changed(keys=False)
        return Reply(201)

    async def get_entity(self, call: Call) -> Reply:
        return Reply(200, schema.render_entity(await _store(self.store.get_entity(call.params["id"]))))

    async def rename_entity(self, call: Call) -> Reply:
        name = schema.parse_entity_update(await call.json(), call.params["id"])
        await _store(self.store.rename_entity(call.params["id"], name))
        await self._changed(keys=False)
        return Reply(204)

    async def delete_entity(self, call: Call) -> Reply:
        report = await _store(self.store.delete_entity(call.params["id"]))
        await self._changed()
        return Reply(200, schema.render_cascade(report))

    # associations ----------------------------------------------------------------------------------
    async def list_associations(self, call: Call) -> Reply:
        params = call.query(_PAGING | _ASSOCIATION_QUERY)
        page, size = schema.parse_paging(params, PROVISIONING_DEFAULT_SIZE, PROVISIONING_MAX_SIZE)
        found = await self.store.list_associations(schema.parse_association_filter(params), page, size)
        return Reply(200, schema.render_page(found, schema.render_association))

    async def get_association(self, call: Call) -> Reply:
        wanted = schema.parse_association_key(call.query(_ASSOCIATION_QUERY))
        found = await _store(
            self.store.get_association(
                wanted.resource_type, wanted.channel, wanted.application_id, wanted.resource_id, wanted.entity_id
            )
        )
        return Reply(200, schema.render_association(found))

    async def create_association(self, call: Call) -> Reply:
        association = schema.parse_association(await call.json())
        await _store(self.store.create_association(association), missing_status=404)
        await self._changed(keys=False)
        return Reply(201)

    async def delete_association(self, call: Call) -> Reply:
        association = schema.parse_association(await call.json())
        await _store(self.store.delete_association(association))
        await self._changed(keys=False)
        return Reply(204)

    # keys ------------------------------------------------------------------------------------------
    async def list_keys(self, call: Call) -> Reply:
        params = call.query(_KEYS_QUERY)
        page, size = schema.parse_paging(params, KEYS_DEFAULT_SIZE, KEYS_MAX_SIZE)
        name = schema.check_name(params["name"], "name") if "name" in params else None
        enabled = schema.parse_bool_param(params, "enabled")
        return Reply(200, schema.render_key_page(await self.store.list_keys(page, size, name=name, enabled=enabled)))

    async def create_key(self, call: Call) -> Reply:
        now = datetime.now(UTC).replace(microsecond=0)
        draft = schema.parse_key_create(await call.json(), now)
        secret = new_secret()
        key = ApiKey(
            id=new_key_id(),
            name=draft.name,
            secret_hash=hash_secret(secret),
            prefix=display_prefix(secret),
            allowed_ips=draft.allowed_ips,
            valid_from=draft.valid_from,
            valid_to=draft.valid_to,
            enabled=draft.enabled,
            platform=tuple(PlatformEntry("", e.application_id, e.entity_id, e.action) for e in draft.platform),
            created_at=now,
        )
        stored = await _store(self.store.create_key(key))
        await self._changed(stored.id)
        return Reply(200, schema.render_key(stored, secret=secret))

    async def get_key(self, call: Call) -> Reply:
        return Reply(200, schema.render_key(await _store(self.store.get_key(call.params["id"]))))

    async def update_key(self, call: Call) -> Reply:
        update = schema.parse_key_update(await call.json())
        current = await _store(self.store.get_key(call.params["id"]))
        schema.check_key_update(current, update)
        updated = await _store(self.store.update_key(current.id, update))
        await self._changed(updated.id)
        return Reply(200, schema.render_key(updated))

    async def delete_key(self, call: Call) -> Reply:
        await _store(self.store.delete_key(call.params["id"]))
        await self._changed(call.params["id"])
        return Reply(204)


async def _store(operation: Awaitable[Any], *, missing_status: int = 400) -> Any:
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


async def _send(send: Send, status: int, content: bytes) -> None:
    headers = [(b"content-length", str(len(content)).encode())]
    if content:
        headers += JSON_HEADERS
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


async def _lifespan(receive: Receive, send: Send) -> None:
    """The store's lifecycle belongs to whoever made it; this app only acknowledges startup and shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


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
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run one request through the app in-process: (status, headers, body). `body` is encoded as JSON."""
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
