"""keyscope's own HTTP/1.1 client (gateway.upstream, .pool, .exchange): its connections. Keep-alive reuse,
idle connections the upstream closes, the one safe retry, the pool's bound, refused ports, slow upstreams,
and the head it forwards; against real upstream servers on 127.0.0.1 (tests/upstream_servers.py)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from upstream_servers import Request, Server, call, close_unanswered, ok, run, started

from keyscope.gateway import pool
from keyscope.gateway.upstream import Upstream


def test_keep_alive_reuses_one_connection_and_passes_duplicate_headers() -> None:
    async def test() -> None:
        async with Server(ok) as server:
            upstream = await started(server.url)
            for _ in range(3):
                answer = await call(upstream)
                assert answer.result == (200, 200) and answer.body == b"echo GET /x HTTP/1.1 "
                assert [v for k, v in answer.messages[0]["headers"] if k == b"set-cookie"] == [b"a=1", b"b=2"]
                assert answer.finished and answer.note.bytes_out == len(answer.body)
            assert server.connections == 1
            await upstream.close()
    run(test)


def test_an_idle_connection_the_upstream_closes_leaves_the_pool() -> None:
    async def answer_and_close_soon(request: Request, writer: asyncio.StreamWriter) -> bool:
        await ok(request, writer)
        await writer.drain()
        await asyncio.sleep(0.05)
        return False  # the upstream's keep-alive timeout, short

    async def test() -> None:
        async with Server(answer_and_close_soon) as server:
            upstream = await started(server.url)
            assert (await call(upstream, "POST", body=b"one")).result == (200, 200)
            await asyncio.sleep(0.2)
            # a POST is never retried: it succeeds only because the closed connection was not reused
            second = await call(upstream, "POST", body=b"two")
            assert second.result == (200, 200) and second.body.endswith(b"two")
            assert server.connections == 2
            await upstream.close()
    run(test)


def test_idle_connections_older_than_keepalive_are_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool, "KEEPALIVE", 0.05)

    async def test() -> None:
        async with Server(ok) as server:
            upstream = await started(server.url)
            await call(upstream)
            await asyncio.sleep(0.1)
            await call(upstream)
            assert server.connections == 2
            await upstream.close()
    run(test)


def test_a_reused_connection_closed_before_any_answer_is_retried_once_when_safe() -> None:
    async def test() -> None:
        async with Server(close_unanswered({1})) as server:
            upstream = await started(server.url)
            await call(upstream)
            answer = await call(upstream, "PUT", body=b"again")  # idempotent, body in memory: sent again
            assert answer.result == (200, 200) and answer.body.endswith(b"again")
            assert [r.connection for r in server.requests] == [0, 0, 1]
            await upstream.close()
    run(test)


def test_a_post_on_a_connection_closed_before_any_answer_is_not_retried() -> None:
    async def test() -> None:
        async with Server(close_unanswered({1})) as server:
            upstream = await started(server.url)
            await call(upstream)
            answer = await call(upstream, "POST", body=b"once")
            assert answer.result == (502, None) and answer.note.cause == "upstream_reset"
            assert len(server.requests) == 2
            await upstream.close()
    run(test)


def test_a_streamed_body_is_not_retried() -> None:
    async def test() -> None:
        async with Server(close_unanswered({1})) as server:
            upstream = await started(server.url)
            await call(upstream)
            answer = await call(upstream, "PUT", chunks=[b"a", b"b"])
            assert answer.result == (502, None) and answer.note.cause == "upstream_reset"
            assert len(server.requests) == 2
            await upstream.close()
    run(test)


def test_the_pool_holds_at_most_its_connections() -> None:
    async def slowish(request: Request, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.02)
        return await ok(request, writer)

    async def test() -> None:
        async with Server(slowish) as server:
            upstream = await started(server.url, connections=2)
            answers = await asyncio.gather(*(call(upstream, path=b"/%d" % i) for i in range(8)))
            assert [a.result for a in answers] == [(200, 200)] * 8
            assert server.connections == 2
            await upstream.close()
    run(test)


def test_a_refused_port_is_502() -> None:
    async def test() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]  # bound, never listening: refused
            upstream = await started(f"http://127.0.0.1:{port}")
            answer = await call(upstream, "POST", body=b"{}")
            assert answer.result == (502, None) and answer.note.cause == "upstream_refused"
            assert [v for k, v in answer.messages[0]["headers"] if k == b"x-request-id"] == [b"rid-1"]
            await upstream.close()
    run(test)


def test_a_slow_upstream_is_504_and_a_slow_body_is_cut() -> None:
    async def slow(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.line.startswith(b"GET /body"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
        await asyncio.sleep(2)
        return False

    async def test() -> None:
        async with Server(slow) as server:
            upstream = await started(server.url, timeout=0.3)
            answer = await call(upstream)
            assert answer.result == (504, None) and answer.note.cause == "upstream_timeout"
            assert b"GATEWAY_TIMEOUT" in answer.body
            cut = await call(upstream, path=b"/body")
            assert cut.result == (200, 200) and cut.body == b"half" and not cut.finished
            assert cut.note.cause == "upstream_reset"
            await upstream.close()
    run(test)


def test_the_forwarded_head() -> None:
    async def test() -> None:
        async with Server(ok) as server:
            upstream = await started(server.url + "/base", authorization="Basic up", trusted_proxies=["127.0.0.0/8"])
            await call(upstream, "POST", b"/p%2Fq", body=b"{}",
                       headers=[(b"authorization", b"App secret"), (b"x-forwarded-for", b"203.0.113.7"),
                                (b"connection", b"keep-alive"), (b"x-keyscope-app", b"forged")])
            await call(upstream, "GET", b"/g", body=b"")
            post, get = server.requests
            assert post.line == b"POST /base/p%2Fq HTTP/1.1"
            assert post.head.split(b"\r\n")[1] == b"Host: " + server.url.removeprefix("http://").encode()
            assert post.header(b"authorization") == [b"Basic up"]
            assert post.header(b"x-forwarded-for") == [b"203.0.113.7, 127.0.0.1"]
            assert post.header(b"x-forwarded-host") == [b"gw.example"]
            assert post.header(b"x-request-id") == [b"rid-1"] and post.header(b"content-length") == [b"2"]
            assert not post.header(b"connection") and not post.header(b"x-keyscope-app")
            assert not get.header(b"content-length")
            await upstream.close()
    run(test)


def test_a_peer_seen_as_ipv4_mapped_ipv6_is_a_trusted_proxy() -> None:
    upstream = Upstream("http://127.0.0.1:9", trusted_proxies=["127.0.0.0/8"])
    scope = {"headers": [(b"x-forwarded-for", b"203.0.113.7")], "client": ("::ffff:127.0.0.1", 1)}
    assert (b"X-Forwarded-For", b"203.0.113.7, ::ffff:127.0.0.1") in upstream.request_headers(scope, ())


def test_a_retry_at_the_pools_bound_still_gets_a_new_connection() -> None:
    async def test() -> None:
        async with Server(close_unanswered({1})) as server:
            upstream = await started(server.url, connections=1)
            await call(upstream)
            retried, waiting = await asyncio.gather(call(upstream, "PUT", b"/retried", body=b"r"),
                                                    call(upstream, "GET", b"/waiting"))
            assert retried.result == waiting.result == (200, 200)
            assert [(r.line.split()[1], r.connection) for r in server.requests] == [
                (b"/x", 0), (b"/retried", 0), (b"/waiting", 1), (b"/retried", 2)]
            await upstream.close()
    run(test)
