"""Each refusal rule of steps 1-5, end to end, with a request that would pass without the one defect.

Requests are raw bytes on a socket so that nothing normalises them on the way. Every refusal is checked
to have reached nothing upstream.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from gateway_helpers import APP_A, ENT_A, Echo, Gateway, Key, World, request_bytes

LOGS = f"/sms/1/logs?applicationId={APP_A}&entityId={ENT_A}"
SEND = "/sms/2/text/advanced"
GOOD_BODY = b'{"messages":[{"applicationId":"app-a","entityId":"ent-a","to":"41793026727"}]}'


def send_raw(gateway: Gateway, echo: Echo, data: bytes, method: str = "GET") -> tuple[int, bytes]:
    response = gateway.raw(data, method)
    return response.status, response.body


def post(key: Key | None, body: bytes, *headers: str, target: str = SEND) -> bytes:
    return request_bytes("POST", target, key, "Content-Type: application/json", *headers, body=body)


# the controls: each defect below is applied to one of these passing requests ----------------------------
def test_controls_pass(gateway: Gateway, echo: Echo, world: World) -> None:
    assert gateway.raw(request_bytes("GET", LOGS, world.pair)).status == 200
    assert gateway.raw(post(world.pair, GOOD_BODY), "POST").status == 200
    assert gateway.raw(request_bytes("GET", "/sms/1/logs", world.primary)).status == 200
    assert len(echo.log()) == 3


# step 1: canonical target, for every caller -----------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    [
        "//sms/1/logs",
        "/sms//1/logs",
        "/sms/1/./logs",
        "/sms/1/../1/logs",
        "/sms/1/%2e%2e/1/logs",
        "/sms/1/%2E./1/logs",
        "/sms/1/.%2e/1/logs",
        "/sms%2F1/logs",
        "/sms%2f1/logs",
        "/sms/1/logs%5C",
        "/sms/1/logs%00",
        "/sms\\1/logs",
        "/sms/1/logs;x=y",
        "/sms/1/logs%3Bx=y",
        "/sms/1/logs%zz",
        "/sms/1/%c0%af/logs",
        "/sms/1/%252F/logs",
        "/sms/1/%6Cogs",
        "http://gateway.test/sms/1/logs",
        "/sms/1/logs?applicationId=app-a#frag",
    ],
)
@pytest.mark.parametrize("who", ["primary", "pair", "nobody"])
def test_non_canonical_targets_are_refused_for_everyone(
    target: str, who: str, gateway: Gateway, echo: Echo, world: World
) -> None:
    key = None if who == "nobody" else getattr(world, who)
    status, body = send_raw(gateway, echo, request_bytes("GET", target, key))
    assert status == 400, body
    assert echo.log() == []


@pytest.mark.parametrize("who", ["primary", "pair", "nobody"])
def test_over_long_targets_are_414_for_everyone(who: str, gateway: Gateway, echo: Echo, world: World) -> None:
    # 400 before the limits (keyscope.core.limits): 414 says what to fix
    key = None if who == "nobody" else getattr(world, who)
    status, body = send_raw(gateway, echo, request_bytes("GET", "/sms/1/" + "a" * 9000, key))
    assert status == 414, body
    assert echo.log() == []


def test_non_canonical_management_paths_are_refused_too(gateway: Gateway, echo: Echo) -> None:
    data = request_bytes("GET", "/provisioning/1/../1/applications", None, "Authorization: Bearer x")
    assert gateway.raw(data).status == 400


@pytest.mark.parametrize(
    "header",
    [
        "X-HTTP-Method-Override: DELETE",
        "X-HTTP-Method: DELETE",
        "X-Method-Override: DELETE",
        "x-http-method-override: DELETE",
        "X_HTTP_Method_Override: DELETE",
        "X-Original-URL: /settings/2/api-keys",
        "X-Rewrite-URL: /settings/2/api-keys",
    ],
)
def test_method_and_path_override_headers_are_refused(
    header: str, gateway: Gateway, echo: Echo, world: World
) -> None:
    for key in (world.pair, world.primary):
        status, _ = send_raw(gateway, echo, request_bytes("GET", LOGS, key, header))
        assert status == 400
    assert echo.log() == []


def test_content_length_with_transfer_encoding_is_refused(gateway: Gateway, echo: Echo, world: World) -> None:
    chunked = f"{len(GOOD_BODY):x}\r\n".encode() + GOOD_BODY + b"\r\n0\r\n\r\n"
    head = (
        f"POST {SEND} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"
    ).encode() + world.pair.header() + b"\r\n"
    response = gateway.raw(head + chunked, "POST")
    assert response.status == 400
    assert echo.log() == []


# step 2: authentication -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Authorization: Bearer 003026bbc133714df1834b8638bb496e-8f4b3d9a-e931-478d-a994-28a725159ab9",
        "Authorization: App",
        "Authorization: App ",
        "Authorization: Basic dXNlcjpwYXNz",
        "Authorization: App 003026bbc133714df1834b8638bb496e-8f4b3d9a-e931-478d-a994-28a725159ab9",
    ],
)
def test_missing_malformed_or_unknown_credentials_are_401(
    authorization: str | None, gateway: Gateway, echo: Echo
) -> None:
    headers = [authorization] if authorization else []
    response = gateway.raw(request_bytes("GET", LOGS, None, *headers))
    assert response.status == 401
    assert response.json()["requestError"]["serviceException"]["messageId"] == "UNAUTHORIZED"
    assert echo.log() == []


def test_scheme_is_case_insensitive(gateway: Gateway, world: World) -> None:
    data = request_bytes("GET", LOGS, None, f"Authorization: aPP {world.pair.secret}")
    assert gateway.raw(data).status == 200


def test_two_authorization_headers_are_401_even_if_both_are_valid(
    gateway: Gateway, echo: Echo, world: World
) -> None:
    data = request_bytes("GET", LOGS, world.pair, f"Authorization: App {world.pair.secret}")
    assert gateway.raw(data).status == 401
    assert echo.log() == []


def test_a_key_in_the_query_string_is_not_accepted(gateway: Gateway, echo: Echo, world: World) -> None:
    data = request_bytes("GET", f"/anything?apikey={world.primary.secret}", None)
    assert gateway.raw(data).status == 401
    assert echo.log() == []


def test_disabled_not_yet_valid_expired_and_wrong_ip_keys_are_401(gateway: Gateway, echo: Echo) -> None:
    now = datetime.now(UTC)
    disabled = gateway.create_key("disabled")
    gateway.update_key(disabled, {"enabled": False})
    future = gateway.create_key("future", validFrom=(now + timedelta(days=1)).isoformat(),
                                validTo=(now + timedelta(days=2)).isoformat())
    wrong_ip = gateway.create_key("wrong-ip", allowedIPs=["10.0.0.0/8"])
    right_ip = gateway.create_key("right-ip", allowedIPs=["127.0.0.0/8"])
    for key in (disabled, future, wrong_ip):
        assert gateway.raw(request_bytes("GET", "/anything", key)).status == 401
    assert echo.log() == []
    assert gateway.raw(request_bytes("GET", "/anything", right_ip)).status == 200


def test_key_is_refused_once_it_expires(gateway: Gateway, echo: Echo) -> None:
    now = datetime.now(UTC)
    key = gateway.create_key("expiring", validFrom=now.isoformat(), validTo=(now + timedelta(seconds=2)).isoformat())
    assert gateway.raw(request_bytes("GET", "/anything", key)).status == 200  # cached from here on
    time.sleep(max(0.0, (now + timedelta(seconds=2.1) - datetime.now(UTC)).total_seconds()))
    assert gateway.raw(request_bytes("GET", "/anything", key)).status == 401


def test_x_forwarded_for_is_ignored_without_trusted_proxies(gateway: Gateway, echo: Echo) -> None:
    key = gateway.create_key("office-only", allowedIPs=["198.51.100.0/24"])
    data = request_bytes("GET", "/anything", key, "X-Forwarded-For: 198.51.100.7")
    assert gateway.raw(data).status == 401
    assert echo.log() == []


# step 4: allowlist and ids ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "why"),
    [
        (f"/sms/1/logs?applicationId={APP_A}&applicationId={APP_A}&entityId={ENT_A}", "repeated parameter"),
        (f"/sms/1/logs?applicationId={APP_A}&entityId={ENT_A};x=1", "raw semicolon"),
        (f"/sms/1/logs?applicationId={APP_A}&entityId={ENT_A}&ApplicationID={APP_A}", "repeated in another case"),
        (f"/sms/1/logs?applicationId[]={APP_A}&entityId={ENT_A}", "array-style name"),
    ],
)
def test_ambiguous_queries_are_400(target: str, why: str, gateway: Gateway, echo: Echo, world: World) -> None:
    assert gateway.raw(request_bytes("GET", target, world.pair)).status == 400, why
    assert echo.log() == []


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"messages":[{"applicationId":"app-a","applicationId":"app-a","entityId":"ent-a"}]}', "duplicate key"),
        (b'{"messages":[{"applicationId":"app-a","entityId":"ent-a","n":NaN}]}', "NaN"),
        (b'{"messages":[{"applicationId":"app-a","entityId":"ent-a","n":Infinity}]}', "Infinity"),
        (b'{"messages":[{"applicationId":"app-a","entityId":"ent-a","t":"\xff"}]}', "invalid UTF-8"),
        (b"\xef\xbb\xbf" + GOOD_BODY, "BOM"),
        (GOOD_BODY + b'{"applicationId":"app-b"}', "trailing data"),
        (b'{"messages":[{"applicationId":"app-a","entityId":"ent-a","x":' + b"[" * 70 + b"]" * 70 + b"}]}",
         "too deep"),
        (b'{"messages":[{"applicationId":7,"entityId":"ent-a"}]}', "id not a string"),
        (b'{"messages":[{"applicationId":["app-a"],"entityId":"ent-a"}]}', "id is an array"),
        (b'{"messages":[{"applicationId":"app-a","entityId":"ent-a"', "malformed JSON"),
    ],
)
def test_ambiguous_json_bodies_are_400(body: bytes, why: str, gateway: Gateway, echo: Echo, world: World) -> None:
    assert gateway.raw(post(world.pair, body), "POST").status == 400, why
    assert echo.log() == []


@pytest.mark.parametrize(
    "headers",
    [
        ("Content-Type: text/plain",),
        ("Content-Type: application/xml",),
        ("Content-Type: application/json", "Content-Encoding: gzip"),
        ("Content-Type: application/json; charset=utf-16",),
    ],
)
def test_bodies_that_cannot_be_inspected_are_415(
    headers: tuple[str, ...], gateway: Gateway, echo: Echo, world: World
) -> None:
    data = request_bytes("POST", SEND, world.pair, *headers, body=GOOD_BODY)
    assert gateway.raw(data, "POST").status == 415
    assert echo.log() == []


def test_body_over_the_limit_is_413_by_declared_length(gateway: Gateway, echo: Echo, world: World) -> None:
    head = (
        f"POST {SEND} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {2 * 1024 * 1024}\r\n"
    ).encode() + world.pair.header() + b"\r\n"
    response = gateway.raw(head + GOOD_BODY, "POST")  # far less than declared: refused before reading it
    assert response.status == 413
    assert echo.log() == []


def test_body_over_the_limit_is_413_when_chunked(gateway: Gateway, echo: Echo, world: World) -> None:
    chunk = b'{"messages":[{"applicationId":"app-a","entityId":"ent-a","text":"' + b"x" * (512 * 1024)
    rest = b"y" * (600 * 1024) + b'"}]}'
    body = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (chunk, rest)) + b"0\r\n\r\n"
    head = (
        f"POST {SEND} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n"
    ).encode() + world.pair.header() + b"\r\n"
    assert gateway.raw(head + body, "POST").status == 413
    assert echo.log() == []


def test_body_just_under_the_limit_is_inspected_and_forwarded(gateway: Gateway, echo: Echo, world: World) -> None:
    prefix = b'{"messages":[{"applicationId":"app-a","entityId":"ent-a","text":"'
    body = prefix + b"x" * (1024 * 1024 - len(prefix) - 4) + b'"}]}'
    assert len(body) == 1024 * 1024
    assert gateway.raw(post(world.pair, body), "POST").status == 200
    assert len(echo.log()) == 1


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/sms/1/logs", None),
        (f"/sms/1/logs?applicationId={APP_A}", None),  # the pair key also sets the entity
        (SEND, b'{"messages":[{"to":"41793026727"}]}'),
        (SEND, b'{"messages":[{"applicationId":"app-a","to":"1"}]}'),
        (SEND, b'{"messages":[]}'),
    ],
)
def test_missing_ids_without_an_action_are_403(
    target: str, body: bytes | None, gateway: Gateway, echo: Echo, world: World
) -> None:
    data = request_bytes("GET", target, world.pair) if body is None else post(world.pair, body, target=target)
    assert gateway.raw(data, "GET" if body is None else "POST").status == 403
    assert echo.log() == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"messages":[{"applicationId":"app-a","entityId":"ent-a"},{"applicationId":"app-b","entityId":"ent-a"}]}',
        b'{"messages":[{"applicationId":"app-a","entityId":"ent-a"}],"x":{"y":[{"applicationId":"app-b"}]}}',
        b'{"messages":[{"applicationId":"app-a","entityId":"ent-a"}],"deep":{"APPLICATIONID":"app-b"}}',
        b'{"messages":[{"applicationId":"app-a","entityId":"ent-b"}]}',
    ],
)
def test_one_place_out_of_scope_refuses_the_whole_request(
    body: bytes, gateway: Gateway, echo: Echo, world: World
) -> None:
    assert gateway.raw(post(world.pair, body), "POST").status == 403
    assert echo.log() == []


def test_ids_in_the_query_of_a_json_endpoint_are_checked(gateway: Gateway, echo: Echo, world: World) -> None:
    data = post(world.pair, GOOD_BODY, target=f"{SEND}?applicationId=app-b")
    assert gateway.raw(data, "POST").status == 403
    assert echo.log() == []


def test_ids_in_a_form_body_are_checked(gateway: Gateway, echo: Echo, world: World) -> None:
    form = b"to=1&applicationId=app-b"
    data = request_bytes("POST", "/ccaas/1/conversations", world.pair,
                         "Content-Type: application/x-www-form-urlencoded", body=form)
    assert gateway.raw(data, "POST").status == 403
    assert echo.log() == []


# step 5: existence ----------------------------------------------------------------------------------------
def test_unknown_application_is_400_naming_it_for_primary_keys(gateway: Gateway, echo: Echo, world: World) -> None:
    response = gateway.raw(request_bytes("GET", "/sms/1/logs?applicationId=no-such-app", world.primary))
    assert response.status == 400
    assert "no-such-app" in response.body.decode()
    assert echo.log() == []


def test_unknown_entity_is_400_naming_it_for_keys_that_leave_entities_open(
    gateway: Gateway, echo: Echo, world: World
) -> None:
    body = b'{"messages":[{"applicationId":"app-a","entityId":"ghost-entity"}]}'
    response = gateway.raw(post(world.app, body), "POST")
    assert response.status == 400
    assert "ghost-entity" in response.body.decode()
    assert echo.log() == []


def test_refusals_use_the_endpoints_error_family(gateway: Gateway, world: World) -> None:
    # /sms/3/messages declares api-error; /sms/1/logs legacy; unlisted paths legacy
    api_error = gateway.raw(post(world.pair, b'{"messages":[{"applicationId":"app-b","entityId":"ent-a"}]}',
                                 target="/sms/3/messages"), "POST")
    assert api_error.status == 403 and api_error.json()["errorCode"] == "E403"
    unauthorized = gateway.raw(post(None, GOOD_BODY, target="/sms/3/messages"), "POST")
    assert unauthorized.status == 401 and unauthorized.json()["errorCode"] == "E401"
    bad = gateway.raw(post(world.pair, b'{"messages":[{"applicationId":1}]}', target="/sms/3/messages"), "POST")
    assert bad.status == 400 and bad.json()["violations"]
    legacy = gateway.raw(request_bytes("GET", "/sms/1/logs?applicationId=app-a&applicationId=x", world.pair))
    assert legacy.status == 400 and legacy.json()["requestError"]["serviceException"]["validationErrors"]
