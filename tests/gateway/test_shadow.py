"""Shadow mode through real processes: `keyscope serve --shadow`, and a key with `"enforce": false`.

What the allowlist, the scope, the existence check or a rate limit would refuse reaches the backend with
`X-Keyscope-Shadow-Refusal: <reason>` and as the client sent it; its access line says `shadow` with the reason
and step it would have had. Steps 1-2 are never shadowed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import Echo, Gateway, Key, request_bytes
from stores import STORE_KINDS, STORE_MARKS, STORE_URLS


@pytest.fixture(params=[pytest.param(kind, marks=STORE_MARKS.get(kind, [])) for kind in STORE_KINDS])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with STORE_URLS[request.param](tmp_path) as url:
        yield url


def line_of(gateway: Gateway, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for text in gateway.access_log.read_text().splitlines():
            if text.startswith("{") and (line := json.loads(text)).get("request_id") == request_id:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no access line for {request_id}")


def sent(echo: Echo) -> dict[str, Any]:  # noqa: F811
    (received,) = echo.log()
    echo.clear()
    received["headers"] = {name.lower(): value for name, value in received["headers"]}
    return received


def check_shadowed(gateway: Gateway, echo: Echo, key: Key, target: str, reason: str, step: str,  # noqa: F811
                   **kwargs: Any) -> None:
    rid = f"shadow-{reason}-{time.monotonic_ns()}"
    method = kwargs.pop("method", "GET")
    answer = gateway.request(method, target, key, headers={"X-Request-Id": rid}, **kwargs)
    assert answer.status_code == 200, answer.text
    received = sent(echo)
    assert received["headers"]["x-keyscope-shadow-refusal"] == reason
    assert received["path"] + ("?" + received["query"] if received["query"] else "") == target  # as sent
    line = line_of(gateway, rid)
    assert (line["decision"], line["reason"], line["step"], line["status"]) == ("shadow", reason, step, 200)


def test_a_key_with_enforce_false(echo: Echo, tmp_path: Path, store_url: str) -> None:  # noqa: F811
    echo.clear()
    gateway = Gateway.start(echo.url, tmp_path, store_url=store_url)
    try:
        for application in ("app-a", "app-b"):
            gateway.create_application(application)
        shadow = gateway.create_key("shadow", {"applicationId": "app-a"}, enforce=False,
                                    rateLimits=[{"requests": 1, "per": "hour"}])
        assert gateway.admin("GET", f"/settings/2/api-keys/{shadow.id}").json()["enforce"] is False
        ok = gateway.request("GET", "/sms/1/logs?applicationId=app-a", shadow)  # spends the one request
        assert ok.status_code == 200 and "x-keyscope-shadow-refusal" not in sent(echo)["headers"]
        check_shadowed(gateway, echo, shadow, "/sms/1/logs?applicationId=app-a", "rate_limited", "ratelimit")
        gateway.update_key(shadow, {"rateLimits": []})
        check_shadowed(gateway, echo, shadow, "/sms/1/logs?applicationId=app-b", "id_out_of_scope", "scope")
        check_shadowed(gateway, echo, shadow, "/not/on/the/list", "not_allowlisted", "allowlist")
        check_shadowed(gateway, echo, shadow, "/sms/1/logs?applicationId=app-a&entityId=nope", "unknown_entity",
                       "existence")
        check_shadowed(gateway, echo, shadow, "/sms/1/logs", "id_missing", "scope")
        # steps 1-2: never shadowed
        assert gateway.raw(request_bytes("GET", "/sms/1/logs/%2e%2e/x", shadow)).status == 400
        assert gateway.request("GET", "/sms/1/logs", Key("x", "not-a-secret")).status_code == 401
        # an enforcing key on the same gateway is refused as ever
        enforcing = gateway.create_key("enforcing", {"applicationId": "app-a"})
        assert gateway.request("GET", "/sms/1/logs?applicationId=app-b", enforcing).status_code == 403
        assert echo.log() == []
        gateway.update_key(shadow, {"enforce": True})
        assert gateway.request("GET", "/sms/1/logs?applicationId=app-b", shadow).status_code == 403
        assert "enforce" not in gateway.admin("GET", f"/settings/2/api-keys/{shadow.id}").json()
    finally:
        gateway.stop()


def test_the_whole_gateway_in_shadow_mode(echo: Echo, tmp_path: Path, store_url: str) -> None:  # noqa: F811
    echo.clear()
    gateway = Gateway.start(echo.url, tmp_path, "--shadow", store_url=store_url)
    try:
        gateway.create_application("app-a")
        gateway.create_entity("ent-a")
        pair = gateway.create_key("pair", {"applicationId": "app-a", "entityId": "ent-a"})
        body = {"messages": [{"destinations": [{"to": "41793026727"}], "applicationId": "app-a",
                              "entityId": "ent-b"}]}
        check_shadowed(gateway, echo, pair, "/sms/2/text/advanced", "id_out_of_scope", "scope", method="POST",
                       json=body)
        primary = gateway.create_key("primary")
        check_shadowed(gateway, echo, primary, "/sms/1/logs?entityId=nope", "unknown_entity", "existence")
        check_shadowed(gateway, echo, pair, "/sms/1/logs", "id_missing", "scope")
        admitted = gateway.request("GET", "/sms/1/logs?applicationId=app-a&entityId=ent-a", pair)
        assert admitted.status_code == 200 and "x-keyscope-shadow-refusal" not in sent(echo)["headers"]
        assert gateway.request("GET", "/sms/1/logs", None).status_code == 401
        assert echo.log() == []
    finally:
        gateway.stop()
