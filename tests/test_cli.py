"""The `keyscope` console script, run for real in a subprocess against a SQLite file.

What `--json` prints is compared with what the management API answers over HTTP (the admin app under
Starlette's TestClient, on the same file), because the CLI's promise is that the two never differ.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from keyscope.control.admin import create_app
from keyscope.decide.auth import KeyAuthenticator
from keyscope.store import store_from_url

SCRIPT = Path(sys.executable).with_name("keyscope")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "keyscope.cli"]
SECRET = re.compile(r"[0-9a-f]{32}-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

Run = Callable[..., subprocess.CompletedProcess[str]]


def run_keyscope(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items() if name != "KEYSCOPE_STORE"}
    environment.update(env or {})
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, env=environment, cwd=cwd, timeout=60)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/keyscope.db"


@pytest.fixture
def cli(db_url: str) -> Run:
    """keyscope with `--store` after the command (the other position is tested on its own)."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_keyscope(*args, "--store", db_url)

    return run


@pytest.fixture
def api(db_url: str) -> Iterator[TestClient]:
    """The management API over HTTP on the same file, as admin.

    Its key cache keeps nothing (ttl 0), so a key the CLI changes is seen as changed at once.
    """
    store = store_from_url(db_url, create=True)
    token = secrets.token_urlsafe(32)
    app = create_app(store, admin_token=token, authenticator=KeyAuthenticator(store, ttl=0, negative_ttl=0))
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
        client.portal.call(store.open)
        try:
            yield client
        finally:
            client.portal.call(store.close)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def refused(result: subprocess.CompletedProcess[str]) -> list[str]:
    """A refused operation: exit 1, nothing on stdout, the API's error text on stderr."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    return result.stderr.splitlines()


def rows(output: str) -> list[list[str]]:
    """A table's lines split into cells (cells here hold no double spaces)."""
    return [re.split(r"\s{2,}", line.strip()) for line in output.splitlines()]


def column_starts(line: str) -> list[int]:
    return [match.start() for match in re.finditer(r"(?:^|(?<=\s\s))\S", line)]


# applications and entities ----------------------------------------------------------------------------


def test_apps_create_list_show_rename_delete(cli: Run, api: TestClient) -> None:
    created = ok(cli("apps", "create", "mkt", "--name", "Marketing"))
    assert "mkt" in created and "Marketing" in created
    stored = api.get("/provisioning/1/applications/mkt").json()
    assert stored == {"applicationId": "mkt", "applicationName": "Marketing"}

    listed = ok(cli("apps", "list")).splitlines()
    assert rows("\n".join(listed[:3])) == [["APPLICATION ID", "NAME"], ["default", "Default"], ["mkt", "Marketing"]]
    assert column_starts(listed[0]) == column_starts(listed[1]) == column_starts(listed[2])  # aligned columns
    assert "2 in total" in listed[3]

    assert ok_json(cli("apps", "list", "--json")) == api.get("/provisioning/1/applications").json()
    assert ok_json(cli("apps", "show", "mkt", "--json")) == api.get("/provisioning/1/applications/mkt").json()

    renamed = ok_json(cli("apps", "rename", "mkt", "Marketing EU", "--json"))
    assert renamed == {"applicationId": "mkt", "applicationName": "Marketing EU"}
    assert api.get("/provisioning/1/applications/mkt").json() == renamed

    deleted = ok(cli("apps", "delete", "mkt"))
    assert "deleted application mkt" in deleted
    assert api.get("/provisioning/1/applications/mkt").status_code == 404

    not_found = api.get("/provisioning/1/applications/mkt").json()["requestError"]["serviceException"]["text"]
    assert not_found in refused(cli("apps", "show", "mkt"))[0]


