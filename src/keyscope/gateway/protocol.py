"""The HTTP protocol `keyscope serve` runs: uvicorn's httptools protocol with these changes for a gateway.

- The raw target: `raw_path` and `query_string` are the request target exactly as it arrived, split at the
  first `?`. Plain uvicorn parses the target first: an absolute-form target (`GET http://host/path`) becomes
  `/path` and a fragment is dropped, so step 1 could not refuse them.
- Bounded heads: memory per connection is bounded before anyone is authenticated. The target and the header
  lines are counted as they arrive and the head is refused the moment it crosses a limit (414, 431: the verdict
  is `canonical.check_head()`, which step 1 gives on a whole head too); the head's raw bytes, spaces and line
  ends included, are bounded as well (431 `head_too_large`: the parser holds a header line until it ends), and
  a head must be complete within `header_timeout` seconds of its first byte, or of the connection's opening
  (like nginx's client_header_timeout: the connection is closed, and a 408 line logged).
- Checked = forwarded: the scope's headers are the request head as it was when complete. Trailers (the header
  lines after a chunked body) are dropped: never forwarded, never seen by the checks, bounded like a head.
  Plain uvicorn appends them to the very list the checks read, after the checks ran.
- Early answers: a request that arrives whole (a body of at most 64 KiB, no `Expect: 100-continue`) is offered
  to the app's `early(scope, body)` before any ASGI task exists. The gateway runs its checks there when they
  need no waiting, and a refusal goes out as bytes from this callback: what an attacker sends costs no task,
  no ASGI messages and no response validation. Anything else (and every admitted request) takes the ASGI path.
- Coalesced writes: the writes one answer makes in one step of the event loop leave in one send().

The app may say `early`, `limits` (a `keyscope.core.limits.Limits`) and `header_timeout`; the gateway says all three.
Everything else (keep-alive, pipelining, flow control, shutdown) is uvicorn's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from keyscope.core.errors import Refusal
from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits
from keyscope.core.settings import DEFAULT_HEADER_TIMEOUT
from keyscope.core.types import Scope
from keyscope.decide.answers import refusal_answer
from keyscope.http import canonical
from keyscope.observe import accesslog, metrics

Early = Callable[[Scope, bytes], "tuple[bytes, bool] | None"]
"""`early(scope, body)`: (a complete HTTP/1.1 answer to write instead of running the app, whether to close the
connection after it), or None to run the app."""

# What the bytes arriving now are: a body (or nothing yet), a head, or a chunk's start (or the trailers).
BODY, HEAD, CHUNK = 0, 1, 2

_perf_counter = time.perf_counter


def head_bytes_limit(limits: Limits) -> int:
    """The most a head may take as sent: its target and header bytes, 8 per line for `: `, CRLF and a few
    spaces, and 1 KiB for the request line's method and version and the final CRLF."""
    return limits.target_bytes + limits.header_bytes + 8 * limits.headers + 1024


class GatewayProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app = self.app
        self.early: Early | None = getattr(app, "early", None)
        self.limits = limits = getattr(app, "limits", DEFAULT_LIMITS)
        self.header_timeout: float = getattr(app, "header_timeout", DEFAULT_HEADER_TIMEOUT)
        self.max_target = limits.target_bytes
        self.max_headers = limits.headers
        self.max_header_bytes = limits.header_bytes
        self.max_head = head_bytes_limit(limits)
        self.writer: CoalescingWriter | None = None
        self.waiting: tuple[RequestResponseCycle, Any] | None = None  # offered to `early` once its body is here
        self._starting = False
        self.url = b""
        self.section = HEAD
        self.section_bytes = 0  # bytes received since the head (or a chunk's start) began
        self.header_count = 0
        self.header_bytes = 0
        self.head_timer: asyncio.TimerHandle | None = None
        self.refused: Refusal | None = None  # why the parser was stopped in a callback

    # The head, bounded as it arrives ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_timer = self.loop.call_later(self.header_timeout, self.head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with the head's bytes counted and a refusal from a callback answered
        self._unset_keepalive_if_required()
        if self.section:
            self.section_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.refused is not None:
                self.refuse_head(self.refused)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self.section and self.section_bytes > self.max_head:
            if self.section == HEAD:
                self.refuse_head(Refusal(431, "head_too_large", "canonical", "headers",
                                         f"The request head is longer than {self.max_head} bytes."))
            else:  # trailers without end, after a body that may be on its way upstream: nobody to answer
                self._flush()
                self.transport.close()
        elif self.section == HEAD and self.head_timer is None and self.section_bytes:
            self.head_timer = self.loop.call_later(self.header_timeout, self.head_timed_out)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.max_target:
            self._check_head()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.section != HEAD:
            return  # a trailer: dropped
        name = name.lower()
        value = value.rstrip(b" \t")  # as uvicorn: llhttp keeps trailing whitespace, RFC 9110 5.5 excludes it
        self.header_count += 1
        self.header_bytes += len(name) + len(value)
        if self.header_count > self.max_headers or self.header_bytes > self.max_header_bytes:
            self._check_head()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def _check_head(self) -> None:
        """A count crossed its limit: step 1's verdict on the head so far (`?` is not part of the target's size)."""
        url = self.url
        try:
            canonical.check_head(self.limits, len(url) - (b"?" in url), self.header_count, self.header_bytes)
        except Refusal as refusal:
            self.refused = refusal
            raise

    def on_chunk_header(self) -> None:
        self.section = CHUNK  # a chunk's data follows, or, after the last one, the trailers
        self.section_bytes = 0

    def on_body(self, body: bytes) -> None:
        self.section = BODY
        super().on_body(body)

    def on_chunk_complete(self) -> None:
        self.section = BODY

    def refuse_head(self, refusal: Refusal) -> None:
        """Answer a head that crossed a limit and close: the rest of it is never read."""
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False  # an earlier request's answer is on its way: the last on this connection
            self.flow.pause_reading()
            return
        method = self.parser.get_method().decode("ascii", "replace") if self.url else ""
        path = self.url.partition(b"?")[0][: self.max_target]
        authenticator = getattr(self.app, "authenticator", None)
        client = None if authenticator is None else authenticator.client_text(
            {"client": self.client, "headers": self.headers})  # the headers so far
        request_id = accesslog.request_id(None)  # the head was not read whole: the client's id is not trusted
        data, _ = refusal_answer(refusal, "legacy", request_id)  # step 1 matches no endpoint: the legacy family
        started = _perf_counter()
        metrics.record(started, accesslog.REFUSED, refusal.status, refusal.reason, refusal.step, None, None, None)
        accesslog.write(started, method, path, accesslog.REFUSED, refusal.status, None, None,
                        refusal.reason, refusal.step, None, client, request_id, 0,
                        0 if method == "HEAD" else len(data) - data.index(b"\r\n\r\n") - 4, None, None)
        end = data.index(b"\r\n\r\n") + 2
        data = data[:end] + b"connection: close\r\n" + (b"\r\n" if method == "HEAD" else data[end:])
        self._flush()
        self.transport.write(data)
        self.transport.close()

    def head_timed_out(self) -> None:
        self.head_timer = None
        if self.section != HEAD or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False  # close once the answer in progress is out
            return
        if self.section_bytes:  # part of a head came, and no more in time
            method = self.parser.get_method().decode("ascii", "replace") if self.url else ""
            path = self.url.partition(b"?")[0]
            # keyscope's own time is not the client's slowness: the metrics take none of it; the access line's
            # time is the whole wait, as for every other line
            metrics.record(_perf_counter(), accesslog.REFUSED, 408, "header_timeout", "canonical", None, None, None)
            accesslog.write(_perf_counter() - self.header_timeout, method, path, accesslog.REFUSED, 408, None, None,
                            "header_timeout", "canonical", None)
        self._flush()
        self.transport.close()

    # The request, once its head is complete ---------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self.section = BODY
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        self._starting = True
        try:
            super().on_headers_complete()
        finally:
            self._starting = False
        if "raw_path" in self.scope:
            path, _, query = self.url.partition(b"?")
            self.scope["raw_path"] = self.root_path.encode("ascii") + path
            self.scope["query_string"] = query
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not when uvicorn answered an upgrade itself
            if self.writer is None:
                self.writer = CoalescingWriter(self.transport, self.loop)
            cycle.transport = self.writer  # type: ignore[assignment]

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Called by on_headers_complete for a new request, and for a pipelined one when its turn comes.
        if self._starting and self.early is not None and self._arrives_whole():
            self.waiting = (cycle, app)
        else:
            super()._start_asgi_task(cycle, app)

    def _arrives_whole(self) -> bool:
        """Whether the body will be buffered before anyone reads it (reading pauses above the high-water mark)."""
        if self.expect_100_continue:
            return False  # the client waits for "100 Continue", which only the ASGI path sends
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return False  # step 1 refuses these: on the ASGI path
                length = int(value)
            elif name == b"transfer-encoding":
                return False
        return length is None or length <= HIGH_WATER_LIMIT

    def on_message_complete(self) -> None:
        self.section = HEAD  # what comes next is the next request's head
        self.section_bytes = self.header_count = self.header_bytes = 0
        self.url = b""
        super().on_message_complete()
        if self.waiting is None:
            return
        cycle, app = self.waiting
        self.waiting = None
        assert self.early is not None
        try:
            answer = self.early(cycle.scope, bytes(cycle.body))
        except Exception:  # a bug, not a decision: the ASGI path runs every check again and answers
            self.logger.exception("early answer failed")
            answer = None
        if answer is None:
            super()._start_asgi_task(cycle, app)
            return
        data, close = answer
        if not cycle.keep_alive and not close:  # the client asked to close: say so, as uvicorn does
            end = data.index(b"\r\n\r\n") + 2
            data = data[:end] + b"connection: close\r\n" + data[end:]
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        cycle.transport.write(data)
        if close or not cycle.keep_alive:
            cycle.keep_alive = False
            cycle.transport.close()
        self.on_response_complete()

    # What uvicorn writes or closes on the connection itself: an answer still held leaves first.
    def send_400_response(self, msg: str) -> None:
        self._flush()
        super().send_400_response(msg)

    def shutdown(self) -> None:
        self._flush()
        super().shutdown()

    def timeout_keep_alive_handler(self) -> None:
        self._flush()
        super().timeout_keep_alive_handler()

    def handle_websocket_upgrade(self) -> None:
        self._flush()
        super().handle_websocket_upgrade()

    def _flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()


class CoalescingWriter:
    """The transport as a request's cycle sees it: writes made in one step of the event loop leave together.

    uvicorn writes a response's head and its body separately: two system calls and two TCP segments for each
    answer (on loopback the receiving side's work is billed to the sender too). Held writes leave at the end
    of the step (`call_soon`), or before a close, in the order they were made.
    """

    __slots__ = ("transport", "loop", "pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self.pending is None:
            self.pending = [data]
            self.loop.call_soon(self.flush)
        else:
            self.pending.append(data)

    def flush(self) -> None:
        pending, self.pending = self.pending, None
        if pending and not self.transport.is_closing():
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self.transport.close()
