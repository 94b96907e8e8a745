"""KeyScopeMiddleware around a Starlette app and a FastAPI app, through Starlette's TestClient, on a real SQLite
store whose keys are made through the real management API (in-process)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from keyscope.control import admin
from keyscope.decide.auth import KeyAuthenticator
from keyscope.decide.admission import Principal
from keyscope.gateway.middleware import KeyScopeMiddleware
from keyscope.store import store_from_url

TOKEN = "middleware-test-token"


@dataclass(frozen=True)
class Keys:
    primary: str
    linked: str
    linked_id: str
    fill: str
    shadow: str


async def _seed(url: str) -> Keys:
    store = store_from_url(url, create=True)
    await store.open()
    try:
        app = admin.create_app(store, admin_token=TOKEN, authenticator=KeyAuthenticator(store))

        async def call(method: str, path: str, body: Any) -> Any:
            status, _, content = await admin.call(app, method, path, body, token=TOKEN)
            assert status in (200, 201), content
            return json.loads(content) if content else None

        await call("POST", "/provisioning/1/applications", {"applicationId": "app-a"})
        await call("POST", "/provisioning/1/applications", {"applicationId": "app-b"})
        primary = await call("POST", "/settings/2/api-keys", {"name": "primary"})
        linked = await call("POST", "/settings/2/api-keys", {"name": "linked", "platform": [{"applicationId": "app-a"}]})
        fill = await call(
            "POST", "/settings/2/api-keys", {"name": "fill", "platform": [{"applicationId": "app-a", "action": "FILL"}]}
        )
        shadow = await call(
            "POST", "/settings/2/api-keys", {"name": "shadow", "platform": [{"applicationId": "app-a"}], "enforce": False}
        )
        return Keys(
            primary["apiKeySecret"], linked["apiKeySecret"], linked["id"], fill["apiKeySecret"], shadow["apiKeySecret"]
        )
    finally:
        await store.close()


@pytest.fixture(scope="module")
def store_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Keys]:
    url = f"sqlite:///{tmp_path_factory.mktemp('middleware') / 'keyscope.db'}"
    return url, asyncio.run(_seed(url))


def describe(request: Request, body: bytes) -> dict[str, Any]:
    principal: Principal = request.state.keyscope
    entry = principal.entry
    return {
        "key": principal.key_id,
        "name": principal.name,
        "primary": principal.primary,
        "application": entry.application_id if entry else None,
        "function": principal.endpoint.function if principal.endpoint else None,
        "query": request.url.query,
        "body": body.decode(),
        "content_length": request.headers.get("content-length"),
        "keyscope_headers": sorted(name for name in request.headers if name.startswith("x-keyscope-")),
        "shadow_refusal": request.headers.get("x-keyscope-shadow-refusal"),
    }


async def echo(request: Request) -> JSONResponse:
    return JSONResponse(describe(request, await request.body()))


def starlette_app(url: str) -> Starlette:
    routes = [Route("/{path:path}", echo, methods=["GET", "POST", "PUT", "DELETE"])]
    return Starlette(routes=routes, middleware=[Middleware(KeyScopeMiddleware, store=url)])


def fastapi_app(url: str) -> Any:
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    @app.get("/sms/1/logs")
    async def logs(request: Request) -> dict[str, Any]:
        return describe(request, b"")

    @app.post("/sms/2/text/advanced")
    async def send(request: Request) -> dict[str, Any]:
        return describe(request, await request.body())

    @app.get("/internal/stats")
    async def stats(request: Request) -> dict[str, Any]:
        return describe(request, b"")

    app.add_middleware(KeyScopeMiddleware, store=url)
    return app


@pytest.fixture(scope="module", params=["starlette", "fastapi"])
def client(request: pytest.FixtureRequest, store_file: tuple[str, Keys]) -> Iterator[TestClient]:
    url, _ = store_file
    app = starlette_app(url) if request.param == "starlette" else fastapi_app(url)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def keys(store_file: tuple[str, Keys]) -> Keys:
    return store_file[1]


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"App {secret}"}


def test_linked_key_within_scope_reaches_the_app_with_its_principal(client: TestClient, keys: Keys) -> None:
    response = client.get("/sms/1/logs?applicationId=app-a", headers=auth(keys.linked))
    assert response.status_code == 200
    seen = response.json()
    assert seen["key"] == keys.linked_id
    assert (seen["name"], seen["primary"], seen["application"]) == ("linked", False, "app-a")
    assert seen["function"] == "Get outbound SMS message logs"


def test_linked_key_out_of_scope_never_reaches_the_app(client: TestClient, keys: Keys) -> None:
    response = client.get("/sms/1/logs?applicationId=app-b", headers=auth(keys.linked))
    assert response.status_code == 403
    assert response.json()["requestError"]["serviceException"]["messageId"] == "UNAUTHORIZED"


def test_linked_key_on_an_unlisted_path_is_refused(client: TestClient, keys: Keys) -> None:
    assert client.get("/internal/stats", headers=auth(keys.linked)).status_code == 403


def test_a_shadow_key_reaches_the_app_which_is_told_what_would_have_been_refused(
    client: TestClient, keys: Keys
) -> None:
    response = client.get("/sms/1/logs?applicationId=app-b", headers=auth(keys.shadow))
    assert response.status_code == 200
    assert response.json()["shadow_refusal"] == "id_out_of_scope"
    assert response.json()["query"] == "applicationId=app-b"  # as the client sent it
    in_scope = client.get("/sms/1/logs?applicationId=app-a", headers=auth(keys.shadow)).json()
    assert in_scope["shadow_refusal"] is None


def test_x_keyscope_headers_from_the_client_never_reach_the_app(client: TestClient, keys: Keys) -> None:
    forged = {"X-Keyscope-Shadow-Refusal": "none", "X-Keyscope-Application-Id": "app-b", "X-Keyscope-Key-Id": "x"}
    for secret in (keys.linked, keys.primary):
        seen = client.get("/sms/1/logs?applicationId=app-a", headers={**auth(secret), **forged}).json()
        assert seen["keyscope_headers"] == []
    seen = client.get("/sms/1/logs?applicationId=app-b", headers={**auth(keys.shadow), **forged}).json()
    assert seen["keyscope_headers"] == ["x-keyscope-shadow-refusal"]
    assert seen["shadow_refusal"] == "id_out_of_scope"


def test_primary_key_reaches_any_path(client: TestClient, keys: Keys) -> None:
    response = client.get("/internal/stats", headers=auth(keys.primary))
    assert response.status_code == 200
    assert response.json()["primary"] is True
    assert response.json()["function"] is None


def test_no_key_is_401_and_non_canonical_targets_are_400(client: TestClient, keys: Keys) -> None:
    assert client.get("/sms/1/logs?applicationId=app-a").status_code == 401
    assert client.get("/sms/1/%2e%2e/logs", headers=auth(keys.primary)).status_code == 400
    assert client.get("/sms/1/logs", headers={**auth(keys.primary), "X-HTTP-Method-Override": "DELETE"}).status_code == 400


def test_body_is_checked_and_replayed_to_the_app(client: TestClient, keys: Keys) -> None:
    body = {"messages": [{"applicationId": "app-a", "to": "1"}]}
    response = client.post("/sms/2/text/advanced", json=body, headers=auth(keys.linked))
    assert response.status_code == 200
    assert json.loads(response.json()["body"]) == body
    other = {"messages": [{"applicationId": "app-b", "to": "1"}]}
    refused = client.post("/sms/2/text/advanced", json=other, headers=auth(keys.linked))
    assert refused.status_code == 403


def test_fill_rewrites_what_the_app_sees(client: TestClient, keys: Keys) -> None:
    response = client.post("/sms/2/text/advanced", json={"messages": [{"to": "1"}]}, headers=auth(keys.fill))
    assert response.status_code == 200
    seen = response.json()
    assert json.loads(seen["body"]) == {"messages": [{"to": "1", "applicationId": "app-a"}]}
    assert seen["content_length"] == str(len(seen["body"].encode()))
    query = client.get("/sms/1/logs?limit=3", headers=auth(keys.fill)).json()["query"]
    assert sorted(query.split("&")) == ["applicationId=app-a", "limit=3"]


def test_unknown_application_is_400_naming_it(client: TestClient, keys: Keys) -> None:
    response = client.get("/internal/stats?applicationId=nope-app", headers=auth(keys.primary))
    assert response.status_code == 400
    assert "nope-app" in response.text


def test_store_object_opened_and_closed_by_the_caller(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'own.db'}"
    secrets = asyncio.run(_seed(url))
    store = store_from_url(url, create=True)

    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"name": request.state.keyscope.name})

    app = KeyScopeMiddleware(Starlette(routes=[Route("/anything", whoami)]), store=store)
    with TestClient(app) as test_client:
        test_client.portal.call(store.open)
        try:
            response = test_client.get("/anything", headers=auth(secrets.primary))
            assert response.status_code == 200
            assert response.json() == {"name": "primary"}
            assert test_client.get("/anything", headers=auth(secrets.linked)).status_code == 403
        finally:
            test_client.portal.call(store.close)


def test_websockets_are_closed(client: TestClient) -> None:
    from starlette.websockets import WebSocketDisconnect

    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/sms/1/logs"):
            pass


def test_access_line_for_each_request_when_the_logger_is_on(
    client: TestClient, keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="keyscope.access"):
        assert client.get("/sms/1/logs?applicationId=app-a", headers=auth(keys.linked)).status_code == 200
        assert client.get("/sms/1/logs?applicationId=app-b", headers=auth(keys.linked)).status_code == 403
        assert client.get("/sms/1/logs?applicationId=app-a").status_code == 401
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "keyscope.access"]
    forwarded, refused, unknown = lines[-3:]
    assert forwarded["decision"] == "forwarded" and forwarded["status"] == 200 and forwarded["upstream"] == 200
    assert forwarded["key"] == keys.linked_id and forwarded["function"] == "Get outbound SMS message logs"
    assert refused["decision"] == "refused" and refused["status"] == 403 and refused["step"] == "scope"
    assert unknown["reason"] == "missing_credentials" and unknown["key"] is None and unknown["upstream"] is None


def test_the_servers_state_is_kept_beside_the_principal(store_file: tuple[str, Keys]) -> None:
    url, secrets = store_file
    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.update(scope["state"])
        seen["query"] = scope["query_string"]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = KeyScopeMiddleware(app, store=url)
    scope = {
        "type": "http", "method": "GET", "path": "/sms/1/logs", "raw_path": b"/sms/1/logs",
        "query_string": b"applicationId=app-a", "headers": [(b"authorization", f"App {secrets.primary}".encode())],
        "client": ("127.0.0.1", 1), "state": {"from_lifespan": 1},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        try:
            await middleware(scope, receive, send)
            await middleware(scope, receive, send)  # the principal, made once, serves the next request too
        finally:
            await middleware.close()

    asyncio.run(run())
    assert [message.get("status") for message in sent] == [204, None, 204, None]
    assert seen["from_lifespan"] == 1 and seen["keyscope"].name == "primary"
    assert seen["query"] == b"applicationId=app-a"
    assert scope["state"] == {"from_lifespan": 1}  # the server's own scope is left as it was
