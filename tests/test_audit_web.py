"""The audit trail from the web interface (in-process ASGI, real stores): each change made through a form is
one record naming the session's sign-in (`web:<label>`, the label the sign-in line on `keyscope.audit` gave
it, with the client's address); application, entity and key pages show their last changes, a cascade's too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from html import unescape
from typing import Any

import httpx
import pytest

from keyscope.allowlist.table import load as load_endpoints
from keyscope.store import Store
from keyscope.web import create_web_app
from keyscope.web.changes import LAST

pytestmark = pytest.mark.anyio

TOKEN = "web-audit-admin-token-0123456789"
ENDPOINTS = load_endpoints()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.fields: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.fields.append(dict(getattr(record, "fields", {}), message=record.getMessage()))


@pytest.fixture
def lines() -> Iterator[Lines]:
    logger = logging.getLogger("keyscope.audit")
    handler = Lines()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


class Browser:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.csrf = ""

    async def signin(self) -> None:
        assert (await self.client.post("/signin", data={"token": TOKEN})).status_code == 303
        found = re.search(r'name="csrf" value="([^"]+)"', (await self.client.get("/applications")).text)
        assert found
        self.csrf = found.group(1)

    async def post(self, path: str, **fields: str) -> httpx.Response:
        response = await self.client.post(path, data={"csrf": self.csrf, **fields})
        assert response.status_code in (200, 303), (path, response.status_code, response.text[-2000:])
        return response


@pytest.fixture
async def app(store: Store) -> Any:
    return create_web_app(store, admin_token=TOKEN, endpoints=ENDPOINTS)


def browser(app: Any, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 50000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def signed_in(app: Any) -> AsyncIterator[Browser]:
    async with browser(app, "10.1.2.3") as client:
        b = Browser(client)
        await b.signin()
        yield b


def changes_table(html: str) -> list[list[str]]:
    """The rows of the page's "Last changes" table: [when, who, action, what]."""
    section = html.split('id="changes-heading"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r'<tr class="change">(.*?)</tr>', section, re.DOTALL)
    cells = (re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL) for row in rows)
    return [[unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in row] for row in cells]


async def test_each_form_change_is_one_record_naming_the_sign_in(
    lines: Lines, signed_in: Browser, store: Store
) -> None:
    signins = [f for f in lines.fields if f.get("action") == "session.signin"]
    assert len(signins) == 1 and signins[0]["client"] == "10.1.2.3"
    principal = signins[0]["principal"]
    assert re.fullmatch(r"web:[0-9a-f]{8}", principal)
    assert TOKEN not in signins[0]["message"] and principal in signins[0]["message"]

    await signed_in.post("/applications", applicationId="shop", applicationName="Shop")
    await signed_in.post("/applications/rename", id="shop", applicationName="The shop")
    await signed_in.post("/entities", entityId="acme")
    await signed_in.post("/associations/create", resourceType="NUMBER", channel="SMS", applicationId="shop",
                         entityId="acme", resourceId="447860099300")
    created = await signed_in.post("/keys", name="linked", app_0="shop", ent_0="acme")
    found_id = re.search(r"/keys/show\?id=([0-9A-F]+)", created.text)
    found_secret = re.search(r'id="secret" class="secret" readonly value="([^"]+)"', created.text)
    assert found_id and found_secret
    key_id, secret = found_id.group(1), found_secret.group(1)
    await signed_in.post("/keys/revoke", id=key_id)
    await signed_in.post("/applications/delete", id="shop")

    records = sorted((await store.list_audit(None, 0, 100)).items, key=lambda r: r.seq)
    assert [(r.principal, r.action, r.objects[0]) for r in records] == [
        (principal, "application.create", "application:shop"),
        (principal, "application.update", "application:shop"),
        (principal, "entity.create", "entity:acme"),
        (principal, "association.create", "application:shop"),
        (principal, "key.create", f"key:{key_id}"),
        (principal, "key.update", f"key:{key_id}"),
        (principal, "application.delete", "application:shop"),
    ]
    changes = [f for f in lines.fields if "audit_id" in f]
    assert [f["audit_id"] for f in changes] == [r.seq for r in records]
    assert records[-1].cascade == {"associationsRemoved": 1, "entriesRemoved": 1, "keysUnlinked": [key_id],
                                   "keysDisabled": [key_id]}
    text = repr(records) + repr(lines.fields)
    assert secret not in text and secret[:8] not in text and TOKEN not in text

    # the key's page shows its changes, newest first, the cascade that removed its link included
    rows = changes_table((await signed_in.client.get(f"/keys/show?id={key_id}")).text)
    assert [(row[1], row[2]) for row in rows] == [
        (principal, "application.delete"), (principal, "key.update"), (principal, "key.create")
    ]
    assert "removed 1 association(s) and 1 key link(s)" in rows[0][3] and f"disabled key(s): {key_id}" in rows[0][3]
    assert "enabled=false" in rows[1][3]
    rows = changes_table((await signed_in.client.get("/entities/show?id=acme")).text)
    assert [row[2] for row in rows] == ["application.delete", "key.update", "key.create", "association.create",
                                        "entity.create"]


async def test_two_sign_ins_are_told_apart(app: Any, store: Store, lines: Lines) -> None:
    async with browser(app, "10.0.0.1") as one, browser(app, "10.0.0.2") as two:
        first, second = Browser(one), Browser(two)
        await first.signin()
        await second.signin()
        await first.post("/applications", applicationId="one")
        await second.post("/entities", entityId="two")
    signins = {f["client"]: f["principal"] for f in lines.fields if f.get("action") == "session.signin"}
    assert len(set(signins.values())) == 2
    assert [r.principal for r in (await store.list_audit("one", 0, 10)).items] == [signins["10.0.0.1"]]
    assert [r.principal for r in (await store.list_audit("two", 0, 10)).items] == [signins["10.0.0.2"]]


async def test_a_page_shows_the_last_changes_only(signed_in: Browser) -> None:
    await signed_in.post("/applications", applicationId="busy")
    for n in range(LAST + 2):
        await signed_in.post("/applications/rename", id="busy", applicationName=f"name {n}")
    rows = changes_table((await signed_in.client.get("/applications/show?id=busy")).text)
    assert len(rows) == LAST
    assert rows[0][3] == f"application:busy; applicationName=name {LAST + 1}"
    assert rows[-1][3] == "application:busy; applicationName=name 2"
    await signed_in.post("/entities", entityId="quiet")
    await signed_in.post("/applications/delete", id="busy")  # nothing links them: the entity is not touched
    quiet = (await signed_in.client.get("/entities/show?id=quiet")).text
    assert [row[2] for row in changes_table(quiet)] == ["entity.create"]
