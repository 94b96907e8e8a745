"""The audit trail through the management API in-process: one record per change, in the store and on the
`keyscope.audit` logger, naming the principal, the objects and what a cascade removed; `GET /keyscope/1/audit`
(admin token only, paged); refused calls record nothing; secrets never appear; the store keeps the last
`KEEP` records. Real stores (both kinds with `KEYSCOPE_TEST_STORES`); the real `keyscope serve`, the CLI and
the web interface are in `test_audit_served.py` and `test_audit_web.py`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from keyscope.control.admin import AdminApp, call, create_app
from keyscope.decide.auth import KeyAuthenticator
from keyscope.decide.management import is_management
from keyscope.observe.accesslog import JsonFormatter
from keyscope.store import Store
from keyscope.store import sqlbase
from keyscope.store.audit import AuditRecord

pytestmark = pytest.mark.anyio

TOKEN = "audit-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
APPS = "/provisioning/1/applications"
ENTITIES = "/provisioning/1/entities"
ASSOCIATIONS = "/provisioning/1/associations"
KEYS = "/settings/2/api-keys"
AUDIT = "/keyscope/1/audit"


class Lines(logging.Handler):
    """The `keyscope.audit` logger's records, as the JSON formatter would write their fields."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def changes(self) -> list[dict[str, Any]]:
        return [dict(r.fields, message=r.getMessage()) for r in self.records  # type: ignore[attr-defined]
                if "audit_id" in getattr(r, "fields", {})]


@pytest.fixture
def lines() -> Iterator[Lines]:
    logger = logging.getLogger("keyscope.audit")
    handler = Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class Env:
    def __init__(self, store: Store, app: AdminApp, client: httpx.AsyncClient) -> None:
        self.store, self.app, self.client = store, app, client

    def as_key(self, secret: str | None) -> httpx.AsyncClient:
        headers = {"Authorization": f"App {secret}"} if secret else {}
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://keyscope.test",
                                 headers=headers)

    async def records(self, object_id: str | None = None, kind: str | None = None) -> list[AuditRecord]:
        return (await self.store.list_audit(object_id, 0, 1000, kind)).items

    async def key(self, **doc: Any) -> tuple[str, str]:
        response = await self.client.post(KEYS, json={"name": "k", **doc})
        assert response.status_code == 200, response.text
        return response.json()["id"], response.json()["apiKeySecret"]


