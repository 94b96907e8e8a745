"""The request path leaves no reference cycles behind: everything a request allocates is freed as it ends.

Only the cycle collector frees a cycle, and each of its young-generation passes walks every young object. One
cycle a refusal (a Refusal raised from a frame that still held it: exception -> traceback -> frame -> exception)
made the collector a seventh of the gateway's CPU at 20,000 refusals a second, and refusals are what an
attacker sends. Every kind of answer is run here, early (`Gateway.early`), on the ASGI path and in the
middleware, over a real SQLite store, and the collector must then find nothing.
"""

from __future__ import annotations

import asyncio
import gc
import io
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keyscope.core import keys
from keyscope.core.errors import Refusal
from keyscope.core.models import ApiKey, Application, PlatformEntry
from keyscope.core.settings import Settings
from keyscope.decide.admission import Admission
from keyscope.gateway.app import Gateway
from keyscope.gateway.middleware import KeyScopeMiddleware
from keyscope.observe import accesslog
from keyscope.store import store_from_url

SEND = b"/sms/2/text/advanced"


def body_for(application: str, text: str = "hi") -> bytes:
    return json.dumps({"messages": [{"destinations": [{"to": "41793026727"}], "text": text,
                                     "applicationId": application}]}).encode()


Request = tuple[dict[str, Any], bytes]


def request(method: str, target: bytes, authorization: str | None, body: bytes) -> Request:
    path, _, query = target.partition(b"?")
    headers = [(b"host", b"127.0.0.1:8080")]
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    if body or method == "POST":
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "server": ("127.0.0.1", 8080),
            "client": ("127.0.0.1", 50000), "scheme": "http", "method": method, "root_path": "",
            "path": path.decode(), "raw_path": path, "query_string": query, "headers": headers, "state": {}}, body


class World:
    """A seeded SQLite store, the gateway and the middleware over it, and one request of each kind."""

    def __init__(self, folder: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.url = f"sqlite:///{folder / 'garbage.db'}"
        linked, primary = self.loop.run_until_complete(self._seed())
        # Caches that outlive the test and no revision read due: early answers need nothing from the store.
        self.gateway = Gateway.from_settings(Settings(upstream="http://127.0.0.1:9", store=self.url,
                                                      max_body_size=4096, key_cache_ttl=3600))
        self.middleware = KeyScopeMiddleware(_answer, store=self.url, max_body_size=4096, key_cache_ttl=3600)
        self.gateway.checks.watcher.interval = self.middleware.checks.watcher.interval = 3600.0
        self.loop.run_until_complete(self.gateway.startup())
        self.refused = {
            "other application in the body": request("POST", SEND, f"App {linked}", body_for("app-b")),
            "other application in the query": request("GET", b"/sms/1/logs?applicationId=app-b", f"App {linked}",
                                                      b""),
            "duplicate member": request("POST", SEND, f"App {linked}",
                                        b'{"messages":[{"applicationId":"app-a","applicationId":"app-b"}]}'),
            "not JSON": request("POST", SEND, f"App {linked}", b"not json"),
            "not allowlisted": request("GET", b"/sms/1/unlisted", f"App {linked}", b""),
            "method not allowlisted": request("DELETE", b"/sms/1/logs", f"App {linked}", b""),
            "unknown key": request("POST", SEND, "App " + keys.new_secret(), body_for("app-a")),
            "no key": request("POST", SEND, None, body_for("app-a")),
            "too large": request("POST", SEND, f"App {linked}", body_for("app-a", "x" * 5000)),
            "unknown application": request("POST", SEND, f"App {linked}", body_for("nowhere")),
        }
        self.admitted = {
            "linked send": request("POST", SEND, f"App {linked}", body_for("app-a")),
            "linked logs": request("GET", b"/sms/1/logs?applicationId=app-a", f"App {linked}", b""),
            "primary send": request("POST", SEND, f"App {primary}", body_for("app-b")),
        }
        self.loop.run_until_complete(self._warm())

    async def _warm(self) -> None:
        """Keys and ids looked up once, as by a gateway that is running: early answers need them cached."""
        checks = self.gateway.checks
        for scope, body in [*self.refused.values(), *self.admitted.values()]:
            try:
                await checks.admit(dict(scope), _receiver(body), Admission(), checks.target(scope))
            except Refusal:
                pass

    async def _seed(self) -> tuple[str, str]:
        store = store_from_url(self.url, create=True)
        await store.open()
        try:
            for application in ("app-a", "app-b"):
                await store.create_application(Application(application))
            made = []
            for name, entries in (("linked", (PlatformEntry("", "app-a", None),)), ("primary", ())):
                secret, key_id = keys.new_secret(), keys.new_key_id()
                now = datetime.now(UTC).replace(microsecond=0)
                await store.create_key(ApiKey(
                    key_id, name, keys.hash_secret(secret), keys.display_prefix(secret), (), now,
                    now + timedelta(days=1), True,
                    tuple(PlatformEntry(key_id, e.application_id, e.entity_id) for e in entries), now,
                ))
                made.append(secret)
        finally:
            await store.close()
        return made[0], made[1]

    def close(self) -> None:
        self.loop.run_until_complete(self.middleware.close())
        self.loop.run_until_complete(self.gateway.shutdown())
        self.loop.close()


async def _answer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    accesslog.enable(io.StringIO())  # the access line is part of every answer's path
    made = World(tmp_path_factory.mktemp("garbage"))
    try:
        yield made
    finally:
        made.close()
        accesslog.disable()


def _receiver(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _sent(message: dict[str, Any]) -> None:
    return None


def cycles_left_by(run: Callable[[], None]) -> Counter[str]:
    """What the cycle collector finds after `run` (warmed up first: caches filled, like a running gateway)."""
    run()
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            run()
        gc.collect()
        found = Counter(type(thing).__qualname__ for thing in gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()
    return found


def test_early_answers_leave_no_cycles(world: World) -> None:
    refused, admitted = list(world.refused.values()), list(world.admitted.values())

    def run() -> None:
        answers = [world.gateway.early(dict(scope), body) for scope, body in refused + admitted]
        assert [answer is not None for answer in answers] == [True] * len(refused) + [False] * len(admitted)

    assert cycles_left_by(run) == Counter()


def test_refusals_on_the_asgi_path_leave_no_cycles(world: World) -> None:
    async def all_refused() -> None:
        for scope, body in _requests(world, admitted=False):
            await world.gateway(dict(scope), _receiver(body), _sent)

    assert cycles_left_by(lambda: world.loop.run_until_complete(all_refused())) == Counter()


def test_the_middleware_leaves_no_cycles(world: World) -> None:
    async def everything() -> None:
        for scope, body in _requests(world):
            await world.middleware(dict(scope), _receiver(body), _sent)

    assert cycles_left_by(lambda: world.loop.run_until_complete(everything())) == Counter()


def _requests(world: World, admitted: bool = True) -> list[Request]:
    chosen = list(world.refused.values()) + (list(world.admitted.values()) if admitted else [])
    return chosen
