"""`keyscope authorize --contract envoy`: check requests in the shape Envoy's ext_authz HTTP service sends them.

Envoy is not installable here, so each check request is written as bytes the way Envoy's HTTP client writes one
(source/extensions/filters/common/ext_authz/ext_authz_http_impl.cc, check_request_utils.cc): the original
method and path with its query, the original headers that `allowed_headers` lets through (docs/envoy.md lets
through all), `content-length` of what Envoy itself sends (the original's is never passed), and with
`with_request_body` the body with `x-envoy-auth-partial-body: false|true` (Envoy drops a client's copy and sets
its own); the async client adds `x-envoy-internal`, `x-envoy-expected-rq-timeout-ms` and appends its own address
to `x-forwarded-for`. A real `keyscope authorize` process answers; what Envoy does with the answer (200 admits
with `allowed_upstream_headers`, anything else is relayed to the client) is asserted on that answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from authorizer_helpers import Authorizer, seeded_store
from gateway_helpers import PYTHON, Key, Raw, raw

ENVOY_ADDED = ("x-forwarded-for: 203.0.113.7,10.0.0.2", "x-forwarded-proto: https", "x-envoy-internal: true",
               "x-envoy-expected-rq-timeout-ms: 250", "x-request-id: 6f1c3b2e-8a4d-4c1e-9b7a-0d2f5e6a7b8c")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Authorizer, dict[str, Key]]]:
    folder = tmp_path_factory.mktemp("envoy")
    store_url, keys = seeded_store(folder)
    authorizer = Authorizer.start("envoy", store_url, folder)
    yield authorizer, keys
    authorizer.stop()


def check(authorizer: Authorizer, method: str, target: str, key: Key | None, *headers: str,
          body: bytes | None = None, partial: str | None = None) -> Raw:
    """One check request as Envoy writes it; `body` with `partial` as with_request_body sends it."""
    lines = [f"{method} {target} HTTP/1.1", "host: api.example.com", f"content-length: {len(body or b'')}"]
    if key is not None:
        lines.append(f"authorization: App {key.secret}")
    lines += [*headers, "user-agent: sdk/1.0", *ENVOY_ADDED]
    if partial is not None:
        lines.append(f"x-envoy-auth-partial-body: {partial}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    return raw(authorizer.port, data, method)


def header(answer: Raw, name: str) -> str | None:
    values = [value for key, value in answer.headers if key.lower() == name]
    assert len(values) <= 1, values
    return values[0] if values else None


def refusal_text(answer: Raw) -> str:
    return json.dumps(answer.json())


def test_admitted_answers_200_with_the_identity_for_upstream(setup: tuple[Authorizer, dict[str, Key]]) -> None:
    authorizer, keys = setup
    answer = check(authorizer, "GET", "/sms/1/logs?applicationId=marketing&entityId=customer-a", keys["pair"])
    assert answer.status == 200 and answer.body == b""
    assert header(answer, "x-keyscope-key-id") == keys["pair"].id
    assert header(answer, "x-keyscope-application-id") == "marketing"
    assert header(answer, "x-keyscope-entity-id") == "customer-a"
    assert header(answer, "x-request-id") == "6f1c3b2e-8a4d-4c1e-9b7a-0d2f5e6a7b8c"  # Envoy's, as given
    # what the key does not set is removed from the upstream request: a client's own copy never gets through
    assert header(answer, "x-envoy-auth-headers-to-remove") == "x-keyscope-shadow-refusal"


def test_a_primary_key_removes_every_identity_header_it_does_not_set(
    setup: tuple[Authorizer, dict[str, Key]],
) -> None:
    authorizer, keys = setup
    answer = check(authorizer, "DELETE", "/anything/at/all", keys["primary"],
                   "x-keyscope-application-id: transactional")
    assert answer.status == 200
    assert header(answer, "x-keyscope-key-id") == keys["primary"].id
    assert header(answer, "x-keyscope-application-id") is None
    removed = (header(answer, "x-envoy-auth-headers-to-remove") or "").split(", ")
    assert {"x-keyscope-application-id", "x-keyscope-entity-id"} <= set(removed)


@pytest.mark.parametrize(
    ("target", "key_name", "status", "reason_word"),
    [
        ("/sms/1/logs?applicationId=transactional", "linked", 403, "transactional"),  # another application's id
        ("/sms/1/logs?applicationId=marketing", None, 401, None),  # no key
        ("/sms/1/logs?applicationId=nobody", "primary", 400, "nobody"),  # no such application
        ("/sms//1/logs", "primary", 400, None),  # not canonical
        ("/not/in/the/allowlist", "linked", 403, None),
    ],
)
def test_refusals_are_keyscope_s_status_and_body_for_envoy_to_relay(
    setup: tuple[Authorizer, dict[str, Key]], target: str, key_name: str | None, status: int,
    reason_word: str | None,
) -> None:
    authorizer, keys = setup
    answer = check(authorizer, "GET", target, keys[key_name] if key_name else None)
    assert answer.status == status
    assert "requestError" in answer.json()  # the endpoint's error family, as keyscope serve answers
    if reason_word:
        assert reason_word in refusal_text(answer)
    if status == 401:
        assert header(answer, "www-authenticate") == "App"
    assert header(answer, "x-keyscope-key-id") is None


def test_a_client_sent_x_original_uri_is_refused_never_followed(setup: tuple[Authorizer, dict[str, Key]]) -> None:
    """In Envoy mode the path checked is the check request's own; a client naming another URI is a 400."""
    authorizer, keys = setup
    answer = check(authorizer, "GET", "/sms/1/logs?applicationId=transactional", keys["linked"],
                   "x-original-uri: /sms/1/logs?applicationId=marketing", "x-original-method: GET")
    assert answer.status == 400
    lines = _wait_for_lines(authorizer, lambda line: line["reason"] == "rewrite_header")
    assert lines[-1]["path"] == "/sms/1/logs"
    # and a client's X-Original-Method alone changes nothing: the check request's method is the one checked
    answer = check(authorizer, "GET", "/sms/1/logs?applicationId=transactional", keys["linked"],
                   "x-original-method: POST")
    assert answer.status == 403


