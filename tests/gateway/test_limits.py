"""The bounds on a request head (`keyscope.core.limits`), before anyone is authenticated.

Under `keyscope serve` the protocol counts the target and the header lines as they arrive and answers 414/431
the moment a bound is crossed, before the head is complete; a head that is not complete in `header_timeout`
is closed. Step 1 gives the same verdicts on a whole head, so the middleware refuses the same requests under
any server. Real servers throughout: uvicorn with `GatewayProtocol` in a thread, `keyscope serve` and the echo
backend as processes, raw sockets for what an HTTP client would not send.
"""

from __future__ import annotations

import json
import re
import select
import time
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import Echo, Gateway, Key, World, init_store, request_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_http import connect, read_all, read_one, threaded

from keyscope.core.errors import Refusal, refusal_body
from keyscope.core.limits import DEFAULT, Limits
from keyscope.core.settings import ConfigError, Settings, load
from keyscope.decide.answers import refuse
from keyscope.gateway.app import Gateway as GatewayApp
from keyscope.gateway.middleware import KeyScopeMiddleware
from keyscope.gateway.protocol import GatewayProtocol, head_bytes_limit
from keyscope.http import canonical

SMALL = Limits(target_bytes=64, headers=6, header_bytes=200)


# servers in a thread ---------------------------------------------------------------------------------------


class StepOne:
    """Runs step 1 with `limits` on the ASGI path, as the gateway does: a refusal in the legacy family, else 200
    with the header lines it got. Says `limits` and `header_timeout` to the protocol, as the gateway does."""

    def __init__(self, limits: Limits, header_timeout: float = 30.0) -> None:
        self.limits = limits
        self.header_timeout = header_timeout

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        try:
            canonical.check(scope["method"], scope["raw_path"], scope["query_string"], scope["headers"], self.limits)
        except Refusal as refusal:
            await refuse(send, refusal, "legacy")
            return
        payload = json.dumps([[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]).encode()
        headers = [(b"content-length", b"%d" % len(payload))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture(scope="module")
def small() -> Iterator[int]:
    """GatewayProtocol with small limits and a half-second head timeout."""
    with threaded(StepOne(SMALL, header_timeout=0.5), GatewayProtocol) as port:
        yield port


# raw sockets -----------------------------------------------------------------------------------------------






def send_until_answered(port: int, data: bytes, piece: int = 16 * 1024, pause: float = 0.0) -> tuple[int, bytes, int]:
    """Send `data` piece by piece until the server answers; (status, the answer, bytes sent)."""
    with connect(port) as sock:
        sent = 0
        while sent < len(data):
            readable, _, _ = select.select([sock], [], [], pause)
            if readable:
                break
            try:
                sock.sendall(data[sent : sent + piece])
            except OSError:  # closed while we were sending
                break
            sent += piece
        answer = read_all(sock)
    return int(answer.split(b" ")[1]), answer, min(sent, len(data))


def refusal_of(reason: str, limits: Limits) -> Refusal:
    """The refusal step 1 gives for a head past one of `limits`."""
    try:
        if reason == "too_long":
            canonical.check_head(limits, limits.target_bytes + 1)
        elif reason == "too_many_headers":
            canonical.check_head(limits, 0, limits.headers + 1)
        else:
            canonical.check_head(limits, 0, 0, limits.header_bytes + 1)
    except Refusal as refusal:
        assert refusal.reason == reason
        return refusal
    raise AssertionError(reason)


def closed_answer(refusal: Refusal, answer: bytes) -> bytes:
    """What the protocol writes for a head it refuses before the head ends: step 1's answer with a new request id
    (the head was never read whole: no id of the client's is trusted), then it closes. The id is taken from
    `answer`, the answer received, once it is seen to be one keyscope makes."""
    found = re.search(rb"\r\nx-request-id: ([0-9a-f]+-[0-9a-f]+)\r\n", answer)
    assert found is not None, answer
    payload = refusal_body(refusal, "legacy")
    phrase = HTTPStatus(refusal.status).phrase.encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json;charset=UTF-8\r\ncontent-length: %d\r\n"
            b"x-request-id: %s\r\nconnection: close\r\n\r\n" % (refusal.status, phrase, len(payload), found[1])
            ) + payload


# the protocol: refused as the head arrives ------------------------------------------------------------------
def test_a_target_past_the_limit_is_414_before_the_request_line_ends(small: int) -> None:
    with connect(small) as sock:
        sock.sendall(b"GET /" + b"a" * 64)  # 65 bytes of target, no end of line, no head
        answer = read_all(sock)
        assert answer == closed_answer(refusal_of("too_long", SMALL), answer)


def test_a_target_at_the_limit_passes_and_the_question_mark_is_not_counted(small: int) -> None:
    target = b"/" + b"a" * 31 + b"?" + b"b" * 32  # 64 bytes of path and query
    with connect(small) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, _ = read_one(sock)
    assert status == 200


def test_a_header_line_past_the_count_is_431_before_the_head_ends(small: int) -> None:
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(7))
    with connect(small) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + lines + b"X")  # a line is complete when the next one starts
        answer = read_all(sock)
        assert answer == closed_answer(refusal_of("too_many_headers", SMALL), answer)


