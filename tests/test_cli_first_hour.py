"""Issue #14, "the first hour with the CLI": the real `keyscope` command against real SQLite files.

A missing store is an error (`keyscope init` or `--create` makes one), a primary key takes `--primary`, an
action is FILL or FORCE as the API spells it, keys are named by id, name or id prefix, refusals speak the web
interface's words and name the option at fault, and `serve` refuses unknown KEYSCOPE_* variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from keyscope import __version__
from keyscope.cli.main import main
from keyscope.core.settings import ConfigError, load, startup_warnings
from keyscope.store import store_from_url
from keyscope.store.sqlite import StoreMissing

SCRIPT = Path(sys.executable).with_name("keyscope")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "keyscope.cli"]
UPSTREAM = "http://127.0.0.1:9"


def keyscope(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    environment.update(env or {})
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, cwd=cwd, env=environment, timeout=60)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 2, nothing on stdout; the last line of stderr (argparse prints the usage above it)."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A store made the documented way, with `keyscope init`."""
    store = f"sqlite:///{tmp_path / 'keyscope.db'}"
    assert ok(keyscope("init", "--store", store)) == f"created store {store}\n"
    return store


def create_key(url: str, *args: str) -> dict[str, Any]:
    return json.loads(ok(keyscope("keys", "create", "--json", "--store", url, *args)))


# 1. --primary ------------------------------------------------------------------------------------------


def test_a_key_without_links_needs_primary(url: str) -> None:
    line = usage_error(keyscope("keys", "create", "--name", "ops", "--store", url))
    assert "--primary" in line and "--application" in line and "--link" in line
    assert json.loads(ok(keyscope("keys", "list", "--json", "--store", url)))["apiKeys"] == []  # nothing written

    primary = create_key(url, "--name", "ops", "--primary")
    assert primary["platform"] == [] and primary["enabled"] is True

    both = usage_error(keyscope("keys", "create", "--name", "x", "--primary", "--link", "a", "--store", url))
    assert "a primary key has no links" in both


# 2. --action -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--application", "mkt", "--action", "fill"], "argument --action: invalid choice: 'fill'"),
        (["--application", "mkt", "--action", "FIL"], "argument --action: invalid choice: 'FIL'"),
        (["--link", "mkt::force"], "argument --link: 'mkt::force': the action must be FILL or FORCE"),
    ],
)
def test_an_action_is_fill_or_force_in_upper_case_checked_before_the_store(
    args: list[str], says: str, tmp_path: Path
) -> None:
    # the store does not even exist: the argument parser refuses first
    line = usage_error(keyscope("keys", "create", "--name", "k", *args, "--store", f"sqlite:///{tmp_path}/x.db"))
    assert says in line
    if "'fill'" in says:
        assert "did you mean FILL?" in line
    assert not (tmp_path / "x.db").exists()


def test_fill_and_force_are_accepted(url: str) -> None:
    ok(keyscope("apps", "create", "mkt", "--store", url))
    fill = create_key(url, "--name", "f", "--application", "mkt", "--action", "FILL")
    force = create_key(url, "--name", "g", "--link", "mkt::FORCE")
    assert [fill["platform"][0]["action"], force["platform"][0]["action"]] == ["FILL", "FORCE"]


# 3. a missing store is an error -------------------------------------------------------------------------


def test_a_missing_store_is_one_line_naming_it_and_init(tmp_path: Path) -> None:
    typo = f"sqlite:///{tmp_path / 'keyscpoe.db'}"
    commands = (
        ["apps", "list"], ["keys", "create", "--name", "k", "--primary"], ["explain", "--key-id", "X", "GET", "/"]
    )
    for command in commands:
        result = keyscope(*command, "--store", typo)
        assert result.returncode == 2 and result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, lines
        assert f"store {typo} does not exist" in lines[0] and f"keyscope init --store {typo}" in lines[0]
    assert not (tmp_path / "keyscpoe.db").exists()


