"""FILL and FORCE through the running gateway, at every kind of declared location, and multipart bodies.

What the backend received (the echo's log) is compared with what the key's entry says it must see, and the
forwarded Content-Length with the forwarded body.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from gateway_helpers import APP_A, APP_B, ENT_A, ENT_B, Echo, Gateway, World

OWN = {"applicationId": APP_A, "entityId": ENT_A}
OTHER = {"applicationId": APP_B, "entityId": ENT_B}


def forwarded(echo: Echo) -> dict[str, Any]:
    [record] = echo.log()
    lengths = [value for name, value in record["headers"] if name.lower() == "content-length"]
    assert lengths == [str(len(record["body"].encode()))]
    return record


# (endpoint, document without ids, where the ids go: a function from ids to the document with them)
def _top(ids: dict[str, str]) -> dict[str, Any]:
    return {"templateName": "t", **ids}


def _platform(ids: dict[str, str]) -> dict[str, Any]:
    return {"name": "bulk", "platform": dict(ids)}


def _options_platform(ids: dict[str, str]) -> dict[str, Any]:
    return {"phoneNumbers": ["41793026727"], "options": {"platform": dict(ids)}}


def _messages(ids: dict[str, str]) -> dict[str, Any]:
    return {"messages": [{"to": "1", **ids}, {"to": "2", **ids}]}


def _messages_options_platform(ids: dict[str, str]) -> dict[str, Any]:
    return {"messages": [{"to": "1", "options": {"platform": dict(ids)}}, {"to": "2", "options": {"platform": dict(ids)}}]}


LOCATIONS = [
    ("/ott/rcs/1/message/template", _top),
    ("/calls/1/bulks", _platform),
    ("/rcs/2/capability-check/query", _options_platform),
    ("/mms/1/advanced", _messages),
    ("/apple-mfb/1/messages", _messages_options_platform),
]


@pytest.mark.parametrize(("path", "shape"), LOCATIONS, ids=[p for p, _ in LOCATIONS])
def test_fill_inserts_missing_ids_at_the_declared_location(
    path: str, shape: Any, gateway: Gateway, echo: Echo, world: World
) -> None:
    response = gateway.request("POST", path, world.fill, json=shape({}))
    assert response.status_code == 200, response.text
    assert json.loads(forwarded(echo)["body"]) == shape(OWN)


@pytest.mark.parametrize(("path", "shape"), LOCATIONS, ids=[p for p, _ in LOCATIONS])
def test_fill_keeps_ids_that_are_in_scope_and_refuses_others(
    path: str, shape: Any, gateway: Gateway, echo: Echo, world: World
) -> None:
    assert gateway.request("POST", path, world.fill, json=shape(OWN)).status_code == 200
    assert json.loads(forwarded(echo)["body"]) == shape(OWN)
    echo.clear()
    assert gateway.request("POST", path, world.fill, json=shape(OTHER)).status_code == 403
    assert echo.log() == []


@pytest.mark.parametrize(("path", "shape"), LOCATIONS, ids=[p for p, _ in LOCATIONS])
def test_force_overwrites_ids_at_the_declared_location(
    path: str, shape: Any, gateway: Gateway, echo: Echo, world: World
) -> None:
    for sent in ({}, OTHER, {"applicationId": APP_B}):
        echo.clear()
        response = gateway.request("POST", path, world.force, json=shape(sent))
        assert response.status_code == 200, response.text
        assert json.loads(forwarded(echo)["body"]) == shape(OWN)


def test_force_still_checks_ids_outside_the_declared_location(gateway: Gateway, echo: Echo, world: World) -> None:
    doc = {"messages": [{"to": "1", **OTHER}], "extra": {"applicationId": APP_B}}
    assert gateway.request("POST", "/mms/1/advanced", world.force, json=doc).status_code == 403
    assert echo.log() == []
    doc["extra"] = {"applicationId": APP_A}
    assert gateway.request("POST", "/mms/1/advanced", world.force, json=doc).status_code == 200


def test_fill_and_force_on_the_query_string(gateway: Gateway, echo: Echo, world: World) -> None:
    assert gateway.request("GET", "/sms/1/logs?limit=5", world.fill).status_code == 200
    query = forwarded_query(echo)
    assert sorted(query.split("&")) == sorted(["limit=5", f"applicationId={APP_A}", f"entityId={ENT_A}"])
    echo.clear()
    assert gateway.request("GET", f"/sms/1/logs?applicationId={APP_B}&limit=5", world.force).status_code == 200
    query = forwarded_query(echo)
    assert f"applicationId={APP_B}" not in query
    assert sorted(query.split("&")) == sorted(["limit=5", f"applicationId={APP_A}", f"entityId={ENT_A}"])


def forwarded_query(echo: Echo) -> str:
    [record] = echo.log()
    return record["query"]


def test_metrics_filter_is_checked_at_both_declared_locations(gateway: Gateway, echo: Echo, world: World) -> None:
    good = {"request": {"filterBy": {**OWN, "platforms": [dict(OWN)]}}}
    assert gateway.request("POST", "/metrics/1/query-aggregate-data", world.pair, json=good).status_code == 200
    bad = {"request": {"filterBy": {**OWN, "platforms": [dict(OWN), dict(OTHER)]}}}
    response = gateway.request("POST", "/metrics/1/query-aggregate-data", world.pair, json=bad)
    assert response.status_code == 403
    assert response.json()["errorCode"] == "E403"
    assert len(echo.log()) == 1


def test_unchanged_body_is_forwarded_byte_for_byte(gateway: Gateway, echo: Echo, world: World) -> None:
    body = b'{ "messages" : [ {"to":"1", "applicationId":"app-a","entityId":"ent-a", "n": 1.50e2} ] }'
    response = gateway.request("POST", "/mms/1/advanced", world.pair, content=body,
                               headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert forwarded(echo)["body"] == body.decode()


# multipart and urlencoded forms (POST /email/3/send declares `form`) -----------------------------------
def multipart(fields: list[tuple[str, str]], files: list[tuple[str, str, bytes]] = ()) -> tuple[bytes, str]:
    boundary = "----keyscope-test-boundary"
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, content in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_with_own_ids_is_forwarded_unchanged(gateway: Gateway, echo: Echo, world: World) -> None:
    body, content_type = multipart(
        [("from", "a@example.com"), ("applicationId", APP_A), ("entityId", ENT_A)],
        [("attachment", "a.bin", bytes(range(256)))],
    )
    response = gateway.request("POST", "/email/3/send", world.pair, content=body,
                               headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    [record] = echo.log()
    import base64

    received = base64.b64decode(record["bodyBase64"]) if record["body"] is None else record["body"].encode()
    assert received == body


def test_multipart_with_another_applications_id_is_refused(gateway: Gateway, echo: Echo, world: World) -> None:
    body, content_type = multipart([("from", "a@example.com"), ("applicationId", APP_B), ("entityId", ENT_A)])
    response = gateway.request("POST", "/email/3/send", world.pair, content=body,
                               headers={"Content-Type": content_type})
    assert response.status_code == 403
    assert echo.log() == []


def test_multipart_repeating_an_id_is_refused(gateway: Gateway, echo: Echo, world: World) -> None:
    body, content_type = multipart([("applicationId", APP_A), ("applicationId", APP_A), ("entityId", ENT_A)])
    response = gateway.request("POST", "/email/3/send", world.pair, content=body,
                               headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert echo.log() == []


def test_multipart_fill_adds_the_ids_as_fields(gateway: Gateway, echo: Echo, world: World) -> None:
    body, content_type = multipart([("from", "a@example.com"), ("subject", "hi")])
    response = gateway.request("POST", "/email/3/send", world.fill, content=body,
                               headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    record = forwarded(echo)
    assert 'name="applicationId"\r\n\r\napp-a\r\n' in record["body"]
    assert 'name="entityId"\r\n\r\nent-a\r\n' in record["body"]
    assert 'name="subject"\r\n\r\nhi\r\n' in record["body"]


def test_urlencoded_form_force(gateway: Gateway, echo: Echo, world: World) -> None:
    response = gateway.request("POST", "/email/3/send", world.force,
                               data={"from": "a@example.com", "applicationId": APP_B})
    assert response.status_code == 200, response.text
    fields = dict(pair.split("=") for pair in forwarded(echo)["body"].split("&"))
    assert (fields["applicationId"], fields["entityId"], fields["from"]) == (APP_A, ENT_A, "a%40example.com")
