"""What the checks decided about one request, and how that becomes the answer and the access line.

An `Admission` is filled step by step, so that when a step refuses, the caller still knows the endpoint (for
the error family) and the key (for the log). Every entry point turns it into an answer the same way:
`refused()` on the ASGI path, `refused_early()` as bytes before any ASGI task exists, and `log()` for the
access line and the metrics of everything else.

Two things reach the answer from here beside the refusal: the rate-limit verdict (`rate`), whose
`RateLimit-*` headers go on the refusal (`refused()`, `refused_early()`) and on the admitted answer
(`answer_headers()`, added where the response's head is made: the gateway's upstream client, the middleware,
the authorizer); and a
shadowed refusal (`shadow`): the request is forwarded as the client sent it, the backend told why with
`X-Keyscope-Shadow-Refusal` (`identity_headers()`), and its access line says `shadow` with that reason and step.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyscope.allowlist.table import Endpoint
from keyscope.core.errors import Family, Refusal
from keyscope.core.models import ApiKey, PlatformEntry
from keyscope.core.types import Scope, Send
from keyscope.decide.answers import refusal_answer, refuse
from keyscope.decide.auth import KeyAuthenticator
from keyscope.http.canonical import HeaderMap
from keyscope.decide.ratelimit import Plan, Verdict
from keyscope.observe import accesslog, metrics

SHADOW = "shadow"
"""The access line's decision for a request forwarded though it would have been refused (shadow mode)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the middleware hands it to the wrapped app in `scope["state"]["keyscope"]`."""

    key_id: str
    name: str
    primary: bool
    entry: PlatformEntry | None
    endpoint: Endpoint | None


