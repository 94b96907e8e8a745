"""The harness itself: every reader runs, and plain in-scope requests that keyscope forwards pass, with every
reader answering. If these fail, the other differential tests prove nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .attacks import Attack, Multipart, Part, declared, form, ids, json_request, multipart, pairs, query
from .backends import REQUIRED, discover, start_all
from .harness import World
from .oracle import endpoint

pytestmark = pytest.mark.differential

MANIFESTS = discover()


@pytest.mark.parametrize("name", [manifest.name for manifest in MANIFESTS])
def test_reader_is_running(world: World, name: str) -> None:
    if name in world.unavailable:
        message = f"reader {name} is not part of this run: {world.unavailable[name]}"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    assert name in world.names


def test_the_python_readers_are_discovered() -> None:
    assert {"flask", "starlette", "django", "aiohttp"} <= {manifest.name for manifest in MANIFESTS}


def test_a_reader_without_its_runtime_is_left_out_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "cobol").mkdir()
    (tmp_path / "cobol" / "reader.json").write_text(json.dumps(
        {"name": "cobol", "start": ["cobc", "{port}"], "requires": ["no-such-runtime-here"]}))
    running, unavailable = start_all(discover(tmp_path), tmp_path)
    assert running == [] and unavailable == {"cobol": "needs no-such-runtime-here on PATH"}


def answered_by_all(world: World, outcome) -> None:
    assert not outcome.refused, f"keyscope refused a plain request: {outcome.status} {outcome.body[:300]!r}"
    for name in world.names:
        echo = outcome.echoes[name]
        assert "_broken" not in echo and echo.get("error") is None and echo["_status"] == 200, (name, echo)


JSON_ENDPOINTS = [
    ("POST", "/sms/2/text/advanced"),
    ("POST", "/sms/3/messages"),
    ("POST", "/calls/1/calls"),
    ("POST", "/whatsapp/1/message/text"),
    ("POST", "/rcs/2/capability-check/query"),
    ("POST", "/apple-mfb/1/events"),
    ("POST", "/metrics/1/query-aggregate-data"),
    ("PATCH", "/whatsapp/2/senders/{sender}/templates/{id}"),
    ("POST", "/calls/1/calls/{callId}/application-transfer"),
]


@pytest.mark.parametrize("key", ["primary", "pair", "force", "pair_fill"])
@pytest.mark.parametrize("route", JSON_ENDPOINTS, ids=lambda route: f"{route[0]} {route[1]}")
def test_plain_json_requests_pass(world: World, route: tuple[str, str], key: str) -> None:
    where = endpoint(*route)
    doc = declared(where.locations, ids(), (("note", "plain"),))
    answered_by_all(world, world.check(json_request(where.path, doc, method=where.method), key, where))


@pytest.mark.parametrize("key", ["primary", "pair", "entity", "app_fill", "force"])
def test_plain_query_requests_pass(world: World, key: str) -> None:
    where = endpoint("GET", "/sms/1/logs")
    attack = query(where.path, pairs(*ids(), ("limit", "10")))
    answered_by_all(world, world.check(attack, key, where))


@pytest.mark.parametrize("key", ["primary", "pair", "entity", "force"])
def test_plain_urlencoded_forms_pass(world: World, key: str) -> None:
    where = endpoint("POST", "/email/3/send")
    attack = form(where.path, pairs(("from", "a@example.com"), *ids(), ("subject", "hi")))
    answered_by_all(world, world.check(attack, key, where))


@pytest.mark.parametrize("key", ["primary", "pair", "force"])
def test_plain_multipart_forms_pass(world: World, key: str) -> None:
    where = endpoint("POST", "/email/3/send")
    parts = [Part("from", "a@example.com"), *(Part(name, value) for name, value in ids()), Part("text", "hello")]
    answered_by_all(world, world.check(multipart(where.path, Multipart(tuple(parts))), key, where))


def test_a_streamed_chunked_body_reaches_every_reader(world: World) -> None:
    """A primary key's body keyscope does not inspect is streamed on: the tee must frame it as it comes."""
    where = endpoint("POST", "/sms/2/text/advanced")
    body = b'{"note": "' + b"x" * 70_000 + b'"}'  # JSON, for the readers that parse any body as JSON
    attack = Attack("POST", where.path, (("Content-Type", "application/octet-stream"),), body, chunked=True)
    answered_by_all(world, world.check(attack, "primary", where))
    assert world.tee.last.replace(b"\r\n", b"").endswith(b"x" * 1000 + b'"}' + (
        b"0" if b"chunked" in world.tee.last[:600].lower() else b""))


def test_fill_inserts_what_every_reader_reads(world: World) -> None:
    """FILL on a query with no ids: keyscope appends the key's ids and every reader reads them."""
    where = endpoint("GET", "/sms/1/logs")
    answered_by_all(world, world.check(query(where.path, pairs(("limit", "10"))), "app_fill", where))


def test_an_out_of_scope_id_is_refused_and_not_forwarded(world: World) -> None:
    where = endpoint("GET", "/sms/1/logs")
    outcome = world.check(query(where.path, pairs(*ids("app-b"))), "pair", where)
    assert outcome.status == 403


def test_the_oracle_catches_a_misread() -> None:
    """A view that reads another application at a declared place, or through a snake_case name, fails."""
    from . import oracle

    where = endpoint("GET", "/sms/1/logs")
    entry = {"applicationId": "app-a"}
    good = {"method": "GET", "path": "/sms/1/logs", "query": {"applicationId": "app-a"}}
    assert oracle.problems(good, "GET", "/sms/1/logs", where, entry) == []
    for bad_query in ({"applicationId": "app-b"}, {}, {"applicationId": "app-a", "application_id": "app-b"},
                      {"applicationId": ["app-a"]}, {"applicationId": "app-a", "APPLICATION-\u0130D": "app-b"}):
        assert oracle.problems({**good, "query": bad_query}, "GET", "/sms/1/logs", where, entry), bad_query
    assert oracle.problems({**good, "method": "DELETE"}, "GET", "/sms/1/logs", where, entry)
    messages = endpoint("POST", "/sms/2/text/advanced")
    view = {"method": "POST", "path": "/sms/2/text/advanced", "json": {"messages": [{"applicationId": "app-a"}]}}
    assert oracle.problems(view, "POST", "/sms/2/text/advanced", messages, entry) == []
    assert oracle.problems({**view, "json": {"Messages": [{"applicationId": "app-a"}]}}, "POST",
                           "/sms/2/text/advanced", messages, entry)
    # a reader that reads nothing from the body cannot act on it; one that reads no query can
    assert oracle.problems({**view, "json": None}, "POST", "/sms/2/text/advanced", messages, entry) == []
    assert oracle.problems({**good, "query": None}, "GET", "/sms/1/logs", where, entry)


def test_the_tee_keeps_a_chunked_request_byte_for_byte() -> None:
    """What the readers get is exactly what keyscope sent: chunk sizes, extensions and trailers included."""
    import asyncio

    from .tee import read_request

    first = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: t\r\n\r\n"
    second = b"GET /y HTTP/1.1\r\nContent-Length: 2\r\n\r\nok"

    async def frames() -> list[bytes | None]:
        stream = asyncio.StreamReader()
        stream.feed_data(first + second)
        stream.feed_eof()
        return [await read_request(stream) for _ in range(3)]

    assert asyncio.run(frames()) == [first, second, None]
