"""One upstream connection and the answers read on it, with httptools' public `HttpResponseParser`.

The connection is an asyncio protocol that is its own parser callback: bytes are parsed as they arrive, inside
`data_received`, and the task forwarding the request is woken only when something it waits for has happened
(the head is complete, body bytes are there, the answer ended or failed). The forwarding side (`upstream`)
drives one answer at a time: `begin()`, write the request, wait for `head_done`, then `take()` the body until
`complete`.

What httptools does not do is done here:
- HEAD: llhttp cannot be told a response has no body, so the answer is complete at its head and the parser is
  replaced before the connection is used again.
- Close-delimited bodies: httptools has no "end of input" call, so the upstream closing a connection ends an
  answer that had neither Content-Length nor Transfer-Encoding, and truncates any other.
- A bound on the head (llhttp has none), as aiohttp's parser bounded it.
- Read timeouts: one timer per connection, re-armed only when it fires early, so a quick exchange costs no timer
  of its own; the time counts only while the forwarding task waits for the upstream.
"""

from __future__ import annotations

import asyncio
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

MAX_HEAD = 64 * 1024
"""An answer's status line and headers together, at most (aiohttp allowed 8190 bytes a line)."""
HIGH_WATER = 256 * 1024
"""Body bytes held for the forwarding task before reading from the upstream pauses."""
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})


class UpstreamClosed(ConnectionError):
    """The upstream closed the connection before its answer was complete."""


class BadAnswer(Exception):
    """The upstream's answer is not HTTP/1.1 keyscope can read (malformed, or its head too large)."""


class Connection(asyncio.Protocol):
    """A connection to the upstream and the state of the answer being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, lost: Any) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._loop = loop
        self._timeout = timeout
        self._lost = lost
        self._waiter: asyncio.Future[None] | None = None
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._drain: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._active = False
        self.begin(False)

    # the forwarding side -------------------------------------------------------------------------------------
    def begin(self, head_only: bool) -> None:
        """Get ready for the answer to the request about to be written; `head_only` for HEAD."""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.received = 0
        self.broken = False
        self.head_only = head_only
        self._body: list[bytes] = []
        self._buffered = 0
        self._head_size = 0
        self._reading_paused = False
        self._active = True

    def write(self, data: bytes) -> None:
        if self.closed:
            raise self.error or UpstreamClosed("the upstream closed the connection")
        self.transport.write(data)  # type: ignore[union-attr]

    async def drain(self) -> None:
        """Wait while the upstream is not taking what was written."""
        if self._writing_paused and not self.closed:
            self._drain = self._loop.create_future()
            await self._drain
        if self.closed:
            raise self.error or UpstreamClosed("the upstream closed the connection")

    def wait(self) -> asyncio.Future[None]:
        """A future done at the next progress of the answer (head, body bytes, end, failure, read timeout)."""
        waiter = self._waiter = self._loop.create_future()
        self._last = self._loop.time()
        if self._timer is None:
            self._timer = self._loop.call_at(self._last + self._timeout, self._expire)
        return waiter

    def take(self) -> bytes:
        """The body bytes read so far and not yet taken."""
        chunks = self._body
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._body = []
        self._buffered = 0
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data

    def rest(self) -> bool:
        """After an answer read whole: ready the connection for the next request; False if it cannot take one."""
        if not self.keep_alive or self.broken or self.closed or self.error is not None:
            return False
        if self.head_only:
            self.parser = HttpResponseParser(self)
        self._active = False
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.transport is not None:
                self.transport.close()
            self._lost(self)

    # asyncio ---------------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._active:  # nothing asked: an idle connection must stay silent
            self.close()
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            self._bad(BadAnswer("the upstream switched protocols"))
        except HttpParserError as exc:
            self._bad(exc)
        if not self.head_done and self.received > MAX_HEAD and self.error is None:
            self._bad(BadAnswer(f"the upstream's answer has a head over {MAX_HEAD} bytes"))
        waiter = self._waiter
        if waiter is not None:
            if self.head_done or self.error is not None:
                self._waiter = None
                if not waiter.done():
                    waiter.set_result(None)
            else:
                self._last = self._loop.time()

    def eof_received(self) -> bool:
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:  # else keyscope closed it, and the answer, if any, has been given up
            self._ended(exc)
            self.closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._lost(self)
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # httptools callbacks ---------------------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:  # a second answer, or trailers: neither is forwarded
            self.broken = self.broken or self.complete
            return
        self.headers.append((name, value))
        self._head_size += len(name) + len(value)

    def on_headers_complete(self) -> None:
        if self.complete:
            self.broken = True
            return
        status = self.parser.get_status_code()
        if 100 <= status <= 199 and status != 101:  # interim answers are not forwarded
            self.headers = []
            self._head_size = 0
            return
        if self._head_size > MAX_HEAD:
            self._bad(BadAnswer(f"the upstream's answer has headers over {MAX_HEAD} bytes"))
            return
        self.status = status
        self.head_done = True
        if self.head_only:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            self.broken = True
            return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        if self.head_done and not self.head_only:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets the answer's flags once it returns

    # ends --------------------------------------------------------------------------------------------------------
    def _bad(self, exc: BaseException) -> None:
        """The bytes are not an answer: the connection is done for; the answer fails unless already whole."""
        self.broken = True
        if not self.complete and self.error is None:
            self.error = exc
        self._wake()
        self.close()

    def _ended(self, exc: Exception | None) -> None:
        """The upstream closed: the end of a close-delimited body, else a truncated (or never sent) answer."""
        if self._active and not self.complete and self.error is None:
            if self.head_done and not self._framed() and exc is None:
                self.complete = True
            else:
                self.error = exc or UpstreamClosed("the upstream closed the connection")
        self.broken = True
        self._wake()

    def _framed(self) -> bool:
        return any(name.lower() in _FRAMING for name, _ in self.headers)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _expire(self) -> None:
        self._timer = None
        if self._waiter is None or self.closed:
            return
        deadline = self._last + self._timeout
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._expire)
            return
        self.error = TimeoutError(f"no answer from the upstream within {self._timeout} s")
        self._wake()