def test_entities_json_is_the_api_answer_with_paging(cli: Run, api: TestClient) -> None:
    for entity_id in ("c1", "c2", "c3"):
        assert api.post("/provisioning/1/entities", json={"entityId": entity_id}).status_code == 201

    created = ok_json(cli("entities", "create", "c4", "--name", "Customer 4", "--json"))
    assert created == api.get("/provisioning/1/entities/c4").json() == {"entityId": "c4", "entityName": "Customer 4"}

    page = ok_json(cli("entities", "list", "--page", "1", "--size", "2", "--json"))
    assert page == api.get("/provisioning/1/entities", params={"page": 1, "size": 2}).json()
    assert [item["entityId"] for item in page["results"]] == ["c3", "c4"]
    assert page["paging"] == {"page": 1, "size": 2, "totalPages": 2, "totalResults": 4}

    ok(cli("entities", "rename", "c1", "First"))
    assert api.get("/provisioning/1/entities/c1").json() == {"entityId": "c1", "entityName": "First"}


def test_delete_prints_what_the_cascade_removed(cli: Run, api: TestClient) -> None:
    api.post("/provisioning/1/applications", json={"applicationId": "mkt"})
    api.post("/provisioning/1/entities", json={"entityId": "c1"})
    association = {
        "resourceType": "NUMBER", "channel": "SMS", "applicationId": "mkt", "entityId": "c1", "resourceId": "N1"
    }
    assert api.post("/provisioning/1/associations", json=association).status_code == 201
    key = api.post("/settings/2/api-keys", json={"name": "k", "platform": [{"applicationId": "mkt", "entityId": "c1"}]})
    key_id = key.json()["id"]

    report = ok_json(cli("entities", "delete", "c1", "--json"))
    assert report == {"associationsRemoved": 1, "entriesRemoved": 1, "keysDisabled": [key_id]}
    assert api.get(f"/settings/2/api-keys/{key_id}").json()["enabled"] is False

    api.post("/provisioning/1/entities", json={"entityId": "c2"})
    api.post("/settings/2/api-keys", json={"name": "k2", "platform": [{"applicationId": "mkt"}, {"entityId": "c2"}]})
    said = ok(cli("apps", "delete", "mkt"))
    assert "deleted application mkt" in said
    assert ["entriesRemoved", "1"] in rows(said) and ["keysDisabled", "-"] in rows(said)


# associations -----------------------------------------------------------------------------------------


def test_associations_create_list_show_delete(cli: Run, api: TestClient) -> None:
    api.post("/provisioning/1/applications", json={"applicationId": "mkt"})
    api.post("/provisioning/1/entities", json={"entityId": "c1"})
    which = [
        "--resource-type", "NUMBER", "--channel", "SMS", "--application", "mkt", "--entity", "c1", "--resource-id", "N1"
    ]
    expected = {
        "resourceType": "NUMBER", "channel": "SMS", "applicationId": "mkt", "entityId": "c1", "resourceId": "N1"
    }

    created = ok(cli("associations", "create", *which))
    assert ["NUMBER", "SMS", "N1", "mkt", "c1"] in rows(created)

    assert ok_json(cli("associations", "list", "--json")) == api.get("/provisioning/1/associations").json()
    filtered = ok_json(cli("associations", "list", "--channel", "EMAIL", "--json"))
    assert filtered == api.get("/provisioning/1/associations", params={"channel": "EMAIL"}).json()
    assert filtered["results"] == []

    single = api.get("/provisioning/1/associations/single", params=expected).json()
    assert ok_json(cli("associations", "show", *which, "--json")) == single == expected

    ok(cli("associations", "delete", *which))
    assert api.get("/provisioning/1/associations").json()["results"] == []
    assert refused(cli("associations", "delete", *which))[0].endswith("(HTTP 404)")


# keys -------------------------------------------------------------------------------------------------


