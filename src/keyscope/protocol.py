"""The HTTP protocol `keyscope serve` runs: uvicorn's httptools protocol with three changes for a gateway.

- The raw target: `raw_path` and `query_string` are the request target exactly as it arrived, split at the
  first `?`. Plain uvicorn parses the target first: an absolute-form target (`GET http://host/path`) becomes
  `/path` and a fragment is dropped, so step 1 could not refuse them.
- Early answers: a request that arrives whole (a body of at most 64 KiB, no `Expect: 100-continue`) is offered
  to the app's `early(scope, body)` before any ASGI task exists. The gateway runs its checks there when they
  need no waiting, and a refusal goes out as bytes from this callback: what an attacker sends costs no task,
  no ASGI messages and no response validation. Anything else (and every admitted request) takes the ASGI path.
- Coalesced writes: the writes one answer makes in one step of the event loop leave in one send().

Everything else (keep-alive, pipelining, flow control, shutdown) is uvicorn's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .types import Scope

Early = Callable[[Scope, bytes], "tuple[bytes, bool] | None"]
"""`early(scope, body)`: (a complete HTTP/1.1 answer to write instead of running the app, whether to close the
connection after it), or None to run the app."""


class GatewayProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.early: Early | None = getattr(self.app, "early", None)
        self.writer: CoalescingWriter | None = None
        self.waiting: tuple[RequestResponseCycle, Any] | None = None  # offered to `early` once its body is here
        self._starting = False

    def on_headers_complete(self) -> None:
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
