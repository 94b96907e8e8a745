"""`keyscope authorize`: steps 1-5 answered as an authorization check for a proxy that forwards by itself.

A pure ASGI app, a third driver of `keyscope.decide.checks.Checks` beside the gateway and the middleware: the same
`handle()` runs steps 1-5 on the original request, refusals are the same answers and access lines, and an admitted
request is answered 200 with the `X-Keyscope-*` identity headers instead of being forwarded. How a check request
carries the original request is the contract, chosen by configuration (`--contract`), never by a request:

    envoy   ext_authz HTTP service: the check request IS the original (method, path with query, headers; with
            `with_request_body` the body, marked by `x-envoy-auth-partial-body`, which Envoy sets and never takes
            from a client). 200 admits: the identity headers go upstream (`allowed_upstream_headers`) and
            `x-envoy-auth-headers-to-remove` drops client-sent copies of those the key leaves unset. Any other
            status is relayed to the client with its body (a 5xx becomes Envoy's `status_on_error`).
    nginx   auth_request: the method in `X-Original-Method`, the raw target in `X-Original-URI`, the framing in
            `X-Original-Body` (`$content_length,$http_transfer_encoding`), the other headers as the client sent
            them, never the body. nginx relays only 401 and 403 (anything else but 2xx is a 500): every other
            refusal is answered 403 with its status in `X-Keyscope-Status` and the rest in `X-Keyscope-Refusal`,
            which nginx's `error_page` sends back to `/refusal` to be answered as the gateway would (docs/nginx.conf).

What an authorizer cannot do is refused with reasons of its own: a FILL/FORCE key whose request would have to be
rewritten (`rewrite_needs_gateway`), a request whose body the checks must read but the proxy did not send
(`body_not_forwarded`), both 403: the key may not make this request through this deployment, the request is not
malformed, and nginx relays 403 as it is. A body Envoy cut short is 413 `partial_body`; the management API,
which only `keyscope serve` answers, 403 `management_not_here`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

from keyscope.allowlist.table import Endpoint
from keyscope.allowlist.table import load as load_endpoints
from keyscope.core.errors import Refusal
from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits
from keyscope.core.settings import CONTRACTS, DEFAULT_HEADER_TIMEOUT, Settings
from keyscope.core.types import Receive, Scope, Send
from keyscope.decide.admission import SHADOW, Admission
from keyscope.decide.checks import Checks
from keyscope.decide.ratelimit import LOCAL
from keyscope.gateway import lifespan
from keyscope.gateway.contracts import (
    HEADERS_TO_REMOVE,
    IDENTITY,
    MANAGEMENT,
    REFUSAL_PATH,
    REWRITE_NEEDS_GATEWAY,
    ContractError,
    auth_request_status,
    envoy_body,
    nginx_body,
    original_request,
    replay_refusal,
)
from keyscope.http.canonical import HeaderMap
from keyscope.observe import metrics
from keyscope.store import Store, store_from_url

logger = logging.getLogger("keyscope.authorizer")

ENVOY, NGINX = CONTRACTS
ADMITTED = "admitted"
"""The access line's `decision` for a check answered 200 (nothing is forwarded by keyscope)."""

