"""keyscope serve's HTTP protocol on a real uvicorn server: early answers, coalesced writes, the raw target.

The app here is a stand-in with an `early()` hook, so each protocol rule is pinned down on its own; the
gateway's use of it is tested end to end in tests/gateway/test_early.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from gateway_helpers import free_port

from keyscope.gateway.protocol import CoalescingWriter, GatewayProtocol

REFUSAL = b'{"refused":true}'


def refusal(close: bool = False) -> bytes:
    head = b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(REFUSAL)
    return head + (b"connection: close\r\n" if close else b"") + b"\r\n" + REFUSAL


class App:
    """Refuses when the body or the target says so, early or on the ASGI path as the gateway does; otherwise
    echoes what the ASGI path received."""

    def __init__(self) -> None:
        self.early_calls: list[tuple[bytes, bytes]] = []

    def early(self, scope: dict[str, Any], body: bytes) -> tuple[bytes, bool] | None:
        self.early_calls.append((scope["raw_path"], body))
        if b"boom" in body:
            raise RuntimeError("a bug in early()")
        if body.startswith(b"refuse") or scope["query_string"] == b"refuse":
            return refusal(close=b"close" in body), b"close" in body
        scope["early"] = True
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if body.startswith(b"refuse"):
            await send({"type": "http.response.start", "status": 403, "headers": [(b"x-path", b"asgi"), (b"content-length", b"%d" % len(REFUSAL))]})
            await send({"type": "http.response.body", "body": REFUSAL})
            return
        payload = json.dumps(
            {"path": scope["raw_path"].decode(), "query": scope["query_string"].decode(), "body": body.decode(),
             "early": scope.get("early", False)}
        ).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]})
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, App]]:
    app = App()
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=GatewayProtocol, loop="uvloop", lifespan="off",
                            access_log=False, log_level="warning", server_header=False, date_header=False,
                            proxy_headers=False)
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port, app
    running.should_exit = True
    thread.join(10)


@pytest.fixture(autouse=True)
def fresh(server: tuple[int, App]) -> None:
    server[1].early_calls.clear()


def request(path: str, body: bytes = b"", *, headers: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{headers}\r\n").encode() + body


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, bytes, bytes]]:
    """`count` answers (status, head, body) read off the socket, framed by Content-Length."""
    data = b""
    answers = []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(answers)} answers: {data!r}"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        length = next(int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
        while len(data) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed inside a body"
            data += chunk
        answers.append((int(head.split(b" ")[1]), head, data[:length]))
        data = data[length:]
    assert data == b""
    return answers


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(2)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_early_refusal_is_written_as_given_and_the_connection_stays_open(server: tuple[int, App]) -> None:
    port, app = server
    with connect(port) as sock:
        sock.sendall(request("/a", b"refuse me"))
        [(status, head, body)] = read_answers(sock, 1)
        assert (status, body) == (403, REFUSAL)
        assert head + b"\r\n\r\n" + body == refusal()
        sock.sendall(request("/b", b"fine"))
        [(status, _, body)] = read_answers(sock, 1)
    assert status == 200
    assert json.loads(body) == {"path": "/b", "query": "", "body": "fine", "early": True}
    assert app.early_calls == [(b"/a", b"refuse me"), (b"/b", b"fine")]


def test_pipelined_requests_are_answered_in_order(server: tuple[int, App]) -> None:
    port, app = server
    with connect(port) as sock:
        sock.sendall(request("/1", b"refuse") + request("/2", b"two") + request("/3", b"refuse") + request("/4", b"4"))
        answers = read_answers(sock, 4)
    assert [status for status, _, _ in answers] == [403, 200, 403, 200]
    assert [b"x-path: asgi" in head for _, head, _ in answers] == [False, False, True, False]  # /3 waited for /2
    assert json.loads(answers[1][2])["path"] == "/2"
    assert json.loads(answers[3][2])["path"] == "/4"


def test_a_body_arriving_in_pieces_is_offered_whole(server: tuple[int, App]) -> None:
    port, app = server
    body = b"refuse" + b"x" * 5000
    with connect(port) as sock:
        sock.sendall(request("/slow", body)[:-4000])
        time.sleep(0.2)
        assert app.early_calls == []
        sock.sendall(body[-4000:])
        [(status, _, _)] = read_answers(sock, 1)
    assert status == 403
    assert app.early_calls == [(b"/slow", body)]


def test_requests_without_a_body_are_offered_too(server: tuple[int, App]) -> None:
    port, app = server
    with connect(port) as sock:
        sock.sendall(b"GET /g?refuse HTTP/1.1\r\nHost: t\r\n\r\nGET /g?ok HTTP/1.1\r\nHost: t\r\n\r\n")
        answers = read_answers(sock, 2)
    assert [status for status, _, _ in answers] == [403, 200]
    assert json.loads(answers[1][2])["query"] == "ok"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(request("/big", b"refuse" + b"x" * 70_000), id="larger than 64 KiB"),
        pytest.param(b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nrefuse\r\n0\r\n\r\n",
                     id="chunked"),
    ],
)
def test_bodies_that_are_not_buffered_whole_take_the_asgi_path(server: tuple[int, App], raw: bytes) -> None:
    port, app = server
    with connect(port) as sock:
        sock.sendall(raw)
        [(status, head, _)] = read_answers(sock, 1)
    assert status == 403 and b"x-path: asgi" in head
    assert app.early_calls == []


def test_expect_100_continue_takes_the_asgi_path(server: tuple[int, App]) -> None:
    port, app = server
    with connect(port) as sock:
        sock.sendall(b"POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"refuse")
        [(status, head, _)] = read_answers(sock, 1)
    assert status == 403 and b"x-path: asgi" in head
    assert app.early_calls == []


def test_an_answer_that_closes_closes(server: tuple[int, App]) -> None:
    port, _ = server
    with connect(port) as sock:
        sock.sendall(request("/c", b"refuse, close"))
        [(status, head, _)] = read_answers(sock, 1)
        assert status == 403 and b"connection: close" in head
        assert closed_by_server(sock)


def test_a_client_asking_to_close_is_closed_after_an_early_answer(server: tuple[int, App]) -> None:
    port, _ = server
    with connect(port) as sock:
        sock.sendall(request("/c", b"refuse", headers="Connection: close\r\n"))
        [(status, head, body)] = read_answers(sock, 1)
        assert head + b"\r\n\r\n" + body == refusal(close=True)  # told so, as uvicorn tells it
        assert closed_by_server(sock)


def test_an_error_in_early_falls_back_to_the_asgi_path(server: tuple[int, App]) -> None:
    port, app = server
    with connect(port) as sock:
        sock.sendall(request("/boom", b"boom"))
        [(status, _, body)] = read_answers(sock, 1)
    assert status == 200 and json.loads(body)["body"] == "boom"


def test_the_target_is_passed_raw(server: tuple[int, App]) -> None:
    port, app = server
    with connect(port) as sock:
        sock.sendall(request("http://elsewhere/x%2Fy?q=1#frag", b"hello"))
        [(status, _, body)] = read_answers(sock, 1)
    assert status == 200
    assert app.early_calls == [(b"http://elsewhere/x%2Fy", b"hello")]
    assert json.loads(body)["query"] == "q=1#frag"


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_writes_in_one_step_leave_in_one_write_in_order() -> None:
    async def scenario() -> Transport:
        transport = Transport()
        writer = CoalescingWriter(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writer.write(b"head")
        writer.write(b"body")
        assert transport.writes == []
        await asyncio.sleep(0)
        writer.write(b"next")
        await asyncio.sleep(0)
        writer.write(b"last")
        writer.close()
        assert transport.closed
        await asyncio.sleep(0)
        return transport

    transport = asyncio.run(scenario())
    assert transport.writes == [b"headbody", b"next", b"last"]


def test_nothing_is_written_once_the_connection_is_closing() -> None:
    async def scenario() -> Transport:
        transport = Transport()
        writer = CoalescingWriter(transport, asyncio.get_running_loop())  # type: ignore[arg-type]
        writer.write(b"lost")
        transport.closed = True  # the peer went away before the step ended
        await asyncio.sleep(0)
        return transport

    assert asyncio.run(scenario()).writes == []