def test_key_create_prints_the_secret_once_and_nothing_else_ever_does(cli: Run, api: TestClient) -> None:
    api.post("/provisioning/1/applications", json={"applicationId": "mkt"})
    api.post("/provisioning/1/entities", json={"entityId": "c1"})

    created = ok(cli(
        "keys", "create", "--name", "sender", "--application", "mkt", "--entity", "c1", "--action", "FILL",
        "--link", ":c1", "--allowed-ip", "10.0.0.0/8", "192.0.2.7", "--valid-to", "2030-01-01T00:00:00Z",
    ))
    secrets_shown = SECRET.findall(created)
    assert len(secrets_shown) == 1
    assert "will not be shown again" in created
    key_id = re.search(r"created key ([0-9A-F]{32})", created).group(1)
    stored = api.get(f"/settings/2/api-keys/{key_id}").json()
    assert [(e["applicationId"], e["entityId"], e["action"]) for e in stored["platform"]] == [
        ("mkt", "c1", "FILL"), (None, "c1", None)
    ]
    assert stored["allowedIPs"] == ["10.0.0.0/8", "192.0.2.7"]
    assert stored["validTo"] == "2030-01-01T00:00:00+00:00"

    primary = ok_json(cli("keys", "create", "--name", "ops", "--primary", "--json"))
    primary_secret = primary.pop("apiKeySecret")
    assert SECRET.fullmatch(primary_secret)
    assert primary == api.get(f"/settings/2/api-keys/{primary['id']}").json()
    # the printed secret is the key's real secret: it authenticates as that (primary) key
    as_key = {"Authorization": f"App {primary_secret}"}
    assert api.get("/provisioning/1/applications", headers=as_key).status_code == 200

    outputs = [
        ok(cli("keys", "show", key_id)),
        ok(cli("keys", "show", primary["id"], "--json")),
        ok(cli("keys", "list")),
        ok(cli("keys", "list", "--json")),
    ]
    assert ok_json(cli("keys", "list", "--json")) == api.get("/settings/2/api-keys").json()
    for output in outputs:
        assert secrets_shown[0] not in output and primary_secret not in output
        assert SECRET.search(output) is None
    table = rows(outputs[2])
    assert table[0] == ["ID", "NAME", "PREFIX", "ENABLED", "VALID TO", "LINKS"]
    assert [key_id, "sender", secrets_shown[0][:8], "true", "2030-01-01T00:00:00+00:00", "mkt:c1:FILL, :c1"] in table


def test_keys_revoke_enable_update_delete(cli: Run, api: TestClient) -> None:
    api.post("/provisioning/1/applications", json={"applicationId": "mkt"})
    created = api.post("/settings/2/api-keys", json={"name": "ops"}).json()
    key_id, secret = created["id"], created["apiKeySecret"]
    as_key = {"Authorization": f"App {secret}"}

    revoked = ok_json(cli("keys", "revoke", key_id, "--json"))
    assert revoked["enabled"] is False
    assert revoked == api.get(f"/settings/2/api-keys/{key_id}").json()
    assert api.get("/provisioning/1/applications", headers=as_key).status_code == 401
    assert ok_json(cli("keys", "list", "--enabled", "false", "--json"))["apiKeys"] == [revoked]

    # a disabled key without links must say what it becomes when enabled: the API refuses, the CLI hints
    unsaid = refused(cli("keys", "enable", key_id))
    assert unsaid[1].startswith("  platform: ") and "--primary" in unsaid[2]
    enabled = ok(cli("keys", "enable", key_id, "--primary"))
    assert ["enabled", "true"] in rows(enabled)
    assert api.get("/provisioning/1/applications", headers=as_key).status_code == 200

    linked = ok_json(cli("keys", "update", key_id, "--name", "ops-mkt", "--link", "mkt::FORCE", "--json"))
    assert linked["name"] == "ops-mkt"
    assert [(e["applicationId"], e["entityId"], e["action"]) for e in linked["platform"]] == [("mkt", None, "FORCE")]
    assert api.get("/provisioning/1/applications", headers=as_key).status_code == 403  # linked keys: no management

    primary = ok_json(cli("keys", "update", key_id, "--primary", "--json"))
    assert primary["platform"] == [] and primary == api.get(f"/settings/2/api-keys/{key_id}").json()
    assert "apiKeySecret" not in revoked and "apiKeySecret" not in linked and "apiKeySecret" not in primary

    ok(cli("keys", "delete", key_id))
    assert api.get(f"/settings/2/api-keys/{key_id}").status_code == 404


