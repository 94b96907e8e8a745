"""A receiver of keyscope's deletion events for the tests: a real HTTP/1.1 server on 127.0.0.1, on a thread.

It records every POST it gets (headers, raw body) and answers by its `mode`: `ok` (204), `fail` (500), or `hold`
(the first request waits until `release` is set, then 200; those after it are answered at once). `start()` binds
a given port, so a test can name the URL before the receiver exists (a receiver that is down) and start it later.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET = "test-events-secret-0123456789"


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    port: int
    mode: str = "ok"
    received: list[Received] = field(default_factory=list)
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/keyscope?source=test"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    receiver.received.append(Received({k.lower(): v for k, v in self.headers.items()}, body))
                    first_hold = receiver.mode == "hold" and not receiver.held.is_set()
                    if first_hold:
                        receiver.held.set()
                if first_hold:
                    receiver.release.wait(60)
                status = 500 if receiver.mode == "fail" else 200 if receiver.mode == "hold" else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def docs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [item.doc for item in self.received]

    def taken(self) -> list[Received]:
        """What it answered 2xx to: everything in `ok` mode (a test switches modes before the answers it checks)."""
        with self._lock:
            return list(self.received)


def wait_for(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)