def test_the_default_store_is_not_created_either(tmp_path: Path) -> None:
    result = keyscope("apps", "list", cwd=tmp_path)
    assert result.returncode == 2 and "keyscope init --store sqlite:///keyscope.db" in result.stderr
    assert not (tmp_path / "keyscope.db").exists()
    assert ok(keyscope("init", cwd=tmp_path)) == "created store sqlite:///keyscope.db\n"
    assert ok(keyscope("init", cwd=tmp_path)) == "store sqlite:///keyscope.db already exists; nothing to do\n"
    ok(keyscope("apps", "create", "here", cwd=tmp_path))


def test_create_makes_the_store_from_either_position(tmp_path: Path) -> None:
    first, second = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    ok(keyscope("--create", "apps", "create", "one", "--store", first))
    ok(keyscope("apps", "create", "two", "--store", second, "--create"))
    assert (tmp_path / "a.db").is_file() and (tmp_path / "b.db").is_file()
    assert "one" in ok(keyscope("apps", "list", "--store", first))


def test_init_through_main_and_an_unusable_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--store", f"sqlite:///{tmp_path}/no/such/folder/k.db"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--store", f"sqlite:///{tmp_path}/k.db", "init"]) == 0
    assert (tmp_path / "k.db").is_file()


@pytest.mark.anyio
async def test_store_from_url_refuses_a_missing_file_unless_asked_to_create(tmp_path: Path, anyio_backend: str) -> None:
    path = tmp_path / "k.db"
    store = store_from_url(f"sqlite:///{path}")
    with pytest.raises(StoreMissing) as caught:
        await store.open()
    assert str(path) in str(caught.value) and "keyscope init" in str(caught.value)
    assert not path.exists()
    created = store_from_url(f"sqlite:///{path}", create=True)
    await created.open()
    await created.close()
    reopened = store_from_url(f"sqlite:///{path}")
    await reopened.open()
    await reopened.close()


def test_serve_refuses_a_missing_store_and_creates_nothing(tmp_path: Path) -> None:
    typo = f"sqlite:///{tmp_path / 'typo.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "keyscope.serve.server", "--upstream", UPSTREAM, "--store", typo, "--port", "0"],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "keyscope init" in lines[0], lines
    assert not (tmp_path / "typo.db").exists()


# 4. unknown KEYSCOPE_* variables ----------------------------------------------------------------------


def test_an_unknown_keyscope_variable_stops_serve_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keyscope.serve.server", "--upstream", UPSTREAM, "--port", "0"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}, "KEYSCOPE_MAX_BODY": "5"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "keyscope serve: unknown environment variable KEYSCOPE_MAX_BODY "
        "(not a keyscope setting; did you mean KEYSCOPE_MAX_BODY_SIZE?)"
    )


def test_settings_and_keyscopes_own_variables_are_allowed() -> None:
    environ = {
        "KEYSCOPE_UPSTREAM": UPSTREAM,
        "KEYSCOPE_MAX_BODY_SIZE": "5",
        "KEYSCOPE_WORKER_SETTINGS": "{}",
        "KEYSCOPE_TEST_STORES": "sqlite",
        "KEYSCOPE_TEST_PG": "postgresql://x",
        "KEYSCOPE_REQUIRE_BROWSER": "1",
        "KEYSCOPE_REQUIRE_DIFFERENTIAL": "1",
        "KEYSCOPE_DIFFERENTIAL_EXAMPLES": "10",
        "KEYSCOPE_SCREENSHOTS": "1",
        "NOT_KEYSCOPE_ANYTHING": "x",
    }
    assert load({}, environ=environ).max_body_size == 5
    with pytest.raises(ConfigError, match="unknown environment variable KEYSCOPE_ADMIN_TOKN"):
        load({}, environ={**environ, "KEYSCOPE_ADMIN_TOKN": "t"})


# 5. no admin token --------------------------------------------------------------------------------------


def test_no_admin_token_is_one_warning_line() -> None:
    warned = startup_warnings(load({"upstream": UPSTREAM}, environ={}))
    assert len(warned) == 1 and warned[0].startswith("warning: no admin token") and "\n" not in warned[0]
    assert startup_warnings(load({"upstream": UPSTREAM}, environ={"KEYSCOPE_ADMIN_TOKEN": "t"})) == []


# 6. --version -----------------------------------------------------------------------------------------


def test_version() -> None:
    assert ok(keyscope("--version")) == f"keyscope {__version__}\n"


# 7. keys by id, name or id prefix -------------------------------------------------------------------------


