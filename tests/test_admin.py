"""The management API over HTTP, against a real SQLite file: status codes, bodies, paging, cascades, callers."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from keyscope.control.admin import MAX_BODY, AdminApp, call, create_app
from keyscope.decide.auth import KeyAuthenticator
from keyscope.store import Store

pytestmark = pytest.mark.anyio

TOKEN = "admin-token-used-by-these-tests"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
APPS = "/provisioning/1/applications"
ENTITIES = "/provisioning/1/entities"
ASSOCIATIONS = "/provisioning/1/associations"
KEYS = "/settings/2/api-keys"


@dataclass
class Env:
    store: Store
    app: AdminApp
    client: httpx.AsyncClient
    changes: list[int] = field(default_factory=list)

    def as_client(self, address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://keyscope.test")

    async def key(self, **doc: Any) -> tuple[str, str]:
        """Creates a key as the admin; returns (id, secret)."""
        response = await self.client.post(KEYS, json={"name": "k", **doc})
        assert response.status_code == 200, response.text
        return response.json()["id"], response.json()["apiKeySecret"]


@pytest.fixture
async def env(store: Store) -> AsyncIterator[Env]:
    changes: list[int] = []
    app = create_app(
        store, admin_token=TOKEN, authenticator=KeyAuthenticator(store), on_change=lambda: changes.append(1)
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keyscope.test", headers=ADMIN) as client:
        yield Env(store, app, client, changes)


def legacy_errors(response: httpx.Response) -> dict[str, list[str]]:
    return response.json()["requestError"]["serviceException"].get("validationErrors", {})


def violations(response: httpx.Response) -> list[str]:
    return [v["property"] for v in response.json()["violations"]]


def app_key(secret: str) -> dict[str, str]:
    return {"Authorization": f"App {secret}"}


# applications and entities -----------------------------------------------------------------------

KINDS = [(APPS, "applicationId", "applicationName"), (ENTITIES, "entityId", "entityName")]


async def test_default_application_exists_and_cannot_be_deleted(env: Env) -> None:
    listed = await env.client.get(APPS)
    assert listed.json()["results"] == [{"applicationId": "default", "applicationName": "Default"}]
    refused = await env.client.delete(f"{APPS}/default")
    assert refused.status_code == 400
    assert "applicationId" in legacy_errors(refused)
    assert (await env.client.get(f"{APPS}/default")).status_code == 200


@pytest.mark.parametrize(("base", "id_field", "name_field"), KINDS)
async def test_create_get_rename_delete(env: Env, base: str, id_field: str, name_field: str) -> None:
    created = await env.client.post(base, json={id_field: "mkt-1", name_field: "Marketing"})
    assert (created.status_code, created.content) == (201, b"")
    assert (await env.client.get(f"{base}/mkt-1")).json() == {id_field: "mkt-1", name_field: "Marketing"}
    duplicate = await env.client.post(base, json={id_field: "mkt-1", name_field: "Other"})
    assert duplicate.status_code == 409
    assert duplicate.json()["requestError"]["serviceException"]["messageId"] == "CONFLICT"
    renamed = await env.client.put(f"{base}/mkt-1", json={name_field: "Marketing EU"})
    assert (renamed.status_code, renamed.content) == (204, b"")
    assert (await env.client.get(f"{base}/mkt-1")).json()[name_field] == "Marketing EU"
    same_id = await env.client.put(f"{base}/mkt-1", json={id_field: "mkt-1", name_field: "M"})
    assert same_id.status_code == 204
    assert (await env.client.delete(f"{base}/mkt-1")).status_code == 200
    assert (await env.client.get(f"{base}/mkt-1")).status_code == 404
    assert (await env.client.delete(f"{base}/mkt-1")).status_code == 404
    assert (await env.client.put(f"{base}/mkt-1", json={name_field: "x"})).status_code == 404


@pytest.mark.parametrize(("base", "id_field", "name_field"), KINDS)
async def test_ids_never_change(env: Env, base: str, id_field: str, name_field: str) -> None:
    await env.client.post(base, json={id_field: "a1", name_field: "A"})
    refused = await env.client.put(f"{base}/a1", json={id_field: "a2", name_field: "B"})
    assert refused.status_code == 400
    assert id_field in legacy_errors(refused)
    assert (await env.client.get(f"{base}/a1")).json()[name_field] == "A"
    assert (await env.client.get(f"{base}/a2")).status_code == 404


@pytest.mark.parametrize(
    ("doc", "field_name"),
    [
        ({"applicationId": "has space"}, "applicationId"),
        ({"applicationId": "a" * 256}, "applicationId"),
        ({"applicationId": ""}, "applicationId"),
        ({"applicationId": "é"}, "applicationId"),
        ({"applicationId": 7}, "applicationId"),
        ({"applicationName": "no id"}, "applicationId"),
        ({"applicationId": "ok", "applicationName": "bell\x07"}, "applicationName"),
        ({"applicationId": "ok", "applicationName": "n" * 256}, "applicationName"),
        ({"applicationId": "ok", "applicationName": ["list"]}, "applicationName"),
        ({"applicationId": "ok", "colour": "red"}, "colour"),
    ],
)
async def test_bad_application_documents_name_the_field(env: Env, doc: dict[str, Any], field_name: str) -> None:
    refused = await env.client.post(APPS, json=doc)
    assert refused.status_code == 400
    assert field_name in legacy_errors(refused)
    assert (await env.client.get(APPS)).json()["paging"]["totalResults"] == 1


async def test_ids_use_the_whole_unreserved_alphabet_and_are_case_sensitive(env: Env) -> None:
    for ident in ("A.b_c~d-9", "a" * 255, "App", "app"):
        assert (await env.client.post(APPS, json={"applicationId": ident})).status_code == 201
    assert (await env.client.get(f"{APPS}/App")).json()["applicationId"] == "App"
    assert (await env.client.get(f"{APPS}/app")).json()["applicationId"] == "app"


@pytest.mark.parametrize(
    ("raw", "headers", "status"),
    [
        (b'{"applicationId": "x"}', {"Content-Type": "text/plain"}, 415),
        (b'{"applicationId": "x"}', {}, 415),
        (b'{"applicationId": ', {"Content-Type": "application/json"}, 400),
        (b'{"applicationId": "x", "applicationId": "y"}', {"Content-Type": "application/json"}, 400),
        (b'{"applicationId": "x", "applicationName": NaN}', {"Content-Type": "application/json"}, 400),
        (b'\xef\xbb\xbf{"applicationId": "x"}', {"Content-Type": "application/json"}, 400),
        (b'{"applicationId": "\xff"}', {"Content-Type": "application/json"}, 400),
        (b'["applicationId"]', {"Content-Type": "application/json"}, 400),
        (b"[" * 100_00 + b"]" * 100_00, {"Content-Type": "application/json"}, 400),
        (b'{"applicationId": "x", "applicationName": "\\ud800"}', {"Content-Type": "application/json"}, 400),
        (b'{"applicationId": "x", "\\udc00": 1}', {"Content-Type": "application/json"}, 400),
        (b'{"applicationId": "x", "applicationName": ' + b"1" * 4301 + b"}", {"Content-Type": "application/json"}, 400),
    ],
)
async def test_bad_bodies_are_refused_and_nothing_is_written(
    env: Env, raw: bytes, headers: dict[str, str], status: int
) -> None:
    refused = await env.client.post(APPS, content=raw, headers=headers)
    assert refused.status_code == status
    if status == 400:
        assert legacy_errors(refused)
    assert (await env.client.get(APPS)).json()["paging"]["totalResults"] == 1
    assert env.changes == []


@pytest.mark.parametrize(
    ("path", "raw", "field_name"),
    [
        (APPS, b'{"applicationId": "x", "applicationName": "\\ud800"}', "applicationName"),
        (ENTITIES, b'{"entityId": "x", "entityName": "a\\udfffb"}', "entityName"),
        (ASSOCIATIONS, b'{"resourceType": "NUMBER", "channel": "SMS", "applicationId": "default",'
                       b' "resourceId": "\\ud83d"}', "resourceId"),
        (KEYS, b'{"name": "k", "platform": [{"applicationId": "default"}], "allowedIPs": ["\\ud800"]}',
         "allowedIPs[0]"),
        (KEYS, b'{"name": "\\ud800", "platform": []}', "name"),
        (APPS, b'{"applicationId": "x", "applicationName": ' + b"9" * 5000 + b"}", "body"),
        (KEYS, b'{"name": "k", "platform": [], "validTo": -' + b"1" * 4301 + b"}", "body"),
    ],
)
async def test_lone_surrogates_and_endless_integers_are_400_in_the_family(
    env: Env, path: str, raw: bytes, field_name: str
) -> None:
    """A lone surrogate (`\\ud800` decodes to one) is no text: the store cannot hold it, nor an answer name it.
    An integer past Python's 4300 digits makes its decoder raise ValueError. Both are the client's malformed
    body: 400 naming the field (or `body`), never a 500, and nothing written."""
    refused = await env.client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert refused.status_code == 400, refused.text
    if path == KEYS:
        assert violations(refused) == [field_name]
    else:
        assert list(legacy_errors(refused)) == [field_name]
    assert (await env.client.get(APPS)).json()["paging"]["totalResults"] == 1
    assert (await env.client.get(KEYS)).json()["paging"]["totalCount"] == 0
    assert env.changes == []


async def test_body_over_64_kib_is_413_even_without_content_length(env: Env) -> None:
    doc = json.dumps({"applicationId": "big", "applicationName": "x" * MAX_BODY}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(doc), 4096):
            yield doc[start : start + 4096]

    streamed = await env.client.post(APPS, content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    declared = await env.client.post(APPS, content=doc, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413
    assert (await env.client.get(f"{APPS}/big")).status_code == 404


async def test_content_length_that_understates_the_body_is_still_caught(env: Env) -> None:
    payload = json.dumps({"applicationId": "liar", "applicationName": "x" * MAX_BODY}).encode()
    scope = {
        "type": "http", "method": "POST", "path": APPS, "raw_path": APPS.encode(), "query_string": b"",
        "headers": [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-type", b"application/json"),
                    (b"content-length", b"10")],
        "client": ("127.0.0.1", 1), "server": None, "scheme": "http", "root_path": "", "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }  # fmt: skip
    parts = [payload[:30000], payload[30000:]]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": parts.pop(0), "more_body": bool(parts)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await env.app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert (await env.client.get(f"{APPS}/liar")).status_code == 404


async def test_paging_of_applications(env: Env) -> None:
    for i in range(24):
        await env.client.post(APPS, json={"applicationId": f"app-{i:02d}"})
    first = (await env.client.get(APPS)).json()
    assert first["paging"] == {"page": 0, "size": 20, "totalPages": 2, "totalResults": 25}
    assert len(first["results"]) == 20
    second = (await env.client.get(APPS, params={"page": 1, "size": 20})).json()
    everything = sorted([f"app-{i:02d}" for i in range(24)] + ["default"])
    assert [r["applicationId"] for r in first["results"]] == everything[:20]
    assert [r["applicationId"] for r in second["results"]] == everything[20:]
    beyond = (await env.client.get(APPS, params={"page": 9, "size": 1000})).json()
    assert beyond["results"] == [] and beyond["paging"]["totalResults"] == 25


@pytest.mark.parametrize(
    ("path", "params", "field_name"),
    [
        (APPS, {"size": "0"}, "size"),
        (APPS, {"size": "1001"}, "size"),
        (APPS, {"page": "-1"}, "page"),
        (APPS, {"page": "one"}, "page"),
        (ENTITIES, {"size": "2.5"}, "size"),
        (ASSOCIATIONS, {"size": "0"}, "size"),
        (ASSOCIATIONS, {"channel": "FAX"}, "channel"),
        (APPS, {"sort": "name"}, "sort"),
    ],
)
async def test_out_of_range_paging_names_the_parameter(
    env: Env, path: str, params: dict[str, str], field_name: str
) -> None:
    refused = await env.client.get(path, params=params)
    assert refused.status_code == 400
    assert field_name in legacy_errors(refused)


async def test_repeated_query_parameter_is_refused(env: Env) -> None:
    refused = await env.client.get(f"{APPS}?size=1&size=2")
    assert refused.status_code == 400
    assert "size" in legacy_errors(refused)


# associations ------------------------------------------------------------------------------------

ASSOCIATION = {
    "resourceType": "NUMBER", "channel": "SMS", "applicationId": "mkt", "entityId": "cust-42",
    "resourceId": "8F0792F86035A9F4290821F1EE6BC06A",
}  # fmt: skip


async def test_associations_lifecycle(env: Env) -> None:
    await env.client.post(APPS, json={"applicationId": "mkt"})
    await env.client.post(ENTITIES, json={"entityId": "cust-42"})
    assert (await env.client.post(ASSOCIATIONS, json=ASSOCIATION)).status_code == 201
    moved = {**ASSOCIATION, "applicationId": "default", "entityId": None}
    assert (await env.client.post(ASSOCIATIONS, json=moved)).status_code == 409
    listed = (await env.client.get(ASSOCIATIONS, params={"applicationId": "mkt"})).json()
    assert listed == {"results": [ASSOCIATION], "paging": {"page": 0, "size": 20, "totalPages": 1, "totalResults": 1}}
    assert (await env.client.get(ASSOCIATIONS, params={"applicationId": "default"})).json()["results"] == []
    single = await env.client.get(f"{ASSOCIATIONS}/single", params=ASSOCIATION)
    assert single.json() == ASSOCIATION
    other = await env.client.get(f"{ASSOCIATIONS}/single", params={**ASSOCIATION, "resourceId": "nope"})
    assert other.status_code == 404
    incomplete = await env.client.get(f"{ASSOCIATIONS}/single", params={"resourceType": "NUMBER"})
    assert incomplete.status_code == 400 and "channel" in legacy_errors(incomplete)
    wrong = await env.client.request("DELETE", ASSOCIATIONS, json={**ASSOCIATION, "entityId": None})
    assert wrong.status_code == 404
    deleted = await env.client.request("DELETE", ASSOCIATIONS, json=ASSOCIATION)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert (await env.client.request("DELETE", ASSOCIATIONS, json=ASSOCIATION)).status_code == 404


@pytest.mark.parametrize(
    ("change", "status", "field_name"),
    [
        ({"applicationId": "ghost"}, 404, "applicationId"),
        ({"entityId": "ghost"}, 404, "entityId"),
        ({"resourceType": "DOMAIN"}, 400, "resourceType"),
        ({"resourceType": "PHONE"}, 400, "resourceType"),
        ({"channel": None}, 400, "channel"),
        ({"resourceId": ""}, 400, "resourceId"),
        ({"extra": 1}, 400, "extra"),
    ],
)
async def test_bad_associations(env: Env, change: dict[str, Any], status: int, field_name: str) -> None:
    await env.client.post(APPS, json={"applicationId": "mkt"})
    await env.client.post(ENTITIES, json={"entityId": "cust-42"})
    refused = await env.client.post(ASSOCIATIONS, json={**ASSOCIATION, **change})
    assert refused.status_code == status
    assert field_name in legacy_errors(refused)
    assert (await env.client.get(ASSOCIATIONS)).json()["results"] == []


async def test_domain_is_fine_on_email(env: Env) -> None:
    doc = {"resourceType": "DOMAIN", "channel": "EMAIL", "applicationId": "default", "resourceId": "example.com"}
    assert (await env.client.post(ASSOCIATIONS, json=doc)).status_code == 201
    assert (await env.client.get(ASSOCIATIONS)).json()["results"] == [{**doc, "entityId": None}]


# keys --------------------------------------------------------------------------------------------


async def test_create_key_defaults_and_secret_shown_once(env: Env) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    created = await env.client.post(KEYS, json={"name": "prod-sender"})
    assert created.status_code == 200
    doc = created.json()
    secret = doc.pop("apiKeySecret")
    assert len(secret) == 69 and doc["prefix"] == secret[:8]
    assert doc["enabled"] is True and doc["platform"] == [] and doc["allowedIPs"] == []
    valid_from = datetime.fromisoformat(doc["validFrom"])
    assert doc["validFrom"].endswith("+00:00") and valid_from >= before
    assert datetime.fromisoformat(doc["validTo"]) - valid_from in (timedelta(days=365), timedelta(days=366))
    shown = await env.client.get(f"{KEYS}/{doc['id']}")
    assert shown.json() == doc
    listed = await env.client.get(KEYS)
    assert listed.json()["apiKeys"] == [doc]
    for response in (shown, listed):
        assert "apiKeySecret" not in response.text and secret[8:] not in response.text


async def test_key_documents_are_normalised(env: Env) -> None:
    await env.client.post(APPS, json={"applicationId": "mkt"})
    await env.client.post(ENTITIES, json={"entityId": "cust-7"})
    doc = {
        "name": "n",
        "allowedIPs": ["203.0.113.10", "198.51.100.77/24", "2001:DB8::1", "203.0.113.10"],
        "validFrom": "2025-01-01T00:00:00",
        "validTo": "2030-06-01T02:00:00+02:00",
        "platform": [{"applicationId": "mkt", "entityId": "cust-7", "action": "FILL"}, {"entityId": "cust-7"}],
    }
    created = (await env.client.post(KEYS, json=doc)).json()
    assert created["allowedIPs"] == ["203.0.113.10", "198.51.100.0/24", "2001:db8::1"]
    assert created["validFrom"] == "2025-01-01T00:00:00+00:00"
    assert created["validTo"] == "2030-06-01T00:00:00+00:00"
    entries = [{k: v for k, v in entry.items() if k != "key"} for entry in created["platform"]]
    assert entries == [
        {"applicationId": "mkt", "entityId": "cust-7", "action": "FILL"},
        {"applicationId": None, "entityId": "cust-7", "action": None},
    ]
    assert all(entry["key"] for entry in created["platform"])
    zulu = await env.client.put(f"{KEYS}/{created['id']}", json={"validTo": "2031-01-01T00:00:00Z"})
    assert zulu.json()["validTo"] == "2031-01-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("doc", "field_name"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": 5}, "name"),
        ({"name": "n", "allowedIPs": ["10.0.0.300"]}, "allowedIPs[0]"),
        ({"name": "n", "allowedIPs": "10.0.0.1"}, "allowedIPs"),
        ({"name": "n", "validFrom": "yesterday"}, "validFrom"),
        ({"name": "n", "validFrom": "2030-01-01T00:00:00Z", "validTo": "2029-01-01T00:00:00Z"}, "validTo"),
        ({"name": "n", "enabled": "yes"}, "enabled"),
        ({"name": "n", "platform": [{}]}, "platform[0]"),
        ({"name": "n", "platform": [{"applicationId": "default", "action": "PUSH"}]}, "platform[0].action"),
        (
            {
                "name": "n",
                "platform": [{"applicationId": "default", "action": "FILL"}, {"entityId": "e", "action": "FORCE"}],
            },
            "platform[1].action",
        ),
        ({"name": "n", "platform": [{"applicationId": "default", "scope": "x"}]}, "platform[0].scope"),
        ({"name": "n", "platform": [{"applicationId": "ghost"}]}, "platform[0].applicationId"),
        ({"name": "n", "platform": [{"applicationId": "default", "entityId": "ghost"}]}, "platform[0].entityId"),
        ({"name": "n", "permissions": ["PUBLIC_API"]}, "permissions"),
    ],
)
async def test_bad_key_documents_name_the_field(env: Env, doc: dict[str, Any], field_name: str) -> None:
    refused = await env.client.post(KEYS, json=doc)
    assert refused.status_code == 400
    assert refused.json()["errorCode"] == "E400"
    assert violations(refused) == [field_name]
    assert (await env.client.get(KEYS)).json()["paging"]["totalCount"] == 0


async def test_revoke_relink_and_make_primary(env: Env) -> None:
    await env.client.post(APPS, json={"applicationId": "mkt"})
    key_id, secret = await env.key()
    as_key = app_key(secret)
    assert (await env.client.get(APPS, headers=as_key)).status_code == 200
    linked = await env.client.put(f"{KEYS}/{key_id}", json={"platform": [{"applicationId": "mkt"}]})
    assert linked.status_code == 200 and linked.json()["platform"][0]["applicationId"] == "mkt"
    assert (await env.client.get(APPS, headers=as_key)).status_code == 403
    primary = await env.client.put(f"{KEYS}/{key_id}", json={"platform": []})
    assert primary.json()["platform"] == []
    assert (await env.client.get(APPS, headers=as_key)).status_code == 200
    revoked = await env.client.put(f"{KEYS}/{key_id}", json={"enabled": False})
    assert revoked.status_code == 200 and revoked.json()["enabled"] is False
    assert (await env.client.get(APPS, headers=as_key)).status_code == 401
    assert (await env.client.put(f"{KEYS}/{key_id}", json={"validTo": "2000-01-01T00:00:00Z"})).status_code == 400
    assert (await env.client.put(f"{KEYS}/nope", json={"enabled": False})).status_code == 404
    deleted = await env.client.delete(f"{KEYS}/{key_id}")
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert (await env.client.get(f"{KEYS}/{key_id}")).status_code == 404
    assert (await env.client.delete(f"{KEYS}/{key_id}")).status_code == 404


async def test_platform_read_back_can_be_sent_again(env: Env) -> None:
    """`key` is server-assigned: accepted and ignored in input, so a GET document round-trips through PUT."""
    await env.client.post(ENTITIES, json={"entityId": "e1"})
    key_id, _ = await env.key(platform=[{"applicationId": "default", "entityId": "e1", "action": "FORCE"}])
    shown = (await env.client.get(f"{KEYS}/{key_id}")).json()
    again = await env.client.put(f"{KEYS}/{key_id}", json={"platform": shown["platform"]})
    assert again.status_code == 200
    assert [{**e, "key": None} for e in again.json()["platform"]] == [{**e, "key": None} for e in shown["platform"]]
    refused = await env.client.put(f"{KEYS}/{key_id}", json={"platform": [{**shown["platform"][0], "key": 7}]})
    assert refused.status_code == 400 and violations(refused) == ["platform[0].key"]


async def test_key_paging(env: Env) -> None:
    ids = sorted([(await env.key(name=f"key-{i}"))[0] for i in range(5)])
    page = (await env.client.get(KEYS, params={"page": 1, "size": 2})).json()
    assert [k["id"] for k in page["apiKeys"]] == ids[2:4]
    assert page["paging"] == {
        "page": 1, "pageSize": 2, "orderDirection": "ASC", "orderBy": "id", "totalCount": 5, "totalPages": 3,
    }  # fmt: skip
    await env.client.put(f"{KEYS}/{ids[0]}", json={"enabled": False})
    disabled = (await env.client.get(KEYS, params={"enabled": "false"})).json()
    assert [k["id"] for k in disabled["apiKeys"]] == [ids[0]]
    for params, name in (({"size": "101"}, "size"), ({"size": "0"}, "size"), ({"enabled": "maybe"}, "enabled")):
        refused = await env.client.get(KEYS, params=params)
        assert refused.status_code == 400 and violations(refused) == [name]


# cascades ----------------------------------------------------------------------------------------


async def test_deleting_an_application_cascades(env: Env) -> None:
    for app_id in ("mkt", "ops"):
        await env.client.post(APPS, json={"applicationId": app_id})
    await env.client.post(ENTITIES, json={"entityId": "cust"})
    await env.client.post(ASSOCIATIONS, json={**ASSOCIATION, "applicationId": "mkt", "entityId": "cust"})
    only_mkt, only_mkt_secret = await env.key(platform=[{"applicationId": "mkt", "entityId": "cust"}])
    both, _ = await env.key(platform=[{"applicationId": "mkt"}, {"applicationId": "ops", "action": "FORCE"}])
    deleted = await env.client.delete(f"{APPS}/mkt")
    assert deleted.status_code == 200
    assert deleted.json() == {"associationsRemoved": 1, "entriesRemoved": 2, "keysDisabled": [only_mkt]}
    assert (await env.client.get(ASSOCIATIONS)).json()["results"] == []
    emptied = (await env.client.get(f"{KEYS}/{only_mkt}")).json()
    assert emptied["enabled"] is False and emptied["platform"] == []
    narrowed = (await env.client.get(f"{KEYS}/{both}")).json()
    assert narrowed["enabled"] is True and [e["applicationId"] for e in narrowed["platform"]] == ["ops"]
    # the emptied key is not primary: it cannot call provisioning, and enabling it alone is refused
    assert (await env.client.get(APPS, headers=app_key(only_mkt_secret))).status_code == 401
    refused = await env.client.put(f"{KEYS}/{only_mkt}", json={"enabled": True})
    assert refused.status_code == 400 and violations(refused) == ["platform"]
    assert (await env.client.get(f"{KEYS}/{only_mkt}")).json()["enabled"] is False
    made_primary = await env.client.put(f"{KEYS}/{only_mkt}", json={"enabled": True, "platform": []})
    assert made_primary.json()["enabled"] is True
    assert (await env.client.get(APPS, headers=app_key(only_mkt_secret))).status_code == 200


async def test_pair_rule_on_entity_delete(env: Env) -> None:
    await env.client.post(APPS, json={"applicationId": "mkt"})
    await env.client.post(ENTITIES, json={"entityId": "cust"})
    await env.client.post(ENTITIES, json={"entityId": "keep"})
    await env.client.post(ASSOCIATIONS, json={**ASSOCIATION, "applicationId": "mkt", "entityId": "cust"})
    kept = {**ASSOCIATION, "applicationId": "mkt", "entityId": None, "resourceId": "other"}
    await env.client.post(ASSOCIATIONS, json=kept)
    key_id, _ = await env.key(platform=[{"applicationId": "mkt", "entityId": "cust"}, {"entityId": "keep"}])
    pair_only, _ = await env.key(platform=[{"applicationId": "mkt", "entityId": "cust"}])
    report = (await env.client.delete(f"{ENTITIES}/cust")).json()
    assert report == {"associationsRemoved": 1, "entriesRemoved": 2, "keysDisabled": [pair_only]}
    assert (await env.client.get(ASSOCIATIONS)).json()["results"] == [kept]
    remaining = (await env.client.get(f"{KEYS}/{key_id}")).json()
    assert remaining["enabled"] is True
    assert [(e["applicationId"], e["entityId"]) for e in remaining["platform"]] == [(None, "keep")]
    assert (await env.client.get(f"{APPS}/mkt")).status_code == 200


# who may call ------------------------------------------------------------------------------------

PROBES = [("GET", APPS), ("POST", ENTITIES), ("GET", f"{APPS}/default"), ("GET", KEYS), ("POST", KEYS)]


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Bearer {TOKEN}x", f"Basic {TOKEN}", "App not-a-key", f"bearer{TOKEN}"],
)
@pytest.mark.parametrize(("method", "path"), PROBES)
async def test_missing_or_wrong_credentials_get_401(
    env: Env, authorization: str | None, method: str, path: str
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with env.as_client("127.0.0.1") as anonymous:
        refused = await anonymous.request(method, path, headers=headers, json={"entityId": "e1", "name": "n"})
    assert refused.status_code == 401
    if path.startswith("/settings/"):
        assert refused.json()["errorCode"] == "E401"
    else:
        assert refused.json()["requestError"]["serviceException"]["messageId"] == "UNAUTHORIZED"
    assert (await env.client.get(f"{ENTITIES}/e1")).status_code == 404
    assert (await env.client.get(KEYS)).json()["paging"]["totalCount"] == 0


async def test_two_authorization_headers_get_401(env: Env) -> None:
    scope_headers = [("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {TOKEN}")]
    async with env.as_client("127.0.0.1") as anonymous:
        refused = await anonymous.get(APPS, headers=httpx.Headers(scope_headers))
    assert refused.status_code == 401


async def test_no_admin_token_configured_refuses_every_bearer(store: Store) -> None:
    app = create_app(store, admin_token=None, authenticator=KeyAuthenticator(store))
    for token in ("", "None", "null"):
        status, _, _ = await call(app, "GET", APPS, token=token)
        assert status == 401


async def test_primary_key_may_provision_but_never_manage_keys(env: Env) -> None:
    key_id, secret = await env.key()
    async with env.as_client("127.0.0.1") as client:
        client.headers.update(app_key(secret))
        assert (await client.post(APPS, json={"applicationId": "by-key"})).status_code == 201
        assert (await client.get(f"{APPS}/by-key")).status_code == 200
        own = f"{KEYS}/{key_id}"
        for method, path in (("GET", KEYS), ("POST", KEYS), ("GET", own), ("DELETE", own)):
            refused = await client.request(method, path, json={"name": "minted"} if method == "POST" else None)
            assert refused.status_code == 403 and refused.json()["errorCode"] == "E403"
        widen = await client.put(f"{KEYS}/{key_id}", json={"platform": []})
        assert widen.status_code == 403
        scheme_case = await client.get(APPS, headers={"Authorization": f"aPp {secret}"})
        assert scheme_case.status_code == 200
    assert (await env.client.get(KEYS)).json()["paging"]["totalCount"] == 1


async def test_linked_key_gets_403_everywhere(env: Env) -> None:
    _, secret = await env.key(platform=[{"applicationId": "default"}])
    async with env.as_client("127.0.0.1") as client:
        client.headers.update(app_key(secret))
        for method, path in PROBES + [("DELETE", f"{APPS}/default"), ("GET", ASSOCIATIONS)]:
            refused = await client.request(method, path, json={"entityId": "e", "name": "n"})
            assert refused.status_code == 403
            if path.startswith("/provisioning/"):
                assert refused.json()["requestError"]["serviceException"]["text"] == "Unauthorized access"


async def test_primary_key_outside_allowed_ips_or_validity_gets_401(env: Env) -> None:
    _, fenced = await env.key(allowedIPs=["10.1.0.0/16"])
    _, future = await env.key(validFrom="2999-01-01T00:00:00Z", validTo="2999-02-01T00:00:00Z")
    _, expired = await env.key(validFrom="2001-01-01T00:00:00Z", validTo="2002-01-01T00:00:00Z")
    async with env.as_client("10.1.2.3") as inside, env.as_client("10.2.0.1") as outside:
        assert (await inside.get(APPS, headers=app_key(fenced))).status_code == 200
        assert (await outside.get(APPS, headers=app_key(fenced))).status_code == 401
        assert (await inside.get(APPS, headers=app_key(future))).status_code == 401
        assert (await inside.get(APPS, headers=app_key(expired))).status_code == 401


async def test_key_management_in_another_letter_case_is_still_refused_to_keys(env: Env) -> None:
    _, secret = await env.key()
    refused = await env.client.get("/SETTINGS/2/API-KEYS", headers=app_key(secret))
    assert refused.status_code == 403 and refused.json()["errorCode"] == "E403"


async def test_unknown_path_and_method(env: Env) -> None:
    assert (await env.client.get("/provisioning/1/numbers")).status_code == 404
    assert (await env.client.patch(f"{APPS}/default", json={})).status_code == 405
    async with env.as_client("127.0.0.1") as anonymous:
        assert (await anonymous.get("/provisioning/1/numbers")).status_code == 401


async def test_store_unavailable_is_503(env: Env) -> None:
    await env.store.close()
    for path, family_key in ((APPS, "requestError"), (KEYS, "errorCode")):
        response = await env.client.get(path)
        assert response.status_code == 503 and family_key in response.json()
    unknown_secret = app_key("0" * 32 + "-00000000-0000-4000-8000-000000000000")
    assert (await env.client.get(APPS, headers=unknown_secret)).status_code == 503


# writes take effect at once; secrets stay secret -------------------------------------------------


async def test_on_change_runs_after_each_successful_write_only(env: Env) -> None:
    await env.client.post(APPS, json={"applicationId": "a"})
    await env.client.post(APPS, json={"applicationId": "a"})
    await env.client.put(f"{APPS}/a", json={"applicationName": "A"})
    await env.client.get(APPS)
    key_id, _ = await env.key()
    await env.client.put(f"{KEYS}/{key_id}", json={"enabled": False})
    await env.client.delete(f"{APPS}/a")
    await env.client.delete(f"{APPS}/a")
    assert len(env.changes) == 5


async def test_secrets_are_not_in_the_database_files(env: Env, store_url: str) -> None:
    secrets = [(await env.key(name=f"k{i}"))[1] for i in range(3)]
    for secret in secrets:
        assert (await env.client.get(APPS, headers=app_key(secret))).status_code == 200
    if store_url.startswith("postgresql"):  # everything the database holds, as pg_dump writes it out
        database, _, options = store_url.partition("?")
        schema = [f"--schema={v}" for k, _, v in (o.partition("=") for o in options.split("&")) if k == "search_path"]
        data = subprocess.run(["pg_dump", "--data-only", *schema, database], capture_output=True, check=True).stdout
    else:  # the file and its WAL and shared-memory files
        path = Path(store_url.removeprefix("sqlite:///"))
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        assert path in files
        data = b"".join(p.read_bytes() for p in files)
    assert b"k0" in data  # the key records are there...
    for secret in secrets:  # ...but no secret, beyond its 8-character display prefix
        assert secret[8:].encode() not in data
        assert secret[8:].encode("utf-16-le") not in data


async def test_in_process_call_helper(env: Env) -> None:
    status, headers, content = await call(env.app, "POST", APPS, {"applicationId": "cli"}, token=TOKEN)
    assert (status, content) == (201, b"")
    status, headers, content = await call(env.app, "GET", APPS, query={"size": "1", "page": "0"}, token=TOKEN)
    assert status == 200 and (b"content-type", b"application/json;charset=UTF-8") in headers
    assert json.loads(content)["results"] == [{"applicationId": "cli", "applicationName": None}]


# concurrency through a real server ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "doc"),
    [(APPS, {"applicationId": "race"}), (ENTITIES, {"entityId": "race"}), (ASSOCIATIONS, {**ASSOCIATION,
     "applicationId": "default", "entityId": None})],
)  # fmt: skip
async def test_concurrent_creation_of_one_id(env: Env, path: str, doc: dict[str, Any]) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(env.app, lifespan="off", log_level="warning"))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        while not server.started:
            await anyio.sleep(0.01)
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=ADMIN) as client:

            async def post() -> None:
                statuses.append((await client.post(path, json=doc)).status_code)

            async with anyio.create_task_group() as posts:
                for _ in range(16):
                    posts.start_soon(post)
        server.should_exit = True
    assert sorted(statuses) == [201] + [409] * 15


async def test_a_new_name_and_new_limits_are_written_together_or_not_at_all(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keyscope.store.base import StoreUnavailable
    from keyscope.store.named import NamedObjects

    await env.client.post(APPS, json={"applicationId": "shop", "applicationName": "Shop"})

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("the store went away between the two writes")

    monkeypatch.setattr(NamedObjects, "set_application_rate_limits", broken)
    failed = await env.client.put(f"{APPS}/shop", json={"applicationName": "Shop EU",
                                                         "rateLimits": [{"requests": 5, "per": "second"}]})
    assert failed.status_code == 503
    monkeypatch.undo()
    assert (await env.client.get(f"{APPS}/shop")).json() == {"applicationId": "shop", "applicationName": "Shop"}
