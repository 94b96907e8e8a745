"""The gateway: a pure ASGI app that runs the request path top to bottom and forwards what it admits.

    1. canonical target (every caller)                      decide.checks.Checks.target
       management paths -> the admin app, never forwarded   decide.management.is_management
    2. authenticate  3./4. allowlist and ids  5. ids exist  decide.checks.Checks.steps
    6. forward                                              gateway.upstream.Upstream.forward
    7. refusals in the endpoint's error family              decide.answers
    8. one access-log line                                  decide.admission.Admission.log

Under `keyscope serve`, a request that arrives whole is first offered to `early()` (see `keyscope.gateway.protocol`):
steps 1-5 run there, without a coroutine, when they need no waiting, and a refusal leaves as bytes before any
ASGI task exists. What `early()` admits still comes through `__call__`, which then only forwards it.

The lifespan opens the store and the upstream session of this worker and closes them on shutdown.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Sequence

from keyscope.allowlist.table import Endpoint
from keyscope.allowlist.table import load as load_endpoints
from keyscope.control import admin
from keyscope.core.errors import Refusal
from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits
from keyscope.core.settings import DEFAULT_HEADER_TIMEOUT, Settings
from keyscope.core.types import Message, Receive, Scope, Send
from keyscope.decide.admission import Admission
from keyscope.decide.auth import authorization_header, split_credentials
from keyscope.decide.checks import Checks
from keyscope.decide.management import is_management
from keyscope.decide.ratelimit import LOCAL
from keyscope.gateway import lifespan
from keyscope.gateway.upstream import Upstream
from keyscope.observe import accesslog, metrics
from keyscope.store import Store, store_from_url

logger = logging.getLogger("keyscope.gateway")

_perf_counter = time.perf_counter
_in_flight_inc = metrics.in_flight_inc  # requests inside this app: keyscope_requests_in_flight
_in_flight_dec = metrics.in_flight_dec
_READS = frozenset(("GET", "HEAD", "OPTIONS"))
_ADMITTED = "keyscope.admitted"
"""Scope key under which `early()` hands an admitted request (its Admission and start time) to `__call__`."""


class Gateway:
    def __init__(
        self,
        *,
        endpoints: Sequence[Endpoint],
        store: Store,
        upstream: Upstream,
        admin_token: str | None = None,
        key_cache_ttl: float = 5.0,
        trusted_proxies: Sequence[str] = (),
        max_body_size: int = 1024 * 1024,
        limits: Limits = DEFAULT_LIMITS,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        rate_limit_store: str = LOCAL,
        rate_limit_on_error: str = "allow",
        shadow: bool = False,
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.limits = limits
        """The bounds on every input; `keyscope.gateway.protocol` reads them (and `header_timeout`) from the app."""
        self.header_timeout = header_timeout
        self.draining = False
        self._admin_token = admin_token.encode() if admin_token else None
        """From the first SIGTERM on under `--status-listen` (`keyscope.serve.status`): not ready, traffic still served."""
        self.checks = Checks.assemble(
            endpoints=endpoints, store=store, key_cache_ttl=key_cache_ttl, trusted_proxies=trusted_proxies,
            max_body_size=max_body_size, limits=limits, rate_limit_store=rate_limit_store,
            rate_limit_on_error=rate_limit_on_error, shadow=shadow,
        )
        self.authenticator = self.checks.authenticator
        self.admin = admin.create_app(
            store, admin_token=admin_token, authenticator=self.authenticator, on_change=self.checks.known_ids.clear
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateway:
        """Build (without opening anything) from validated settings."""
        upstream = Upstream(
            settings.upstream,
            authorization=settings.upstream_authorization,
            timeout=settings.upstream_timeout,
            connections=settings.upstream_connections,
            trusted_proxies=settings.trusted_proxies,
        )
        return cls(
            endpoints=load_endpoints(settings.endpoints),
            store=store_from_url(settings.store),
            upstream=upstream,
            admin_token=settings.admin_token,
            header_timeout=settings.header_timeout,
            **Checks.options(settings),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.lifespan(receive, send)
            elif scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        _in_flight_inc()
        try:
            admitted = scope.pop(_ADMITTED, None)
            if admitted is not None:
                await self._forward(scope, receive, send, *admitted)
                return
            started = _perf_counter()
            admission = Admission()
            if await self.checks.handle(scope, receive, send, admission, started, self._manage):
                await self._forward(scope, receive, send, admission, started)
        finally:
            _in_flight_dec()

    async def _forward(self, scope: Scope, receive: Receive, send: Send, admission: Admission, started: float) -> None:
        status, upstream_status = await self.upstream.forward(
            scope,
            receive,
            send,
            query=admission.query,
            body=admission.body,
            identity=admission.identity_headers(),
            family=admission.family,
            note=admission,
        )
        decision = accesslog.FORWARDED if upstream_status is not None else accesslog.FAILED
        admission.log(started, scope, decision, status, None, upstream_status)

    def _caller(self, scope: Scope, headers: dict[bytes, bytes] | None) -> str | None:
        """Who made a management call, for the log: `admin` for the admin token, else the key's id (the admin
        app authenticated it a moment ago, so it is cached). Never the credentials themselves."""
        try:
            scheme, credentials = split_credentials(authorization_header(scope, headers))
            if scheme == b"bearer":
                token = self._admin_token
                return "admin" if token is not None and hmac.compare_digest(credentials, token) else None
            record = self.authenticator.cached(self.authenticator.secret_hash(scope, headers))
        except Refusal:
            return None
        return None if record is None else record.key.id

    def early(self, scope: Scope, body: bytes) -> tuple[bytes, bool] | None:
        """Steps 1-5 for a request whose whole body is here, before any ASGI task (`keyscope.gateway.protocol`).

        A refusal: its complete HTTP/1.1 answer and whether the connection closes after it, logged here.
        None: the request goes to `__call__` as usual; if it was admitted here, it carries its Admission and
        is only forwarded there. Management requests, and checks that would have to wait, are left alone."""
        started = _perf_counter()
        admission = Admission()
        headers = None
        try:
            headers = self.checks.target(scope)
            if is_management(scope["raw_path"]) or not self.checks.decide(scope, body, admission, headers):
                return None
        except Refusal as refusal:
            return admission.refused_early(scope, body, refusal, started, self.authenticator, headers)
        admission.begin(scope, headers, self.authenticator)
        scope[_ADMITTED] = (admission, started)
        return None

    async def _manage(
        self, scope: Scope, receive: Receive, send: Send, admission: Admission, started: float,
        headers: dict[bytes, bytes] | None,
    ) -> None:
        """A management call: the admin app answers it, after hearing of revocations (API keys may call it)."""
        await self.checks.watcher.tick()
        status = await self._admin(scope, receive, send, admission)
        if status != 401:
            admission.principal_id = self._caller(scope, headers)
        admission.log(started, scope, accesslog.MANAGEMENT, status)

    async def _admin(self, scope: Scope, receive: Receive, send: Send, admission: Admission) -> int:
        status = 0
        request_id = (b"x-request-id", (admission.request_id or "").encode("ascii"))

        admission.bytes_in = 0  # counted as it comes

        async def receive_and_count() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                admission.bytes_in += len(message.get("body", b""))
            return message

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), request_id]}
                if status < 400 and scope["method"] not in _READS:
                    # a change made here: heard of by this process before its caller is told it is done, so
                    # that the caller's next request is not the one to find the revision moved and empty caches
                    await self.checks.watcher.tick(force=True)
            elif message["type"] == "http.response.body":
                admission.bytes_out += len(message.get("body", b""))
            await send(message)

        await self.admin(scope, receive_and_count, send_and_note)
        return status

    async def lifespan(self, receive: Receive, send: Send) -> None:
        await lifespan.run(receive, send, self.startup, self.shutdown, logger)

    async def startup(self) -> None:
        await self.store.open()
        await self.checks.start()
        await self.upstream.start()

    async def shutdown(self) -> None:
        await self.checks.stop()
        await self.upstream.close()
        await self.store.close()

