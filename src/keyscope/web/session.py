"""Sign-in sessions and CSRF tokens for the web interface, kept in memory on the server.

The cookie carries only a random session id; the table holds its SHA-256, the CSRF token of the session,
when it was last used and the sign-in's name. Everyone signs in with the admin token, so a session cannot say
which person it is: the audit trail names its changes `web:<sign-in>`, a random label drawn at sign-in (never
derived from the cookie), and the sign-in itself is logged on `keyscope.audit` with that label, the client's
address and the time, which is what ties a change made in the interface to where it came from. A session
ends on sign-out, after `idle_timeout` seconds without a request, or when the process restarts (operators
sign in again: nothing about a session is worth persisting). The CSRF token is per session and checked on
every POST; together with `SameSite=Strict` and the Origin check this keeps other sites from submitting the
interface's forms.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "keyscope_session"
DEFAULT_IDLE_TIMEOUT = 15 * 60.0
MAX_SESSIONS = 1000


@dataclass(slots=True)
class Session:
    csrf: str
    last_seen: float
    flash: list[str] = field(default_factory=list)  # messages for the next page shown
    signin: str = field(default_factory=lambda: secrets.token_hex(4))  # the sign-in's name, not a secret

    @property
    def principal(self) -> str:
        """Who the audit trail says made a change through this session."""
        return f"web:{self.signin}"


class Sessions:
    def __init__(
        self,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        secure: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`secure`: the cookie's Secure flag; None sets it when the request came over TLS."""
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        self.idle_timeout = idle_timeout
        self.secure = secure
        self.clock = clock
        self._table: dict[bytes, Session] = {}

    def start(self, request: Request, response: Response) -> Session:
        """A new session, its cookie set on `response`. Old idle sessions are dropped first."""
        self._expire()
        if len(self._table) >= MAX_SESSIONS:  # never grow without bound: the oldest session goes
            oldest = min(self._table, key=lambda ident: self._table[ident].last_seen)
            del self._table[oldest]
        token = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), last_seen=self.clock())
        self._table[_digest(token)] = session
        secure = self.secure if self.secure is not None else request.url.scheme == "https"
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/")
        return session

    def get(self, request: Request) -> Session | None:
        """The request's live session (its idle clock restarted), or None."""
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        ident = _digest(token)
        session = self._table.get(ident)
        if session is None:
            return None
        now = self.clock()
        if now - session.last_seen > self.idle_timeout:
            del self._table[ident]
            return None
        session.last_seen = now
        return session

    def end(self, request: Request, response: Response) -> None:
        token = request.cookies.get(COOKIE)
        if token:
            self._table.pop(_digest(token), None)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")

    def _expire(self) -> None:
        now = self.clock()
        for ident in [i for i, s in self._table.items() if now - s.last_seen > self.idle_timeout]:
            del self._table[ident]

    def __len__(self) -> int:
        return len(self._table)


class SignInThrottle:
    """At most `limit` failed sign-ins per client address per `window` seconds, so that the admin token
    cannot be guessed at network speed. Success does not reset the count: it is not evidence of anything."""

    def __init__(self, *, limit: int = 10, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._failures: dict[str, list[float]] = {}

    def blocked(self, client: str) -> bool:
        recent = self._recent(client)
        return len(recent) >= self.limit

    def failed(self, client: str) -> None:
        self._recent(client).append(self.clock())
        if len(self._failures) > MAX_SESSIONS * 10:  # bounded: forget the quietest addresses
            for address in [a for a, times in self._failures.items() if not self._recent(a)]:
                del self._failures[address]

    def _recent(self, client: str) -> list[float]:
        horizon = self.clock() - self.window
        times = [t for t in self._failures.get(client, []) if t > horizon]
        self._failures[client] = times
        return times


def csrf_ok(session: Session, submitted: str | None) -> bool:
    return submitted is not None and hmac.compare_digest(session.csrf.encode(), submitted.encode())


def same_origin(request: Request) -> bool:
    """A browser names the page a form was sent from; another site's page is refused. No header: allowed
    (non-browser clients), since the CSRF token still has to match."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin in (f"http://{host}", f"https://{host}")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
