"""Early answers: steps 1-5 decided as the request's last byte arrives, before any ASGI task.

`Checks.decide()` drives the one procedure of steps 2-5 without awaiting: it must step aside whenever something
must be waited for (a real SQLite store), and a refusal answered early must be the same bytes on the wire as the
one the ASGI path sends (a real `keyscope serve`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import Echo, Gateway, Key

from keyscope.allowlist.table import load as load_endpoints
from keyscope.core import keys
from keyscope.core.errors import Refusal
from keyscope.core.models import ApiKey, Application, Entity, PlatformEntry
from keyscope.decide.admission import Admission
from keyscope.decide.auth import KeyAuthenticator
from keyscope.decide.checks import Checks
from keyscope.store import store_from_url

APPS, ENTITIES = ("app-a", "app-b"), ("ent-a", "ent-b")


class World:
    """A real SQLite store with applications, entities and one key of each kind, and Checks over it."""

    def __init__(self, folder: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = store_from_url(f"sqlite:///{folder / 'early.db'}", create=True)
        self.secrets: dict[str, str] = {}
        self.run(self._seed())
        self.checks = Checks(
            endpoints=load_endpoints(None),
            store=self.store,
            authenticator=KeyAuthenticator(self.store, ttl=3600, negative_ttl=3600),
            max_body_size=300,
            id_cache_ttl=3600,
        )
        self.checks.watcher.interval = 3600.0
        self.run(self.checks.start())

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    async def _seed(self) -> None:
        await self.store.open()
        for application in APPS:
            await self.store.create_application(Application(application))
        for entity in ENTITIES:
            await self.store.create_entity(Entity(entity))
        now = datetime.now(UTC).replace(microsecond=0)
        kinds: dict[str, tuple[tuple[PlatformEntry, ...], bool, timedelta]] = {
            "primary": ((), True, timedelta(days=1)),
            "app": ((PlatformEntry("", "app-a", None),), True, timedelta(days=1)),
            "pair": ((PlatformEntry("", "app-a", "ent-a"),), True, timedelta(days=1)),
            "fill": ((PlatformEntry("", "app-a", "ent-a", "FILL"),), True, timedelta(days=1)),
            "force": ((PlatformEntry("", "app-a", "ent-a", "FORCE"),), True, timedelta(days=1)),
            "two": ((PlatformEntry("", "app-a", "ent-a"), PlatformEntry("", "app-b", "ent-b")), True,
                    timedelta(days=1)),
            "disabled": ((PlatformEntry("", "app-a", None),), False, timedelta(days=1)),
            "expired": ((PlatformEntry("", "app-a", None),), True, timedelta(seconds=-1)),
        }
        for name, (platform, enabled, lifetime) in kinds.items():
            secret = keys.new_secret()
            key_id = keys.new_key_id()
            entries = tuple(PlatformEntry(key_id, e.application_id, e.entity_id, e.action) for e in platform)
            await self.store.create_key(
                ApiKey(key_id, name, keys.hash_secret(secret), keys.display_prefix(secret), (),
                       now - timedelta(days=1), now + lifetime, enabled, entries, now)
            )
            self.secrets[name] = secret
        self.secrets["unknown"] = keys.new_secret()

    def close(self) -> None:
        self.run(self.checks.stop())
        self.run(self.store.close())
        self.loop.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    made = World(tmp_path_factory.mktemp("early"))
    yield made
    made.close()


def http_scope(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    path, _, query = target.encode().partition(b"?")
    return {"type": "http", "method": method, "raw_path": path, "path": path.decode(), "query_string": query,
            "headers": headers, "client": ("127.0.0.1", 40000), "scheme": "http", "http_version": "1.1"}


def outcome(admission: Admission | None, refusal: Refusal | None) -> tuple[Any, ...]:
    if refusal is not None:
        return ("refused", refusal.status, refusal.reason, refusal.step, refusal.field, refusal.detail)
    assert admission is not None and admission.key is not None
    return ("admitted", admission.endpoint, admission.key.id, admission.entry, admission.query, admission.body,
            admission.changed)


def by_admit(world: World, scope: dict[str, Any], body: bytes) -> tuple[Any, ...]:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    admission = Admission()
    try:
        headers = world.checks.target(scope)
        world.run(world.checks.admit(scope, receive, admission, headers))
    except Refusal as refusal:
        return outcome(None, refusal)
    if admission.body is None:
        admission.body = body  # not inspected: streamed as it came (decide() hands over the body it was given)
    return outcome(admission, None)


def by_decide(world: World, scope: dict[str, Any], body: bytes) -> tuple[Any, ...] | None:
    admission = Admission()
    try:
        headers = world.checks.target(scope)
        if not world.checks.decide(scope, body, admission, headers):
            return None
    except Refusal as refusal:
        return outcome(None, refusal)
    return outcome(admission, None)


def _message(application: Any, entity: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"destinations": [{"to": "41793026727"}], "text": "hi"}
    if application is not None:
        message["applicationId"] = application
    if entity is not None:
        message["entityId"] = entity
    return message


def test_decide_steps_aside_when_something_must_be_waited_for(world: World) -> None:
    body = json.dumps({"messages": [_message("app-a", None)]}).encode()
    scope = http_scope("POST", "/sms/2/text/advanced",
                       [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"authorization", f"App {world.secrets['app']}".encode())])
    checks = world.checks
    checks.authenticator.invalidate()
    assert by_decide(world, scope, body) is None  # key not cached: the store must be asked
    assert by_admit(world, scope, body)[0] == "admitted"
    assert by_decide(world, scope, body) is not None
    checks.known_ids.clear()
    assert by_decide(world, scope, body) is None  # app-a not known to exist any more: ask the store
    by_admit(world, scope, body)
    checks.watcher._next_poll = 0.0  # a revision read is due: changes must be heard of first
    assert by_decide(world, scope, body) is None
    by_admit(world, scope, body)
    assert by_decide(world, scope, body) is not None


# end to end: the same refusal bytes from both paths ------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(echo: Echo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    server = Gateway.start(echo.url, tmp_path_factory.mktemp("gateway-early"), "--max-body-size", "200")
    server.create_application("app-a")
    server.create_application("app-b")
    yield server
    server.stop()


def exchange(port: int, data: bytes) -> bytes:
    """Everything the server sends back before closing (each request asks for Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def access_lines(gateway: Gateway, wanted: Callable[[dict[str, Any]], bool], count: int) -> list[dict[str, Any]]:
    """The access lines `wanted` picks, once there are `count` (lines are written within half a second)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in gateway.access_log.read_text().splitlines() if line.startswith("{")]
        picked = [line for line in lines if wanted(line)]
        if len(picked) >= count or time.monotonic() > deadline:
            return picked
        time.sleep(0.05)


def post(key: Key | None, body: bytes, *, method: str = "POST", target: str = "/sms/2/text/advanced") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n"
    head += "Content-Type: application/json\r\nX-Request-Id: same-id-1\r\n"  # else each answer has a new id
    if key is not None:
        head += f"Authorization: App {key.secret}\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.parametrize(
    ("case", "status"),
    [("other application", 403), ("unlisted path", 403), ("unknown key", 401), ("too large", 413),
     ("HEAD on a listed GET path", 403), ("not JSON", 400)],
)
def test_a_refusal_is_the_same_bytes_early_and_on_the_asgi_path(
    gateway: Gateway, echo: Echo, case: str, status: int
) -> None:
    key = gateway.create_key(f"early {case}", {"applicationId": "app-a"})
    body = json.dumps({"messages": [_message("app-b", None)]}).encode()
    method, target = "POST", "/sms/2/text/advanced"
    if case == "unlisted path":
        target = "/sms/1/unlisted"
    elif case == "unknown key":
        key = Key("none", keys.new_secret())
    elif case == "too large":
        body = json.dumps({"messages": [_message("app-a", None)], "pad": "x" * 300}).encode()
    elif case == "HEAD on a listed GET path":
        method, target, body = "HEAD", "/sms/1/logs?applicationId=app-a", b""
    elif case == "not JSON":
        body = b"{"
    request = post(key, body, method=method, target=target)
    first = exchange(gateway.port, request)  # the key is not cached yet: the ASGI path decides
    second = exchange(gateway.port, request)  # now it is: decided as the last byte arrives
    assert first == second
    assert first.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"\r\nx-request-id: same-id-1\r\n" in first.partition(b"\r\n\r\n")[0] + b"\r\n"
    assert echo.log() == []
    key_id = None if case == "unknown key" else key.id
    lines = access_lines(gateway, lambda line: line["key"] == key_id and line["decision"] == "refused", 2)
    assert [line["status"] for line in lines] == [status, status]
    assert lines[0]["reason"] == lines[1]["reason"]


def test_an_early_admission_is_forwarded_once_with_its_body(gateway: Gateway, echo: Echo) -> None:
    key = gateway.create_key("early forward", {"applicationId": "app-a"})
    body = json.dumps({"messages": [_message("app-a", None)]}).encode()
    for _ in range(3):
        answer = exchange(gateway.port, post(key, body))
        assert answer.startswith(b"HTTP/1.1 200 ")
    seen = echo.log()
    assert len(seen) == 3
    assert {entry["body"] for entry in seen} == {body.decode()}
