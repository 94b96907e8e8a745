"""The limiter's own Redis connection: pipelined commands written as RESP, answers read by hiredis.

The shared counters send one command per request (EVALSHA, and SCRIPT LOAD when Redis lacks the script), in
batches. redis-py's asyncio client did that at a cost larger than the rest of the request: in
`benchmarks/gateway/instructions.py` a Redis-limited POST took 1.75x the instructions of an unlimited one,
most of it in the client's command, pool and retry layers around the socket. This is the part of it the
limiter needs and nothing else: one connection, commands packed by `hiredis.pack_command`, answers parsed by
`hiredis.Reader` (the parser redis-py itself uses), in order.

A connection that fails, or whose exchange is cancelled midway (the caller's timeout), is closed and never
reused, since answers still in flight would then be read as the next batch's; the next call connects again.
URLs as `keyscope.core.redisurl` reads them; `rediss://` is TLS with the system's CAs.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from typing import Any

import hiredis

from keyscope.core.redisurl import RedisAddress

READ_SIZE = 65536


class RedisError(Exception):
    """Redis answered a command with an error (e.g. `LOADING`, `READONLY`), or closed the connection."""


class NoScript(RedisError):
    """Redis does not hold the script (`NOSCRIPT`): load it and send the command again."""


def _error(reply: hiredis.ReplyError) -> RedisError:
    text = str(reply)
    return NoScript(text) if text.startswith("NOSCRIPT") else RedisError(text)


class RespConnection:
    def __init__(self, url: str, connect_timeout: float) -> None:
        self.address = RedisAddress.parse(url)
        self.connect_timeout = connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._parser: Any = None

    async def call(self, commands: Sequence[tuple[bytes, ...]]) -> list[Any]:
        """Sends the commands in one write and returns their answers in order; an error answer is returned as
        a RedisError (the others still count). Raises OSError, TimeoutError or RedisError when the connection
        fails, after closing it."""
        try:
            if self._writer is None:
                await self._connect()
            assert self._writer is not None
            self._writer.write(b"".join(map(hiredis.pack_command, commands)))
            return await self._answers(len(commands))
        except BaseException:
            self.close()
            raise

    async def _answers(self, count: int) -> list[Any]:
        parser, reader = self._parser, self._reader
        assert reader is not None
        answers: list[Any] = []
        while len(answers) < count:
            reply = parser.gets()
            if reply is False:
                data = await reader.read(READ_SIZE)
                if not data:
                    raise RedisError("Redis closed the connection")
                parser.feed(data)
            elif isinstance(reply, hiredis.ReplyError):
                answers.append(_error(reply))
            else:
                answers.append(reply)
        return answers

    async def _connect(self) -> None:
        address = self.address
        context = ssl.create_default_context() if address.tls else None
        async with asyncio.timeout(self.connect_timeout):
            self._reader, self._writer = await asyncio.open_connection(
                address.host, address.port, ssl=context, server_hostname=address.host if context else None
            )
            self._parser = hiredis.Reader()
            hello: list[tuple[bytes, ...]] = []
            if address.password is not None:
                user = () if address.username is None else (address.username.encode(),)
                hello.append((b"AUTH", *user, address.password.encode()))
            if address.db:
                hello.append((b"SELECT", b"%d" % address.db))
            if hello:
                self._writer.write(b"".join(map(hiredis.pack_command, hello)))
                for answer in await self._answers(len(hello)):
                    if isinstance(answer, RedisError):
                        raise answer

    def close(self) -> None:
        writer, self._writer, self._reader, self._parser = self._writer, None, None, None
        if writer is not None:
            writer.close()


__all__ = ["NoScript", "RedisError", "RespConnection"]