# errors -----------------------------------------------------------------------------------------------


def test_refusals_print_the_api_error_text_on_stderr(cli: Run, api: TestClient) -> None:
    duplicate = refused(cli("apps", "create", "default"))
    assert duplicate[0].endswith("(HTTP 409)")

    bad = api.post("/provisioning/1/applications", json={"applicationId": "no spaces"})
    message = bad.json()["requestError"]["serviceException"]["validationErrors"]["applicationId"][0]
    assert refused(cli("apps", "create", "no spaces"))[1:] == [f"  applicationId: {message}"]

    missing = api.post("/settings/2/api-keys", json={"name": "k", "platform": [{"applicationId": "nope"}]}).json()
    violation = missing["violations"][0]
    lines = refused(cli("keys", "create", "--name", "k", "--link", "nope"))
    assert lines == [f"keyscope: refused: {missing['description']} (HTTP 400)",
                     f"  --link nope: {violation['property']}: {violation['violation']}"]
    assert api.get("/settings/2/api-keys").json()["apiKeys"] == []  # nothing was written

    assert refused(cli("keys", "show", "0" * 32))[0].startswith(f"keyscope: There is no key '{'0' * 32}'")


def test_usage_errors_exit_2(cli: Run) -> None:
    missing_id = cli("apps", "create")
    assert missing_id.returncode == 2 and "usage:" in missing_id.stderr and missing_id.stdout == ""
    nothing = cli("keys", "update", "0" * 32)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr


# the store URL ----------------------------------------------------------------------------------------


def test_store_url_from_option_env_or_default(tmp_path: Path, db_url: str, api: TestClient) -> None:
    ok(run_keyscope("apps", "create", "from-env", env={"KEYSCOPE_STORE": db_url}))
    assert api.get("/provisioning/1/applications/from-env").status_code == 200

    # --store wins over the environment, and may come before the command, as may --json
    shown = ok_json(run_keyscope("--store", db_url, "--json", "apps", "show", "from-env",
                                 env={"KEYSCOPE_STORE": "sqlite:////nonexistent-folder/x.db"}))
    assert shown == {"applicationId": "from-env", "applicationName": None}

    workdir = tmp_path / "work"
    workdir.mkdir()
    ok(run_keyscope("init", cwd=workdir))  # default: sqlite:///keyscope.db, relative
    ok(run_keyscope("apps", "create", "here", cwd=workdir))
    assert (workdir / "keyscope.db").is_file()
    assert api.get("/provisioning/1/applications/here").status_code == 404


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://user:hunter2@db/keys", "unsupported store URL"),
        ("sqlite:////nonexistent-folder/keys.db", "does not exist"),
    ],
)
def test_unusable_store_is_one_clear_line(url: str, says: str) -> None:
    result = run_keyscope("apps", "list", "--store", url)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and says in result.stderr
    assert "hunter2" not in result.stderr


# serve -------------------------------------------------------------------------------------------------


def test_serve_is_registered_and_sees_the_global_store_option() -> None:
    # `serve` checks its store before starting anything: the --store given before the command reaches it
    result = run_keyscope("--store", "mysql://nowhere/db", "serve", "--upstream", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert result.stderr.startswith("keyscope serve: unsupported store URL 'mysql://nowhere/db'")


def test_management_commands_do_not_load_the_gateway(db_url: str) -> None:
    code = (
        "import sys\n"
        "from keyscope.cli.main import main\n"
        f"status = main(['apps', 'list', '--create', '--store', {db_url!r}])\n"
        "print(status, [m for m in ('keyscope.serve.server', 'uvicorn', 'aiohttp') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines()[-1] == "0 []", result.stderr