class Admission:
    __slots__ = ("endpoint", "key", "entry", "query", "body", "changed", "request_id", "user_agent", "client",
                 "principal_id", "bytes_in", "bytes_out", "upstream_ms", "cause", "rate", "counted", "shadow")

    def __init__(self) -> None:
        self.endpoint: Endpoint | None = None
        self.key: ApiKey | None = None
        self.entry: PlatformEntry | None = None
        self.query = b""
        self.body: bytes | None = None  # None: not read, stream it
        self.changed = False
        # for the access line and the X-Request-Id header, from `begin()` on
        self.request_id: str | None = None
        self.user_agent: bytes | None = None
        self.client: str | None = None
        self.principal_id: str | None = None  # who made a management call: "admin", or a key id
        self.bytes_in = 0
        self.bytes_out = 0
        self.upstream_ms: float | None = None
        self.cause: str | None = None  # why a forwarded request failed: upstream_refused, _timeout, _reset
        self.rate: Verdict | None = None  # what the rate limits said, for the RateLimit-* headers
        self.counted: Plan | None = None  # the limits counted in this worker's memory (for `Checks.decide()`)
        self.shadow: Refusal | None = None  # the refusal shadow mode forwarded instead

    def begin(self, scope: Scope, headers: HeaderMap | None, authenticator: KeyAuthenticator) -> str:
        """Note the request id (the client's X-Request-Id when sane, else a new one), the user agent, the body's
        declared length and the client address (as authentication computes it, through --trusted-proxies);
        returns the request id."""
        if headers is not None:
            given = headers.get(b"x-request-id")
            self.user_agent = headers.get(b"user-agent")
            length = headers.get(b"content-length")
        else:
            given = agent = length = None
            count = 0
            for name, value in scope["headers"]:
                if len(name) == 12 and name.lower() == b"x-request-id":
                    given = value
                    count += 1
                elif len(name) == 10 and name.lower() == b"user-agent":
                    agent = value
                elif len(name) == 14 and name.lower() == b"content-length":
                    length = value
            self.user_agent = agent
            if count > 1:
                given = None  # sent twice: neither is the client's id
        if length is not None and length.isdigit() and len(length) < 19:
            self.bytes_in = int(length)  # as declared, until the forwarding counts what came
        self.client = authenticator.client_text(scope)
        self.request_id = rid = accesslog.request_id(given)
        return rid

    async def refused(
        self, scope: Scope, send: Send, refusal: Refusal, started: float, authenticator: KeyAuthenticator
    ) -> None:
        """Answer a refusal through ASGI and log it."""
        if self.request_id is None:  # step 1 refused: the head has no header map
            self.begin(scope, None, authenticator)
        rate = self.rate
        extra = () if rate is None else rate.headers()
        self.bytes_out = await refuse(send, refusal, self.family, self.request_id, extra)
        self.log(started, scope, accesslog.REFUSED, refusal.status, refusal)

    def refused_early(
        self, scope: Scope, body: bytes, refusal: Refusal, started: float, authenticator: KeyAuthenticator,
        headers: HeaderMap | None,
    ) -> tuple[bytes, bool]:
        """A refusal as the complete HTTP/1.1 answer (and whether the connection closes after it), logged."""
        request_id = self.begin(scope, headers, authenticator)
        rate = self.rate
        answer, close = refusal_answer(refusal, self.family, request_id, () if rate is None else rate.headers())
        end = answer.index(b"\r\n\r\n") + 4
        if scope["method"] == "HEAD":  # the head alone, Content-Length included, as uvicorn sends it
            answer = answer[:end]
        self.bytes_in = len(body)
        self.bytes_out = len(answer) - end
        self.log(started, scope, accesslog.REFUSED, refusal.status, refusal)
        return answer, close

    @property
    def family(self) -> Family:
        return self.endpoint.errors if self.endpoint is not None else "legacy"

    @property
    def function(self) -> str | None:
        return self.endpoint.function if self.endpoint is not None else None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key is not None else None

    def effective_entry(self) -> PlatformEntry | None:
        """The entry that admitted the request; a key with a single entry is always admitted by that one."""
        if self.entry is not None or self.key is None:
            return self.entry
        platform = self.key.platform
        return platform[0] if len(platform) == 1 else None

    def identity_headers(self) -> list[tuple[str, str]]:
        """X-Keyscope-* for the backend: absent for kinds the entry leaves unset, all but the id for primaries;
        `X-Keyscope-Shadow-Refusal: <reason>` on a request shadow mode forwarded."""
        assert self.key is not None
        headers = [("X-Keyscope-Key-Id", self.key.id)]
        entry = self.effective_entry()
        if entry is not None:
            if entry.application_id is not None:
                headers.append(("X-Keyscope-Application-Id", entry.application_id))
            if entry.entity_id is not None:
                headers.append(("X-Keyscope-Entity-Id", entry.entity_id))
        if self.shadow is not None:
            headers.append(("X-Keyscope-Shadow-Refusal", self.shadow.reason))
        return headers

    def answer_headers(self) -> list[tuple[bytes, bytes]]:
        """What keyscope adds to an admitted request's answer: the `RateLimit-*` headers of a limited key."""
        rate = self.rate
        return [] if rate is None else rate.headers()

    def shadowed(self, refusal: Refusal, query: bytes, body: bytes | None) -> None:
        """Shadow mode: `refusal` is not answered; the request goes upstream as the client sent it."""
        self.shadow = refusal
        self.query = query
        self.body = body
        self.changed = False
        self.entry = None

    def log(
        self,
        started: float,
        scope: Scope,
        decision: str,
        status: int,
        refusal: Refusal | None = None,
        upstream: int | None = None,
    ) -> None:
        """The request's access line and metrics, from what the checks decided and how the answer went."""
        key, endpoint = self.key, self.endpoint
        if refusal is None and self.shadow is not None and decision == accesslog.FORWARDED:
            decision, refusal = SHADOW, self.shadow
        if refusal is not None:
            reason, step = refusal.reason, refusal.step
        elif self.cause is not None:
            reason, step = self.cause, "upstream"
        else:
            reason = step = None
        function = None if endpoint is None else endpoint.function
        metrics.record(started, decision, status, reason, step, function, self.upstream_ms, self.cause)
        accesslog.write(
            started,
            scope["method"],
            scope["raw_path"],
            decision,
            status,
            self.principal_id if key is None else key.id,
            function,
            reason,
            step,
            upstream,
            self.client,
            self.request_id,
            self.bytes_in,
            self.bytes_out,
            self.user_agent,
            self.upstream_ms,
        )

    def principal(self) -> Principal:
        """The caller for the wrapped app; one Principal per (key record, entry, endpoint), made once."""
        key, endpoint = self.key, self.endpoint
        assert key is not None
        entry = self.effective_entry()
        ident = (id(key), id(entry), id(endpoint))
        known = _PRINCIPALS.get(ident)
        # the cache holds the objects themselves, so an id in it cannot have been reused by another object
        if known is not None and known[0] is key and known[1] is entry and known[2] is endpoint:
            return known[3]
        principal = Principal(key.id, key.name, key.is_primary, entry, endpoint)
        if len(_PRINCIPALS) >= _PRINCIPALS_MAX:
            _PRINCIPALS.clear()
        _PRINCIPALS[ident] = (key, entry, endpoint, principal)
        return principal


_PRINCIPALS: dict[
    tuple[int, int, int], tuple[ApiKey, PlatformEntry | None, Endpoint | None, Principal]
] = {}  # frozen, so one instance serves every request of the same caller
_PRINCIPALS_MAX = 1024