class Authorizer:
    def __init__(
        self,
        *,
        contract: str,
        endpoints: Sequence[Endpoint],
        store: Store,
        key_cache_ttl: float = 5.0,
        trusted_proxies: Sequence[str] = (),
        max_body_size: int = 1024 * 1024,
        limits: Limits = DEFAULT_LIMITS,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        rate_limit_store: str = LOCAL,
        rate_limit_on_error: str = "allow",
        shadow: bool = False,
    ) -> None:
        assert contract in CONTRACTS, contract
        self.contract = contract
        self.store = store
        self.limits = limits
        """The head's bounds for keyscope.gateway.protocol. An nginx check request carries the client's headers,
        nginx's own and the target once more: the protocol lets through any head nginx may send (as many lines
        as fit the bytes; the bytes, one target and 1 KiB more), and step 1 holds the original request to
        `limits`, its refusal mapped for auth_request (a 431 from the protocol would be a 500 from nginx)."""
        if contract == NGINX:
            self.limits = dataclasses.replace(limits, headers=limits.headers + limits.header_bytes // 4,
                                              header_bytes=limits.header_bytes + limits.target_bytes + 1024)
        self.header_timeout = header_timeout
        self.draining = False  # keyscope.serve.status
        self.checks = Checks.assemble(
            endpoints=endpoints, store=store, key_cache_ttl=key_cache_ttl, trusted_proxies=trusted_proxies,
            max_body_size=max_body_size, limits=limits, rate_limit_store=rate_limit_store,
            rate_limit_on_error=rate_limit_on_error, shadow=shadow,
        )
        self.authenticator = self.checks.authenticator

    @classmethod
    def from_settings(cls, settings: Settings) -> Authorizer:
        assert settings.contract is not None
        return cls(
            contract=settings.contract,
            endpoints=load_endpoints(settings.endpoints),
            store=store_from_url(settings.store),
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
        if self.contract == NGINX and scope["raw_path"] == REFUSAL_PATH:
            await replay_refusal(scope, send)
            return
        metrics.in_flight_inc()
        try:
            await self._check(scope, receive, send)
        finally:
            metrics.in_flight_dec()

    async def _check(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        admission = Admission()
        if self.contract == NGINX:
            try:
                scope, declared = original_request(scope)
            except ContractError as exc:
                logger.error("nginx check request: %s (see docs/nginx.conf)", exc)
                refusal = Refusal(500, "contract_headers", "canonical", None, f"Authorizer misconfigured: {exc}.")
                await admission.refused(scope, send, refusal, started, self.authenticator)
                return
            receive, send = nginx_body(declared), auth_request_status(send)
        else:
            receive = envoy_body(scope["headers"], receive)
        if not await self.checks.handle(scope, receive, send, admission, started, _management):
            return
        if admission.changed:  # FILL/FORCE: refused, or in shadow mode admitted as sent and noted
            assert admission.key is not None
            if not self.checks.shadows(admission.key):
                await admission.refused(scope, send, REWRITE_NEEDS_GATEWAY, started, self.authenticator)
                return
            admission.shadowed(REWRITE_NEEDS_GATEWAY, scope["query_string"], None)
        await send({"type": "http.response.start", "status": 200, "headers": self._admitted(admission)})
        await send({"type": "http.response.body", "body": b""})
        shadow = admission.shadow
        admission.log(started, scope, ADMITTED if shadow is None else SHADOW, 200, shadow)

    def _admitted(self, admission: Admission) -> list[tuple[bytes, bytes]]:
        """The identity headers (and the request id); for Envoy, the removal of those this key leaves unset,
        so that a client's own `X-Keyscope-Application-Id` never reaches the backend beside a primary key."""
        identity = admission.identity_headers()
        headers = [(name.lower().encode(), value.encode()) for name, value in identity]
        headers.append((b"x-request-id", (admission.request_id or "").encode("ascii")))
        headers.append((b"content-length", b"0"))
        headers += admission.answer_headers()  # RateLimit-* of a limited key
        if self.contract == ENVOY:
            unset = [name.lower() for name in IDENTITY if name not in dict(identity)]
            if unset:
                headers.append((HEADERS_TO_REMOVE, ", ".join(unset).encode()))
        return headers

    async def lifespan(self, receive: Receive, send: Send) -> None:
        await lifespan.run(receive, send, self.startup, self.shutdown, logger)

    async def startup(self) -> None:
        await self.store.open()
        await self.checks.start()

    async def shutdown(self) -> None:
        await self.checks.stop()
        await self.store.close()


async def _management(
    scope: Scope, receive: Receive, send: Send, admission: Admission, started: float, headers: HeaderMap | None
) -> None:
    raise MANAGEMENT  # answered and logged by Checks.handle as any refusal


