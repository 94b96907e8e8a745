"""Cutting a test's connections to PostgreSQL on purpose: a TCP relay that can refuse, drop or freeze them, and
`terminate()` for the server's own side. The store is the server on 127.0.0.1:5432 (stores.PG_SERVER)."""

from __future__ import annotations

import socket
import threading
import time

import asyncpg
from stores import PG_SERVER as SERVER


async def terminate(database: str, application_name: str) -> int:
    """Kills the server side of every connection with this application_name on the database."""
    conn = await asyncpg.connect(f"{SERVER}/test")
    try:
        return len(
            await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2",
                database.rsplit("/", 1)[1],
                application_name,
            )
        )
    finally:
        await conn.close()


class socket_refusing:
    """A local port nothing listens on (bound, never listening, so connections are refused)."""

    def __enter__(self) -> int:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return self._sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


class Relay:
    """A TCP relay to the real server that a test can cut (open connections reset, new ones refused) and
    restore: an outage without stopping the shared PostgreSQL. Threads, so sync and async tests can use it."""

    def __init__(self, target_port: int = 5432) -> None:
        self.target_port = target_port
        self.open = True
        self.frozen = threading.Event()  # set: bytes are held back, connections stay open (a hung server)
        self.dropping = threading.Event()  # set: bytes vanish, connections stay open (a silent network fault)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self._listener.close()

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()

    def cut(self) -> None:
        with self._lock:
            self.open = False
            for sock in self._sockets:
                _reset(sock)
            self._sockets.clear()

    def restore(self) -> None:
        with self._lock:
            self.open = True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if not self.open:
                    _reset(client)
                    continue
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port))
                except OSError:
                    _reset(client)
                    continue
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.frozen.is_set():
                    time.sleep(0.01)
                if not self.dropping.is_set():
                    target.sendall(data)
        except OSError:
            pass
        with self._lock:
            for sock in (source, target):
                if sock in self._sockets:
                    self._sockets.discard(sock)
                    _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Drop a connection at once: shutdown wakes the relay thread blocked reading it, then close."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
