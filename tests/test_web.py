"""The web interface's handlers over HTTP (in-process ASGI, real SQLite store): sign-in, sessions, CSRF, forms.

Every write is checked in the store afterwards, and every refusal is checked to have written nothing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from html import unescape
from pathlib import Path

import httpx
import pytest
from gateway_helpers import ADMIN_TOKEN, Echo, Gateway, Key, free_port, init_store, wait_listening
from web_helpers import ENDPOINTS, IDLE, TOKEN, Clock, Web, csrf_of, make_client, secret_of, texts

from keyscope.core.keys import hash_secret
from keyscope.core.models import Association, AssociationFilter, Entity
from keyscope.store import Store
from keyscope.store.base import NotFound

# sign-in and sessions ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_pages_need_a_session(web: Web) -> None:
    response = await web.client.get("/keys")
    assert response.status_code == 303 and response.headers["location"] == "/signin?next=%2Fkeys"
    response = await web.client.post("/applications", data={"applicationId": "app-a"})
    assert response.status_code == 401
    with pytest.raises(NotFound):
        await web.store.get_application("app-a")


@pytest.mark.anyio
async def test_wrong_token_is_refused_without_a_cookie(web: Web) -> None:
    response = await web.client.post("/signin", data={"token": "wrong"})
    assert response.status_code == 401
    assert "Wrong admin token." in response.text
    assert "set-cookie" not in response.headers
    assert (await web.client.get("/applications")).status_code == 303


@pytest.mark.anyio
async def test_failed_sign_ins_are_throttled(web: Web) -> None:
    for _ in range(10):
        assert (await web.client.post("/signin", data={"token": "guess"})).status_code == 401
    response = await web.client.post("/signin", data={"token": TOKEN})
    assert response.status_code == 429 and "set-cookie" not in response.headers
    web.clock.now += 61
    assert (await web.client.post("/signin", data={"token": TOKEN})).status_code == 303


@pytest.mark.anyio
async def test_session_cookie_flags_and_next(web: Web) -> None:
    response = await web.client.post("/signin", data={"token": TOKEN, "next": "/keys"})
    assert response.headers["location"] == "/keys"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    for evil in ("//evil.example/", "/\\evil.example", "https://evil.example/"):
        response = await web.client.post("/signin", data={"token": TOKEN, "next": evil})
        assert response.headers["location"] == "/applications"


@pytest.mark.anyio
async def test_cookie_is_secure_over_tls(store: Store) -> None:
    async with make_client(store, Clock(), "https://testserver") as client:
        response = await client.post("/signin", data={"token": TOKEN})
        assert "Secure" in response.headers["set-cookie"]
        assert (await client.get("/applications")).status_code == 200


@pytest.mark.anyio
async def test_session_expires_after_idle_time(signed_in: Web) -> None:
    signed_in.clock.now += IDLE - 1
    assert (await signed_in.client.get("/applications")).status_code == 200  # use restarts the idle clock
    signed_in.clock.now += IDLE - 1
    assert (await signed_in.client.get("/applications")).status_code == 200
    signed_in.clock.now += IDLE + 1
    response = await signed_in.client.get("/applications")
    assert response.status_code == 303 and response.headers["location"].startswith("/signin")
    response = await signed_in.post("/applications", applicationId="late")
    assert response.status_code == 401 and "session has ended" in response.text
    with pytest.raises(NotFound):
        await signed_in.store.get_application("late")


@pytest.mark.anyio
async def test_sign_out_ends_the_session(signed_in: Web) -> None:
    cookie = signed_in.client.cookies.get("keyscope_session")
    response = await signed_in.post("/signout")
    assert response.status_code == 303
    signed_in.client.cookies.set("keyscope_session", cookie)  # a copied cookie is dead too
    assert (await signed_in.client.get("/applications")).status_code == 303


# CSRF ----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_posts_without_the_csrf_token_are_refused(signed_in: Web) -> None:
    for fields in ({}, {"csrf": "forged"}, {"csrf": signed_in.csrf + "x"}):
        response = await signed_in.client.post("/applications", data={"applicationId": "app-a", **fields})
        assert response.status_code == 403 and "CSRF" in response.text
    response = await signed_in.client.post(
        "/applications", data={"csrf": signed_in.csrf, "applicationId": "app-a"},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    with pytest.raises(NotFound):
        await signed_in.store.get_application("app-a")
    response = await signed_in.client.post("/keys/revoke", json={"csrf": signed_in.csrf, "id": "x"})
    assert response.status_code == 415


@pytest.mark.anyio
async def test_each_session_has_its_own_csrf_token(signed_in: Web, store: Store) -> None:
    async with make_client(store, signed_in.clock) as other_client:
        other = Web(other_client, signed_in.clock, store)
        assert await other.signin() != signed_in.csrf
        response = await other.client.post("/applications", data={"csrf": signed_in.csrf, "applicationId": "x"})
        assert response.status_code == 403


@pytest.mark.anyio
async def test_pages_carry_security_headers(signed_in: Web) -> None:
    response = await signed_in.client.get("/applications")
    assert response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"


# applications and entities -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_create_application_with_and_without_alias(signed_in: Web) -> None:
    response = await signed_in.post("/applications", applicationId="app-a", applicationName="Shop")
    assert response.status_code == 303 and response.headers["location"] == "/applications/show?id=app-a"
    assert (await signed_in.store.get_application("app-a")).application_name == "Shop"
    page = await signed_in.client.get("/applications/show?id=app-a")
    assert texts(page.text, "flash") == ["Created application app-a."]
    await signed_in.post("/applications", applicationId="app-b", applicationName="")
    assert (await signed_in.store.get_application("app-b")).application_name is None


@pytest.mark.anyio
async def test_create_application_validation_errors_are_the_apis(signed_in: Web) -> None:
    response = await signed_in.post("/applications", applicationId="has space")
    assert response.status_code == 400
    assert texts(response.text, "field-problem") == ["must be 1-255 characters from A-Z a-z 0-9 . _ ~ -"]
    assert 'value="has space"' in response.text  # the form keeps what was typed
    response = await signed_in.post("/applications", applicationId="x" * 256)
    assert response.status_code == 400
    await signed_in.post("/applications", applicationId="app-a")
    response = await signed_in.post("/applications", applicationId="app-a")
    assert response.status_code == 409 and "already exists" in response.text
    response = await signed_in.post("/applications", applicationId="ok", applicationName="bad\x07name")
    assert response.status_code == 400 and "control characters" in response.text
    assert (await signed_in.store.list_applications(0, 10)).total == 2  # default and app-a


@pytest.mark.anyio
async def test_search_and_paging(signed_in: Web) -> None:
    for i in range(25):
        await signed_in.store.create_entity(Entity(f"ent-{i:02}", "Berlin" if i == 7 else None))
    page = (await signed_in.client.get("/entities")).text
    assert "25 entities" in page and "Page 1 of 2" in page and "ent-19" in page and "ent-20" not in page
    page = (await signed_in.client.get("/entities?page=1")).text
    assert "ent-20" in page and "ent-19" not in page
    page = (await signed_in.client.get("/entities?q=berl")).text
    assert "1 entity matching" in page and "ent-07" in page and "ent-08" not in page
    page = (await signed_in.client.get("/entities?q=ENT-1")).text
    assert "10 entities matching" in page


@pytest.mark.anyio
async def test_rename_alias(signed_in: Web) -> None:
    await signed_in.post("/entities", entityId="ent-a", entityName="Old")
    response = await signed_in.post("/entities/rename", id="ent-a", entityName="New")
    assert response.status_code == 303
    assert (await signed_in.store.get_entity("ent-a")).entity_name == "New"
    await signed_in.post("/entities/rename", id="ent-a", entityName="")
    assert (await signed_in.store.get_entity("ent-a")).entity_name is None
    response = await signed_in.post("/entities/rename", id="ent-a", entityName="x" * 256)
    assert response.status_code == 400 and "at most 255" in response.text
    response = await signed_in.post("/entities/rename", id="ghost", entityName="x")
    assert response.status_code == 404


async def _world(web: Web) -> dict[str, str]:
    """app-a with one association and three keys: only app-a, app-a + app-b, and ent-a only."""
    for app in ("app-a", "app-b"):
        await web.post("/applications", applicationId=app)
    await web.post("/entities", entityId="ent-a")
    await web.post("/associations/create", applicationId="app-a", entityId="ent-a",
                   resourceType="NUMBER", channel="SMS", resourceId="447860099300")
    ids = {}
    for name, rows in (
        ("only-a", {"app_0": "app-a", "ent_0": "ent-a"}),
        ("a-and-b", {"app_0": "app-a", "app_1": "app-b", "action_1": "FILL"}),
        ("entity", {"ent_0": "ent-a"}),
    ):
        response = await web.post("/keys", name=name, **rows)
        assert response.status_code == 200, texts(response.text, "field-problem")
        ids[name] = re.search(r"/keys/show\?id=([0-9A-F]+)", response.text).group(1)
    return ids


@pytest.mark.anyio
async def test_application_detail(signed_in: Web) -> None:
    ids = await _world(signed_in)
    page = (await signed_in.client.get("/applications/show?id=app-a")).text
    assert "447860099300" in page
    assert "through association NUMBER/SMS/447860099300, key &#39;only-a&#39;" in page
    assert ids["only-a"] in page and ids["a-and-b"] in page and ids["entity"] not in page
    assert (await signed_in.client.get("/applications/show?id=nope")).status_code == 404


@pytest.mark.anyio
async def test_delete_confirmation_lists_the_cascade_and_delete_applies_it(signed_in: Web) -> None:
    ids = await _world(signed_in)
    page = (await signed_in.client.get("/applications/delete?id=app-a")).text
    cascade = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))
    assert "1 resource association " in cascade and "NUMBER SMS 447860099300" in cascade
    assert "2 key links " in cascade
    assert "only-a" in cascade and "a-and-b" in cascade and "entity (" not in cascade
    disabled_section = cascade.split("key disabled")[1]
    assert "only-a" in disabled_section and "a-and-b" not in disabled_section
    assert (await signed_in.store.get_application("app-a")) is not None  # the GET changed nothing

    response = await signed_in.post("/applications/delete", id="app-a")
    assert response.status_code == 303 and response.headers["location"] == "/applications"
    flash = texts((await signed_in.client.get("/applications")).text, "flash")
    assert flash == [f"Deleted application app-a: 1 association(s) and 2 key link(s) removed; "
                     f"disabled key(s) {ids['only-a']}."]
    only_a = await signed_in.store.get_key(ids["only-a"])
    assert not only_a.enabled and only_a.platform == ()
    both = await signed_in.store.get_key(ids["a-and-b"])
    assert both.enabled and [e.application_id for e in both.platform] == ["app-b"]


@pytest.mark.anyio
async def test_the_default_application_cannot_be_deleted(signed_in: Web) -> None:
    response = await signed_in.post("/applications/delete", id="default")
    assert response.status_code == 400 and "Refused" in response.text
    assert await signed_in.store.get_application("default")


@pytest.mark.anyio
async def test_associations_add_and_remove(signed_in: Web) -> None:
    await signed_in.post("/applications", applicationId="app-a")
    fields = {"applicationId": "app-a", "resourceType": "NUMBER", "channel": "SMS", "resourceId": "4477"}
    response = await signed_in.post("/associations/create", **fields)
    assert response.status_code == 303
    wanted = Association("NUMBER", "SMS", "app-a", None, "4477")
    assert (await signed_in.store.list_associations(AssociationFilter(), 0, 10)).items == [wanted]
    response = await signed_in.post("/associations/create", **fields)
    assert response.status_code == 409 and "already associated" in response.text
    response = await signed_in.post("/associations/create", **{**fields, "resourceType": "DOMAIN"})
    assert response.status_code == 400 and "EMAIL channel only" in response.text
    response = await signed_in.post("/associations/create", **{**fields, "resourceId": "9", "entityId": "ghost"})
    assert response.status_code == 404
    response = await signed_in.post("/associations/delete", **fields, entityId="")
    assert response.status_code == 303
    assert (await signed_in.store.list_associations(AssociationFilter(), 0, 10)).items == []


# keys ----------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_create_key_shows_the_secret_once(signed_in: Web) -> None:
    await signed_in.post("/applications", applicationId="app-a")
    response = await signed_in.post("/keys", name="shop", app_0="app-a", action_0="FILL",
                                    allowedIPs="10.0.0.0/8\n192.0.2.1")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert "it will not be shown again" in response.text
    secret = secret_of(response.text)
    key = await signed_in.store.find_key_by_hash(hash_secret(secret))
    assert key is not None and key.name == "shop" and key.allowed_ips == ("10.0.0.0/8", "192.0.2.1")
    assert [(e.application_id, e.entity_id, e.action) for e in key.platform] == [("app-a", None, "FILL")]
    for page in ("/keys", f"/keys/show?id={key.id}", "/endpoints"):
        assert secret not in (await signed_in.client.get(page)).text


@pytest.mark.anyio
async def test_create_key_errors(signed_in: Web) -> None:
    response = await signed_in.post("/keys", name="loose")
    assert response.status_code == 400 and "tick" in response.text
    response = await signed_in.post("/keys", name="both", app_0="app-a", primary="on")
    assert response.status_code == 400
    response = await signed_in.post("/keys", name="ghost", app_0="ghost")
    assert response.status_code == 400 and "does not exist" in response.text
    response = await signed_in.post("/keys", name="ips", primary="on", allowedIPs="not-an-ip")
    assert response.status_code == 400 and texts(response.text, "field-problem")
    response = await signed_in.post("/keys", name="dates", primary="on", validFrom="2030-01-01T00:00:00Z",
                                    validTo="2029-01-01T00:00:00Z")
    assert response.status_code == 400
    assert (await signed_in.store.list_keys(0, 10)).total == 0
    response = await signed_in.post("/keys", name="root", primary="on")
    assert response.status_code == 200
    assert (await signed_in.store.list_keys(0, 10)).items[0].is_primary


@pytest.mark.anyio
async def test_relink_revoke_and_enable(signed_in: Web) -> None:
    ids = await _world(signed_in)
    key_id = ids["entity"]
    response = await signed_in.post("/keys/links", id=key_id, form="links", app_0="app-b", ent_0="ent-a",
                                    action_0="FORCE")
    assert response.status_code == 303
    key = await signed_in.store.get_key(key_id)
    assert [(e.application_id, e.entity_id, e.action) for e in key.platform] == [("app-b", "ent-a", "FORCE")]
    response = await signed_in.post("/keys/links", id=key_id, form="links")
    assert response.status_code == 400 and len((await signed_in.store.get_key(key_id)).platform) == 1

    assert (await signed_in.post("/keys/revoke", id=key_id)).status_code == 303
    assert not (await signed_in.store.get_key(key_id)).enabled
    assert (await signed_in.post("/keys/enable", id=key_id)).status_code == 303
    assert (await signed_in.store.get_key(key_id)).enabled

    await signed_in.post("/applications/delete", id="app-a")  # only-a is disabled, left without links
    lost = ids["only-a"]
    response = await signed_in.post("/keys/enable", id=lost)
    assert response.status_code == 400 and "no platform entries" in response.text
    assert not (await signed_in.store.get_key(lost)).enabled
    response = await signed_in.post("/keys/links", id=lost, form="links", ent_0="ent-a", enable="on")
    assert response.status_code == 303
    key = await signed_in.store.get_key(lost)
    assert key.enabled and [(e.application_id, e.entity_id) for e in key.platform] == [(None, "ent-a")]


@pytest.mark.anyio
async def test_key_settings(signed_in: Web) -> None:
    ids = await _world(signed_in)
    key_id = ids["entity"]
    key = await signed_in.store.get_key(key_id)
    response = await signed_in.post("/keys/settings", id=key_id, name="renamed", allowedIPs="10.1.0.0/16",
                                    validFrom=key.valid_from.isoformat(), validTo="2031-01-01T00:00:00Z")
    assert response.status_code == 303
    key = await signed_in.store.get_key(key_id)
    assert (key.name, key.allowed_ips, key.valid_to.year) == ("renamed", ("10.1.0.0/16",), 2031)
    response = await signed_in.post("/keys/settings", id=key_id, name="", allowedIPs="")
    assert response.status_code == 400 and (await signed_in.store.get_key(key_id)).name == "renamed"
    page = (await signed_in.client.get(f"/keys/show?id={key_id}")).text
    assert "10.1.0.0/16" in page and "renamed" in page
    assert (await signed_in.client.get("/keys/show?id=NOPE")).status_code == 404


# endpoints and explain -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_endpoints_page_lists_the_allowlist(signed_in: Web) -> None:
    page = (await signed_in.client.get("/endpoints")).text
    assert page.count("<tr") - page.count("<thead><tr") == len(ENDPOINTS)
    assert page.count('class="deprecated"') == sum(1 for e in ENDPOINTS if e.deprecated)
    for endpoint in ENDPOINTS:
        assert f"<code>{endpoint.path}</code>" in page


@pytest.mark.anyio
async def test_explain_form(signed_in: Web) -> None:
    ids = await _world(signed_in)
    response = await signed_in.post("/endpoints/explain", key_id=ids["only-a"], method="GET",
                                    target="/sms/1/logs?applicationId=app-a&entityId=ent-a")
    assert response.status_code == 200 and "Allowed: forwarded upstream" in response.text

    created = await signed_in.post("/keys", name="pasted", app_0="app-a")
    secret = secret_of(created.text)
    response = await signed_in.post("/endpoints/explain", secret=secret, method="GET",
                                    target="/sms/1/logs?applicationId=app-b")
    assert "Refused with <strong>403</strong>: <code>id_out_of_scope</code>" in response.text
    assert "Unauthorized access" in response.text
    assert secret not in response.text

    body = '{"messages":[{"destinations":[{"to":"41793026727"}],"text":"hi"}]}'
    response = await signed_in.post("/endpoints/explain", key_id=ids["a-and-b"], method="POST",
                                    target="/sms/2/text/advanced", content_type="application/json", body=body)
    assert "Allowed" in response.text and "FILL" in response.text
    assert '"text":"hi","applicationId":"app-b"}]}' in unescape(response.text)  # FILL's rewrite, shown

    response = await signed_in.post("/endpoints/explain", method="GET", target="/sms/1/logs")
    assert response.status_code == 400 and "Choose a key" in response.text
    response = await signed_in.post("/endpoints/explain", key_id="NOPE", method="GET", target="/sms/1/logs")
    assert response.status_code == 400 and "There is no key" in response.text


# keyscope serve --admin-listen -----------------------------------------------------------------------


def _web_client(port: int) -> httpx.Client:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    assert client.post("/signin", data={"token": ADMIN_TOKEN}).status_code == 303
    return client


def test_serve_runs_the_interface_on_its_own_listener(tmp_path: Path) -> None:
    """Keys made and revoked in the interface take effect in the gateway at once (its own key cache)."""
    echo = Echo.start()
    web_port = free_port()
    gateway = Gateway.start(echo.url, tmp_path, "--admin-listen", f"127.0.0.1:{web_port}")
    try:
        wait_listening(web_port, gateway.process, "the web interface")
        client = _web_client(web_port)
        csrf = csrf_of(client.get("/applications").text)
        assert client.post("/applications", data={"csrf": csrf, "applicationId": "shop"}).status_code == 303
        created = client.post("/keys", data={"csrf": csrf, "name": "shop", "app_0": "shop"})
        secret = secret_of(created.text)
        key_id = re.search(r"/keys/show\?id=([0-9A-F]+)", created.text).group(1)
        target = "/sms/1/logs?applicationId=shop"
        allowed = gateway.request("GET", target, Key(key_id, secret))
        assert allowed.status_code == 200 and allowed.json()["query"] == "applicationId=shop"
        assert client.post("/keys/revoke", data={"csrf": csrf, "id": key_id}).status_code == 303
        refused = gateway.request("GET", target, Key(key_id, secret))
        assert refused.status_code == 401  # at once, not after the key cache's TTL

        # the traffic port does not serve the interface, and the interface does not forward traffic
        assert gateway.client.get("/signin").status_code == 401
        assert client.get(target).status_code == 404
        client.close()
    finally:
        gateway.stop()
        echo.stop()
    # the interface's own uvicorn does not take over logging: every stderr line is still keyscope's JSON
    lines = [line for line in gateway.error_log.read_text().splitlines() if line.strip()]
    assert any("Web interface on" in line for line in lines)
    assert all(json.loads(line)["logger"] for line in lines), lines


def test_serve_stops_when_the_admin_listener_is_taken(tmp_path: Path) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    environment["KEYSCOPE_ADMIN_TOKEN"] = ADMIN_TOKEN
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        init_store(f"sqlite:///{tmp_path / 'k.db'}")  # serve refuses a SQLite file that does not exist
        busy = subprocess.run(
            [sys.executable, "-m", "keyscope.serve.server", "--upstream", "http://127.0.0.1:9",
             "--store", f"sqlite:///{tmp_path / 'k.db'}", "--port", str(free_port()),
             "--admin-listen", f"127.0.0.1:{port}"],
            env=environment, capture_output=True, timeout=60,
        )
    assert busy.returncode == 2
    assert busy.stderr.decode().strip() == (
        f"keyscope serve: cannot listen on 127.0.0.1:{port} (admin-listen): Address already in use"
    )


def test_serve_with_workers_runs_the_interface_in_the_supervisor(tmp_path: Path) -> None:
    """With several workers the interface has a store of its own; its writes reach the workers like any other."""
    echo = Echo.start()
    web_port = free_port()
    gateway = Gateway.start(echo.url, tmp_path, "--workers", "2", "--admin-listen", f"127.0.0.1:{web_port}")
    try:
        wait_listening(web_port, gateway.process, "the web interface")
        client = _web_client(web_port)
        csrf = csrf_of(client.get("/applications").text)
        created = client.post("/keys", data={"csrf": csrf, "name": "root", "primary": "on"})
        key = Key(re.search(r"/keys/show\?id=([0-9A-F]+)", created.text).group(1), secret_of(created.text))
        assert gateway.request("GET", "/anything", key).status_code == 200
        assert client.post("/keys/revoke", data={"csrf": csrf, "id": key.id}).status_code == 303
        deadline = time.monotonic() + 30
        statuses = set()
        while time.monotonic() < deadline:  # each worker must refuse it; the key cache's TTL bounds the wait
            statuses = {gateway.request("GET", "/anything", key).status_code for _ in range(8)}
            if statuses == {401}:
                break
            time.sleep(0.2)
        assert statuses == {401}
        client.close()
    finally:
        gateway.stop()
        echo.stop()
