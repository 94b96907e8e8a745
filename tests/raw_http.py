"""HTTP/1.1 on raw sockets, and uvicorn in a thread: for tests that must send bytes no client library would."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from gateway_helpers import free_port


@contextmanager
def threaded(app: Any, http: Any, lifespan: str = "off") -> Iterator[int]:
    """A real uvicorn server for `app` on 127.0.0.1, with the given HTTP protocol; yields its port."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=http, loop="uvloop", lifespan=lifespan,
                            access_log=False, log_level="warning", server_header=False, date_header=False,
                            proxy_headers=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (a reset after its answer included)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:  # closed with bytes of ours unread: the answer came first
        pass
    return data


def read_one(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """One answer (status, head, body), framed by Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.startswith(b"content-length")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed inside a body"
        body += chunk
    return int(head.split(b" ")[1]), head, body
