"""The explainer against the real gateway: the same request, explained and then sent through `keyscope serve`.

One echo backend and one gateway per module, over a SQLite file that the tests also open in-process for
`explain()`; the status, the error body and what reached the backend must agree with the trace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from gateway_helpers import Echo, Gateway, Key

from keyscope.allowlist.table import load as load_endpoints
from keyscope.gateway.explain import KeyNotFound, explain
from keyscope.store import Store, store_from_url

ENDPOINTS = load_endpoints()
SMS = "/sms/2/text/advanced"
SMS_BODY = json.dumps({"messages": [{"destinations": [{"to": "41793026727"}], "text": "hi"}]}).encode()
JSON = "application/json"


@pytest.fixture(scope="module")
def gateway(echo: Echo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    server = Gateway.start(echo.url, tmp_path_factory.mktemp("explain"))
    for application in ("app-a", "app-b"):
        server.create_application(application)
    server.create_entity("ent-a")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys(gateway: Gateway) -> dict[str, Key]:
    return {
        "app": gateway.create_key("app", {"applicationId": "app-a"}),
        "fill": gateway.create_key("fill", {"applicationId": "app-a", "entityId": "ent-a", "action": "FILL"}),
        "primary": gateway.create_key("primary"),
    }


@pytest.fixture
async def store(gateway: Gateway, anyio_backend: str) -> AsyncIterator[Store]:
    opened = store_from_url(gateway.store_url, create=True)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.mark.anyio
async def test_fill_rewrite_is_what_the_backend_receives(
    store: Store, gateway: Gateway, echo: Echo, keys: dict[str, Key]
) -> None:
    key = keys["fill"]
    trace = await explain(store, ENDPOINTS, "POST", SMS, secret=key.secret, body=SMS_BODY, content_type=JSON)
    assert trace.decision == "forwarded" and trace.allowed
    ids = next(step for step in trace.steps if step.name == "ids")
    assert ids.details["rewrite"] == "FILL"
    assert json.loads(ids.details["bodyBefore"]) == json.loads(SMS_BODY)
    assert ids.details["places"] == [
        {
            "where": "$.messages[0]",
            "ids": {"applicationId": "app-a", "entityId": "ent-a"},
            "checkedAgainst": "applicationId=app-a entityId=ent-a FILL",
        }
    ]
    allowlist = next(step for step in trace.steps if step.name == "allowlist")
    assert allowlist.details["function"] == "Send SMS message"
    assert allowlist.details["template"] == "POST /sms/2/text/advanced"

    response = gateway.request("POST", SMS, key, content=SMS_BODY, headers={"Content-Type": JSON})
    assert response.status_code == 200
    received = response.json()
    assert received["body"] == trace.forwarded["body"] == ids.details["bodyAfter"]
    sent_headers = {name.lower(): value for name, value in received["headers"]}
    for name, value in trace.forwarded["headers"].items():
        assert sent_headers[name.lower()] == value


@pytest.mark.anyio
async def test_refused_for_another_application_matches_the_gateway(
    store: Store, gateway: Gateway, echo: Echo, keys: dict[str, Key]
) -> None:
    key = keys["app"]
    target = "/sms/1/logs?applicationId=app-b"
    trace = await explain(store, ENDPOINTS, "GET", target, secret=key.secret)
    assert (trace.decision, trace.status, trace.reason, trace.step) == ("refused", 403, "id_out_of_scope", "scope")
    assert [step.ok for step in trace.steps] == [True, True, True, False, None]
    assert trace.steps[3].details["field"] == "applicationId"

    echo.clear()
    response = gateway.request("GET", target, key)
    assert response.status_code == 403
    assert response.json() == trace.error_body
    assert echo.log() == []


@pytest.mark.anyio
async def test_non_canonical_target_matches_the_gateway(
    store: Store, gateway: Gateway, keys: dict[str, Key]
) -> None:
    key = keys["app"]
    target = "/sms/1/%2E%2E/logs"
    trace = await explain(store, ENDPOINTS, "GET", target, secret=key.secret)
    assert (trace.status, trace.reason, trace.step) == (400, "dot_segment", "canonical")
    assert len(trace.steps) == 1

    answer = gateway.raw(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n".encode() + key.header() + b"\r\n")
    assert answer.status == 400
    assert answer.json() == trace.error_body


@pytest.mark.anyio
async def test_unknown_secret_and_unlisted_path(store: Store, gateway: Gateway, keys: dict[str, Key]) -> None:
    trace = await explain(store, ENDPOINTS, "GET", "/sms/1/logs", secret="not-a-key")
    assert (trace.status, trace.reason) == (401, "unknown_key")
    assert ("www-authenticate", "App") in trace.error_headers
    response = gateway.request("GET", "/sms/1/logs", Key("x", "not-a-key"))
    assert response.status_code == 401 and response.json() == trace.error_body

    trace = await explain(store, ENDPOINTS, "GET", "/not/listed", secret=keys["app"].secret)
    assert (trace.status, trace.reason, trace.step) == (403, "not_allowlisted", "allowlist")
    response = gateway.request("GET", "/not/listed", keys["app"])
    assert response.status_code == 403 and response.json() == trace.error_body

    trace = await explain(store, ENDPOINTS, "GET", "/not/listed", secret=keys["primary"].secret)
    assert trace.decision == "forwarded"
    assert "primary key may call any path" in trace.steps[2].summary


@pytest.mark.anyio
async def test_chosen_key_skips_the_secret_but_not_the_key_state(
    store: Store, gateway: Gateway, keys: dict[str, Key]
) -> None:
    key = gateway.create_key("revoked", {"applicationId": "app-a"})
    trace = await explain(store, ENDPOINTS, "GET", "/sms/1/logs?applicationId=app-a", key_id=key.id)
    assert trace.decision == "forwarded"
    assert trace.steps[1].details["secret"] == "not checked: the key was chosen by id"
    gateway.update_key(key, {"enabled": False})
    trace = await explain(store, ENDPOINTS, "GET", "/sms/1/logs?applicationId=app-a", key_id=key.id)
    assert (trace.status, trace.reason, trace.step) == (401, "key_disabled", "auth")
    with pytest.raises(KeyNotFound):
        await explain(store, ENDPOINTS, "GET", "/sms/1/logs", key_id="NO-SUCH-KEY")


@pytest.mark.anyio
async def test_a_key_chosen_by_id_shows_its_applications_limits(store: Store, gateway: Gateway) -> None:
    made = gateway.admin("POST", "/provisioning/1/applications",
                         {"applicationId": "metered", "rateLimits": [{"requests": 7, "per": "minute"}]})
    assert made.status_code == 201, made.text
    key = gateway.create_key("metered-key", {"applicationId": "metered"})
    by_id = await explain(store, ENDPOINTS, "GET", "/sms/1/logs?applicationId=metered", key_id=key.id)
    by_secret = await explain(store, ENDPOINTS, "GET", "/sms/1/logs?applicationId=metered", secret=key.secret)
    assert by_id.steps[1].details["rateLimits of metered"] == "7/minute"
    assert by_secret.steps[1].details["rateLimits of metered"] == "7/minute"


@pytest.mark.anyio
async def test_allowed_ips_need_the_callers_address(store: Store, gateway: Gateway) -> None:
    key = gateway.create_key("office", {"applicationId": "app-a"}, allowedIPs=["10.1.0.0/16"])
    target = "/sms/1/logs?applicationId=app-a"
    unknown = await explain(store, ENDPOINTS, "GET", target, key_id=key.id)
    assert unknown.reason == "ip_not_allowed" and "no client address" in unknown.steps[1].details["client"]
    inside = await explain(store, ENDPOINTS, "GET", target, key_id=key.id, client="10.1.2.3")
    assert inside.decision == "forwarded"
    outside = await explain(store, ENDPOINTS, "GET", target, key_id=key.id, client="10.2.0.1")
    assert outside.reason == "ip_not_allowed"


@pytest.mark.anyio
async def test_unknown_application_is_refused_at_the_existence_step(store: Store, keys: dict[str, Key]) -> None:
    trace = await explain(store, ENDPOINTS, "GET", "/sms/1/logs?applicationId=ghost", secret=keys["primary"].secret)
    assert (trace.status, trace.reason, trace.step) == (400, "unknown_application", "existence")
    assert trace.steps[-1].ok is False


@pytest.mark.anyio
async def test_management_paths_are_never_forwarded(store: Store, keys: dict[str, Key]) -> None:
    trace = await explain(store, ENDPOINTS, "GET", "/settings/2/api-keys", secret=keys["app"].secret)
    assert trace.decision == "management"
    assert [step.name for step in trace.steps] == ["canonical", "management"]


@pytest.mark.anyio
async def test_explaining_does_not_mark_the_key_used(store: Store, keys: dict[str, Key]) -> None:
    fresh = store_from_url(store.url, create=True)
    await fresh.open()
    try:
        before = (await fresh.get_key(keys["app"].id)).last_used
        for _ in range(3):
            await explain(fresh, ENDPOINTS, "GET", "/sms/1/logs?applicationId=app-a", secret=keys["app"].secret)
    finally:
        await fresh.close()
    assert (await store.get_key(keys["app"].id)).last_used == before


def _cli(*args: str, store_url: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "keyscope.cli", "--store", store_url, "explain", *args]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=60)


def test_cli_prints_the_trace_and_exits_by_decision(gateway: Gateway, keys: dict[str, Key], tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_bytes(SMS_BODY)
    allowed = _cli("--key", keys["fill"].secret, "POST", SMS, "--body", str(body), "--content-type", JSON,
                   store_url=gateway.store_url)
    assert allowed.returncode == 0, allowed.stderr
    text = allowed.stdout.decode()
    assert "3. Allowlist: ok: matches 'Send SMS message'" in text
    assert "rewrite: FILL" in text and "=> forwarded upstream" in text

    refused = _cli("--key", "-", "--json", "GET", "/sms/1/logs?applicationId=app-b",
                   store_url=gateway.store_url, stdin=keys["app"].secret.encode() + b"\n")
    assert refused.returncode == 1, refused.stderr
    doc = json.loads(refused.stdout)
    assert (doc["status"], doc["reason"], doc["step"]) == (403, "id_out_of_scope", "scope")
    assert keys["app"].secret not in refused.stdout.decode()

    missing = _cli("--key-id", "NOPE", "GET", "/sms/1/logs", store_url=gateway.store_url)
    assert missing.returncode == 2 and b"no key 'NOPE'" in missing.stderr
    neither = _cli("GET", "/sms/1/logs", store_url=gateway.store_url)
    assert neither.returncode == 2
    both_stdin = _cli("--key", "-", "--body", "-", "POST", SMS, store_url=gateway.store_url)
    assert both_stdin.returncode == 2 and b"cannot both read stdin" in both_stdin.stderr


def test_access_log_of_a_refusal_names_reason_and_step(gateway: Gateway, keys: dict[str, Key]) -> None:
    gateway.request("GET", "/sms/1/logs?applicationId=app-b", keys["app"])
    deadline = time.monotonic() + 10  # access lines are flushed twice a second
    refused: list[dict[str, object]] = []
    while not refused and time.monotonic() < deadline:
        lines = [json.loads(line) for line in gateway.access_log.read_text().splitlines() if line.startswith("{")]
        # This key's line: other tests' refusals on the same path may be flushed after it.
        refused = [
            line for line in lines
            if line["path"] == "/sms/1/logs" and line["decision"] == "refused" and line["key"] == keys["app"].id
        ]
        time.sleep(0.05)
    assert refused and refused[-1]["reason"] == "id_out_of_scope" and refused[-1]["step"] == "scope"