@pytest.fixture
async def env(store: Store) -> AsyncIterator[Env]:
    app = create_app(store, admin_token=TOKEN, authenticator=KeyAuthenticator(store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://keyscope.test", headers=ADMIN) as client:
        yield Env(store, app, client)


def summary(records: list[AuditRecord]) -> list[tuple[str, str, str]]:
    """(principal, action, object acted on), oldest first."""
    return [(r.principal, r.action, r.objects[0]) for r in sorted(records, key=lambda r: r.seq)]


async def test_every_change_writes_one_record_and_one_line(env: Env, lines: Lines) -> None:
    client = env.client
    assert (await client.post(APPS, json={"applicationId": "shop", "applicationName": "Shop"})).status_code == 201
    assert (await client.put(f"{APPS}/shop", json={"applicationName": "The shop"})).status_code == 204
    assert (await client.post(ENTITIES, json={"entityId": "acme"})).status_code == 201
    assert (await client.put(f"{ENTITIES}/acme", json={"entityName": "ACME"})).status_code == 204
    association = {"resourceType": "NUMBER", "channel": "SMS", "applicationId": "shop", "entityId": "acme",
                   "resourceId": "447860099300"}
    assert (await client.post(ASSOCIATIONS, json=association)).status_code == 201
    assert (await client.request("DELETE", ASSOCIATIONS, json=association)).status_code == 204
    key_id, secret = await env.key(name="linked", platform=[{"applicationId": "shop", "entityId": "acme"}])
    assert (await client.put(f"{KEYS}/{key_id}", json={"enabled": False})).status_code == 200
    assert (await client.delete(f"{KEYS}/{key_id}")).status_code == 204
    assert (await client.delete(f"{ENTITIES}/acme")).status_code == 200

    expected = [
        ("admin", "application.create", "application:shop"),
        ("admin", "application.update", "application:shop"),
        ("admin", "entity.create", "entity:acme"),
        ("admin", "entity.update", "entity:acme"),
        ("admin", "association.create", "application:shop"),
        ("admin", "association.delete", "application:shop"),
        ("admin", "key.create", f"key:{key_id}"),
        ("admin", "key.update", f"key:{key_id}"),
        ("admin", "key.delete", f"key:{key_id}"),
        ("admin", "entity.delete", "entity:acme"),
    ]
    records = await env.records()
    assert summary(records) == expected
    logged = lines.changes()
    assert [(line["principal"], line["action"], line["objects"][0]) for line in logged] == expected
    by_seq = {r.seq: r for r in records}
    for line in logged:  # the line is the stored record
        record = by_seq[line["audit_id"]]
        assert line["objects"] == list(record.objects) and line["details"] == record.details

    first = sorted(records, key=lambda r: r.seq)
    assert first[0].details == {"applicationName": "Shop"} and first[1].details == {"applicationName": "The shop"}
    assert first[4].objects == ("application:shop", "entity:acme") and first[4].details == association
    created = first[6]
    assert created.objects == (f"key:{key_id}", "application:shop", "entity:acme")
    assert created.details["name"] == "linked" and created.details["enabled"] is True
    assert created.details["platform"] == [{"applicationId": "shop", "entityId": "acme", "action": None}]
    assert first[7].details == {"set": {"enabled": False}}
    assert first[8].objects == (f"key:{key_id}", "application:shop", "entity:acme")
    text = json.dumps([r.stored() for r in records]) + json.dumps(logged) + " ".join(x["message"] for x in logged)
    assert secret not in text and secret[:8] not in text and TOKEN not in text


async def test_a_cascade_names_what_it_removed(env: Env, lines: Lines) -> None:
    client = env.client
    for path, doc in ((APPS, {"applicationId": "a"}), (APPS, {"applicationId": "b"}),
                      (ENTITIES, {"entityId": "e"})):
        assert (await client.post(path, json=doc)).status_code == 201
    association = {"resourceType": "NUMBER", "channel": "SMS", "applicationId": "a", "entityId": "e",
                   "resourceId": "1"}
    assert (await client.post(ASSOCIATIONS, json=association)).status_code == 201
    only_a, _ = await env.key(name="only-a", platform=[{"applicationId": "a", "entityId": "e"}])
    a_and_b, _ = await env.key(name="a-and-b", platform=[{"applicationId": "a"}, {"applicationId": "b"}])
    untouched, _ = await env.key(name="only-b", platform=[{"applicationId": "b"}])

    deleted = await client.delete(f"{APPS}/a")
    assert deleted.status_code == 200
    assert deleted.json() == {"associationsRemoved": 1, "entriesRemoved": 2, "keysDisabled": [only_a]}

    record = (await env.records("a", "application"))[0]
    assert record.action == "application.delete" and record.principal == "admin"
    assert record.cascade == {
        "associationsRemoved": 1,
        "entriesRemoved": 2,
        "keysUnlinked": sorted([only_a, a_and_b]),
        "keysDisabled": [only_a],
    }
    assert set(record.objects) == {"application:a", f"key:{only_a}", f"key:{a_and_b}", "entity:e"}
    assert record.objects[0] == "application:a"
    # every object the cascade reached shows it; the key it did not reach does not
    for kind, ident in (("key", only_a), ("key", a_and_b), ("entity", "e")):
        assert (await env.records(ident, kind))[0].seq == record.seq
    assert all(r.action != "application.delete" for r in await env.records(untouched, "key"))
    line = lines.changes()[-1]
    assert line["cascade"] == record.cascade and line["action"] == "application.delete"
    assert "removed 1 association(s) and 2 key link(s)" in line["message"] and only_a in line["message"]


async def test_a_primary_key_is_named_by_its_id(env: Env, lines: Lines) -> None:
    primary, secret = await env.key(name="ops")
    async with env.as_key(secret) as as_primary:
        assert (await as_primary.post(APPS, json={"applicationId": "by-key"})).status_code == 201
        assert (await as_primary.delete(f"{APPS}/by-key")).status_code == 200
    records = await env.records("by-key")
    assert summary(records) == [(primary, "application.create", "application:by-key"),
                                (primary, "application.delete", "application:by-key")]
    assert [line["principal"] for line in lines.changes()[-2:]] == [primary, primary]


async def test_refused_calls_record_nothing(env: Env, lines: Lines) -> None:
    assert (await env.client.post(APPS, json={"applicationId": "x"})).status_code == 201
    linked, linked_secret = await env.key(name="linked", platform=[{"applicationId": "x"}])
    before = len(await env.records())
    refused = [
        await env.client.post(APPS, json={"applicationId": "x"}),  # 409
        await env.client.post(APPS, json={"applicationId": "bad id"}),  # 400
        await env.client.put(f"{APPS}/nope", json={"applicationName": "n"}),  # 404
        await env.client.delete(f"{APPS}/default"),  # 400: protected
        await env.client.delete(f"{ENTITIES}/nope"),  # 404
        await env.client.post(ASSOCIATIONS, json={"resourceType": "NUMBER", "channel": "SMS",
                                                  "applicationId": "nope", "resourceId": "1"}),  # 404
        await env.client.put(f"{KEYS}/{linked}", json={"platform": [{"applicationId": "nope"}]}),  # 400
        await env.client.delete(f"{KEYS}/NOPE"),  # 404
        await env.client.post(APPS, content=b'{"applicationId": "y", "applicationName": "\\ud800"}',
                              headers={"Content-Type": "application/json"}),  # 400
    ]
    async with env.as_key(linked_secret) as as_linked, env.as_key(None) as nobody:
        refused.append(await as_linked.post(APPS, json={"applicationId": "z"}))  # 403
        refused.append(await nobody.post(APPS, json={"applicationId": "z"}))  # 401
    refused.append(await env.client.post(APPS, json={"applicationId": "z"}, headers={"Authorization": "Bearer no"}))
    assert [r.status_code for r in refused] == [409, 400, 404, 400, 404, 404, 400, 404, 400, 403, 401, 401]
    assert len(await env.records()) == before
    assert len(lines.changes()) == before


async def test_only_an_in_process_caller_with_the_admin_token_names_itself(env: Env) -> None:
    status, _, _ = await call(env.app, "POST", APPS, {"applicationId": "cli-made"}, token=TOKEN, principal="cli:ann")
    assert status == 201
    status, _, _ = await call(env.app, "POST", APPS, {"applicationId": "no-token"}, principal="cli:eve")
    assert status == 401
    status, _, _ = await call(env.app, "POST", APPS, {"applicationId": "odd"}, token=TOKEN, principal="a\nb")
    assert status == 201
    assert summary(await env.records()) == [("cli:ann", "application.create", "application:cli-made"),
                                            ("admin", "application.create", "application:odd")]


# GET /keyscope/1/audit -----------------------------------------------------------------------------


async def test_the_audit_endpoint_lists_an_objects_records_newest_first_and_pages(env: Env) -> None:
    client = env.client
    assert (await client.post(APPS, json={"applicationId": "same"})).status_code == 201
    assert (await client.post(ENTITIES, json={"entityId": "same"})).status_code == 201
    for name in ("one", "two", "three"):
        assert (await client.put(f"{APPS}/same", json={"applicationName": name})).status_code == 204

    listed = await client.get(AUDIT, params={"object": "same", "kind": "application"})
    assert listed.status_code == 200 and listed.headers["content-type"].startswith("application/json")
    doc = listed.json()
    assert doc["paging"] == {"page": 0, "size": 20, "totalPages": 1, "totalResults": 4}
    assert [r["details"].get("applicationName") for r in doc["results"]] == ["three", "two", "one", None]
    first = doc["results"][0]
    assert set(first) == {"id", "time", "principal", "action", "objects", "details"}
    assert first["principal"] == "admin" and first["action"] == "application.update"
    assert first["objects"] == ["application:same"] and first["time"].endswith("+00:00")

    assert (await client.get(AUDIT, params={"object": "application:same"})).json() == doc
    both_kinds = (await client.get(AUDIT, params={"object": "same"})).json()
    assert both_kinds["paging"]["totalResults"] == 5
    assert (await client.get(AUDIT, params={"object": "entity:same"})).json()["paging"]["totalResults"] == 1
    assert (await client.get(AUDIT, params={"object": "nothing"})).json()["results"] == []

    page = (await client.get(AUDIT, params={"object": "same", "size": "2", "page": "1"})).json()
    assert page["paging"] == {"page": 1, "size": 2, "totalPages": 3, "totalResults": 5}
    assert [r["id"] for r in page["results"]] == [r["id"] for r in both_kinds["results"][2:4]]
    everything = (await client.get(AUDIT)).json()
    assert everything["paging"]["totalResults"] == 5 and everything["results"] == both_kinds["results"]


@pytest.mark.parametrize(
    ("params", "field_name"),
    [
        ({"object": "bad id"}, "object"),
        ({"object": "x", "kind": "association"}, "kind"),
        ({"object": "planet:x"}, "kind"),
        ({"object": "entity:x", "kind": "application"}, "kind"),
        ({"kind": "key"}, "kind"),
        ({"size": "101"}, "size"),
        ({"page": "-1"}, "page"),
        ({"objects": "x"}, "objects"),
    ],
)
async def test_the_audit_endpoint_refuses_a_bad_query(env: Env, params: dict[str, str], field_name: str) -> None:
    refused = await env.client.get(AUDIT, params=params)
    assert refused.status_code == 400
    assert field_name in refused.json()["requestError"]["serviceException"]["validationErrors"]


async def test_the_audit_endpoint_is_for_the_admin_token_only(env: Env) -> None:
    assert (await env.client.post(APPS, json={"applicationId": "x"})).status_code == 201
    _, primary = await env.key(name="ops")
    _, linked = await env.key(name="linked", platform=[{"applicationId": "x"}])
    async with env.as_key(primary) as as_primary, env.as_key(linked) as as_linked, env.as_key(None) as nobody:
        assert (await as_primary.get(AUDIT)).status_code == 403
        assert (await as_primary.get(AUDIT)).json()["requestError"]["serviceException"]["messageId"]
        assert (await as_linked.get(AUDIT)).status_code == 403
        assert (await nobody.get(AUDIT)).status_code == 401
        assert (await nobody.get(AUDIT, headers={"Authorization": "Bearer wrong"})).status_code == 401
        assert (await as_primary.get(APPS)).status_code == 200  # the provisioning paths stay open to it
    assert (await env.client.post(AUDIT, json={})).status_code == 405


def test_the_gateway_routes_the_audit_path_to_the_admin_app() -> None:
    assert is_management(b"/keyscope/1/audit") and is_management(b"/KEYSCOPE/1/audit?object=x")


# retention -----------------------------------------------------------------------------------------


async def test_the_store_keeps_the_last_records_only(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlbase, "AUDIT_KEEP", 3)
    for n in range(5):
        assert (await env.client.post(APPS, json={"applicationId": f"app{n}"})).status_code == 201
    kept = await env.records()
    assert [r.objects[0] for r in kept] == ["application:app4", "application:app3", "application:app2"]
    assert await env.records("app0") == [] and await env.records("app1") == []
    assert len(await env.records("app2")) == 1


def test_the_json_formatter_puts_the_fields_after_the_message() -> None:
    record = logging.LogRecord("keyscope.audit", logging.INFO, __file__, 1, "admin %s", ("x",), None)
    record.fields = {"audit_id": 7, "principal": "admin", "objects": ["application:é"]}
    line = JsonFormatter().format(record)
    assert line.isascii() and "\n" not in line
    doc = json.loads(line)
    assert list(doc) == ["time", "level", "logger", "message", "audit_id", "principal", "objects"]
    assert doc["message"] == "admin x" and doc["objects"] == ["application:é"]
