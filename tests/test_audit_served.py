"""The audit trail under a real `keyscope serve` (SQLite or PostgreSQL, `KEYSCOPE_TEST_STORES`): changes over
HTTP with the admin token and with a primary key, from the remote CLI (`--url/--token`) and from the in-process
CLI on the same store each write exactly one record, in the store and as one JSON line on stderr in the format
of keyscope's other stderr lines; no secret reaches either.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import ADMIN_TOKEN, Gateway

from keyscope.cli.main import main
from keyscope.store import store_from_url
from keyscope.store.audit import AuditRecord

APPS = "/provisioning/1/applications"
KEYS = "/settings/2/api-keys"


@pytest.fixture
def served(store_url: str, tmp_path: Path) -> Iterator[Gateway]:
    gateway = Gateway.start("http://127.0.0.1:9", tmp_path, store_url=store_url)
    try:
        yield gateway
    finally:
        gateway.stop()


def keyscope(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


def stored(store_url: str) -> tuple[list[AuditRecord], str]:
    """Every record, oldest first, and the audit tables' raw rows as text (to look for secrets in)."""

    async def read() -> tuple[list[AuditRecord], str]:
        store = store_from_url(store_url)
        await store.open()
        try:
            records = (await store.list_audit(None, 0, 1000)).items
            raw = await store._read_all("SELECT * FROM audit_log")  # type: ignore[attr-defined]
            raw += await store._read_all("SELECT * FROM audit_objects")  # type: ignore[attr-defined]
        finally:
            await store.close()
        return sorted(records, key=lambda r: r.seq), repr(raw)

    return asyncio.run(read())


def audit_lines(gateway: Gateway, count: int) -> list[dict[str, Any]]:
    """The `keyscope.audit` lines on the gateway's stderr, once there are `count` of them (every stderr line is
    one JSON object)."""
    deadline = time.monotonic() + 10
    while True:
        text = gateway.error_log.read_text()
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        found = [line for line in lines if line["logger"] == "keyscope.audit"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_http_and_both_clis_each_write_one_record_naming_the_principal(
    served: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = served
    gateway.create_application("shop")
    gateway.create_entity("acme")
    linked = gateway.create_key("linked", {"applicationId": "shop", "entityId": "acme"})
    primary = gateway.create_key("ops")
    gateway.update_key(linked, {"enabled": False})
    by_key = gateway.client.post(APPS, json={"applicationId": "by-key"},
                                 headers={"Authorization": f"App {primary.secret}"})
    assert by_key.status_code == 201, by_key.text
    refused = gateway.client.post(APPS, json={"applicationId": "shop"},
                                  headers={"Authorization": f"App {primary.secret}"})
    assert refused.status_code == 409

    url = f"http://127.0.0.1:{gateway.port}"
    status, out, _ = keyscope("--url", url, "--token", ADMIN_TOKEN, "apps", "create", "remote", "--name", "R")
    assert status == 0, out
    status, out, _ = keyscope("--url", url, "--token", ADMIN_TOKEN, "keys", "create", "--name", "far", "--primary")
    assert status == 0
    far_secret = next(word for word in out.split() if len(word) > 40)
    monkeypatch.setenv("LOGNAME", "ann")  # getpass.getuser() reads LOGNAME first
    status, _, _ = keyscope("--store", gateway.store_url, "apps", "create", "local")
    assert status == 0
    status, out, _ = keyscope("--store", gateway.store_url, "keys", "create", "--name", "near", "--primary")
    assert status == 0
    near_secret = next(word for word in out.split() if len(word) > 40)
    status, _, _ = keyscope("--store", gateway.store_url, "keys", "revoke", "near")
    assert status == 0
    status, _, _ = keyscope("--url", url, "--token", ADMIN_TOKEN, "apps", "delete", "shop")
    assert status == 0

    records, raw = stored(gateway.store_url)
    near = next(r for r in records if r.action == "key.create" and r.details["name"] == "near")
    far = next(r for r in records if r.action == "key.create" and r.details["name"] == "far")
    expected = [
        ("admin", "application.create", "application:shop"),
        ("admin", "entity.create", "entity:acme"),
        ("admin", "key.create", f"key:{linked.id}"),
        ("admin", "key.create", f"key:{primary.id}"),
        ("admin", "key.update", f"key:{linked.id}"),
        (primary.id, "application.create", "application:by-key"),
        ("admin", "application.create", "application:remote"),
        ("admin", "key.create", far.objects[0]),
        ("cli:ann", "application.create", "application:local"),
        ("cli:ann", "key.create", near.objects[0]),
        ("cli:ann", "key.update", near.objects[0]),
        ("admin", "application.delete", "application:shop"),
    ]
    assert [(r.principal, r.action, r.objects[0]) for r in records] == expected
    assert records[-1].cascade == {"associationsRemoved": 0, "entriesRemoved": 1, "keysUnlinked": [linked.id],
                                   "keysDisabled": [linked.id]}

    # the CLI's in-process changes are the CLI's process's to log; the gateway logged the rest, one line each
    served_here = [e for e in expected if e[0] != "cli:ann"]
    lines = audit_lines(gateway, len(served_here))
    assert [(line["principal"], line["action"], line["objects"][0]) for line in lines] == served_here
    for line in lines:
        assert list(line)[:4] == ["time", "level", "logger", "message"] and line["level"] == "info"
        assert line["time"].endswith("Z") and line["message"].startswith(f"{line['principal']} {line['action']} ")
        record = next(r for r in records if r.seq == line["audit_id"])
        assert line["objects"] == list(record.objects) and line["details"] == record.details

    stderr = gateway.error_log.read_text()
    for secret in (linked.secret, primary.secret, far_secret, near_secret, ADMIN_TOKEN):
        assert secret not in stderr and secret not in raw
        assert secret[:8] not in raw  # not even the prefix the key lists show


def test_the_audit_endpoint_answers_on_the_gateway_port(served: Gateway) -> None:
    gateway = served
    gateway.create_application("shop")
    primary = gateway.create_key("ops")
    listed = gateway.admin("GET", "/keyscope/1/audit?object=application:shop")
    assert listed.status_code == 200, listed.text
    assert [(r["principal"], r["action"]) for r in listed.json()["results"]] == [("admin", "application.create")]
    as_key = gateway.client.get("/keyscope/1/audit", headers={"Authorization": f"App {primary.secret}"})
    assert as_key.status_code == 403
    assert gateway.client.get("/keyscope/1/audit").status_code == 401
    for path in ("/keyscope/1/events", "/keyscope/1/state"):  # keyscope's own API, every part of it
        assert gateway.client.get(path, headers={"Authorization": f"App {primary.secret}"}).status_code == 403


def test_log_level_warning_keeps_the_audit_lines(tmp_path: Path) -> None:
    gateway = Gateway.start("http://127.0.0.1:9", tmp_path, "--log-level", "warning")
    try:
        gateway.create_application("kept")
        lines = audit_lines(gateway, 1)
    finally:
        gateway.stop()
    assert [(line["level"], line["action"], line["objects"]) for line in lines] == [
        ("info", "application.create", ["application:kept"])
    ]
    others = [json.loads(line) for line in gateway.error_log.read_text().splitlines() if line.strip()]
    assert all(line["level"] != "info" for line in others if line["logger"] != "keyscope.audit")
