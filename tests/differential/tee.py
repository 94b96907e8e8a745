"""The tee: keyscope's upstream. It replays the exact bytes of each forwarded request to every reader.

Raw sockets on purpose: an HTTP server library would parse (and normalise) the request before the readers see
it, which is what the suite is measuring. The tee only frames the message (head, then a Content-Length or
chunked body, kept byte for byte), sends those bytes to every reader at once on a fresh connection each, parses
each answer with h11 and answers keyscope with 200 `{"readers": {name: echo}}`. Each echo also carries
`_status`; `_closed` when the reader closed the connection without answering (it refused the request), and
`_broken` when it could not be reached, timed out or answered something that is not HTTP and JSON.

It runs on its own event loop in a daemon thread of the test process, so tests read `forwarded` (a count) and
`last` (the bytes of the latest forwarded request) directly.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import h11

READ_TIMEOUT = 20.0
LIMIT = 4 * 1024 * 1024


class Malformed(Exception):
    """The forwarded request could not be framed (the tee answers 502 and closes)."""


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request's exact bytes, or None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise Malformed(f"connection closed inside a head: {exc.partial[:200]!r}") from None
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return head + await reader.readexactly(length)
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        body += size_line
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                body += trailer
            body += b"\r\n"
            return head + bytes(body)
        body += await reader.readexactly(size + 2)


def _method_of(request: bytes) -> str:
    return request.split(b" ", 1)[0].decode("latin-1")


async def ask(name: str, port: int, request: bytes) -> dict[str, Any]:
    """Send `request` to one reader and return its echo (with `_status`, or `_broken` when unusable)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), READ_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as exc:
        return {"reader": name, "_broken": f"cannot connect: {exc!r}"}
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=_method_of(request), target="/", headers=[("Host", "reader")]))
    client.send(h11.EndOfMessage())
    status, body, received = None, bytearray(), 0
    try:
        writer.write(request)
        await writer.drain()
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), READ_TIMEOUT)
                received += len(data)
                if not data and not received:  # closed without a byte of answer: it refused the request
                    return {"reader": name, "_status": None, "_closed": True}
                client.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    except ConnectionResetError:
        if status is None:
            return {"reader": name, "_status": None, "_closed": True}
        return {"reader": name, "_status": status, "_broken": f"reset inside its answer: {bytes(body)[:300]!r}"}
    except (OSError, asyncio.TimeoutError, h11.RemoteProtocolError) as exc:
        hint = " (an answer without its body, as to a HEAD: did it dispatch HEAD?)" if status and not body else ""
        return {"reader": name, "_status": status, "_broken": f"no usable answer{hint}: {exc!r}: {bytes(body)[:300]!r}"}
    finally:
        writer.close()
    try:
        echo = json.loads(body)
        assert isinstance(echo, dict)
    except (ValueError, AssertionError):
        if 400 <= status < 500:  # the server under the framework refused it (WEBrick's 414, say)
            return {"reader": name, "_status": status, "error": f"{status}, not JSON: {bytes(body)[:200]!r}"}
        return {"reader": name, "_status": status, "_broken": f"not a JSON object: {bytes(body)[:300]!r}"}
    echo["_status"] = status
    return echo


class Tee:
    def __init__(self, readers: dict[str, int]) -> None:
        self.readers = dict(readers)
        self.forwarded = 0
        self.last = b""
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="tee", daemon=True)

    def start(self) -> Tee:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, limit=LIMIT), self._loop)
        self._server = started.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await read_request(reader)) is not None:
                self.forwarded += 1
                self.last = request
                names = list(self.readers)
                echoes = await asyncio.gather(*(ask(name, self.readers[name], request) for name in names))
                payload = json.dumps({"readers": dict(zip(names, echoes))}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(payload)).encode() + b"\r\n\r\n" + payload)
                await writer.drain()
        except (Malformed, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.forwarded += 1
            message = repr(exc).encode()
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Length: "
                         + str(len(message)).encode() + b"\r\n\r\n" + message)
        except OSError:
            pass
        finally:
            writer.close()
