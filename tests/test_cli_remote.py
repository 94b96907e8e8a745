"""`keyscope --url URL --token T`: the CLI against a running `keyscope serve`, over HTTP.

Every command is run both ways against one gateway: in-process on the gateway's own store file (`--store`)
and remotely through its management API (`--url`/`--token`). The promise is that the two print the same and
exit the same; a command that changes something is run by one side and undone by the other, then repeated.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from gateway_helpers import ADMIN_TOKEN, Gateway, free_port

from keyscope.cli import remote as cli_remote
from keyscope.cli.main import main

SCRIPT = Path(sys.executable).with_name("keyscope")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "keyscope.cli"]


@dataclass(frozen=True)
class Result:
    status: int
    out: str
    err: str


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway.start("http://127.0.0.1:9", tmp_path_factory.mktemp("remote-cli"))
    try:
        yield gateway
    finally:
        gateway.stop()


def keyscope(*argv: str) -> Result:
    """`keyscope ARGV`, in this process (what the console script runs), with its output and exit status."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return Result(status, out.getvalue(), err.getvalue())


def url(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


def local(gateway: Gateway, *argv: str) -> Result:
    return keyscope("--store", gateway.store_url, *argv)


def remote(gateway: Gateway, *argv: str) -> Result:
    return keyscope("--url", url(gateway), "--token", ADMIN_TOKEN, *argv)


def both(gateway: Gateway, *argv: str) -> Result:
    """A command that changes nothing (or the same thing twice), run both ways: the same output and status."""
    here, there = local(gateway, *argv), remote(gateway, *argv)
    assert there == here, argv
    return here


def ping_pong(gateway: Gateway, do: tuple[str, ...], undo: tuple[str, ...], *, same=lambda r: r) -> Result:
    """`do` in-process, `undo` remotely, `do` remotely, `undo` in-process: each pair prints the same."""
    done_here = local(gateway, *do)
    undone_there = remote(gateway, *undo)
    done_there = remote(gateway, *do)
    undone_here = local(gateway, *undo)
    assert same(done_there) == same(done_here), do
    assert same(undone_there) == same(undone_here), undo
    assert done_here.status == 0 and undone_here.status == 0, (done_here, undone_here)
    return done_here


@pytest.mark.parametrize(("group", "noun"), [("apps", "application"), ("entities", "entity")])
def test_apps_and_entities_both_ways(gateway: Gateway, group: str, noun: str) -> None:
    ident = f"{group}-1"
    created = ping_pong(gateway, (group, "create", ident, "--name", "First"), (group, "delete", ident))
    assert created.out.startswith(f"created {noun} {ident}\n")
    ping_pong(gateway, ("--json", group, "create", ident), (group, "delete", ident, "--json"))

    assert local(gateway, group, "create", ident, "--name", "First").status == 0
    assert ident in both(gateway, group, "list").out
    assert both(gateway, group, "list", "--page", "0", "--size", "1", "--json").status == 0
    assert both(gateway, group, "show", ident).out.split() == [f"{noun}Id", ident, f"{noun}Name", "First"]
    assert both(gateway, group, "show", ident, "--json").status == 0
    assert both(gateway, group, "rename", ident, "Second").out.startswith(f"renamed {noun} {ident}\n")
    assert json.loads(both(gateway, group, "show", ident, "--json").out)[f"{noun}Name"] == "Second"

    refused = both(gateway, group, "create", ident)
    assert refused.status == 1 and f"with the id {ident!r} already exists" in refused.err
    missing = both(gateway, group, "show", "nope")
    assert missing.status == 1 and missing.err.startswith("keyscope: refused: ")
    assert both(gateway, group, "delete", "nope").status == 1
    assert local(gateway, group, "delete", ident).status == 0


def test_associations_both_ways(gateway: Gateway) -> None:
    assert local(gateway, "apps", "create", "assoc-app").status == 0
    assert remote(gateway, "entities", "create", "assoc-ent").status == 0
    association = ("--resource-type", "NUMBER", "--channel", "SMS", "--application", "assoc-app",
                   "--entity", "assoc-ent", "--resource-id", "447860099300")
    created = ping_pong(gateway, ("associations", "create", *association), ("associations", "delete", *association))
    assert created.out.startswith("created association\n")
    ping_pong(gateway, ("associations", "create", "--json", *association),
              ("associations", "delete", "--json", *association))

    assert local(gateway, "associations", "create", *association).status == 0
    assert "447860099300" in both(gateway, "associations", "list").out
    assert both(gateway, "associations", "list", "--application", "assoc-app", "--json").status == 0
    assert "447860099300" in both(gateway, "associations", "show", *association).out
    assert both(gateway, "associations", "create", *association).status == 1  # already associated
    orphan = ("--resource-type", "NUMBER", "--channel", "SMS", "--application", "nope", "--resource-id", "1")
    refused = both(gateway, "associations", "create", *orphan)
    assert refused.status == 1 and "does not exist" in refused.err
    assert local(gateway, "associations", "delete", *association).status == 0


KEY_ID = re.compile(r"\b[0-9A-F]{32}\b")
SECRET = re.compile(r"\b[0-9a-f]{32}-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\b")
PREFIX = re.compile(r"\b[0-9a-f]{8}\b")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?")


def generated(result: Result) -> Result:
    """The result without what differs between two creations: ids, secret, prefix, times."""

    def scrub(text: str) -> str:
        for pattern, placeholder in ((SECRET, "SECRET"), (KEY_ID, "ID"), (TIME, "TIME"), (PREFIX, "PREFIX")):
            text = pattern.sub(placeholder, text)
        return text

    return Result(result.status, scrub(result.out), scrub(result.err))


def key_id(result: Result) -> str:
    found = KEY_ID.search(result.out)
    assert found is not None, result
    return found.group()


def test_keys_both_ways(gateway: Gateway) -> None:
    assert remote(gateway, "apps", "create", "keys-app").status == 0
    assert remote(gateway, "entities", "create", "keys-ent").status == 0
    # created in-process, deleted remotely by name, created remotely, deleted in-process by name
    created = ping_pong(
        gateway,
        ("keys", "create", "--name", "pp", "--application", "keys-app", "--entity", "keys-ent", "--action", "FILL"),
        ("keys", "delete", "pp"),
        same=generated,
    )
    assert "secret: " in created.out
    ping_pong(gateway, ("keys", "create", "--json", "--name", "pp", "--primary"), ("keys", "delete", "pp", "--json"),
              same=generated)

    ident = key_id(local(gateway, "keys", "create", "--name", "k1", "--link", "keys-app:keys-ent:FORCE"))
    for named in (ident, "k1", ident[:8].lower(), ident[:10]):
        shown = both(gateway, "keys", "show", named)
        assert shown.status == 0 and shown.out.startswith(f"id          {ident}\n"), named
    assert both(gateway, "keys", "show", ident, "--json").status == 0
    assert "k1" in both(gateway, "keys", "list").out
    assert both(gateway, "keys", "list", "--name", "k1", "--json").status == 0
    assert both(gateway, "keys", "update", "k1", "--valid-to", "2031-01-01T00:00:00Z").status == 0
    # relinking makes new entries (new entry keys) each time: the same answer but for those
    relinked_here = local(gateway, "keys", "update", ident, "--link", "keys-app", "--json")
    relinked_there = remote(gateway, "keys", "update", ident, "--link", "keys-app", "--json")
    assert generated(relinked_there) == generated(relinked_here) and relinked_here.status == 0
    assert json.loads(relinked_there.out)["id"] == ident
    assert both(gateway, "keys", "revoke", "k1").out.startswith(f"revoked key {ident}\n")
    assert both(gateway, "keys", "enable", "k1").out.startswith(f"enabled key {ident}\n")
    assert both(gateway, "keys", "update", ident, "--name", "k1b").status == 0

    # the CLI's own errors, found by listing keys through the transport
    missing = both(gateway, "keys", "show", "no-such-key")
    assert (missing.status, missing.err.startswith("keyscope: There is no key 'no-such-key'")) == (1, True)
    assert local(gateway, "keys", "create", "--name", "twin", "--primary").status == 0
    assert remote(gateway, "keys", "create", "--name", "twin", "--primary").status == 0
    ambiguous = both(gateway, "keys", "delete", "twin")
    assert ambiguous.status == 2 and "matches 2 keys" in ambiguous.err
    # an API refusal names the option that caused it, both ways
    refused = both(gateway, "keys", "update", "k1b", "--link", "nope:keys-ent")
    assert refused.status == 1 and "--link nope:keys-ent" in refused.err

    assert both(gateway, "keys", "delete", "no-such-key").status == 1
    second = key_id(remote(gateway, "keys", "create", "--name", "k2", "--primary"))
    assert generated(local(gateway, "keys", "delete", "k1b")) == generated(remote(gateway, "keys", "delete", "k2"))
    assert both(gateway, "keys", "show", second).status == 1


def test_options_after_the_command_and_token_from_stdin(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSCOPE_STORE", "sqlite:////nonexistent/keyscope.db")  # not used with --url
    after = keyscope("apps", "list", "--url", url(gateway), "--token", ADMIN_TOKEN)
    assert after == local(gateway, "apps", "list")
    monkeypatch.setattr(sys, "stdin", io.StringIO(ADMIN_TOKEN + "\n"))
    assert keyscope("--url", url(gateway) + "/", "--token", "-", "apps", "list") == after


def test_a_wrong_token_is_one_line_and_exit_1(gateway: Gateway) -> None:
    result = keyscope("--url", url(gateway), "--token", "wrong", "keys", "list")
    says = f"keyscope: the gateway at {url(gateway)} refused the token (HTTP 401): --token must be its admin token\n"
    assert result == Result(1, "", says)


def test_an_unreachable_gateway_is_one_line_and_exit_2() -> None:
    address = f"http://127.0.0.1:{free_port()}"
    result = keyscope("--url", address, "--token", "t", "apps", "list")
    assert result == Result(2, "", f"keyscope: cannot reach the gateway at {address}: connection refused\n")


def test_a_gateway_that_does_not_answer_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_remote, "TIMEOUT", 0.3)
    with socket.socket() as silent:  # listens, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        result = keyscope("--url", address, "--token", "t", "apps", "list")
    assert result == Result(2, "", f"keyscope: the gateway at {address} did not answer within 0.3 s\n")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--url", "http://127.0.0.1:9", "--token", "t", "--store", "sqlite:///x.db", "apps", "list"),
         "--url and --store cannot be used together"),
        (("--url", "http://127.0.0.1:9", "--token", "t", "keys", "list", "--store", "sqlite:///x.db"),
         "--url and --store cannot be used together"),
        (("--url", "http://127.0.0.1:9", "--token", "t", "apps", "list", "--create"), "--create does not apply"),
        (("--url", "http://127.0.0.1:9", "apps", "list"), "--url needs --token"),
        (("--token", "t", "apps", "list"), "--token is for a remote gateway"),
        (("--url", "127.0.0.1:9", "--token", "t", "apps", "list"), "expected http://HOST:PORT"),
        (("--url", "http://127.0.0.1:9", "--token", "t", "init"), "init always runs locally"),
        (("--url", "http://127.0.0.1:9", "--token", "t", "explain", "--key-id", "x", "GET", "/"),
         "explain always runs locally"),
    ],
)
def test_usage_errors(argv: tuple[str, ...], says: str) -> None:
    result = keyscope(*argv)
    assert result.status == 2 and result.out == ""
    assert says in result.err.splitlines()[-1], result.err


