"""The client's side of a forwarded request: noticing that it left, what is noted for its access line, and the
502/504 answers keyscope gives in the upstream's place."""

from __future__ import annotations

import asyncio
from typing import Any

from keyscope.core import errors
from keyscope.core.types import Receive, Scope, Send

WATCH_AFTER = 0.25


class Note:
    """What `Upstream.forward()` notes when its caller passes no `note`."""

    __slots__ = ("bytes_in", "bytes_out", "cause", "request_id", "upstream_ms")

    def __init__(self) -> None:
        self.request_id: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.upstream_ms: float | None = None
        self.cause: str | None = None

    def answer_headers(self) -> list[tuple[bytes, bytes]]:
        """What keyscope adds to the answer's head (an Admission: the `RateLimit-*` headers of a limited key)."""
        return []


class ClientGone(Exception):
    """The client disconnected while its request body was being streamed upstream."""


class Watch:
    """Cancels the forwarding task when the client disconnects, so the upstream request is dropped too.

    Listening for the disconnect takes a task of its own; it is started only once a request has been in
    flight for WATCH_AFTER seconds, so the common quick exchange pays for a timer, not a task.
    """

    __slots__ = ("_timer", "_watcher", "finished", "gone", "task")

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


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def fail(send: Send, status: int, family: errors.Family, note: Any = None) -> int:
    """Answer in the upstream's place (502, 504), in the endpoint's error family."""
    payload = errors.body(status, family)
    headers = [*errors.JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
    if note is not None:
        if note.request_id is not None:
            headers.append((b"x-request-id", note.request_id.encode("ascii")))
        note.bytes_out += len(payload)
        headers += note.answer_headers()
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
    return status
