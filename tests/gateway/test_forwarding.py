"""End to end: `keyscope serve` in front of the echo backend, on a real SQLite store.

Every allowlisted endpoint, for a linked key with its own ids (forwarded exactly) and with another
application's ids (403, never forwarded); management and unlisted paths; primary keys; the headers the
backend gets; duplicate response headers; revocation and re-linking through the management API.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from gateway_helpers import (
    APP_A,
    APP_B,
    ENT_A,
    ENT_B,
    Echo,
    Gateway,
    World,
    endpoint_request,
    request_bytes,
    sample_path,
)

from keyscope.allowlist.table import Endpoint, load

ENDPOINTS = load()


def _id(endpoint: Endpoint) -> str:
    return f"{endpoint.method} {endpoint.path}"


def header_values(record: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in record["headers"] if key.lower() == name.lower()]


def assert_family(endpoint_family: str, body: dict[str, Any], status: int) -> None:
    if endpoint_family == "legacy":
        assert "serviceException" in body["requestError"]
    else:
        assert body["errorCode"] == f"E{status}"


def test_the_allowlist_has_128_endpoints() -> None:
    assert len(ENDPOINTS) == 128


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_id)
def test_linked_key_with_its_own_ids_is_forwarded_exactly(
    endpoint: Endpoint, gateway: Gateway, echo: Echo, world: World
) -> None:
    target, kwargs = endpoint_request(endpoint, APP_A, ENT_A)
    response = gateway.request(endpoint.method, target, world.pair, **kwargs)
    assert response.status_code == 200, response.text
    [record] = echo.log()
    path, _, query = target.partition("?")
    assert (record["method"], record["path"], record["query"]) == (endpoint.method, path, query)
    assert record["path"] == sample_path(endpoint)
    if "json" in kwargs:
        assert json.loads(record["body"]) == kwargs["json"]
    assert header_values(record, "X-Keyscope-Application-Id") == [APP_A]
    assert header_values(record, "X-Keyscope-Entity-Id") == [ENT_A]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_id)
def test_linked_key_with_another_applications_ids_is_refused(
    endpoint: Endpoint, gateway: Gateway, echo: Echo, world: World
) -> None:
    if endpoint.ids:
        target, kwargs = endpoint_request(endpoint, APP_B, ENT_A)
    else:  # ids: none still checks any id the request carries
        target, kwargs = endpoint_request(endpoint, None, None)
        target += f"?applicationId={APP_B}"
    response = gateway.request(endpoint.method, target, world.pair, **kwargs)
    assert response.status_code == 403, response.text
    assert_family(endpoint.errors, response.json(), 403)
    assert echo.log() == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/provisioning/1/applications"),
        ("POST", "/provisioning/1/entities"),
        ("GET", "/provisioning/1/associations/single"),
        ("GET", "/settings/2/api-keys"),
        ("POST", "/settings/2/api-keys"),
        ("PUT", "/settings/2/api-keys/ABC"),
    ],
)
def test_management_paths_are_refused_for_linked_keys_and_never_forwarded(
    method: str, path: str, gateway: Gateway, echo: Echo, world: World
) -> None:
    response = gateway.request(method, path, world.pair, json={"name": "x"} if method != "GET" else None)
    assert response.status_code == 403
    assert echo.log() == []


@pytest.mark.parametrize(
    "path", ["/provisioning/1", "/provisioning/1/nothing-here", "/PROVISIONING/1/applications",
             "/Settings/2/API-Keys", "/settings/2/api-keys/"],
)
def test_management_paths_in_any_case_are_never_forwarded_even_for_primary_keys(
    path: str, gateway: Gateway, echo: Echo, world: World
) -> None:
    response = gateway.request("GET", path, world.primary)
    assert response.status_code in (403, 404)
    assert echo.log() == []


def test_paths_that_extend_management_paths_are_management_too(gateway: Gateway, echo: Echo, world: World) -> None:
    """Rails' `(.:format)` and Spring's suffix matching route `/settings/2/api-keys.json` to the key endpoints:
    anything that extends a management path is answered here, never forwarded."""
    for path in ("/provisioning/10/applications", "/provisioning/1x", "/settings/2/api-keys-archive",
                 "/settings/2/api-keys.json", "/settings/2/api-keys~"):
        assert gateway.request("GET", path, world.primary).status_code in (403, 404), path
    assert echo.log() == []


def test_management_api_answers_primary_keys_itself(gateway: Gateway, echo: Echo, world: World) -> None:
    listed = gateway.request("GET", "/provisioning/1/applications", world.primary)
    assert listed.status_code == 200
    assert {APP_A, APP_B} <= {item["applicationId"] for item in listed.json()["results"]}
    keys = gateway.request("GET", "/settings/2/api-keys", world.primary)
    assert keys.status_code == 403  # no API key may mint or widen keys
    assert echo.log() == []


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/sms/1/unlisted"),
        ("GET", "/provisioning/2/applications"),
        ("DELETE", "/sms/1/logs"),  # listed path, method not listed
        ("HEAD", "/sms/1/logs?applicationId=app-a&entityId=ent-a"),  # HEAD is not implied by GET
        ("GET", "/sms/1/logs/"),  # trailing slash: another, unlisted path
        ("GET", "/"),
    ],
)
def test_unlisted_paths_and_methods_are_refused_for_linked_keys(
    method: str, target: str, gateway: Gateway, echo: Echo, world: World
) -> None:
    response = gateway.request(method, target, world.pair)
    assert response.status_code == 403
    if method != "HEAD":
        assert response.json()["requestError"]["serviceException"]["messageId"] == "UNAUTHORIZED"
    assert echo.log() == []


def test_primary_key_calls_any_canonical_path_unchanged(gateway: Gateway, echo: Echo, world: World) -> None:
    body = b'{"free":"form","applicationId":"app-b","n":[1,2.50,{"entityId":"ent-b"}]}'
    response = gateway.request(
        "PATCH", "/any/where/%20it%C3%A9/likes?b=2&a=%2F", world.primary, content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200
    [record] = echo.log()
    assert record["path"] == "/any/where/%20it%C3%A9/likes"
    assert record["query"] == "b=2&a=%2F"
    assert record["body"] == body.decode()
    assert header_values(record, "X-Keyscope-Key-Id") == [world.primary.id]
    assert header_values(record, "X-Keyscope-Application-Id") == []
    assert header_values(record, "X-Keyscope-Entity-Id") == []


def test_primary_key_body_that_is_not_inspected_is_streamed_unchanged(
    gateway: Gateway, echo: Echo, world: World
) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB of binary, sent chunked
    response = gateway.request(
        "POST", "/files/upload", world.primary, content=iter([payload[:1000], payload[1000:]]),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200
    [record] = echo.log()
    import base64

    assert base64.b64decode(record["bodyBase64"]) == payload


def test_backend_gets_forwarding_and_identity_headers_and_never_the_clients_credentials(
    gateway: Gateway, echo: Echo, world: World
) -> None:
    data = request_bytes(
        "GET", "/sms/1/logs?applicationId=app-a", world.app,
        "X-Keyscope-Application-Id: app-b",
        "x-keyscope-entity-id: ent-b",
        "X_Keyscope_Key_Id: someone-else",
        "X-KEYSCOPE-ANYTHING: 1",
        "X-Forwarded-For: 203.0.113.9",
        "X-Forwarded-Host: evil.test",
        "Proxy-Authorization: Basic abc",
        "Connection: close",
        "Keep-Alive: timeout=5",
        "Accept: application/json",
    )
    response = gateway.raw(data)
    assert response.status == 200, response.body
    [record] = echo.log()
    names = [key.lower() for key, _ in record["headers"]]
    assert header_values(record, "X-Keyscope-Key-Id") == [world.app.id]
    assert header_values(record, "X-Keyscope-Application-Id") == [APP_A]
    assert header_values(record, "X-Keyscope-Entity-Id") == []  # the entry leaves entities unconstrained
    assert not [name for name in names if name.replace("_", "-").startswith("x-keyscope-anything")]
    assert "x_keyscope_key_id" not in names
    for dropped in ("authorization", "proxy-authorization", "keep-alive", "connection"):
        assert dropped not in names
    assert world.app.secret not in json.dumps(record)
    assert header_values(record, "X-Forwarded-For") == ["127.0.0.1"]  # the peer is not a trusted proxy
    assert header_values(record, "X-Forwarded-Host") == ["gateway.test"]
    assert header_values(record, "X-Forwarded-Proto") == ["http"]
    assert header_values(record, "Accept") == ["application/json"]


def test_entity_only_key_sends_only_the_entity_header(gateway: Gateway, echo: Echo, world: World) -> None:
    response = gateway.request("GET", f"/sms/1/logs?entityId={ENT_A}", world.entity)
    assert response.status_code == 200
    [record] = echo.log()
    assert header_values(record, "X-Keyscope-Entity-Id") == [ENT_A]
    assert header_values(record, "X-Keyscope-Application-Id") == []


def test_key_with_two_entries_may_use_either_but_not_a_mix(gateway: Gateway, echo: Echo, world: World) -> None:
    messages = {"messages": [
        {"applicationId": APP_A, "entityId": ENT_A, "to": "1"},
        {"applicationId": APP_B, "entityId": ENT_B, "to": "2"},
    ]}
    assert gateway.request("POST", "/sms/2/text/advanced", world.two, json=messages).status_code == 200
    mixed = {"messages": [{"applicationId": APP_A, "entityId": ENT_B, "to": "1"}]}
    assert gateway.request("POST", "/sms/2/text/advanced", world.two, json=mixed).status_code == 403
    assert len(echo.log()) == 1


def test_duplicate_response_headers_and_status_pass_through(gateway: Gateway, world: World) -> None:
    response = gateway.raw(request_bytes("GET", "/__echo/cookies", world.primary))
    assert response.status == 200
    assert [v for k, v in response.headers if k.lower() == "set-cookie"] == ["a=1; Path=/", "b=2; Path=/"]
    assert [v for k, v in response.headers if k.lower() == "x-echo-dup"] == ["one", "two"]
    teapot = gateway.request("GET", "/__echo/status?code=418", world.primary)
    assert teapot.status_code == 418


def test_upstream_cookies_are_not_replayed_to_other_clients(gateway: Gateway, echo: Echo, world: World) -> None:
    gateway.raw(request_bytes("GET", "/__echo/cookies", world.primary))
    gateway.raw(request_bytes("GET", "/after-cookies", world.primary))
    [record] = echo.log()
    assert header_values(record, "Cookie") == []


def test_revocation_through_the_management_api_takes_effect_on_the_next_request(gateway: Gateway) -> None:
    key = gateway.create_key("to-revoke", {"applicationId": APP_A})
    target = f"/sms/1/logs?applicationId={APP_A}"
    assert gateway.request("GET", target, key).status_code == 200  # warms the key cache
    gateway.update_key(key, {"enabled": False})
    refused = gateway.request("GET", target, key)
    assert refused.status_code == 401
    assert refused.json()["requestError"]["serviceException"]["messageId"] == "UNAUTHORIZED"


def test_relinking_takes_effect_on_the_next_request(gateway: Gateway) -> None:
    key = gateway.create_key("to-relink", {"applicationId": APP_A})
    assert gateway.request("GET", f"/sms/1/logs?applicationId={APP_A}", key).status_code == 200
    gateway.update_key(key, {"platform": [{"applicationId": APP_B}]})
    assert gateway.request("GET", f"/sms/1/logs?applicationId={APP_A}", key).status_code == 403
    assert gateway.request("GET", f"/sms/1/logs?applicationId={APP_B}", key).status_code == 200


def test_deleted_key_is_refused_on_the_next_request(gateway: Gateway) -> None:
    key = gateway.create_key("to-delete")
    assert gateway.request("GET", "/anything", key).status_code == 200
    assert gateway.admin("DELETE", f"/settings/2/api-keys/{key.id}").status_code == 204
    assert gateway.request("GET", "/anything", key).status_code == 401


def test_deleted_application_is_refused_on_the_next_request(gateway: Gateway, world: World) -> None:
    gateway.create_application("short-lived")
    target = "/sms/1/logs?applicationId=short-lived"
    assert gateway.request("GET", target, world.primary).status_code == 200  # existence now cached
    assert gateway.admin("DELETE", "/provisioning/1/applications/short-lived").status_code == 200
    refused = gateway.request("GET", target, world.primary)
    assert refused.status_code == 400
    assert "short-lived" in refused.text


def test_access_log_has_one_json_line_per_request_and_no_secret(gateway: Gateway, world: World) -> None:
    gateway.request("GET", f"/sms/1/logs?applicationId={APP_B}", world.app)
    gateway.request("GET", f"/sms/1/logs?applicationId={APP_A}", world.app)
    deadline = time.monotonic() + 10  # a line is written just after its response is sent
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in gateway.access_log.read_text().splitlines() if line.startswith("{")]
        if lines and lines[-1]["decision"] == "forwarded" and lines[-1]["key"] == world.app.id:
            break
        time.sleep(0.05)
    refused, forwarded = lines[-2:]
    assert refused["decision"] == "refused" and refused["status"] == 403 and refused["step"] == "scope"
    assert refused["key"] == world.app.id and refused["function"] == "Get outbound SMS message logs"
    assert refused["reason"]
    assert forwarded["decision"] == "forwarded" and forwarded["upstream"] == 200
    text = gateway.access_log.read_text()
    for key in (world.primary, world.app, world.pair, world.fill):
        assert key.secret not in text
