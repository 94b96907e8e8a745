"""One JSON line per request on the `keyscope.access` logger (or `name=value` pairs: `--log-format text`).

A line says who called (the key id, never the secret; `admin` for the admin token) and from where, which
request it was (the request id also sent upstream and back to the client), what was matched, what was decided
and why, and how it ended: status, bytes, the time keyscope and the upstream took. The query string and headers are never logged: clients do put credentials there by mistake.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import sys
import time
from typing import TextIO

logger = logging.getLogger("keyscope.access")

FORWARDED = "forwarded"
REFUSED = "refused"
MANAGEMENT = "management"
FAILED = "failed"
"""Decisions: forwarded (or passed to the wrapped app), refused by a check, answered by the management API,
or forwarded but failed upstream (502/504) or abandoned by the client."""

CLIENT_GONE = 499
"""The status logged when the client left before its answer was complete (nginx's code)."""

_quote = json.encoder.encode_basestring_ascii  # the C function json.dumps uses for str with ensure_ascii
_time = time.time
_perf_counter = time.perf_counter


_sane_id = re.compile(rb"[A-Za-z0-9._:-]{1,128}").fullmatch
_id_prefix = os.urandom(6).hex()
_id_counter = itertools.count(1)


def request_id(given: bytes | None) -> str:
    """The client's X-Request-Id when it is a sane token (1-128 of `A-Za-z0-9._:-`), else a new one.

    A new one is this process's random prefix and a counter: unique without a random draw per request."""
    if given is not None and _sane_id(given) is not None:
        return given.decode("ascii")
    return f"{_id_prefix}-{next(_id_counter):x}"


def enabled() -> bool:
    """Whether `record()` would write a line (an embedder may turn the logger on or off at any time)."""
    return logger.isEnabledFor(logging.INFO)


def record(
    *,
    started: float,
    method: str,
    path: bytes,
    decision: str,
    status: int,
    key_id: str | None = None,
    function: str | None = None,
    reason: str | None = None,
    step: str | None = None,
    upstream_status: int | None = None,
    client: str | None = None,
    request_id: str | None = None,
    bytes_in: int = 0,
    bytes_out: int = 0,
    user_agent: bytes | None = None,
    upstream_ms: float | None = None,
) -> None:
    """`started` is a `time.perf_counter()` reading taken when the request arrived."""
    write(started, method, path, decision, status, key_id, function, reason, step, upstream_status, client,
          request_id, bytes_in, bytes_out, user_agent, upstream_ms)


FIELDS = ("time", "client", "request_id", "method", "path", "key", "function", "decision", "status", "reason", "step",
          "upstream", "bytes_in", "bytes_out", "user_agent", "ms", "keyscope_ms", "upstream_ms")
"""The fields of a line, in the order they are written (`--log-format text` writes them as `name=value`)."""

USER_AGENT_MAX = 256
"""Characters of User-Agent kept in a line: the header is the client's to fill, the log is not."""

_text_format = False
_second = -1
_second_text = ""
_MILLIS = tuple(f"{ms:03d}Z" for ms in range(1000))


def iso_time(now: float) -> str:
    """`now` (a time.time() reading) as ISO 8601 UTC with milliseconds: `2026-12-04T17:41:45.123Z`.

    The date and time of day are made once per second: strftime costs more than the rest of a line."""
    global _second, _second_text
    second = int(now)
    if second != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        _second = second
    return _second_text + _MILLIS[int((now - second) * 1000)]


def write(
    started: float,
    method: str,
    path: bytes,
    decision: str,
    status: int,
    key_id: str | None,
    function: str | None,
    reason: str | None,
    step: str | None,
    upstream_status: int | None,
    client: str | None = None,
    request_id: str | None = None,
    bytes_in: int = 0,
    bytes_out: int = 0,
    user_agent: bytes | None = None,
    upstream_ms: float | None = None,
) -> None:
    """`record()` with positional arguments, for the request path."""
    if not logger.isEnabledFor(logging.INFO):
        return
    ms = (_perf_counter() - started) * 1000
    # The JSON object written out by hand, in json.dumps(separators=(",", ":")) form (the generic encoder was
    # most of a refusal's cost: benchmarks/gateway/steps.py). `%.3f` names the same number as
    # `repr(round(x, 3))`: both are the correctly rounded decimal.
    if upstream_ms is None:
        own, upstream_text = ms, "null"
    else:
        own, upstream_text = ms - upstream_ms, f"{upstream_ms:.3f}"
        if own < 0:
            own = 0.0
    agent = "null" if user_agent is None else _quote(user_agent[:USER_AGENT_MAX].decode("latin-1"))
    text = (
        f'{{"time":"{iso_time(_time())}","client":{"null" if client is None else _quote(client)},'
        f'"request_id":{"null" if request_id is None else _quote(request_id)},'
        f'"method":{_quote(method)},"path":{_quote(path.decode("latin-1"))},'
        f'"key":{"null" if key_id is None else _quote(key_id)},'
        f'"function":{"null" if function is None else _quote(function)},"decision":{_quote(decision)},'
        f'"status":{status:d},"reason":{"null" if reason is None else _quote(reason)},'
        f'"step":{"null" if step is None else _quote(step)},'
        f'"upstream":{"null" if upstream_status is None else format(upstream_status, "d")},'
        f'"bytes_in":{bytes_in:d},"bytes_out":{bytes_out:d},"user_agent":{agent},'
        f'"ms":{ms:.3f},"keyscope_ms":{own:.3f},"upstream_ms":{upstream_text}}}'
    )
    if _text_format:
        text = to_text(text)
    if _sink is not None:
        _sink.write_line(text)
    else:
        logger.info(text)


def to_text(line: str) -> str:
    """A JSON line as `name=value` pairs (logfmt), strings JSON-quoted, nulls left out: `--log-format text`."""
    fields = json.loads(line)
    return " ".join(
        f"{name}={value if isinstance(value, (int, float)) else _quote(value)}"
        for name, value in fields.items()
        if value is not None
    )


def set_format(name: str) -> None:
    """`json` (the default) or `text`, for every line written from now on."""
    global _text_format
    if name not in ("json", "text"):
        raise ValueError(f"unknown log format {name!r}")
    _text_format = name == "text"


class JsonFormatter(logging.Formatter):
    """keyscope's and uvicorn's own lines on stderr as one JSON object each, beside the JSON access lines.

    A record logged with `extra={"fields": {...}}` (the audit trail's, `keyscope.control.audit`) has those
    fields after `message`, in the same object."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        fields = getattr(record, "fields", None)
        more = "," + json.dumps(fields, separators=(",", ":"))[1:-1] if isinstance(fields, dict) and fields else ""
        return (
            f'{{"time":"{iso_time(record.created)}","level":{_quote(record.levelname.lower())},'
            f'"logger":{_quote(record.name)},"message":{_quote(message)}{more}}}'
        )


class LineHandler(logging.Handler):
    """Writes each access line as is, gathered and written at most every half second (or every 64 KiB).

    A write system call per request costs more than building the line, and the stream cannot be trusted to
    buffer (PYTHONUNBUFFERED=1, common in containers, makes stdout write through). A line waits at most
    `delay` seconds.

    Gathered lines must never die with the process (an answered request without its line is a hole in the
    record), so they are written at every way out: the gateway's lifespan shutdown calls `flush()` once the
    drain is over; `keyscope serve` calls `stop_gathering()` from its signal handlers, after which every line
    is written as it comes (a worker whose SIGTERM uvicorn re-raises is killed without running any exit hook);
    and `logging.shutdown`, registered with atexit by logging itself, flushes every handler at a normal exit.
    """

    def __init__(self, stream: TextIO, delay: float = 0.5, limit: int = 64 * 1024) -> None:
        super().__init__()
        self.stream = stream
        self.delay = delay
        self.limit = limit
        self._lines: list[str] = []
        self._size = 0
        self._scheduled = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(record.getMessage())
        except Exception:
            self.handleError(record)

    def write_line(self, text: str) -> None:
        self._lines.append(text)
        self._size += len(text)
        if self._size >= self.limit:
            self.flush()
        elif not self._scheduled:
            try:
                asyncio.get_running_loop().call_later(self.delay, self._flush_later)
                self._scheduled = True
            except RuntimeError:  # no event loop: nothing would flush later
                self.flush()

    def _flush_later(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self._lines, self._size = self._lines, [], 0
            try:
                if lines:
                    lines.append("")
                    self.stream.write("\n".join(lines))
                self.stream.flush()
            except (OSError, ValueError):
                pass

    def stop_gathering(self) -> None:
        """From now on write each line as it comes (a limit of 0 makes `write_line` flush every line, at no cost
        to a request before this is called), and write what is gathered now.

        Safe in a signal handler: with an event loop running in this thread the write is left to the loop (a
        buffered stream written from a handler that interrupted a write of the same stream raises "reentrant
        call"); the loop runs it within its next iteration, long before the drain is over."""
        self.limit = 0
        try:
            asyncio.get_running_loop().call_soon_threadsafe(self.flush)
        except RuntimeError:  # no event loop here: nothing else is writing
            self.flush()


_sink: LineHandler | None = None
"""Set by the server: lines go straight to its handler, skipping the LogRecord machinery (a sizeable share of a
request's CPU); embedders configure the `keyscope.access` logger as usual instead."""


def enable(stream: TextIO | None = None) -> None:
    """Send access lines, bare, to `stream` (stdout by default); the server calls this once per worker."""
    global _sink
    if _sink is None:
        _sink = LineHandler(stream or sys.stdout)
        logger.addHandler(_sink)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def disable() -> None:
    global _sink
    if _sink is not None:
        logger.removeHandler(_sink)
        _sink.flush()
        _sink = None
    logger.setLevel(logging.WARNING)


def flush() -> None:
    """Write the gathered lines now (the gateway's lifespan shutdown: every answer of the drain is in)."""
    if _sink is not None:
        _sink.flush()


def stop_gathering() -> None:
    """Write lines as they come from now on, and the gathered ones soon: the process is about to stop (called by
    `keyscope serve`'s signal handlers, before the drain)."""
    if _sink is not None:
        _sink.stop_gathering()
