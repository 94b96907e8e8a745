"""Forwarding itself: upstream down (502), slow (504), a huge streamed response, the upstream's own credentials,
trusted proxies, clients that leave early, and a base path on the upstream URL."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
from gateway_helpers import Echo, Gateway, Key, free_port, request_bytes

UPSTREAM_AUTH = "Basic dXBzdHJlYW06c2VjcmV0"


@pytest.fixture(scope="module")
def gateway(echo: Echo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    server = Gateway.start(
        echo.url + "/base/path", tmp_path_factory.mktemp("upstream"),
        "--upstream-timeout", "1", "--upstream-authorization", UPSTREAM_AUTH, "--trusted-proxies", "127.0.0.0/8",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def primary(gateway: Gateway) -> Key:
    return gateway.create_key("primary")


@pytest.fixture(scope="module")
def unreachable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    port = free_port()  # nothing listens there
    server = Gateway.start(f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("down"))
    yield server
    server.stop()


def header_values(record: dict[str, object], name: str) -> list[str]:
    return [value for key, value in record["headers"] if key.lower() == name.lower()]  # type: ignore[union-attr]


def test_upstream_base_path_is_prefixed_to_the_exact_raw_path(gateway: Gateway, echo: Echo, primary: Key) -> None:
    assert gateway.raw(request_bytes("GET", "/a/%C3%A9%20b?x=%2F&y", primary)).status == 200
    [record] = echo.log()
    assert (record["path"], record["query"]) == ("/base/path/a/%C3%A9%20b", "x=%2F&y")


def test_upstream_authorization_replaces_the_clients(gateway: Gateway, echo: Echo, primary: Key) -> None:
    assert gateway.raw(request_bytes("GET", "/creds", primary)).status == 200
    [record] = echo.log()
    assert header_values(record, "Authorization") == [UPSTREAM_AUTH]


def test_forwarded_for_is_extended_only_for_trusted_proxies(gateway: Gateway, echo: Echo, primary: Key) -> None:
    data = request_bytes("GET", "/xff", primary, "X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https")
    assert gateway.raw(data).status == 200
    [record] = echo.log()
    assert header_values(record, "X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]


def test_allowed_ips_use_forwarded_for_behind_a_trusted_proxy(gateway: Gateway, echo: Echo) -> None:
    key = gateway.create_key("office", allowedIPs=["203.0.113.0/24"])
    assert gateway.raw(request_bytes("GET", "/office", key)).status == 401
    assert gateway.raw(request_bytes("GET", "/office", key, "X-Forwarded-For: 203.0.113.7")).status == 200


def test_head_is_forwarded_and_answered_without_a_body(gateway: Gateway, echo: Echo, primary: Key) -> None:
    auth = {"Authorization": f"App {primary.secret}"}
    for _ in range(3):  # on pooled upstream connections: a HEAD answer must not leave bytes behind
        response = gateway.client.head("/head/check", headers=auth)
        assert response.status_code == 200
        assert response.content == b""
        assert gateway.client.get("/after-head", headers=auth).status_code == 200
    assert [(record["method"], record["path"]) for record in echo.log()] == [
        ("HEAD", "/base/path/head/check"), ("GET", "/base/path/after-head")
    ] * 3


def test_slow_upstream_is_504_in_the_legacy_family(gateway: Gateway, primary: Key) -> None:
    response = gateway.raw(request_bytes("GET", "/__echo/slow?seconds=3", primary))
    assert response.status == 504
    assert response.json()["requestError"]["serviceException"]["messageId"] == "GATEWAY_TIMEOUT"


def test_unreachable_upstream_is_502(unreachable: Gateway) -> None:
    key = unreachable.create_key("primary")
    response = unreachable.raw(request_bytes("GET", "/anything", key))
    assert response.status == 502
    assert response.json()["requestError"]["serviceException"]["messageId"] == "BAD_GATEWAY"
    linked_endpoint = unreachable.raw(request_bytes("POST", "/sms/3/messages", key, "Content-Type: application/json",
                                                    body=b'{"messages":[]}'))
    assert linked_endpoint.status == 502
    assert linked_endpoint.json()["errorCode"] == "E502"  # the endpoint's family


def test_huge_response_is_streamed_through_whole(gateway: Gateway, primary: Key) -> None:
    size = 64 * 1024 * 1024 + 123
    received = 0
    with gateway.client.stream("GET", "/__echo/big", params={"bytes": size},
                               headers={"Authorization": f"App {primary.secret}"}) as response:
        assert response.status_code == 200
        for chunk in response.iter_raw():
            assert chunk.count(b"x") == len(chunk)
            received += len(chunk)
    assert received == size


def test_client_leaving_early_cancels_quietly(gateway: Gateway, primary: Key) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(request_bytes("GET", "/__echo/slow?seconds=0.8", primary))
        time.sleep(0.2)
    # the gateway keeps serving, and says in its access log that the client left
    assert gateway.raw(request_bytes("GET", "/after", primary)).status == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in gateway.access_log.read_text().splitlines() if line.startswith("{")]
        if any(line["status"] == 499 and line["path"] == "/__echo/slow" for line in lines):
            break
        time.sleep(0.05)
    else:
        pytest.fail("no access-log line with status 499 for the abandoned request")


def test_client_leaving_during_a_huge_response(gateway: Gateway, primary: Key) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(request_bytes("GET", "/__echo/big?bytes=500000000", primary))
        sock.recv(65536)
    assert gateway.raw(request_bytes("GET", "/after-big", primary)).status == 200


def test_no_tracebacks_on_stderr(gateway: Gateway, unreachable: Gateway) -> None:
    # runs last in this module: timeouts, refused connections and clients leaving logged no traceback
    for server in (gateway, unreachable):
        assert server.process.poll() is None
        assert "Traceback" not in server.error_log.read_text()
