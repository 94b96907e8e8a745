"""Step 6: forwarding an admitted request upstream with aiohttp, and streaming the answer back.

One pooled `ClientSession` per worker. What the backend sees is the upstream base plus the exact raw path that
was checked and the (possibly filled) query, so the checked view and the forwarded view never differ. aiohttp is
told not to touch anything: no re-quoting of the URL (`encoded=True`), no decompression, no automatic headers, no
cookie jar shared between clients, no redirects. Response status and raw headers pass through unchanged, so
duplicate headers such as two Set-Cookie survive.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Sequence

import aiohttp
import yarl

from . import errors
from .accesslog import CLIENT_GONE
from .types import Receive, Scope, Send

logger = logging.getLogger("keyscope.proxy")


# Request headers never forwarded as the client sent them: hop-by-hop ones, the client's credentials, framing
# (aiohttp frames the body it sends) and the forwarding headers keyscope writes itself.
_DROP_REQUEST = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
        b"proxy-authorization", b"proxy-authenticate", b"host", b"content-length", b"expect", b"authorization",
        b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
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
        self._authorization = authorization
        self._timeout = timeout
        self._connections = connections
        self._trusted = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in trusted_proxies)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Create the session; must run inside the worker's event loop."""
        # Idle upstream connections are dropped after 4 s, before uvicorn's and Node's 5 s: a connection the
        # upstream closes just as it is reused fails a POST, which aiohttp (rightly) does not retry.
        connector = aiohttp.TCPConnector(limit=self._connections, keepalive_timeout=4, ttl_dns_cache=60)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=self._timeout),
            trust_env=False,
            requote_redirect_url=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def request_headers(self, scope: Scope, identity: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The headers the backend gets: the client's, minus what must not pass, plus keyscope's own."""
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        named: set[bytes] = set()
        host = b""
        client_forwarded_for = b""
        for name, value in raw:
            if name == b"connection":
                named.update(token.strip().lower() for token in value.split(b","))
            elif name == b"host":
                host = value
            elif name == b"x-forwarded-for":
                client_forwarded_for = value if not client_forwarded_for else client_forwarded_for + b", " + value
        headers: list[tuple[str, str]] = []
        for name, value in raw:
            plain = name.replace(b"_", b"-") if b"_" in name else name
            if plain in _DROP_REQUEST or plain in named or plain.startswith(_KEYSCOPE_PREFIX):
                continue
            headers.append((_text(name), _text(value)))
        peer = scope.get("client")
        peer_host = peer[0] if peer else ""
        forwarded_for = peer_host
        if client_forwarded_for and self._is_trusted(peer_host):
            forwarded_for = f"{_text(client_forwarded_for)}, {peer_host}"
        if forwarded_for:
            headers.append(("X-Forwarded-For", forwarded_for))
        headers.append(("X-Forwarded-Proto", scope.get("scheme", "http")))
        if host:
            headers.append(("X-Forwarded-Host", _text(host)))
        if self._authorization is not None:
            headers.append(("Authorization", self._authorization))
        headers.extend(identity)
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
    ) -> tuple[int, int | None]:
        """Forward and stream back: (status answered, upstream's status or None if it never answered).

        The status is 502/504 when the upstream failed and 499 when the client left first.

        `body` is the request body when the checks had to read it (it may have been rewritten), else None:
        then the body, if the request has one, is streamed from `receive` as it arrives.
        """
        assert self._session is not None, "Upstream.start() was not awaited"
        target = self.base + scope["raw_path"].decode("latin-1")
        if query:
            target += "?" + query.decode("latin-1")
        headers = self.request_headers(scope, identity)
        exchange = _Exchange(asyncio.current_task())  # type: ignore[arg-type]
        data: bytes | AsyncIterator[bytes] | None = None
        if body is not None:
            if body:  # aiohttp itself sends Content-Length: 0 for an empty body where a method expects one
                data = body
                headers.append(("Content-Length", str(len(body))))
            exchange.watch(receive)
        else:
            length = _header(scope, b"content-length")
            if length is not None:
                headers.append(("Content-Length", length.decode("latin-1")))
                data = _stream_body(receive, exchange)
            elif _header(scope, b"transfer-encoding") is not None:
                data = _stream_body(receive, exchange)
            else:
                exchange.watch(receive)
        try:
            return await self._exchange(scope["method"], target, headers, data, send, family, exchange)
        except asyncio.CancelledError:
            if not exchange.gone:
                raise
            exchange.task.uncancel()
            return CLIENT_GONE, None
        except _ClientGone:
            return CLIENT_GONE, None
        finally:
            exchange.finish()

    async def _exchange(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        data: bytes | AsyncIterator[bytes] | None,
        send: Send,
        family: errors.Family,
        exchange: _Exchange,
    ) -> tuple[int, int | None]:
        assert self._session is not None
        try:
            response = await self._session.request(
                method, yarl.URL(target, encoded=True), headers=headers, data=data, allow_redirects=False
            )
        except asyncio.TimeoutError:
            return await _fail(send, 504, family), None
        except aiohttp.ClientError as exc:
            if exchange.gone:
                raise _ClientGone from None
            logger.warning("upstream %s failed: %s", _origin(target), exc.__class__.__name__)
            return await _fail(send, 502, family), None
        async with response:
            headers_out = _response_headers(response.raw_headers)
            await send({"type": "http.response.start", "status": response.status, "headers": headers_out})
            content = response.content
            try:
                while True:
                    chunk = await content.readany()
                    if not chunk:
                        break
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                # Too late for a 502: the status line is out. Cut the connection so the client sees it is short.
                logger.warning("upstream %s broke off its response: %s", _origin(target), exc.__class__.__name__)
                exchange.finish()
                return response.status, response.status
            exchange.finish()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return response.status, response.status


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


async def _stream_body(receive: Receive, exchange: _Exchange) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            exchange.gone = True
            raise _ClientGone
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            break
    exchange.watch(receive)


def _response_headers(raw: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    named: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    out = []
    for name, value in raw:
        lower = name.lower()
        if lower in _DROP_RESPONSE or lower in named:
            continue
        out.append((lower, value))
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


async def _fail(send: Send, status: int, family: errors.Family) -> int:
    payload = errors.body(status, family)
    headers = [*errors.JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
    return status
