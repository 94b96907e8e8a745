"""Real upstream servers on 127.0.0.1 for the tests of keyscope's upstream client, and a way to drive
`Upstream.forward` in-process as the gateway does, with an ASGI receive/send pair that records what the client
of the gateway would see."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

from keyscope.gateway import downstream
from keyscope.gateway.upstream import Upstream


@dataclass
class Request:
    head: bytes
    body: bytes
    connection: int  # which connection it came on, counted from 0

    @property
    def line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def header(self, name: bytes) -> list[bytes]:
        lines = self.head.split(b"\r\n")[1:]
        return [line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(name.lower() + b":")]


Answer = Callable[[Request, asyncio.StreamWriter], Awaitable[bool]]  # False: close the connection


@dataclass
class Server:
    """An upstream on 127.0.0.1 that reads HTTP/1.1 requests and lets `answer` write whatever it likes."""

    answer: Answer
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request = Request(head, b"", number)
                if request.header(b"content-length"):
                    request.body = await reader.readexactly(int(request.header(b"content-length")[0]))
                elif request.header(b"transfer-encoding"):
                    request.body = await read_chunked(reader)
                self.requests.append(request)
                if not await self.answer(request, writer):
                    return
        finally:
            writer.close()


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
        body += (await reader.readexactly(size + 2))[:-2]
        if size == 0:
            return body


async def ok(request: Request, writer: asyncio.StreamWriter) -> bool:
    body = b"echo " + request.line + b" " + request.body
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n%b"
                 % (len(body), body))
    return True


@dataclass
class Call:
    """What the client of the gateway saw of one forwarded request."""

    result: tuple[int, int | None]
    messages: list[dict[str, Any]]
    note: Any

    @property
    def status(self) -> int:
        return self.messages[0]["status"]

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    @property
    def finished(self) -> bool:
        return self.messages[-1]["type"] == "http.response.body" and not self.messages[-1].get("more_body", False)


class Note(downstream.Note):
    """The upstream client's own note, with a request id (as an Admission gives it)."""

    def __init__(self) -> None:
        super().__init__()
        self.request_id = "rid-1"


async def call(upstream: Upstream, method: str = "GET", path: bytes = b"/x", *, body: bytes | None = b"",
               chunks: list[bytes] | None = None, headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
               disconnect: bool = False) -> Call:
    """`forward` one request; `chunks`: a body streamed from receive (chunked unless a content-length is given)."""
    messages: list[dict[str, Any]] = []
    scope_headers = [(b"host", b"gw.example"), *headers]
    incoming: list[dict[str, Any]] = []
    if chunks is not None:
        body = None
        if not any(name == b"content-length" for name, _ in headers):
            scope_headers.append((b"transfer-encoding", b"chunked"))
        incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        if disconnect:
            incoming[-1:] = [{"type": "http.disconnect"}]
    scope = {"type": "http", "method": method, "raw_path": path, "headers": scope_headers,
             "client": ("127.0.0.1", 5000), "scheme": "http"}

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    note = Note()
    result = await upstream.forward(scope, receive, send, query=b"", body=body, note=note)
    return Call(result, messages, note)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


async def started(url: str, **options: Any) -> Upstream:
    upstream = Upstream(url, **options)
    await upstream.start()
    return upstream


def close_unanswered(on: set[int]) -> Answer:
    """Answers, except the requests numbered in `on` (from 0): those it reads and closes on, without a byte."""
    seen: list[Request] = []

    async def answer(request: Request, writer: asyncio.StreamWriter) -> bool:
        seen.append(request)
        return False if len(seen) - 1 in on else await ok(request, writer)

    return answer


def reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
