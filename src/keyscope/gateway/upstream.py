"""Step 6: forwarding an admitted request upstream and streaming the answer back.

What the backend sees is the upstream base plus the exact raw path that was checked and the (possibly filled)
query, so the checked view and the forwarded view never differ; nothing is re-quoted, decompressed or added
but the headers below. The answer's status and raw headers pass through unchanged, so duplicate headers such as
two Set-Cookie survive.

The client is keyscope's own, on httptools' public parser (`exchange`, `pool`): aiohttp did the same with its
internals, which a minor release could change under us. A request whose body is in memory (none, or read by
the checks) is written in one piece; a body still arriving from the client is streamed as it comes, with its
Content-Length, or chunked when the client sent it chunked.

A request on a reused connection that the upstream had closed, before any byte of answer, is retried once on a
new connection when that is safe: an idempotent method (RFC 9112, 9.3.1) whose body is in memory. A body
already taken from the client cannot be sent twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import yarl
from httptools import HttpParserError

from keyscope.core import errors
from keyscope.core.networks import parse_networks
from keyscope.core.types import Receive, Scope, Send
from keyscope.gateway.downstream import ClientGone, Note, Watch, fail, header
from keyscope.gateway.exchange import BadAnswer, Connection
from keyscope.gateway.headers import request_head, request_headers, response_headers
from keyscope.gateway.pool import Pool
from keyscope.observe.accesslog import CLIENT_GONE

logger = logging.getLogger("keyscope.proxy")


_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_CRLF = b"\r\n"
_perf_counter = time.perf_counter

UPSTREAM_REFUSED = "upstream_refused"
UPSTREAM_TIMEOUT = "upstream_timeout"
UPSTREAM_RESET = "upstream_reset"
"""Why a forwarded request failed, as the access line's reason (step `upstream`): no connection could be made
(502), no answer in time (504), or the connection broke or the answer was not HTTP (502; or cut short after the
status line was out)."""


class Upstream:
    """The upstream service and the connection pool in front of it."""

    def __init__(
        self,
        base: str,
        *,
        authorization: str | None = None,
        timeout: float = 30.0,
        connections: int = 256,
        trusted_proxies: Sequence[str] = (),
    ) -> None:
        self.base = base.rstrip("/")
        self._timeout = timeout
        self._connections = connections
        self._trusted = parse_networks(trusted_proxies)
        base_url = yarl.URL(self.base, encoded=True)
        self._url = base_url
        self._prefix = base_url.raw_path.rstrip("/").encode("ascii")
        self._host_line = b"Host: " + (base_url.host_port_subcomponent or "").encode("ascii") + _CRLF
        self._authorization = None if authorization is None else (b"Authorization", authorization.encode("utf-8"))
        self._origin = f"{base_url.scheme}://{base_url.host}:{base_url.port}"
        self._pool: Pool | None = None

    async def start(self) -> None:
        """Create the connection pool; must run inside the worker's event loop."""
        url = self._url
        self._pool = Pool(url.host or "", url.port or 80, tls=url.scheme == "https", limit=self._connections,
                          timeout=self._timeout)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def request_headers(
        self, scope: Scope, identity: Sequence[tuple[str, str]], request_id: str | None = None
    ) -> list[tuple[bytes, bytes]]:
        """The headers the backend gets (`headers.request_headers`)."""
        return request_headers(scope, identity, request_id, self._authorization, self._trusted)

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        query: bytes,
        body: bytes | None,
        identity: Sequence[tuple[str, str]] = (),
        family: errors.Family = "legacy",
        note: Any = None,
    ) -> tuple[int, int | None]:
        """Forward and stream back: (status answered, upstream's status or None if it never answered).

        `note`, when given (the request's `checks.Admission`), says the request id, sent upstream as
        X-Request-Id and back to the client in place of any the upstream sent, and the headers keyscope adds
        to the answer (`answer_headers()`, also on a 502/504: the request was admitted, and counted); it gets
        what the access line needs: `bytes_in`, `bytes_out`, `upstream_ms` and, on a failure, its `cause`.

        The status is 502/504 when the upstream failed and 499 when the client left first.

        `body` is the request body when the checks had to read it (it may have been rewritten), else None:
        then the body, if the request has one, is streamed from `receive` as it arrives.
        """
        assert self._pool is not None, "Upstream.start() was not awaited"
        path = self._prefix + scope["raw_path"]
        if query:
            path += b"?" + query
        note = Note() if note is None else note
        headers = self.request_headers(scope, identity, note.request_id)
        watch = Watch(asyncio.current_task())  # type: ignore[arg-type]
        method: str = scope["method"]
        started = _perf_counter()
        try:
            length = -1
            chunked = False
            if body is None:
                content_length = header(scope, b"content-length")
                if content_length is not None:
                    headers.append((b"Content-Length", content_length))
                elif header(scope, b"transfer-encoding") is not None:
                    headers.append((b"Transfer-Encoding", b"chunked"))
                    chunked = True
                else:
                    body = b""
            if body is not None:
                length = len(body)
                note.bytes_in = length
                watch.watch(receive)
            try:
                head = request_head(method, path, self._host_line, headers, length)
            except ValueError:
                self._failed(note, "upstream_not_asked", None)
                return await fail(send, 502, family, note), None
            return await self._exchange(method, head, body, chunked, receive, send, family, watch, note)
        except asyncio.CancelledError:
            if not watch.gone:
                raise
            watch.task.uncancel()
            return CLIENT_GONE, None
        except ClientGone:
            return CLIENT_GONE, None
        finally:
            watch.finish()
            note.upstream_ms = (_perf_counter() - started) * 1000

    def _failed(self, note: Any, cause: str, exc: BaseException | None) -> None:
        """The one warning line on stderr for a request the upstream failed."""
        what = exc.__class__.__name__ if exc is not None else "a header holds a CR or LF"
        logger.warning("upstream %s failed: %s (%s), request_id %s", self._origin, cause, what, note.request_id)
        note.cause = cause

    async def _exchange(
        self,
        method: str,
        head: bytes,
        body: bytes | None,
        chunked: bool,
        receive: Receive,
        send: Send,
        family: errors.Family,
        watch: Watch,
        note: Any,
    ) -> tuple[int, int | None]:
        """Send the request on a pooled connection, then stream the answer back."""
        pool = self._pool
        assert pool is not None
        retry = body is not None and method in _IDEMPOTENT
        fresh = False
        while True:
            try:
                connection = await pool.acquire(fresh)
            except TimeoutError as exc:
                self._failed(note, UPSTREAM_TIMEOUT, exc)
                return await fail(send, 504, family, note), None
            except OSError as exc:
                if watch.gone:
                    raise ClientGone from None
                self._failed(note, UPSTREAM_REFUSED, exc)
                return await fail(send, 502, family, note), None
            try:
                connection.begin(method == "HEAD")
                if body is not None:
                    connection.write(head + body if body else head)  # one send(): writelines may make two
                else:
                    await _stream_body(connection, head, chunked, receive, watch, note)
                while not connection.head_done and connection.error is None:
                    await connection.wait()
                if connection.error is not None:
                    raise connection.error
            except TimeoutError as exc:
                connection.close()
                self._failed(note, UPSTREAM_TIMEOUT, exc)
                return await fail(send, 504, family, note), None
            except (OSError, HttpParserError, BadAnswer) as exc:
                connection.close()
                if watch.gone:
                    raise ClientGone from None
                if retry and connection.reused and not connection.received and isinstance(exc, OSError):
                    retry = False
                    fresh = True
                    continue
                self._failed(note, UPSTREAM_RESET, exc)
                return await fail(send, 502, family, note), None
            except BaseException:
                connection.close()
                raise
            break
        return await self._answer(connection, send, watch, note)

    async def _answer(self, connection: Connection, send: Send, watch: Watch, note: Any) -> tuple[int, int | None]:
        """The answer's head is in: stream it to the client as its body arrives."""
        status = connection.status
        pool = self._pool
        assert pool is not None
        try:
            headers = response_headers(connection.headers, note.request_id)
            extra = note.answer_headers()
            if extra:
                headers += extra
            await send({"type": "http.response.start", "status": status, "headers": headers})
            while True:
                chunk = connection.take()
                if connection.complete:
                    break
                if chunk:
                    note.bytes_out += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                elif connection.error is not None:
                    # Too late for a 502: the status line is out. Cut the connection so the client sees it is short.
                    connection.close()
                    logger.warning("upstream %s broke off its response: %s, request_id %s", self._origin,
                                   connection.error.__class__.__name__, note.request_id)
                    note.cause = UPSTREAM_RESET
                    watch.finish()
                    return status, status
                else:
                    await connection.wait()
        except BaseException:
            connection.close()
            raise
        pool.release(connection)  # back to the pool unless the answer left it unusable
        watch.finish()
        note.bytes_out += len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": False})
        return status, status


async def _stream_body(
    connection: Connection, head: bytes, chunked: bool, receive: Receive, watch: Watch, note: Any
) -> None:
    """The request head, then the body as it arrives from the client; chunked unless it has a Content-Length.

    Sending stops early when the upstream has answered or closed: what it says is the answer."""
    connection.write(head)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            watch.gone = True
            raise ClientGone
        chunk = message.get("body", b"")
        if connection.head_done or connection.closed:
            connection.broken = True
            return
        if chunk:
            note.bytes_in += len(chunk)
            connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            await connection.drain()
        if not message.get("more_body", False):
            break
    if chunked:
        connection.write(b"0\r\n\r\n")
    watch.watch(receive)
