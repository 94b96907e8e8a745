"""Step 6: forwarding an admitted request upstream with aiohttp, and streaming the answer back.

One pooled `ClientSession` per worker. What the backend sees is the upstream base plus the exact raw path that
was checked and the (possibly filled) query, so the checked view and the forwarded view never differ. aiohttp is
told not to touch anything: no re-quoting of the URL (`encoded=True`), no decompression, no automatic headers, no
cookie jar shared between clients, no redirects. Response status and raw headers pass through unchanged, so
duplicate headers such as two Set-Cookie survive.

A request whose body is already in memory (none, or read by the checks) skips `ClientSession.request`: its
head is written as bytes on a pooled connection of the session's own connector and the answer is read with
aiohttp's response parser, as the session does, without building a ClientRequest, a ClientResponse and their
header multidicts per request. Bodies still streaming from the client go through the session.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import yarl
from aiohttp.client_exceptions import ClientOSError, ServerDisconnectedError
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EofStream

from keyscope.core import errors
from keyscope.core.types import Receive, Scope, Send
from keyscope.observe.accesslog import CLIENT_GONE

logger = logging.getLogger("keyscope.proxy")


# Request headers never forwarded as the client sent them: hop-by-hop ones, the client's credentials, framing
# (aiohttp frames the body it sends) and the forwarding headers keyscope writes itself.
_DROP_REQUEST = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
        b"proxy-authorization", b"proxy-authenticate", b"host", b"content-length", b"expect", b"authorization",
        b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"x-request-id",
    }
)
_DROP_RESPONSE = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
        b"proxy-authenticate",
    }
)
_KEYSCOPE_PREFIX = b"x-keyscope-"
WATCH_AFTER = 0.25
_SKIP_AUTO = frozenset({"User-Agent", "Accept", "Accept-Encoding", "Content-Type"})
# Retried once on a pooled connection the upstream had closed, as aiohttp does (RFC 9112, 9.3.1).
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_NO_LENGTH = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
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
        self._trusted = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in trusted_proxies)
        self._session: aiohttp.ClientSession | None = None
        self._connector: aiohttp.TCPConnector | None = None
        self._client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        base_url = yarl.URL(self.base, encoded=True)
        self._prefix = base_url.raw_path.rstrip("/").encode("ascii")
        self._host_line = b"Host: " + (base_url.host_port_subcomponent or "").encode("ascii") + _CRLF
        self._authorization = None if authorization is None else (b"Authorization", authorization.encode("utf-8"))
        self._origin = _origin(self.base)
        self._template: aiohttp.ClientRequest | None = None

    async def start(self) -> None:
        """Create the session; must run inside the worker's event loop."""
        # Idle upstream connections are dropped after 4 s, before uvicorn's and Node's 5 s: a connection the
        # upstream closes just as it is reused fails a POST, which aiohttp (rightly) does not retry.
        connector = aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=4, ttl_dns_cache=60)
        self._connector = connector
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=self._client_timeout,
            trust_env=False,
            requote_redirect_url=False,
        )
        # What the connector needs to open or pick a pooled connection: the upstream's address, nothing else.
        self._template = aiohttp.ClientRequest(
            "GET", yarl.URL(self.base, encoded=True), loop=asyncio.get_running_loop(), ssl=True
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._connector = None
            self._template = None

    def request_headers(
        self, scope: Scope, identity: Sequence[tuple[str, str]], request_id: str | None = None
    ) -> list[tuple[bytes, bytes]]:
        """The headers the backend gets: the client's, minus what must not pass, plus keyscope's own.

        The headers dropped are a fixed set: step 1 admits a `Connection` header only when it says `close` or
        `keep-alive`, so it never names an end-to-end header the checks read (a proxy that dropped the headers
        named there would forward a body without the Content-Type it was inspected as). The Host step 1
        validated goes up as X-Forwarded-Host.
        """
        host = b""
        client_forwarded_for = b""
        headers: list[tuple[bytes, bytes]] = []
        for name, value in scope["headers"]:
            plain = name.replace(b"_", b"-") if b"_" in name else name
            if plain in _DROP_REQUEST:
                if plain == b"host" and plain is name:
                    host = value
                elif plain == b"x-forwarded-for" and plain is name:
                    client_forwarded_for = value if not client_forwarded_for else client_forwarded_for + b", " + value
                continue
            if plain.startswith(_KEYSCOPE_PREFIX):
                continue
            headers.append((name, value))
        peer = scope.get("client")
        peer_host = peer[0].encode("latin-1") if peer else b""
        forwarded_for = peer_host
        if client_forwarded_for and self._is_trusted(peer[0] if peer else ""):
            forwarded_for = client_forwarded_for + b", " + peer_host
        if forwarded_for:
            headers.append((b"X-Forwarded-For", forwarded_for))
        headers.append((b"X-Forwarded-Proto", scope.get("scheme", "http").encode("latin-1")))
        if host:
            headers.append((b"X-Forwarded-Host", host))
        if self._authorization is not None:
            headers.append(self._authorization)
        for name_text, value_text in identity:
            headers.append((name_text.encode("latin-1"), value_text.encode("utf-8")))
        if request_id is not None:
            headers.append((b"X-Request-Id", request_id.encode("ascii")))
        return headers

    def _is_trusted(self, address: str) -> bool:
        if not self._trusted or not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

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
        X-Request-Id and back to the client in place of any the upstream sent, and gets what the access line
        needs: `bytes_in`, `bytes_out`, `upstream_ms` and, on a failure, its `cause`.

        The status is 502/504 when the upstream failed and 499 when the client left first.

        `body` is the request body when the checks had to read it (it may have been rewritten), else None:
        then the body, if the request has one, is streamed from `receive` as it arrives.
        """
        assert self._session is not None, "Upstream.start() was not awaited"
        path = self._prefix + scope["raw_path"]
        if query:
            path += b"?" + query
        note = _Note() if note is None else note
        headers = self.request_headers(scope, identity, note.request_id)
        exchange = _Exchange(asyncio.current_task())  # type: ignore[arg-type]
        method: str = scope["method"]
        started = _perf_counter()
        try:
            if body is None:
                length = _header(scope, b"content-length")
                if length is not None or _header(scope, b"transfer-encoding") is not None:
                    if length is not None:
                        headers.append((b"Content-Length", length))
                    return await self._stream(method, path, headers, _stream_body(receive, exchange, note), send,
                                              family, exchange, note)
                body = b""
            note.bytes_in = len(body)
            exchange.watch(receive)
            return await self._exchange(method, path, headers, body, send, family, exchange, note)
        except asyncio.CancelledError:
            if not exchange.gone:
                raise
            exchange.task.uncancel()
            return CLIENT_GONE, None
        except _ClientGone:
            return CLIENT_GONE, None
        finally:
            exchange.finish()
            note.upstream_ms = (_perf_counter() - started) * 1000

    def _failed(self, note: Any, cause: str, exc: BaseException | None) -> None:
        """The one warning line on stderr for a request the upstream failed."""
        what = exc.__class__.__name__ if exc is not None else "a header holds a CR or LF"
        logger.warning("upstream %s failed: %s (%s), request_id %s", self._origin, cause, what, note.request_id)
        note.cause = cause

    def _head(self, method: str, path: bytes, headers: list[tuple[bytes, bytes]], length: int) -> bytes:
        """The request line and headers as bytes; a CR or LF inside any of them is refused (ValueError)."""
        lines = [method.encode("ascii"), b" ", path, b" HTTP/1.1\r\n", self._host_line]
        for name, value in headers:
            lines += (name, b": ", value, _CRLF)
        count = len(headers) + 3
        if length or method not in _NO_LENGTH:  # as aiohttp: Content-Length: 0 where a method may have a body
            lines += (b"Content-Length: ", str(length).encode("ascii"), _CRLF)
            count += 1
        lines.append(_CRLF)
        head = b"".join(lines)
        if head.count(b"\n") != count or head.count(b"\r") != count:
            raise ValueError("a CR or LF inside the request line or a header")
        return head

    async def _exchange(
        self,
        method: str,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        send: Send,
        family: errors.Family,
        exchange: _Exchange,
        note: Any,
    ) -> tuple[int, int | None]:
        """A request whose body is in memory, on a pooled connection: one write, then aiohttp's parser."""
        connector, template = self._connector, self._template
        assert connector is not None and template is not None
        try:
            head = self._head(method, path, headers, len(body))
        except ValueError:
            self._failed(note, "upstream_not_asked", None)
            return await _fail(send, 502, family, note), None
        retry = method in _IDEMPOTENT
        while True:
            try:
                connection = await connector.connect(template, [], self._client_timeout)
            except asyncio.TimeoutError as exc:
                self._failed(note, UPSTREAM_TIMEOUT, exc)
                return await _fail(send, 504, family, note), None
            except (aiohttp.ClientError, OSError) as exc:
                if exchange.gone:
                    raise _ClientGone from None
                self._failed(note, UPSTREAM_REFUSED, exc)
                return await _fail(send, 502, family, note), None
            protocol = connection.protocol
            assert protocol is not None and protocol.transport is not None
            try:
                protocol.set_response_params(
                    skip_payload=method == "HEAD",
                    read_until_eof=True,
                    auto_decompress=False,
                    read_timeout=self._timeout,
                    timeout_ceil_threshold=connector._timeout_ceil_threshold,
                )
                protocol.transport.write(head + body if body else head)  # one send(): writelines may make two
                protocol.start_timeout()
                while True:
                    message, payload = await protocol.read()
                    if not 100 <= message.code <= 199 or message.code == 101:
                        break
            except asyncio.TimeoutError as exc:
                connection.close()
                self._failed(note, UPSTREAM_TIMEOUT, exc)
                return await _fail(send, 504, family, note), None
            except (aiohttp.ClientError, HttpProcessingError, EofStream, OSError) as exc:
                connection.close()
                if exchange.gone:
                    raise _ClientGone from None
                if retry and isinstance(exc, (ServerDisconnectedError, ClientOSError, EofStream)):
                    retry = False
                    continue
                self._failed(note, UPSTREAM_RESET, exc)
                return await _fail(send, 502, family, note), None
            except BaseException:
                connection.close()
                raise
            break
        status = message.code
        try:
            headers_out = _response_headers(message.raw_headers, note.request_id)
            await send({"type": "http.response.start", "status": status, "headers": headers_out})
            while chunk := await payload.readany():
                note.bytes_out += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            connection.close()
            logger.warning("upstream %s broke off its response: %s, request_id %s", self._origin,
                           exc.__class__.__name__, note.request_id)
            note.cause = UPSTREAM_RESET
            exchange.finish()
            return status, status
        except BaseException:
            connection.close()
            raise
        connection.release()  # back to the pool unless the answer said or left the connection unusable
        exchange.finish()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return status, status

    async def _stream(
        self,
        method: str,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        data: AsyncIterator[bytes],
        send: Send,
        family: errors.Family,
        exchange: _Exchange,
        note: Any,
    ) -> tuple[int, int | None]:
        """A request whose body is still arriving from the client: aiohttp's session streams it upstream."""
        assert self._session is not None
        url = yarl.URL(self.base + path[len(self._prefix):].decode("latin-1"), encoded=True)
        text_headers = [(_text(name), _text(value)) for name, value in headers]
        try:
            response = await self._session.request(
                method, url, headers=text_headers, data=data, allow_redirects=False
            )
        except asyncio.TimeoutError as exc:
            self._failed(note, UPSTREAM_TIMEOUT, exc)
            return await _fail(send, 504, family, note), None
        except aiohttp.ClientError as exc:
            if exchange.gone:
                raise _ClientGone from None
            cause = UPSTREAM_REFUSED if isinstance(exc, aiohttp.ClientConnectorError) else UPSTREAM_RESET
            self._failed(note, cause, exc)
            return await _fail(send, 502, family, note), None
        async with response:
            headers_out = _response_headers(response.raw_headers, note.request_id)
            await send({"type": "http.response.start", "status": response.status, "headers": headers_out})
            content = response.content
            try:
                while chunk := await content.readany():
                    note.bytes_out += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                # Too late for a 502: the status line is out. Cut the connection so the client sees it is short.
                logger.warning("upstream %s broke off its response: %s, request_id %s", self._origin,
                               exc.__class__.__name__, note.request_id)
                note.cause = UPSTREAM_RESET
                exchange.finish()
                return response.status, response.status
            exchange.finish()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return response.status, response.status


class _Note:
    """What `forward()` notes when its caller passes no `note`."""

    __slots__ = ("request_id", "bytes_in", "bytes_out", "upstream_ms", "cause")

    def __init__(self) -> None:
        self.request_id: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.upstream_ms: float | None = None
        self.cause: str | None = None


class _ClientGone(Exception):
    """The client disconnected while its request body was being streamed upstream."""


class _Exchange:
    """Cancels the forwarding task when the client disconnects, so the upstream request is dropped too.

    Listening for the disconnect takes a task of its own; it is started only once a request has been in
    flight for WATCH_AFTER seconds, so the common quick exchange pays for a timer, not a task.
    """

    __slots__ = ("task", "gone", "finished", "_watcher", "_timer")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.gone = False
        self.finished = False
        self._watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, receive: Receive) -> None:
        """Listen for the disconnect from WATCH_AFTER on; only once the request body has been consumed."""
        if self._timer is None and not self.finished:
            self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start, receive)

    def _start(self, receive: Receive) -> None:
        if not self.finished:
            self._watcher = asyncio.get_running_loop().create_task(self._wait(receive))

    async def _wait(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not self.finished:
            self.gone = True
            self.task.cancel()

    def finish(self) -> None:
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None


async def _stream_body(receive: Receive, exchange: _Exchange, note: Any) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            exchange.gone = True
            raise _ClientGone
        chunk = message.get("body", b"")
        if chunk:
            note.bytes_in += len(chunk)
            yield chunk
        if not message.get("more_body", False):
            break
    exchange.watch(receive)


def _response_headers(raw: Sequence[tuple[bytes, bytes]], request_id: str | None = None) -> list[tuple[bytes, bytes]]:
    """The upstream's headers minus hop-by-hop ones; with a request id, its X-Request-Id replaced by that one."""
    named: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    out = []
    for name, value in raw:
        lower = name.lower()
        if lower in _DROP_RESPONSE or lower in named:
            continue
        if request_id is not None and lower == b"x-request-id":
            continue
        out.append((lower, value))
    if request_id is not None:
        out.append((b"x-request-id", request_id.encode("ascii")))
    return out


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def _text(value: bytes) -> str:
    """Header bytes as aiohttp wants them (it encodes with UTF-8): ASCII and UTF-8 survive exactly."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _origin(target: str) -> str:
    url = yarl.URL(target, encoded=True)
    return f"{url.scheme}://{url.host}:{url.port}"


async def _fail(send: Send, status: int, family: errors.Family, note: Any = None) -> int:
    payload = errors.body(status, family)
    headers = [*errors.JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
    if note is not None:
        if note.request_id is not None:
            headers.append((b"x-request-id", note.request_id.encode("ascii")))
        note.bytes_out += len(payload)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
    return status
