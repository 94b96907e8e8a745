"""Step 8: the access line is the JSON object json.dumps would write, and is written only when asked for."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyscope.observe import accesslog


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
    client=_TEXT,
    request_id=_TEXT,
    bytes_in=st.integers(0, 2**40),
    bytes_out=st.integers(0, 2**40),
    user_agent=st.one_of(st.none(), st.binary(max_size=300)),
    upstream_ms=st.one_of(st.none(), st.floats(0, 10)),
)
def test_the_line_is_the_json_of_its_fields(
    method: str, path: bytes, decision: str, status: int, key_id: str | None, function: str | None,
    reason: str | None, step: str | None, upstream: int | None, client: str | None, request_id: str | None,
    bytes_in: int, bytes_out: int, user_agent: bytes | None, upstream_ms: float | None,
) -> None:
    stream = io.StringIO()
    accesslog.enable(stream)
    try:
        before = time.time()
        started = time.perf_counter()
        accesslog.record(started=started, method=method, path=path, decision=decision, status=status, key_id=key_id,
                         function=function, reason=reason, step=step, upstream_status=upstream, client=client,
                         request_id=request_id, bytes_in=bytes_in, bytes_out=bytes_out, user_agent=user_agent,
                         upstream_ms=upstream_ms)
        elapsed = (time.perf_counter() - started) * 1000
        after = time.time()
    finally:
        accesslog.disable()
    text = stream.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    line = json.loads(text)
    assert tuple(line) == accesslog.FIELDS
    assert line == {
        "time": line["time"], "client": client, "request_id": request_id, "method": method,
        "path": path.decode("latin-1"), "key": key_id, "function": function, "decision": decision, "status": status,
        "reason": reason, "step": step, "upstream": upstream, "bytes_in": bytes_in, "bytes_out": bytes_out,
        "user_agent": None if user_agent is None else user_agent[:256].decode("latin-1"),
        "ms": line["ms"], "keyscope_ms": line["keyscope_ms"], "upstream_ms": line["upstream_ms"],
    }
    stamp = datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert len(line["time"]) == 24 and int(before * 1000) / 1000 <= stamp <= after
    assert 0 <= line["ms"] <= round(elapsed, 3)
    if upstream_ms is None:
        assert line["upstream_ms"] is None and line["keyscope_ms"] == line["ms"]
    else:
        assert line["upstream_ms"] == round(upstream_ms, 3)
        assert line["keyscope_ms"] == round(max(0.0, line["ms"] - upstream_ms), 3) or abs(
            line["keyscope_ms"] + line["upstream_ms"] - line["ms"]) <= 0.002
    assert text.isascii()  # ensure_ascii, as json.dumps writes it


def test_the_line_uses_json_dumps_separators_and_three_decimals(lines: io.StringIO) -> None:
    accesslog.write(time.perf_counter(), "POST", b"/sms/2/text/advanced", accesslog.REFUSED, 403, "K1",
                    "Send SMS message", "id_out_of_scope", "scope", None, "10.0.0.7", "abc-1", 12, 34, b"curl/8",
                    1.5)
    text = lines.getvalue().rstrip("\n")
    line = json.loads(text)
    numbers = {}
    for name in ("ms", "keyscope_ms", "upstream_ms"):
        number = numbers[name] = text.split(f'"{name}":', 1)[1].split(",", 1)[0].rstrip("}")
        assert len(number.rpartition(".")[2]) == 3 and float(number) == round(float(number), 3)
    expected = json.dumps({**line, **{name: f"@{name}" for name in numbers}}, separators=(",", ":"))
    for name, number in numbers.items():
        expected = expected.replace(f'"@{name}"', number)
    assert text == expected


def test_iso_time_is_utc_with_milliseconds() -> None:
    assert accesslog.iso_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert accesslog.iso_time(1796406105.9996) == "2026-12-04T17:41:45.999Z"  # truncated, never the next second
    assert accesslog.iso_time(1796406106.25) == "2026-12-04T17:41:46.250Z"
    assert accesslog.iso_time(1796406105.5) == "2026-12-04T17:41:45.500Z"  # back in time: the cache follows


def test_a_sane_request_id_is_kept_and_anything_else_replaced() -> None:
    for sane in (b"a", b"abc-123_x", b"req.1:2-3", b"A" * 128):
        assert accesslog.request_id(sane) == sane.decode()
    made = {accesslog.request_id(value) for value in (None, b"", b"A" * 129, b"a b", b"a\"b", b"\xc3\xa9", b"a/b")}
    assert len(made) == 7
    for value in made:
        assert 1 <= len(value) <= 128 and all(c.isalnum() or c in "._:-" for c in value)


def test_the_text_format_is_name_value_pairs_without_nulls(lines: io.StringIO) -> None:
    accesslog.set_format("text")
    try:
        accesslog.write(time.perf_counter(), "GET", b"/a b", accesslog.REFUSED, 401, None, None, "missing_credentials",
                        "auth", None, "127.0.0.1", "rid-1", 0, 77, b'say "hi"', None)
    finally:
        accesslog.set_format("json")
    text = lines.getvalue().rstrip("\n")
    assert text.startswith('time="') and "\n" not in text
    assert ' client="127.0.0.1" request_id="rid-1" method="GET" path="/a b" decision="refused" status=401 ' in text
    assert ' reason="missing_credentials" step="auth" bytes_in=0 bytes_out=77 user_agent="say \\"hi\\"" ms=' in text
    assert "key=" not in text and "upstream=" not in text and "upstream_ms" not in text
    with pytest.raises(ValueError):
        accesslog.set_format("xml")


def test_the_json_formatter_writes_one_object_per_record() -> None:
    record = logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, 'bad "thing" %s', ("x",), None)
    line = json.loads(accesslog.JsonFormatter().format(record))
    assert list(line) == ["time", "level", "logger", "message"]
    assert (line["level"], line["logger"], line["message"]) == ("warning", "uvicorn.error", 'bad "thing" x')


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