def test_header_bytes_past_the_limit_are_431_before_the_head_ends(small: int) -> None:
    with connect(small) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 196 + b"\r\nX")  # 5 + 196 bytes
        answer = read_all(sock)
        assert answer == closed_answer(refusal_of("headers_too_large", SMALL), answer)


def test_limits_exactly_met_pass(small: int) -> None:
    fill = 200 - len(b"host" b"t") - 4 * len(b"x-0" b"v") - len(b"x-fill")
    lines = b"Host: t\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(4)) + b"X-Fill: " + b"v" * fill + b"\r\n"
    with connect(small) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n" + lines + b"\r\n")
        status, _, body = read_one(sock)
    assert status == 200
    assert sum(len(n) + len(v) for n, v in json.loads(body)) == 200


def test_one_header_line_without_end_is_431_once_the_head_is_too_long(small: int) -> None:
    limit = head_bytes_limit(SMALL)
    data = b"GET / HTTP/1.1\r\nX-Endless: " + b"v" * (20 * limit)
    status, answer, sent = send_until_answered(small, data, 512, pause=0.05)
    assert status == 431 and b"connection: close" in answer
    assert b"The request head is longer than %d bytes." % limit in answer
    assert sent < len(data)  # answered while the line went on


def test_endless_trailers_close_the_connection(small: int) -> None:
    limit = head_bytes_limit(SMALL)
    head = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: "
    with connect(small) as sock:
        sock.sendall(head)
        sent = 0
        while not select.select([sock], [], [], 0.05)[0] and sent < 50 * limit:
            try:
                sock.sendall(b"v" * 512)
            except OSError:
                break
            sent += 512
        assert sent < 50 * limit  # closed while the line went on
        assert read_all(sock) == b""


@pytest.mark.parametrize(
    "partial",
    [b"", b"G", b"GET /a HT", b"GET / HTTP/1.1\r\nHost: t\r\n", b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: aaa"],
)
def test_a_head_not_complete_in_time_is_closed(small: int, partial: bytes) -> None:
    with connect(small) as sock:
        sock.sendall(partial)
        assert read_all(sock) == b""  # the server closed it (after 0.5 s; the socket would time out in 10)


def test_a_slow_head_on_a_kept_alive_connection_is_closed_too(small: int) -> None:
    with connect(small) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_one(sock)[0] == 200
        sock.sendall(b"GET / HTTP/1.1\r\nHos")
        assert read_all(sock) == b""


def test_a_head_in_pieces_in_time_is_answered(small: int) -> None:
    with connect(small) as sock:
        for piece in (b"GET /a?b=1 HT", b"TP/1.1\r\nHo", b"st: t\r\nX-A: 1", b"\r\n\r\n"):
            sock.sendall(piece)
        assert read_one(sock)[0] == 200
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # and the connection goes on
        assert read_one(sock)[0] == 200


_NAMES = st.sampled_from(["x-a", "x-long-header-name", "accept", "content-type", "x-b"])
_VALUES = st.text("abcdefghij0123456789-=/ ", min_size=1, max_size=40).map(str.strip).filter(bool)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 80), st.lists(st.tuples(_NAMES, _VALUES), max_size=9))
def test_the_protocol_and_step_one_give_one_verdict(small: int, length: int, lines: list[tuple[str, str]]) -> None:
    path = b"/" + b"p" * (length - 1)
    headers = [(b"host", b"t")] + [(n.encode(), v.encode()) for n, v in lines]
    try:
        canonical.check("GET", path, b"", headers, SMALL)
        expected = None
    except Refusal as refusal:
        expected = refusal
    head = b"GET " + path + b" HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
    with connect(small) as sock:
        sock.sendall(head)
        status, _, body = read_one(sock)
    if expected is None:
        assert status == 200
    else:
        assert (status, body) == (expected.status, refusal_body(expected, "legacy"))


