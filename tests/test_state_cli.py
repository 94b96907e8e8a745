"""`keyscope export`, `diff` and `apply` as a person runs them: the console script in a subprocess, against a SQLite
file in-process and against a real `keyscope serve` (SQLite and PostgreSQL) with `--url`/`--token`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_helpers import ADMIN_TOKEN, Gateway
from stores import STORE_URLS, store_params

SCRIPT = Path(sys.executable).with_name("keyscope")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "keyscope.cli"]
SECRET = re.compile(r"[0-9a-f]{32}-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
ENV = {name: value for name, value in os.environ.items() if not name.startswith("KEYSCOPE_")} | {"USER": "tester",
                                                                                                 "LOGNAME": "tester"}


def keyscope(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=60)


def ok(result: subprocess.CompletedProcess[str], status: int = 0) -> str:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    return result.stdout


EDITED = """\
version: 1
applications:
- applicationId: default
  applicationName: Default
- applicationId: shop
  applicationName: Shop online
entities:
- entityId: acme
associations:
- resourceType: NUMBER
  channel: SMS
  resourceId: '4477'
  applicationId: shop
  entityId: acme
keys:
- id: NEWKEY
  name: deploy
  validFrom: 2026-01-01T00:00:00Z
  validTo: 2036-01-01T00:00:00Z
  platform: []