def test_the_console_script_remotely(gateway: Gateway) -> None:
    """The real script, in its own process: exit statuses as a shell sees them, and --help says what is local."""
    run = lambda *a: subprocess.run([*COMMAND, *a], capture_output=True, text=True, timeout=60)  # noqa: E731
    listed = run("--url", url(gateway), "--token", ADMIN_TOKEN, "--json", "apps", "list")
    assert listed.returncode == 0
    assert json.loads(listed.stdout) == json.loads(local(gateway, "--json", "apps", "list").out)
    assert run("--url", url(gateway), "--token", "wrong", "apps", "list").returncode == 1
    assert run("--url", f"http://127.0.0.1:{free_port()}", "--token", "t", "apps", "list").returncode == 2
    assert "init, explain and serve always run locally" in " ".join(run("--help").stdout.split())


def test_a_server_that_is_not_a_gateway_is_one_line_and_exit_2() -> None:
    import http.server
    import threading

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>hello</html>")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"http://127.0.0.1:{server.server_address[1]}"
        result = keyscope("--url", address, "--token", "t", "apps", "list")
    finally:
        server.shutdown()
        server.server_close()
    assert result == Result(2, "", f"keyscope: {address} did not answer as a keyscope gateway (HTTP 200, text/html)\n")


def test_keyscope_url_and_token_from_the_environment(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """KEYSCOPE_URL / KEYSCOPE_TOKEN stand for --url / --token; an explicit --store still runs locally."""
    monkeypatch.setenv("KEYSCOPE_URL", url(gateway))
    monkeypatch.setenv("KEYSCOPE_TOKEN", ADMIN_TOKEN)
    remote = keyscope("apps", "list")
    assert remote.status == 0 and remote == local(gateway, "apps", "list")
    monkeypatch.setenv("KEYSCOPE_TOKEN", "not-the-token")
    refused = keyscope("apps", "list")
    assert refused.status == 1 and "refused the token" in refused.err
    assert local(gateway, "apps", "list").status == 0  # --store wins over the environment
