"""Step 8: the access line is the JSON object json.dumps would write, and is written only when asked for."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyscope import accesslog


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    accesslog.enable(stream)
    try:
        yield stream
    finally:
        accesslog.disable()


_TEXT = st.one_of(st.none(), st.text(max_size=12))


@settings(max_examples=300, deadline=None)
@given(
    method=st.text(min_size=1, max_size=8),
    path=st.binary(max_size=16),
    decision=st.sampled_from([accesslog.FORWARDED, accesslog.REFUSED, accesslog.MANAGEMENT, accesslog.FAILED]),
    status=st.integers(100, 599),
    key_id=_TEXT,
    function=_TEXT,
    reason=_TEXT,
    step=_TEXT,
    upstream=st.one_of(st.none(), st.integers(100, 599)),
)
def test_the_line_is_the_json_of_its_fields(
    method: str, path: bytes, decision: str, status: int, key_id: str | None, function: str | None,
    reason: str | None, step: str | None, upstream: int | None,
) -> None:
    stream = io.StringIO()
    accesslog.enable(stream)
    try:
        before = time.time()
        started = time.perf_counter()
        accesslog.record(started=started, method=method, path=path, decision=decision, status=status, key_id=key_id,
                         function=function, reason=reason, step=step, upstream_status=upstream)
        elapsed = (time.perf_counter() - started) * 1000
        after = time.time()
    finally:
        accesslog.disable()
    text = stream.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    line = json.loads(text)
    assert list(line) == ["time", "method", "path", "key", "function", "decision", "status", "reason", "step",
                          "upstream", "ms"]
    assert line == {
        "time": line["time"], "method": method, "path": path.decode("latin-1"), "key": key_id, "function": function,
        "decision": decision, "status": status, "reason": reason, "step": step, "upstream": upstream,
        "ms": line["ms"],
    }
    assert round(before, 3) <= line["time"] <= round(after, 3)
    assert 0 <= line["ms"] <= round(elapsed, 3)
    assert text.isascii()  # ensure_ascii, as json.dumps writes it


def test_the_line_uses_json_dumps_separators_and_three_decimals(lines: io.StringIO) -> None:
    accesslog.write(time.perf_counter(), "POST", b"/sms/2/text/advanced", accesslog.REFUSED, 403, "K1",
                    "Send SMS message", "id_out_of_scope", "scope", None)
    text = lines.getvalue().rstrip("\n")
    line = json.loads(text)
    fields = {name: value for name, value in line.items() if name not in ("time", "ms")}
    time_text = text.split('"time":', 1)[1].split(",", 1)[0]
    ms_text = text.rsplit('"ms":', 1)[1].rstrip("}")
    assert text == f'{{"time":{time_text},{json.dumps(fields, separators=(",", ":"))[1:-1]},"ms":{ms_text}}}'
    for number in (time_text, ms_text):
        assert len(number.rpartition(".")[2]) == 3 and float(number) == round(float(number), 3)


def test_nothing_is_written_when_the_logger_is_off() -> None:
    stream = io.StringIO()
    accesslog.enable(stream)
    accesslog.logger.setLevel(logging.WARNING)
    try:
        assert not accesslog.enabled()
        accesslog.write(time.perf_counter(), "GET", b"/", accesslog.FORWARDED, 200, None, None, None, None, 200)
    finally:
        accesslog.disable()
    assert stream.getvalue() == ""


def test_embedders_get_the_line_through_the_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="keyscope.access"):
        assert accesslog.enabled()
        accesslog.write(time.perf_counter(), "GET", b"/x", accesslog.FORWARDED, 200, "K", "f", None, None, 200)
    assert [json.loads(record.getMessage())["path"] for record in caplog.records] == ["/x"]


class CountingStream(io.StringIO):
    """A stream that writes through, as stdout does under PYTHONUNBUFFERED=1: each write() would be a syscall."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_written_in_an_event_loop_leave_together_within_the_delay() -> None:
    stream = CountingStream()
    handler = accesslog.LineHandler(stream, delay=0.05)

    async def scenario() -> None:
        for number in range(50):
            handler.write_line(f'{{"n":{number}}}')
        assert stream.writes == 0
        await asyncio.sleep(0.2)
        assert stream.writes == 1
        handler.write_line('{"n":50}')
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert stream.writes == 2
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == list(range(51))


def test_a_full_buffer_is_written_at_once_and_nothing_is_lost_at_flush() -> None:
    stream = CountingStream()
    handler = accesslog.LineHandler(stream, delay=60, limit=100)

    async def scenario() -> None:
        for number in range(30):
            handler.write_line(f'{{"number":{number}}}')  # 13-14 characters a line: a write every 8 lines

    asyncio.run(scenario())
    assert 3 <= stream.writes <= 4
    handler.flush()  # as logging does at exit, and disable() does
    assert [json.loads(line)["number"] for line in stream.getvalue().splitlines()] == list(range(30))


def test_once_the_process_is_stopping_lines_are_written_as_they_come() -> None:
    """What `keyscope serve`'s signal handlers do: the gathered lines leave within the loop's next iteration
    (never from the handler itself), and every later line at once, since the process may be killed any time."""
    stream = CountingStream()
    handler = accesslog.LineHandler(stream, delay=60)

    async def scenario() -> None:
        handler.write_line('{"n":0}')
        handler.write_line('{"n":1}')
        handler.stop_gathering()
        assert stream.writes == 0  # left to the loop
        await asyncio.sleep(0)
        assert stream.writes == 1
        handler.write_line('{"n":2}')
        assert stream.writes == 2

    asyncio.run(scenario())
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [0, 1, 2]