def test_keys_are_named_by_id_name_or_prefix(url: str) -> None:
    ops = create_key(url, "--name", "ops", "--primary")
    ok(keyscope("apps", "create", "mkt", "--store", url))
    mkt = create_key(url, "--name", "mkt-key", "--link", "mkt")

    revoked = json.loads(ok(keyscope("keys", "revoke", "mkt-key", "--json", "--store", url)))
    assert revoked["id"] == mkt["id"] and revoked["enabled"] is False
    shown = json.loads(ok(keyscope("keys", "show", ops["id"][:8].lower(), "--json", "--store", url)))
    assert shown["id"] == ops["id"]
    assert ok(keyscope("keys", "enable", mkt["id"][:10], "--link", "mkt", "--store", url)).startswith(
        f"enabled key {mkt['id']}\n"
    )
    ok(keyscope("keys", "update", "ops", "--name", "ops-1", "--store", url))

    # a prefix shorter than 8 characters is not a name for a key
    short = keyscope("keys", "show", ops["id"][:7], "--store", url)
    assert short.returncode == 1 and short.stderr.startswith(f"keyscope: There is no key '{ops['id'][:7]}'")

    # a name two keys share is an error naming both; nothing is changed
    twin = create_key(url, "--name", "ops-1", "--primary")
    result = keyscope("keys", "revoke", "ops-1", "--store", url)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "the name 'ops-1' matches 2 keys" in result.stderr
    assert ops["id"] in result.stderr and twin["id"] in result.stderr
    listed = json.loads(ok(keyscope("keys", "list", "--json", "--store", url)))["apiKeys"]
    assert all(key["enabled"] for key in listed if key["name"] == "ops-1")

    ok(keyscope("keys", "delete", twin["id"], "--store", url))
    assert ok(keyscope("keys", "delete", "ops-1", "--store", url)) == f"deleted key {ops['id']}\n"


# 8. the web interface's words, the option at fault -----------------------------------------------------


def test_refusals_use_the_web_wording_and_name_the_option(url: str) -> None:
    ok(keyscope("apps", "create", "marketing", "--store", url))
    again = keyscope("apps", "create", "marketing", "--store", url)
    assert again.returncode == 1
    assert again.stderr.splitlines()[0] == (
        "keyscope: refused: An application with the id 'marketing' already exists. (HTTP 409)"
    )
    ok(keyscope("entities", "create", "c1", "--store", url))
    assert keyscope("entities", "create", "c1", "--store", url).stderr.startswith(
        "keyscope: refused: An entity with the id 'c1' already exists."
    )

    association = ["--resource-type", "NUMBER", "--channel", "SMS", "--resource-id", "447860099300"]
    missing = keyscope("associations", "create", *association, "--application", "nope", "--store", url)
    assert missing.returncode == 1 and "The application or entity does not exist." in missing.stderr
    ok(keyscope("associations", "create", *association, "--application", "marketing", "--store", url))
    twice = keyscope("associations", "create", *association, "--application", "marketing", "--store", url)
    assert twice.returncode == 1 and "This resource is already associated." in twice.stderr

    # the second --link fails: its line names that --link, not the first
    bad = keyscope("keys", "create", "--name", "k", "--link", "marketing", "--link", "nope:c1", "--store", url)
    assert bad.returncode == 1
    field_lines = bad.stderr.splitlines()[1:]
    assert field_lines and all(line.startswith("  --link nope:c1: platform[1].") for line in field_lines), field_lines

    # --application/--entity/--action make the first entry; --link entries follow
    first = keyscope("keys", "create", "--name", "k", "--application", "gone", "--link", "marketing", "--store", url)
    assert first.stderr.splitlines()[1].startswith("  --application gone: platform[0].applicationId")

    key = create_key(url, "--name", "k", "--primary")
    relinked = keyscope("keys", "update", key["id"], "--link", "marketing", "--link", ":ghost", "--store", url)
    assert relinked.returncode == 1
    assert relinked.stderr.splitlines()[1].startswith("  --link :ghost: platform[1].entityId")


def test_serve_takes_no_create(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--create", "serve", "--upstream", UPSTREAM]) == 2
    assert "--create does not apply to serve" in capsys.readouterr().err