# keyscope serve ----------------------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_endless_header_lines_are_431_and_the_worker_stays_flat(gateway: Gateway, world: World) -> None:
    # Plain uvicorn grows by about 60 MiB on these 4 MiB of short lines (a tuple and two bytes objects each).
    before = rss_kib(gateway.process.pid)
    lines = b"X-A: b\r\n" * (512 * 1024)
    data = b"GET /sms/1/logs HTTP/1.1\r\nHost: gateway.test\r\n" + world.primary.header() + lines
    answers = []
    for _ in range(4):
        status, answer, sent = send_until_answered(gateway.port, data, piece=64 * 1024, pause=0.02)
        answers.append(status)
        assert sent < len(data)  # refused while the lines went on
    assert answers == [431] * 4
    assert rss_kib(gateway.process.pid) - before < 10 * 1024


def test_4_mib_of_headers_never_reach_the_upstream(gateway: Gateway, echo: Echo, world: World) -> None:
    big = b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 64 * 1024) for i in range(64))
    data = b"GET /sms/1/logs HTTP/1.1\r\nHost: gateway.test\r\n" + world.primary.header() + big + b"\r\n"
    status, answer, _ = send_until_answered(gateway.port, data, piece=256 * 1024)
    assert status == 431 and b"REQUEST_HEADER_FIELDS_TOO_LARGE" in answer
    assert echo.log() == []


def with_lines(key: Key, count: int, target: str = "/sms/1/logs") -> bytes:
    """A GET with `count` header lines in all (Host, Connection and Authorization included)."""
    return request_bytes("GET", target, key, *[f"X-Line-{i}: v" for i in range(count - 3)])


def test_100_header_lines_pass_and_101_are_431(gateway: Gateway, echo: Echo, world: World) -> None:
    assert gateway.raw(with_lines(world.primary, DEFAULT.headers)).status == 200
    refused = gateway.raw(with_lines(world.primary, DEFAULT.headers + 1))
    assert refused.status == 431
    assert refused.json()["requestError"]["serviceException"]["messageId"] == "REQUEST_HEADER_FIELDS_TOO_LARGE"
    assert len(echo.log()) == 1


def test_a_target_of_8192_bytes_passes_and_8193_is_414(gateway: Gateway, echo: Echo, world: World) -> None:
    base = "/sms/1/logs?x="
    exact = base + "a" * (DEFAULT.target_bytes + 1 - len(base))  # the `?` is not counted
    assert gateway.raw(request_bytes("GET", exact, world.primary)).status == 200
    for who in (world.primary, world.pair, None):
        refused = gateway.raw(request_bytes("GET", exact + "a", who))
        assert refused.status == 414
        assert refused.json()["requestError"]["serviceException"]["messageId"] == "URI_TOO_LONG"
    assert len(echo.log()) == 1


def test_each_limit_is_a_flag(echo: Echo, tmp_path: Path) -> None:
    flags = ["--max-headers", "10", "--max-header-bytes", "600", "--max-target-bytes", "100",
             "--header-timeout", "1", "--max-params", "5", "--max-parts", "5", "--max-json-members", "50"]
    server = Gateway.start(echo.url, tmp_path, *flags)
    try:
        key = server.create_key("primary")
        echo.clear()
        assert server.raw(with_lines(key, 10)).status == 200
        assert server.raw(with_lines(key, 11)).status == 431
        assert server.raw(request_bytes("GET", "/a?b=" + "c" * 96, key)).status == 200  # 100 bytes
        assert server.raw(request_bytes("GET", "/a?b=" + "c" * 97, key)).status == 414
        assert server.raw(request_bytes("GET", "/a", key, "X-Big: " + "v" * 500)).status == 431
        assert len(echo.log()) == 2
        with connect(server.port) as sock:
            sock.sendall(b"GET /sms/1/logs HTTP/1.1\r\nHost: gateway.test\r\n")
            assert read_all(sock) == b""  # closed after a second
        deadline = time.monotonic() + 10
        while '"reason":"header_timeout"' not in server.access_log.read_text():
            assert time.monotonic() < deadline, "no access line for the timed-out head"
            time.sleep(0.05)
        line = next(json.loads(text) for text in server.access_log.read_text().splitlines() if "header_timeout" in text)
        assert (line["status"], line["method"], line["path"]) == (408, "GET", "/sms/1/logs")
        assert line["decision"] == "refused"
    finally:
        server.stop()


# settings ---------------------------------------------------------------------------------------------------
def test_settings_name_every_limit() -> None:
    settings = load(
        {"upstream": "http://127.0.0.1:9", "max_headers": 7, "max_params": 9},
        environ={"KEYSCOPE_MAX_TARGET_BYTES": "300", "KEYSCOPE_HEADER_TIMEOUT": "2.5", "KEYSCOPE_MAX_PARTS": "4",
                 "KEYSCOPE_MAX_HEADER_BYTES": "4096", "KEYSCOPE_MAX_JSON_MEMBERS": "11"},
    )
    assert settings.limits() == Limits(header_bytes=4096, headers=7, target_bytes=300, params=9, parts=4,
                                       json_members=11, json_depth=DEFAULT.json_depth)
    assert settings.header_timeout == 2.5
    assert Settings(upstream="http://x").limits() == DEFAULT
    gateway = GatewayApp.from_settings(settings)
    assert gateway.limits == gateway.checks.limits == settings.limits()
    assert gateway.header_timeout == 2.5


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_headers", "0"), ("max_header_bytes", "-1"), ("max_target_bytes", "0"), ("max_params", "0"),
     ("max_parts", "0"), ("max_json_members", "0"), ("max_headers", "1.5"), ("header_timeout", "0"),
     ("header_timeout", "-2"), ("header_timeout", "nan"), ("header_timeout", "inf"), ("max_target_bytes", "x")],
)
def test_bad_limits_stop_start_up(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load({"upstream": "http://127.0.0.1:9"}, environ={f"KEYSCOPE_{name.upper()}": value})
    assert name.replace("_", "-") in str(caught.value) or f"KEYSCOPE_{name.upper()}" in str(caught.value)


# the middleware, under uvicorn's own protocols -----------------------------------------------------------------
async def _ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_the_middleware_refuses_the_same_heads(http: str, tmp_path: Path) -> None:
    limits = Limits(target_bytes=64, headers=6, header_bytes=200)
    init_store(f"sqlite:///{tmp_path / 'k.db'}")  # a store URL names a store that exists
    app = KeyScopeMiddleware(_ok, store=f"sqlite:///{tmp_path / 'k.db'}", limits=limits)
    assert app.checks.limits == limits
    cases = [
        (b"GET /" + b"a" * 64 + b" HTTP/1.1\r\nHost: t\r\n\r\n", "too_long"),
        (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(6)) + b"\r\n",
         "too_many_headers"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"v" * 196 + b"\r\n\r\n", "headers_too_large"),
    ]
    with threaded(app, http, lifespan="on") as port:
        for data, reason in cases:
            refusal = refusal_of(reason, limits)
            with connect(port) as sock:
                sock.sendall(data)
                status, _, body = read_one(sock)
            assert (status, body) == (refusal.status, refusal_body(refusal, "legacy"))
