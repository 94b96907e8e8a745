"""`--rate-limit-store redis://HOST:PORT/DB`: the counters in Redis, shared by every worker of every instance.

One round trip per request at most: a Lua script (run by EVALSHA, which Redis runs atomically) reads the TAT
of each limit the request counts against, decides by GCRA (`gcra`) and, when every limit lets it through,
writes the new TATs with an expiry at the moment their bucket is full again. The time is Redis's own (TIME), so
instances whose clocks differ still count on one clock; tests pass a time instead. The requests of one
event-loop step that ask at once go in one pipeline (one write, one read), on the worker's one connection
(`resp`), one exchange at a time: requests asking while one is out leave together when it is back. Each script
still runs alone and atomically, and under load a worker makes far fewer system calls than requests.

One Redis (a primary, with replicas if you like): a request's keys live in several hash slots, which Redis
Cluster would refuse in one script. Keys are `keyscope:rl:<subject>:<period seconds>`.

When Redis does not answer within `TIMEOUT`, `check()` raises `Unavailable` and the procedure follows
`--rate-limit-on-error`; for `RETRY_AFTER` seconds after a failure Redis is not asked at all (`available()`),
so an outage costs no timeout per request, and the first request after that asks again (on a new connection). The start and the end of an outage are one warning each on stderr.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from keyscope.decide.ratelimit.gcra import Rule, Verdict, decide
from keyscope.decide.ratelimit.resp import NoScript, RespConnection

logger = logging.getLogger("keyscope.ratelimit")

TIMEOUT = 0.5
"""Seconds for a connection to Redis and for the script's answer."""
RETRY_AFTER = 1.0
"""Seconds Redis is left alone after it failed."""

SCRIPT = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local tats = {}
local admitted = 1
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  if tat - now > tonumber(ARGV[2 * i + 1]) then admitted = 0 end
end
local out = {admitted}
for i = 1, #KEYS do
  local tat = tats[i]
  out[i + 1] = tat - now
  if admitted == 1 then
    tat = tat + tonumber(ARGV[2 * i])
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.floor((tat - now) / 1000) + 1)
  end
end
return out
"""
"""KEYS: one per limit. ARGV: the time in microseconds ('' for Redis's), then each limit's interval and
tolerance. Answers {admitted (1 or 0), then per limit its TAT before the request minus the time}: the
Verdict is `gcra.decide()`'s on those, the same arithmetic as the local counters'."""
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


class Unavailable(Exception):
    """Redis did not answer: the procedure follows `--rate-limit-on-error`."""


def describe(url: str) -> str:
    """The URL without credentials, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisCounters:
    def __init__(self, url: str, *, timeout: float = TIMEOUT, retry_after: float = RETRY_AFTER) -> None:
        self.url = url
        self.timeout = timeout
        self.retry_after = retry_after
        self.policy = "allow"  # what `--rate-limit-on-error` says, for the warning
        self._connection = RespConnection(url, timeout)
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch: list[tuple[tuple[bytes, ...], asyncio.Future[Any]]] = []
        self._packed: dict[tuple[str, ...], tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {}
        self._down_until = 0.0
        self._down = False

    def available(self) -> bool:
        """False for `retry_after` seconds after Redis failed: then the procedure does not ask it."""
        return not self._down or time.monotonic() >= self._down_until

    async def check(self, names: Sequence[str], rules: Sequence[Rule], now: int | None = None) -> Verdict:
        """Count one request against these limits in Redis; Unavailable if Redis does not answer."""
        key = tuple(names)
        packed = self._packed.get(key)
        if packed is None:  # the command's words as bytes, made once per set of limits
            if len(self._packed) >= 4096:
                self._packed.clear()
            packed = self._packed[key] = (
                (b"EVALSHA", SHA.encode(), b"%d" % len(names), *(name.encode() for name in names)),
                tuple(b"%d" % value for rule in rules for value in (rule.interval, rule.tolerance)),
            )
        args = (*packed[0], b"" if now is None else b"%d" % now, *packed[1])
        loop = asyncio.get_running_loop()
        answered = loop.create_future()
        self._batch.append((args, answered))
        if len(self._batch) == 1:  # the first of this step: the batch leaves once the step is over
            loop.call_soon(self._send)
        try:
            answer = await answered
        except Exception as exc:  # connection refused, timeout, a Redis that is loading or read-only, ...
            self._failed(exc)
            raise Unavailable(str(exc)) from exc
        if self._down:
            self._down = False
            logger.warning("rate-limit store %s answers again", describe(self.url))
        verdict, _ = decide([int(gap) for gap in answer[1:]], rules, 0)
        if verdict.admitted != (answer[0] == 1):  # never expected (tests hold both to one model): Redis counted
            verdict = verdict._replace(admitted=answer[0] == 1)
        return verdict

    def _send(self) -> None:
        """One exchange at a time on the one connection: while one is out, the requests asking meanwhile wait
        for it and then leave together (`_drain()`), so a busy worker sends bigger batches, not more of them."""
        if self._tasks:  # the exchange out now takes this batch when it is back
            return
        task = asyncio.get_running_loop().create_task(self._drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        while self._batch:
            batch, self._batch = self._batch, []
            await self._exchange(batch)

    async def _exchange(self, batch: list[tuple[tuple[bytes, ...], asyncio.Future[Any]]]) -> None:
        """The batch's scripts in one pipeline, each answer (or error) to its request."""
        try:
            async with asyncio.timeout(self.timeout):
                answers = await self._run([args for args, _ in batch])
        except Exception as exc:
            answers = [exc] * len(batch)
        for (_, answered), answer in zip(batch, answers, strict=True):
            if not answered.done():  # a request whose client left was cancelled meanwhile
                if isinstance(answer, Exception):
                    answered.set_exception(answer)
                else:
                    answered.set_result(answer)

    async def _run(self, commands: list[tuple[bytes, ...]]) -> list[Any]:
        connection = self._connection
        answers = await connection.call(commands)
        if any(isinstance(answer, NoScript) for answer in answers):  # a Redis new to the script (or flushed)
            await connection.call([(b"SCRIPT", b"LOAD", SCRIPT.encode())])
            answers = await connection.call(commands)
        return answers

    def _failed(self, exc: Exception) -> None:
        self._down_until = time.monotonic() + self.retry_after
        if not self._down:
            self._down = True
            logger.warning(
                "rate-limit store %s unavailable (%s: %s): requests are %s (--rate-limit-on-error) until it answers",
                describe(self.url), exc.__class__.__name__, exc, "allowed" if self.policy == "allow" else "refused",
            )

    async def close(self) -> None:
        self._connection.close()
