"""`keyscope serve` settings and start-up: precedence of the sources, and configuration errors that stop start-up
with one line on stderr and exit status 2 before anything listens. Also `--workers 2`."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gateway_helpers import ADMIN_TOKEN, Echo, Gateway, free_port, init_store, request_bytes, wait_listening

from keyscope.core.settings import ConfigError, Settings, load

UPSTREAM = "http://127.0.0.1:9"


def test_defaults() -> None:
    settings = load({"upstream": UPSTREAM}, environ={})
    assert settings == Settings(upstream=UPSTREAM)
    assert (settings.store, settings.port, settings.max_body_size, settings.key_cache_ttl) == (
        "sqlite:///keyscope.db", 8080, 1024 * 1024, 5.0,
    )


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    file = tmp_path / "keyscope.yaml"
    file.write_text("upstream: http://file:1\nport: 1111\nworkers: 3\nmax-body-size: 10\ntrusted_proxies: [10.0.0.0/8]\n")
    environ = {"KEYSCOPE_PORT": "2222", "KEYSCOPE_WORKERS": "4", "KEYSCOPE_ADMIN_TOKEN": "from-env"}
    settings = load({"port": 3333, "workers": None}, environ=environ, config_file=str(file))
    assert settings.port == 3333  # flag
    assert settings.workers == 4  # environment
    assert settings.upstream == "http://file:1" and settings.max_body_size == 10  # file
    assert settings.trusted_proxies == ("10.0.0.0/8",)
    assert settings.admin_token == "from-env"
    assert settings.upstream_timeout == 30.0  # default


def test_config_file_from_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "k.yaml"
    file.write_text("upstream: http://file:1/base/\naccess-log: false\n")
    settings = load({}, environ={"KEYSCOPE_CONFIG": str(file), "KEYSCOPE_TRUSTED_PROXIES": "127.0.0.1, ::1"})
    assert settings.upstream == "http://file:1/base"
    assert settings.access_log is False
    assert settings.trusted_proxies == ("127.0.0.1", "::1")


@pytest.mark.parametrize(
    ("flags", "environ", "file_text", "message"),
    [
        ({}, {}, None, "no upstream"),
        ({"upstream": "ftp://x"}, {}, None, "http:// or https://"),
        ({"upstream": "http://"}, {}, None, "http:// or https://"),
        ({"upstream": "http://x:99999"}, {}, None, "not a valid URL"),
        ({"upstream": "http://x/?q=1"}, {}, None, "query"),
        ({"upstream": "http://user:pw@x"}, {}, None, "credentials"),
        ({"upstream": UPSTREAM}, {"KEYSCOPE_PORT": "eighty"}, None, "KEYSCOPE_PORT"),
        ({"upstream": UPSTREAM}, {"KEYSCOPE_ACCESS_LOG": "maybe"}, None, "KEYSCOPE_ACCESS_LOG"),
        ({"upstream": UPSTREAM, "workers": 0}, {}, None, "workers"),
        ({"upstream": UPSTREAM, "upstream_timeout": 0.0}, {}, None, "upstream-timeout"),
        ({"upstream": UPSTREAM, "trusted_proxies": "10.0.0.0/33"}, {}, None, "trusted-proxies"),
        ({"upstream": UPSTREAM}, {}, "colour: blue\n", "unknown setting 'colour'"),
        ({"upstream": UPSTREAM}, {}, "- a list\n", "mapping"),
        ({"upstream": UPSTREAM}, {}, "port: [1\n", "not valid YAML"),
        ({"upstream": UPSTREAM}, {}, "port: 1.5\n", "port"),
        ({"upstream": UPSTREAM, "admin_listen": "127.0.0.1:8081"}, {}, None, "needs an admin token"),
        ({"upstream": UPSTREAM, "admin_listen": "nowhere"}, {"KEYSCOPE_ADMIN_TOKEN": "t"}, None, "HOST:PORT"),
        ({"upstream": UPSTREAM, "admin_listen": "8080"}, {"KEYSCOPE_ADMIN_TOKEN": "t"}, None, "traffic port"),
        ({"upstream": UPSTREAM}, {"KEYSCOPE_ADMIN_IDLE_TIMEOUT": "-1"}, None, "admin-idle-timeout"),
        ({"upstream": UPSTREAM, "rate_limit_store": "http://127.0.0.1:6379"}, {}, None, "expected redis://"),
        ({"upstream": UPSTREAM, "rate_limit_store": "redis://127.0.0.1:99999"}, {}, None, "the port is not"),
        ({"upstream": UPSTREAM, "rate_limit_store": "redis://127.0.0.1/zero"}, {}, None, "database must be a number"),
        ({"upstream": UPSTREAM}, {"KEYSCOPE_RATE_LIMIT_STORE": "redis:///0"}, None, "rate-limit-store"),
    ],
)
def test_bad_settings_are_one_clear_error(
    flags: dict[str, object], environ: dict[str, str], file_text: str | None, message: str, tmp_path: Path
) -> None:
    file = None
    if file_text is not None:
        file = tmp_path / "bad.yaml"
        file.write_text(file_text)
    with pytest.raises(ConfigError) as caught:
        load(flags, environ=environ, config_file=str(file) if file else None)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_admin_listen_defaults_to_loopback() -> None:
    from keyscope.core.settings_option import listen_address

    assert listen_address("8081") == ("127.0.0.1", 8081)
    assert listen_address("0.0.0.0:8081") == ("0.0.0.0", 8081)
    assert listen_address("[::1]:8081") == ("::1", 8081)
    settings = load({"upstream": UPSTREAM}, environ={"KEYSCOPE_ADMIN_LISTEN": "9000", "KEYSCOPE_ADMIN_TOKEN": "t"})
    assert settings.admin_listen == "9000" and settings.admin_idle_timeout is None


def test_secrets_are_not_in_the_settings_repr() -> None:
    settings = Settings(upstream=UPSTREAM, admin_token="top-secret", upstream_authorization="Basic c2VjcmV0")
    assert "top-secret" not in repr(settings) and "c2VjcmV0" not in repr(settings)


def serve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    return subprocess.run(
        [sys.executable, "-m", "keyscope.serve.server", *args, "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=env,
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--upstream", "not a url"], "upstream"),
        (["--upstream", UPSTREAM, "--endpoints", "broken.yaml"], "endpoints"),
        (["--upstream", UPSTREAM, "--endpoints", "missing.yaml"], "missing.yaml"),
        (["--upstream", UPSTREAM, "--store", "sqlite:///no/such/folder/k.db"], "does not exist"),
        (["--upstream", UPSTREAM, "--store", "mysql://x"], "unsupported store URL"),
        (["--upstream", UPSTREAM, "--store", "postgresql://nobody:pw@127.0.0.1:1/x"], "cannot open store"),
        (["--upstream", UPSTREAM, "--config", "bad-config.yaml"], "unknown setting"),
    ],
)
def test_configuration_errors_stop_start_up_with_one_line_and_status_2(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    (tmp_path / "broken.yaml").write_text(  # one problem: one line (several: one each, below)
        "endpoints:\n  - {function: x, method: FETCH, path: /x, group: g, ids: [query], errors: legacy}\n"
    )
    (tmp_path / "bad-config.yaml").write_text("upstream: http://127.0.0.1:9\nmax_body: 5\n")
    result = serve(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("keyscope serve: ") and expected in lines[0]
    assert "pw@" not in lines[0]  # a store password is never printed


def test_a_broken_endpoints_file_prints_one_line_per_problem(tmp_path: Path) -> None:
    (tmp_path / "three.yaml").write_text(
        "endpoints:\n"
        "  - {function: a, method: FETCH, path: /a, group: g, ids: [query], errors: legacy}\n"
        "  - {function: b, method: GET, path: b, group: g, ids: [query], errors: legacy}\n"
        "  - {function: c, method: GET, path: /c, group: g, ids: [query], errors: legacy, colour: red}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    result = subprocess.run(  # the console script itself, as a user types it
        [str(Path(sys.executable).parent / "keyscope"), "serve", "--upstream", UPSTREAM,
         "--endpoints", "three.yaml", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert all(line.startswith("keyscope serve: endpoints: three.yaml:") for line in lines), result.stderr
    assert "three.yaml:2: entry 1 (FETCH /a): " in lines[0] and "FETCH" in lines[0]
    assert "three.yaml:3: entry 2 (GET b): " in lines[1]
    assert "three.yaml:4: entry 3 (GET /c): " in lines[2] and "colour" in lines[2]


def test_a_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
        init_store(f"sqlite:///{tmp_path / 'keyscope.db'}")  # the default store, which serve never creates
        result = subprocess.run(
            [sys.executable, "-m", "keyscope.serve.server", "--upstream", UPSTREAM, "--port", str(port)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
        )
    assert result.returncode == 2
    assert result.stderr.strip() == f"keyscope serve: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_console_script_serve_is_wired(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    result = subprocess.run(
        [sys.executable, "-m", "keyscope.cli", "serve", "--upstream", "gopher://x"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
    )
    assert result.returncode == 2
    assert "http:// or https://" in result.stderr


def test_two_workers_serve_and_share_the_store(tmp_path: Path) -> None:
    echo = Echo.start()
    gateway = Gateway.start(echo.url, tmp_path, "--workers", "2", env={"KEYSCOPE_ACCESS_LOG": "false"})
    try:
        gateway.create_application("app-a")
        key = gateway.create_key("linked", {"applicationId": "app-a"})
        statuses = {gateway.raw(request_bytes("GET", "/sms/1/logs?applicationId=app-a", key)).status
                    for _ in range(20)}
        assert statuses == {200}
        assert len(echo.log()) == 20
        assert gateway.access_log.read_text() == ""  # --no-access-log through the environment
        assert gateway.admin("GET", "/provisioning/1/applications").status_code == 200
        assert ADMIN_TOKEN not in gateway.error_log.read_text()
        # a revocation made through one worker reaches the other (whose cache is warm) without a restart
        gateway.update_key(key, {"enabled": False})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            statuses = {gateway.raw(request_bytes("GET", "/sms/1/logs?applicationId=app-a", key)).status
                        for _ in range(10)}
            if statuses == {401}:
                break
            time.sleep(0.05)
        assert statuses == {401}
    finally:
        gateway.stop()
        echo.stop()


def test_last_used_is_written_off_the_request_path_and_at_shutdown(tmp_path: Path) -> None:
    echo = Echo.start()
    gateway = Gateway.start(echo.url, tmp_path)
    try:
        first = gateway.create_key("first")
        second = gateway.create_key("second")
        assert gateway.request("GET", "/one", first).status_code == 200  # the process's first use: written soon
        deadline = time.monotonic() + 10
        while gateway.admin("GET", f"/settings/2/api-keys/{first.id}").json()["lastUsed"] is None:
            assert time.monotonic() < deadline, "lastUsed of the first key was never written"
            time.sleep(0.05)
        assert gateway.request("GET", "/two", second).status_code == 200  # within the minute: kept in memory
        assert gateway.admin("GET", f"/settings/2/api-keys/{second.id}").json()["lastUsed"] is None
    finally:
        gateway.stop()  # a graceful shutdown writes what is pending
    restarted = Gateway.start(echo.url, tmp_path)
    try:
        assert restarted.admin("GET", f"/settings/2/api-keys/{second.id}").json()["lastUsed"] is not None
    finally:
        restarted.stop()
        echo.stop()


@pytest.mark.parametrize("token", [None, "a-token-of-some-length"])
def test_serve_without_an_admin_token_says_so_once(tmp_path: Path, token: str | None) -> None:
    store_url = f"sqlite:///{tmp_path / 'keyscope.db'}"
    init_store(store_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    if token is not None:
        env["KEYSCOPE_ADMIN_TOKEN"] = token
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "keyscope.serve.server", "--upstream", UPSTREAM, "--store", store_url, "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=tmp_path,
    )
    try:
        wait_listening(port, process, "keyscope serve")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    warnings = [line for line in stderr.decode().splitlines() if "no admin token" in line]
    assert len(warnings) == (1 if token is None else 0), stderr.decode()
