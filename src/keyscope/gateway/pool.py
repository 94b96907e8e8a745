"""The connections of one worker to the upstream: at most `limit` open, idle ones kept for reuse.

Idle connections are reused newest first, so under light load the old ones age out. A connection idle for
KEEPALIVE seconds or more is closed instead of reused: uvicorn and Node close idle connections after 5 s, and a
connection the upstream closes just as a request goes out on it fails a request that cannot always be retried
(a POST). One the upstream closes while idle leaves the pool at once (`Connection` tells the pool); no timer
of the pool's own closes the others, which are closed when found too old, by the upstream, or by `close()`.

When `limit` connections are open, a request waits for one to come back, or for room to open one, at most
`timeout` seconds. A retry waits for room only: it must not get another connection that may be stale.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque

from keyscope.gateway.exchange import Connection

KEEPALIVE = 4.0


class Pool:
    def __init__(self, host: str, port: int, *, tls: bool, limit: int, timeout: float) -> None:
        self._host = host
        self._port = port
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        self._limit = limit
        self._timeout = timeout
        self._idle: list[Connection] = []
        self._open = 0
        self._waiters: deque[tuple[asyncio.Future[Connection | None], bool]] = deque()
        self._loop = asyncio.get_running_loop()
        self._closing = False

    async def acquire(self, fresh: bool = False) -> Connection:
        """An idle connection (its `reused` set) or a new one; `fresh`: a new one in any case (a retry).

        Raises TimeoutError (no connection within the timeout) or OSError (the upstream refused, or its name
        does not resolve)."""
        if not fresh:
            idle = self._idle
            if idle:
                now = self._loop.time()
                while idle:
                    connection = idle.pop()
                    if now - connection.idle_since < KEEPALIVE:
                        connection.reused = True
                        return connection
                    connection.close()
        if self._open >= self._limit:
            waiter = self._loop.create_future()
            entry = (waiter, fresh)
            self._waiters.append(entry)
            try:
                async with asyncio.timeout(self._timeout):
                    handed = await waiter
            except BaseException:
                if not waiter.done():
                    self._waiters.remove(entry)
                elif not waiter.cancelled():
                    if waiter.result() is not None:
                        self.release(waiter.result())  # type: ignore[arg-type]
                    else:  # the room kept for it goes to the next
                        self._open -= 1
                        self._wake()
                raise
            if handed is not None:
                handed.reused = True
                return handed
            return await self._connect()  # `_wake` kept the room for it
        self._open += 1
        return await self._connect()

    async def _connect(self) -> Connection:
        """A new connection, in room already counted in `_open`."""
        loop = self._loop
        try:
            async with asyncio.timeout(self._timeout):
                _, connection = await loop.create_connection(
                    lambda: Connection(loop, self._timeout, self._lost), self._host, self._port,
                    ssl=self._ssl, server_hostname=self._host if self._ssl is not None else None,
                )
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        sock = connection.transport.get_extra_info("socket")  # type: ignore[union-attr]
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def release(self, connection: Connection) -> None:
        """Back to the pool if the answer left the connection usable, else closed."""
        if self._closing or not connection.rest():
            connection.close()
            return
        while self._waiters:
            waiter, fresh = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
            elif fresh:  # it wants a new connection: closing this one makes room (`_lost` wakes it)
                connection.close()
                return
            else:
                self._waiters.popleft()
                waiter.set_result(connection)
                return
        connection.idle_since = self._loop.time()
        self._idle.append(connection)

    def _lost(self, connection: Connection) -> None:
        """A connection closed, by either side: one less open, and a waiter may open one."""
        self._open -= 1
        if connection in self._idle:
            self._idle.remove(connection)
        self._wake()

    def _wake(self) -> None:
        """Room for one more connection: kept for the first waiter, if any."""
        while self._waiters:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                self._open += 1
                waiter.set_result(None)
                return

    def close(self) -> None:
        self._closing = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
