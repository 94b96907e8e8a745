"""keyscope's own HTTP/1.1 client (gateway.upstream, .exchange): the answers it reads. Chunked, ended by the
upstream closing, reset halfway or before a byte, not HTTP at all, without a body (HEAD, 204, 304, interim
1xx), and request bodies streamed from the client; against real upstream servers on 127.0.0.1."""

from __future__ import annotations

import asyncio

import pytest
from upstream_servers import Request, Server, call, ok, reset, run, started

from keyscope.gateway import exchange


def test_a_chunked_answer_is_streamed_as_it_arrives() -> None:
    async def chunked(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\n"
                     b"X-Hop: 1\r\n\r\n")
        for part in (b"first ", b"second ", b"third"):
            writer.write(b"%x\r\n%b\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\nX-Trailer: t\r\n\r\n")
        return True

    async def test() -> None:
        async with Server(chunked) as server:
            upstream = await started(server.url)
            for _ in range(2):
                answer = await call(upstream)
                assert answer.result == (200, 200) and answer.body == b"first second third" and answer.finished
                names = [name for name, _ in answer.messages[0]["headers"]]
                assert names == [b"x-request-id"]  # transfer-encoding, connection and what it names: gone
                assert len(answer.messages) >= 4  # start, the parts as they came, the end
            assert server.connections == 1
            await upstream.close()
    run(test)


def test_an_answer_ended_by_closing_the_connection() -> None:
    async def answer_and_close(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"it")
        return False

    async def test() -> None:
        async with Server(answer_and_close) as server:
            upstream = await started(server.url)
            for _ in range(2):
                answer = await call(upstream)
                assert answer.result == (200, 200) and answer.body == b"all of it" and answer.finished
                assert answer.note.cause is None
            assert server.connections == 2
            await upstream.close()
    run(test)


def test_a_reset_mid_answer_cuts_the_answer_short() -> None:
    async def resetting(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nsome")
        await writer.drain()
        await asyncio.sleep(0.05)
        reset(writer)
        return False

    async def test() -> None:
        async with Server(resetting) as server:
            upstream = await started(server.url)
            answer = await call(upstream)
            assert answer.result == (200, 200) and answer.body == b"some" and not answer.finished
            assert answer.note.cause == "upstream_reset"
            await upstream.close()
    run(test)


def test_a_reset_before_the_answer_is_502() -> None:
    async def resetting(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 O")
        await writer.drain()
        await asyncio.sleep(0.05)
        reset(writer)
        return False

    async def test() -> None:
        async with Server(resetting) as server:
            upstream = await started(server.url)
            answer = await call(upstream)
            assert answer.result == (502, None) and answer.note.cause == "upstream_reset"
            await upstream.close()
    run(test)


def test_not_http_and_a_head_too_large_are_502(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exchange, "MAX_HEAD", 1024)

    async def garbage(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.line.startswith(b"GET /big"):
            writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"b" * 2000 + b"\r\n\r\n")
        else:
            writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        return True

    async def test() -> None:
        async with Server(garbage) as server:
            upstream = await started(server.url)
            for path in (b"/garbage", b"/big"):
                answer = await call(upstream, path=path)
                assert answer.result == (502, None) and answer.note.cause == "upstream_reset"
            await upstream.close()
    run(test)


def test_head_204_304_and_interim_answers_have_no_body() -> None:
    async def bodiless(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.line.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        elif b"/204" in request.line:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif b"/304" in request.line:
            writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    async def test() -> None:
        async with Server(bodiless) as server:
            upstream = await started(server.url)
            for method, path, status, body in [("HEAD", b"/h", 200, b""), ("GET", b"/204", 204, b""),
                                               ("GET", b"/304", 304, b""), ("GET", b"/103", 200, b"ok"),
                                               ("HEAD", b"/h", 200, b"")]:
                answer = await call(upstream, method, path)
                assert (answer.result, answer.body, answer.finished) == ((status, status), body, True), path
            head = (await call(upstream, "HEAD", b"/h")).messages[0]["headers"]
            assert (b"content-length", b"1234") in head
            assert server.connections == 1  # none of them left bytes behind on the connection
            await upstream.close()
    run(test)


def test_request_bodies_streamed_from_the_client() -> None:
    async def test() -> None:
        async with Server(ok) as server:
            upstream = await started(server.url)
            chunked = await call(upstream, "POST", chunks=[b"ab", b"", b"cd"])
            sized = await call(upstream, "POST", chunks=[b"ab", b"cd"], headers=[(b"content-length", b"4")])
            assert chunked.body.endswith(b"abcd") and sized.body.endswith(b"abcd")
            assert chunked.note.bytes_in == sized.note.bytes_in == 4
            first, second = server.requests
            assert first.header(b"transfer-encoding") == [b"chunked"] and not first.header(b"content-length")
            assert second.header(b"content-length") == [b"4"] and not second.header(b"transfer-encoding")
            gone = await call(upstream, "POST", chunks=[b"ab", b"cd"], disconnect=True)
            assert gone.result == (499, None) and gone.messages == []
            assert (await call(upstream)).result == (200, 200)
            await upstream.close()
    run(test)