"""


def test_export_diff_apply_in_process(tmp_path: Path) -> None:
    store = ["--store", f"sqlite:///{tmp_path}/keyscope.db"]
    ok(keyscope(*store, "init", cwd=tmp_path))
    ok(keyscope(*store, "apps", "create", "shop", "--name", "Shop", cwd=tmp_path))
    ok(keyscope(*store, "entities", "create", "acme", cwd=tmp_path))
    ok(keyscope(*store, "keys", "create", "--name", "mk", "--link", "shop:acme:FILL", cwd=tmp_path))
    assert ok(keyscope(*store, "export", "--output", "state.yaml", cwd=tmp_path)) == (
        "exported 2 applications, 1 entity, 0 associations, 1 key to state.yaml\n")
    exported = (tmp_path / "state.yaml").read_text()
    assert ok(keyscope(*store, "export", cwd=tmp_path)) == exported  # stdout: the same bytes
    assert ok(keyscope(*store, "diff", "state.yaml", cwd=tmp_path)) == "no changes: the store matches state.yaml\n"

    (tmp_path / "edited.yaml").write_text(EDITED)
    mk = re.search(r"- id: (\w+)\n  name: mk", exported).group(1)  # type: ignore[union-attr]
    plan = ok(keyscope(*store, "diff", "edited.yaml", cwd=tmp_path), status=1).splitlines()
    assert plan == [
        '~ application shop applicationName "Shop" -> "Shop online"',
        '+ association NUMBER/SMS/4477 (applicationId "shop", entityId "acme")',
        '+ key NEWKEY (deploy) (validFrom "2026-01-01T00:00:00+00:00", validTo "2036-01-01T00:00:00+00:00",'
        " platform [] (primary))",
        f"= key {mk[:8]}… (mk) kept: not in the file (--prune would delete it)",
        "2 to create, 1 to change, 0 to delete; 1 kept",
    ]
    assert ok(keyscope(*store, "apply", "--dry-run", "edited.yaml", cwd=tmp_path), status=1).splitlines() == plan

    applied = ok(keyscope(*store, "apply", "edited.yaml", cwd=tmp_path))
    assert "applied: 2 created, 1 changed, 0 deleted; 1 kept" in applied
    assert len(SECRET.findall(applied)) == 1 and "NEWKEY  deploy" in applied
    again = ok(keyscope(*store, "apply", "edited.yaml", cwd=tmp_path))
    assert again == "= key " + f"{mk[:8]}… (mk) kept: not in the file (--prune would delete it)\n" \
        "no changes: the store matches edited.yaml; 1 kept\n"
    assert not SECRET.search(again + ok(keyscope(*store, "export", cwd=tmp_path)))

    pruned = ok(keyscope(*store, "apply", "--prune", "edited.yaml", cwd=tmp_path))
    assert pruned.splitlines() == [f"- key {mk[:8]}… (mk)", "applied: 0 created, 0 changed, 1 deleted"]
    assert ok(keyscope(*store, "export", cwd=tmp_path)).split("\n", 1)[1] == EDITED.replace(
        "2026-01-01T00:00:00Z", "'2026-01-01T00:00:00+00:00'").replace("2036-01-01T00:00:00Z",
                                                                        "'2036-01-01T00:00:00+00:00'")
    records = json.loads(ok(keyscope(*store, "--json", "keys", "show", "NEWKEY", cwd=tmp_path)))
    assert records["id"] == "NEWKEY" and records["platform"] == []


def test_a_broken_file_exits_2_naming_every_problem_and_writes_nothing(tmp_path: Path) -> None:
    store = ["--store", f"sqlite:///{tmp_path}/keyscope.db"]
    ok(keyscope(*store, "init", cwd=tmp_path))
    before = ok(keyscope(*store, "export", cwd=tmp_path))
    (tmp_path / "broken.yaml").write_text(
        "applications:\n- applicationId: new\nkeys:\n- id: K1\n  name: k\n  platform:\n  - applicationId: ghost\n"
        "  - applicationId: new\n    action: fill\n")
    for command in ("diff", "apply"):
        result = keyscope(*store, command, "broken.yaml", cwd=tmp_path)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.splitlines() == [
            "keyscope: refused: Bad request (HTTP 400)",
            "  keys[0].platform[1].action: must be one of FILL, FORCE",
            "keyscope: 1 problem(s) in the document; nothing was written",
        ]
    (tmp_path / "broken.yaml").write_text("keys:\n- id: K1\n  name: k\n  platform: [{applicationId: ghost}]\n"
                                          "  name: again\n")
    result = keyscope(*store, "apply", "broken.yaml", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (2, "keyscope: broken.yaml:5: duplicate key 'name'; nothing was written\n")
    (tmp_path / "broken.yaml").write_text("keys:\n- id: K1\n  name: k\n  platform: [{applicationId: ghost}]\n")
    result = keyscope(*store, "apply", "broken.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "  keys[0].platform[0].applicationId: 'ghost' does not exist and the file does not create it" in \
        result.stderr.splitlines()
    assert keyscope(*store, "diff", "missing.yaml", cwd=tmp_path).returncode == 2
    assert ok(keyscope(*store, "export", cwd=tmp_path)) == before


@pytest.fixture(params=store_params())
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    with STORE_URLS[request.param](tmp_path) as store_url:
        served = Gateway.start("http://127.0.0.1:9", tmp_path, store_url=store_url)
        try:
            yield served
        finally:
            served.stop()


def test_remote_apply_against_a_running_gateway(gateway: Gateway, tmp_path: Path) -> None:
    remote = ["--url", f"http://127.0.0.1:{gateway.port}", "--token", ADMIN_TOKEN]
    (tmp_path / "edited.yaml").write_text(EDITED)
    plan = ok(keyscope(*remote, "diff", "edited.yaml", cwd=tmp_path), status=1)
    assert plan.splitlines()[-1] == "4 to create, 0 to change, 0 to delete"  # the gateway's store is empty
    applied = ok(keyscope(*remote, "apply", "edited.yaml", cwd=tmp_path))
    [secret] = SECRET.findall(applied)
    # the new primary key works at once, through the gateway that made it
    headers = {"Authorization": f"App {secret}"}
    assert gateway.client.get("/provisioning/1/entities", headers=headers).status_code == 200
    assert ok(keyscope(*remote, "diff", "edited.yaml", cwd=tmp_path)) == "no changes: the store matches edited.yaml\n"
    here = ok(keyscope("--store", gateway.store_url, "export", cwd=tmp_path))
    assert ok(keyscope(*remote, "export", cwd=tmp_path)) == here
    audit = gateway.admin("GET", "/keyscope/1/audit?size=10").json()["results"]
    assert [(r["principal"], r["action"]) for r in audit] == [
        ("admin", "key.create"), ("admin", "association.create"), ("admin", "entity.create"),
        ("admin", "application.create")]
    # in-process, against the gateway's own store, the records name the CLI's user
    (tmp_path / "renamed.yaml").write_text(EDITED.replace("Shop online", "Shop"))
    ok(keyscope("--store", gateway.store_url, "apply", "renamed.yaml", cwd=tmp_path))
    latest = gateway.admin("GET", "/keyscope/1/audit?size=1").json()["results"][0]
    assert (latest["principal"], latest["action"], latest["details"]) == (
        "cli:tester", "application.update", {"applicationName": "Shop", "rateLimits": []})
    assert httpx.get(f"http://127.0.0.1:{gateway.port}/keyscope/1/state", headers=headers).status_code == 403
