"""The contracts of `keyscope authorize` on their own: how an nginx check request is read, how refusals are
mapped for auth_request and answered again at `/refusal`, how each contract delivers the body. The processes
(tests/test_authorizer_envoy.py, tests/test_authorizer_nginx.py) test them end to end."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from keyscope.core.errors import Refusal
from keyscope.decide.answers import refuse
from keyscope.gateway.contracts import (
    BODY_NOT_FORWARDED,
    PARTIAL,
    ContractError,
    auth_request_status,
    envoy_body,
    nginx_body,
    original_request,
    replay_refusal,
)

pytestmark = pytest.mark.anyio


def check_scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "raw_path": b"/_keyscope/check", "path": "/_keyscope/check",
            "query_string": b"", "headers": list(headers), "client": ("127.0.0.1", 5000)}


CONTRACT = ((b"x-original-uri", b"/sms/1/logs?applicationId=a"), (b"x-original-method", b"POST"),
            (b"x-original-body", b"12,"))


def test_the_original_request_is_what_the_contract_headers_say() -> None:
    scope, declared = original_request(check_scope(
        *CONTRACT, (b"content-length", b"99"), (b"host", b"keyscope_authorizer"), (b"authorization", b"App k")))
    assert (scope["method"], scope["raw_path"], scope["query_string"]) == ("POST", b"/sms/1/logs", b"applicationId=a")
    # the check request's own framing is dropped; the original's comes from X-Original-Body
    assert scope["headers"] == [(b"host", b"keyscope_authorizer"), (b"authorization", b"App k"),
                                (b"content-length", b"12")]
    assert declared


@pytest.mark.parametrize(("framing", "declared", "added"), [
    (b",", False, []),
    (b"0,", False, [(b"content-length", b"0")]),
    (b",chunked", True, [(b"transfer-encoding", b"chunked")]),
    (b"5,chunked", True, [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")]),  # step 1 refuses it
])
def test_the_body_framing(framing: bytes, declared: bool, added: list[tuple[bytes, bytes]]) -> None:
    scope, has_body = original_request(check_scope(*CONTRACT[:2], (b"x-original-body", framing)))
    assert has_body is declared and scope["headers"] == added


@pytest.mark.parametrize("headers", [
    CONTRACT[:2], CONTRACT[1:], (CONTRACT[0], CONTRACT[2]),  # each of the three is required
    (*CONTRACT, CONTRACT[0]),  # twice: not what nginx's proxy_set_header sends
    (CONTRACT[0], (b"x-original-method", b"G T"), CONTRACT[2]), (CONTRACT[0], (b"x-original-method", b""), CONTRACT[2]),
    (*CONTRACT[:2], (b"x-original-body", b"12")), (*CONTRACT[:2], (b"x-original-body", b"x,")),
])
def test_a_check_request_without_the_contract_is_a_configuration_error(headers: tuple[tuple[bytes, bytes]]) -> None:
    with pytest.raises(ContractError):
        original_request(check_scope(*headers))


def test_step_1_judges_the_method_nginx_sent() -> None:
    scope, _ = original_request(check_scope(CONTRACT[0], (b"x-original-method", b"M-SEARCH"), CONTRACT[2]))
    assert scope["method"] == "M-SEARCH"


async def test_nginx_never_reads_a_body() -> None:
    assert await nginx_body(False)() == {"type": "http.request", "body": b"", "more_body": False}
    with pytest.raises(Refusal) as refused:
        await nginx_body(True)()
    assert refused.value is BODY_NOT_FORWARDED


async def test_envoy_s_body_marker() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    typed = (b"content-type", b"application/json")
    assert (await envoy_body([typed, (b"x-envoy-auth-partial-body", b"false")], receive)())["body"] == b"{}"
    assert (await envoy_body([], receive)())["body"] == b"{}"  # no body, no type: Envoy's empty one
    for headers, refusal in (([typed, (b"x-envoy-auth-partial-body", b"true")], PARTIAL),
                             ([typed], BODY_NOT_FORWARDED),
                             ([(b"x-envoy-auth-partial-body", b"false")] * 2, BODY_NOT_FORWARDED)):
        with pytest.raises(Refusal) as refused:
            await envoy_body(headers, receive)()
        assert refused.value is refusal


@pytest.mark.parametrize("status", [400, 401, 403, 413, 415, 429, 431, 503])
async def test_auth_request_gets_401_or_403_and_the_refusal_comes_back_whole(status: int) -> None:
    refusal = Refusal(status, "some_reason", "scope", "applicationId", "why it was refused")
    direct: list[dict[str, Any]] = []
    mapped: list[dict[str, Any]] = []

    async def keep(into: list[dict[str, Any]]) -> Any:
        async def send(message: dict[str, Any]) -> None:
            into.append(message)
        return send

    rate = [(b"ratelimit-limit", b"10"), (b"ratelimit-remaining", b"0"), (b"ratelimit-reset", b"3"),
            (b"retry-after", b"3")] if status == 429 else []
    await refuse(await keep(direct), refusal, "legacy", "rid-1", rate)
    await refuse(auth_request_status(await keep(mapped)), refusal, "legacy", "rid-1", rate)
    assert mapped[0]["status"] == (401 if status == 401 else 403)  # what auth_request passes on
    extra = dict(mapped[0]["headers"])
    assert extra[b"x-keyscope-status"] == str(status).encode()
    assert base64.urlsafe_b64decode(extra[b"x-keyscope-refusal"]).endswith(b"\r\n" + direct[1]["body"])
    # nginx's error_page sends both back to /refusal: the same answer as the gateway's, WWW-Authenticate aside
    replayed: list[dict[str, Any]] = []
    scope = check_scope((b"x-keyscope-status", extra[b"x-keyscope-status"]),
                        (b"x-keyscope-refusal", extra[b"x-keyscope-refusal"]), (b"x-request-id", b"rid-1"))
    await replay_refusal(scope, await keep(replayed))
    assert replayed[0]["status"] == status and replayed[1]["body"] == direct[1]["body"]
    assert sorted(replayed[0]["headers"]) == sorted(h for h in direct[0]["headers"] if h[0] != b"www-authenticate")


@pytest.mark.parametrize("headers", [(), ((b"x-keyscope-status", b"200"),), ((b"x-keyscope-status", b"abc"),),
                                     ((b"x-keyscope-status", b"400"), (b"x-keyscope-refusal", b"%%%"))])
async def test_a_replay_without_a_refusal_is_still_a_refusal(headers: tuple[tuple[bytes, bytes]]) -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await replay_refusal(check_scope(*headers), send)
    assert 400 <= sent[0]["status"] <= 599
