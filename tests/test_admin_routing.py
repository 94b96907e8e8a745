"""The management API's routing: what it answers for paths and methods it does not have, in the path's error
family and never Starlette's own answers (plain-text 404/405, an Allow header, a slash redirect, HEAD for GET),
and that routing leaves the caller's scope as it was."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from keyscope.control.admin import AdminApp, call, create_app
from keyscope.core.errors import JSON_HEADERS, Refusal, refusal_body
from keyscope.decide.auth import KeyAuthenticator
from keyscope.store import Store

pytestmark = pytest.mark.anyio

TOKEN = "admin-token-for-routing"
APPS = "/provisioning/1/applications"
KEYS = "/settings/2/api-keys"


@pytest.fixture
async def app(store: Store) -> AdminApp:
    return create_app(store, admin_token=TOKEN, authenticator=KeyAuthenticator(store))


@pytest.fixture
async def client(app: AdminApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://keyscope.test", headers=headers) as client:
        yield client


def _expected(status: int, reason: str, family: str) -> bytes:
    return refusal_body(Refusal(status, reason=reason, step="admin"), family)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("method", "path", "status", "reason", "family"),
    [
        ("HEAD", APPS, 405, "method_not_allowed", "legacy"),
        ("PATCH", f"{APPS}/default", 405, "method_not_allowed", "legacy"),
        ("OPTIONS", KEYS, 405, "method_not_allowed", "api-error"),
        ("POST", "/provisioning/1/associations/single", 405, "method_not_allowed", "legacy"),
        ("GET", f"{APPS}/", 404, "no_such_path", "legacy"),  # no redirect to the path without the slash
        ("GET", f"{KEYS}/", 404, "no_such_path", "api-error"),
        ("GET", f"{APPS}/default/", 404, "no_such_path", "legacy"),
        ("GET", "/PROVISIONING/1/applications", 404, "no_such_path", "legacy"),  # paths are case-sensitive
        ("GET", "/SETTINGS/2/api-keys", 404, "no_such_path", "api-error"),  # the family is not
        ("DELETE", "/provisioning/1/numbers", 404, "no_such_path", "legacy"),
    ],
)
async def test_unknown_paths_and_methods_are_answered_in_the_paths_family(
    app: AdminApp, method: str, path: str, status: int, reason: str, family: str
) -> None:
    answered, headers, content = await call(app, method, path, token=TOKEN)
    assert answered == status
    assert content == _expected(status, reason, family)
    assert headers == [(b"content-length", str(len(content)).encode()), *JSON_HEADERS]


async def test_every_management_path_and_method_is_routed(client: httpx.AsyncClient) -> None:
    """Each (path, method) the platform has reaches its handler: none answers 404 or 405."""
    routed = [
        ("GET", APPS), ("POST", APPS), ("GET", f"{APPS}/x"), ("PUT", f"{APPS}/x"), ("DELETE", f"{APPS}/x"),
        ("GET", "/provisioning/1/entities"), ("POST", "/provisioning/1/entities"),
        ("GET", "/provisioning/1/entities/x"), ("PUT", "/provisioning/1/entities/x"),
        ("DELETE", "/provisioning/1/entities/x"),
        ("GET", "/provisioning/1/associations"), ("POST", "/provisioning/1/associations"),
        ("DELETE", "/provisioning/1/associations"), ("GET", "/provisioning/1/associations/single"),
        ("GET", KEYS), ("POST", KEYS), ("GET", f"{KEYS}/x"), ("PUT", f"{KEYS}/x"), ("DELETE", f"{KEYS}/x"),
    ]  # fmt: skip
    for method, path in routed:
        response = await client.request(method, path, json={} if method != "GET" else None)
        assert response.status_code not in (405, 415), (method, path)
        if response.status_code == 404:  # a record that is not there, not a path that is not
            assert path.endswith("/x"), (method, path)


async def test_unknown_paths_are_401_before_404_for_strangers(app: AdminApp) -> None:
    status, _, _ = await call(app, "GET", "/provisioning/1/numbers")
    assert status == 401


async def test_routing_leaves_the_callers_scope_as_it_was(app: AdminApp) -> None:
    """The gateway logs from the scope it handed over: no route, endpoint or path parameters appear in it."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": f"{APPS}/default", "raw_path": f"{APPS}/default".encode(), "query_string": b"", "root_path": "",
        "headers": [(b"authorization", f"Bearer {TOKEN}".encode())], "client": None, "server": None,
    }  # fmt: skip
    before = dict(scope)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    assert scope == before


async def test_a_root_path_does_not_move_the_routes(app: AdminApp) -> None:
    """Routes match the whole path, as the gateway decided it was a management path: a root_path (uvicorn's
    --root-path) is not taken off it first."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": f"/provisioning{APPS}", "raw_path": f"/provisioning{APPS}".encode(), "query_string": b"",
        "root_path": "/provisioning", "headers": [(b"authorization", f"Bearer {TOKEN}".encode())],
        "client": None, "server": None,
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent[0]["status"] == 404


async def test_a_client_gone_mid_body_gets_no_answer(app: AdminApp) -> None:
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": APPS, "raw_path": APPS.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-type", b"application/json")],
        "client": None, "server": None,
    }  # fmt: skip
    messages = [{"type": "http.request", "body": b'{"applicationId":', "more_body": True}, {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    assert sent == []
    status, _, _ = await call(app, "GET", APPS, token=TOKEN)
    assert status == 200


async def test_lifespan_is_acknowledged(app: AdminApp) -> None:
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]