def test_the_body_envoy_sends_is_checked(setup: tuple[Authorizer, dict[str, Key]]) -> None:
    authorizer, keys = setup
    mine = json.dumps({"messages": [{"applicationId": "marketing", "text": "hi"}]}).encode()
    theirs = json.dumps({"messages": [{"applicationId": "transactional", "text": "hi"}]}).encode()
    typed = "content-type: application/json"
    assert check(authorizer, "POST", "/sms/2/text/advanced", keys["linked"], typed, body=mine,
                 partial="false").status == 200
    answer = check(authorizer, "POST", "/sms/2/text/advanced", keys["linked"], typed, body=theirs, partial="false")
    assert answer.status == 403 and "transactional" in refusal_text(answer)


def test_a_body_cut_short_or_not_sent_is_refused(setup: tuple[Authorizer, dict[str, Key]]) -> None:
    authorizer, keys = setup
    part = b'{"messages": [{"applicationId": "marketing"'
    typed = "content-type: application/json"
    answer = check(authorizer, "POST", "/sms/2/text/advanced", keys["linked"], typed, body=part, partial="true")
    assert answer.status == 413 and "part of the body" in refusal_text(answer)
    # with_request_body off: Envoy sends no body and no marker, but the Content-Type says there was one
    answer = check(authorizer, "POST", "/sms/2/text/advanced", keys["linked"], typed)
    assert answer.status == 403 and "does not send" in refusal_text(answer)
    _wait_for_lines(authorizer, lambda line: line["reason"] == "body_not_forwarded")


def test_fill_and_force_keys_cannot_be_rewritten_by_an_authorizer(
    setup: tuple[Authorizer, dict[str, Key]],
) -> None:
    authorizer, keys = setup
    # naming its own ids, a FILL key needs no rewrite: admitted
    assert check(authorizer, "GET", "/sms/1/logs?applicationId=marketing", keys["fill"]).status == 200
    # without them the gateway would fill them in; an authorizer cannot, and says so
    answer = check(authorizer, "GET", "/sms/1/logs", keys["fill"])
    assert answer.status == 403 and "FILL/FORCE" in refusal_text(answer)
    line = _wait_for_lines(authorizer, lambda line: line["reason"] == "rewrite_needs_gateway")[-1]
    assert line["decision"] == "refused" and line["key"] == keys["fill"].id and line["step"] == "scope"


def test_a_rate_limited_key_s_headers_go_with_the_answer(setup: tuple[Authorizer, dict[str, Key]]) -> None:
    authorizer, keys = setup
    first = check(authorizer, "GET", "/sms/1/logs?applicationId=marketing", keys["limited"])
    assert first.status == 200 and header(first, "ratelimit-remaining") == "0"  # allowed_client_headers_on_success
    second = check(authorizer, "GET", "/sms/1/logs?applicationId=marketing", keys["limited"])
    assert second.status == 429 and header(second, "ratelimit-limit") == "1" and header(second, "retry-after")


def test_the_management_api_is_never_authorized_through(setup: tuple[Authorizer, dict[str, Key]]) -> None:
    authorizer, keys = setup
    answer = check(authorizer, "GET", "/provisioning/1/applications", keys["primary"])
    assert answer.status == 403 and "management API" in refusal_text(answer)


def test_admitted_checks_are_logged_as_admitted(setup: tuple[Authorizer, dict[str, Key]]) -> None:
    authorizer, keys = setup
    assert check(authorizer, "GET", "/sms/1/logs?applicationId=marketing", keys["linked"]).status == 200
    line = _wait_for_lines(authorizer, lambda line: line["key"] == keys["linked"].id and line["status"] == 200)[-1]
    assert line["decision"] == "admitted" and line["upstream"] is None and line["reason"] is None
    assert line["request_id"] == "6f1c3b2e-8a4d-4c1e-9b7a-0d2f5e6a7b8c" and line["client"] == "127.0.0.1"


def _wait_for_lines(authorizer: Authorizer, wanted: object, timeout: float = 5.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in authorizer.lines() if wanted(line)]  # type: ignore[operator]
        if lines or time.monotonic() > deadline:
            assert lines, authorizer.access_log.read_text()[-2000:]
            return lines
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        ("authorize", [], "authorize needs --contract"),
        ("serve", ["--contract", "envoy", "--upstream", "http://127.0.0.1:9"], "contract is for `keyscope authorize`"),
        ("authorize", ["--contract", "istio"], "contract must be one of envoy, nginx"),
    ],
)
def test_the_contract_is_configuration_and_required(tmp_path: Path, command: str, extra: list[str],
                                                    message: str) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    done = subprocess.run([PYTHON, "-m", "keyscope.cli", command, "--store", f"sqlite:///{tmp_path / 'none.db'}",
                           *extra], check=False, env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr
