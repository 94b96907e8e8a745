"""One POST of one event to one receiver, on the gateway's own HTTP/1.1 client (`gateway.pool`, `gateway.exchange`).

The upstream client already does what this needs (pooled keep-alive connections, TLS with the system's CAs and
hostname checks, connect and read timeouts, httptools' parser, a bound on the answer's head), so events reuse it
rather than add a dependency or a second client; `Upstream` itself is not used because it streams a client's
request and answer through ASGI, and here there is neither. Only the status matters: the answer's body is read
(up to MAX_ANSWER, so that the connection can be reused) and dropped. Redirects are not followed: a 3xx is a
failure like any status outside 2xx, retried until the URL is fixed.

The whole exchange is bounded by `--events-timeout`. A reused connection the receiver had closed before answering
is retried at once on a new one (an event may be sent twice anyway: receivers deduplicate on its id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import yarl
from httptools import HttpParserError

from keyscope.gateway.exchange import BadAnswer, Connection
from keyscope.gateway.headers import request_head
from keyscope.gateway.pool import Pool

MAX_ANSWER = 64 * 1024
"""Answer body bytes read for the connection's sake; past it the connection is closed (the status is known)."""
CONNECTIONS = 2


@dataclass(frozen=True, slots=True)
class Outcome:
    """The receiver's status (None when it never answered) and, unless it was a 2xx, what went wrong."""

    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status <= 299


def shown(url: str) -> str:
    """The URL as logs show it: scheme, host, port and path, never a query (it may hold a token)."""
    parsed = yarl.URL(url, encoded=True)
    return str(parsed.with_query(None).with_fragment(None).with_user(None))


class Sender:
    """POSTs to one URL; its pool is made in the event loop that first uses it."""

    def __init__(self, url: str, timeout: float) -> None:
        parsed = yarl.URL(url, encoded=True)
        self.url = url
        self.timeout = timeout
        self._host = parsed.host or ""
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._tls = parsed.scheme == "https"
        self._target = (parsed.raw_path or "/").encode("ascii") + (
            b"?" + parsed.raw_query_string.encode("ascii") if parsed.raw_query_string else b"")
        self._host_line = b"Host: " + (parsed.host_port_subcomponent or "").encode("ascii") + b"\r\n"
        self._pool: Pool | None = None

    async def post(self, body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> Outcome:
        if self._pool is None:
            self._pool = Pool(self._host, self._port, tls=self._tls, limit=CONNECTIONS, timeout=self.timeout)
        try:
            head = request_head("POST", self._target, self._host_line, list(headers), len(body))
        except ValueError as exc:
            return Outcome(None, f"bad request head: {exc}")
        try:
            async with asyncio.timeout(self.timeout):
                status = await self._exchange(head + body)
            return Outcome(status, None if 200 <= status <= 299 else f"HTTP {status}")
        except TimeoutError:
            return Outcome(None, f"no answer within {self.timeout:g} s")
        except (OSError, HttpParserError, BadAnswer) as exc:
            return Outcome(None, _describe(exc))

    async def _exchange(self, request: bytes) -> int:
        pool = self._pool
        assert pool is not None
        fresh = False
        while True:
            connection = await pool.acquire(fresh)
            try:
                connection.begin(False)
                connection.write(request)
                while not connection.head_done and connection.error is None:
                    await connection.wait()
                if connection.error is not None:
                    raise connection.error
            except OSError:
                connection.close()
                if connection.reused and not connection.received and not fresh:
                    fresh = True
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            break
        status = connection.status
        await _drain(connection, pool)
        return status

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


async def _drain(connection: Connection, pool: Pool) -> None:
    """Reads the answer's body to its end and returns the connection to the pool; closes it instead when the
    body is too long, broken, or does not come."""
    read = 0
    try:
        while True:
            read += len(connection.take())
            if connection.complete:
                break
            if connection.error is not None or read > MAX_ANSWER:
                connection.close()
                return
            await connection.wait()
    except BaseException:
        connection.close()
        raise
    pool.release(connection)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
