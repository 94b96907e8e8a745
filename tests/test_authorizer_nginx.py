"""`keyscope authorize --contract nginx` behind a real nginx (Debian's nginx-light), with docs/nginx.conf as is.

nginx runs as a child process (no daemon, its own prefix, pid file and temporary folders under tmp_path) in
front of the echo backend, asking `keyscope authorize` with `auth_request` before each request; only the three
addresses of docs/nginx.conf are changed to free ports. Without nginx the tests are skipped, unless
`KEYSCOPE_REQUIRE_NGINX=1` (CI) makes that a failure.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from authorizer_helpers import Authorizer, seeded_store
from gateway_helpers import Echo, Key, free_port, raw, stop, wait_listening

CONFIG = Path(__file__).resolve().parents[1] / "docs" / "nginx.conf"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
REQUIRED = os.environ.get("KEYSCOPE_REQUIRE_NGINX") == "1"

if NGINX is None:
    if REQUIRED:
        raise RuntimeError("KEYSCOPE_REQUIRE_NGINX=1 but there is no nginx: apt-get install nginx-light")
    pytestmark = pytest.mark.skip(reason="nginx is not installed (apt-get install nginx-light); "
                                  "KEYSCOPE_REQUIRE_NGINX=1 makes this a failure")

MAIN = """daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {site};
}}
"""


@dataclass
class Stack:
    nginx: subprocess.Popen[bytes]
    port: int
    echo: Echo
    authorizer: Authorizer
    keys: dict[str, Key]
    client: httpx.Client

    def get(self, target: str, key: Key | None, **kwargs: Any) -> httpx.Response:
        return self.request("GET", target, key, **kwargs)

    def request(self, method: str, target: str, key: Key | None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"App {key.secret}"
        return self.client.request(method, target, headers=headers, **kwargs)

    def backend_saw(self) -> list[dict[str, Any]]:
        return self.echo.log()


def site_config(folder: Path, port: int, authorizer: int, backend: int) -> Path:
    """docs/nginx.conf with its three addresses on the test's ports."""
    text = CONFIG.read_text()
    for old, new in (("127.0.0.1:9100", authorizer), ("127.0.0.1:9000", backend), ("127.0.0.1:8080", port)):
        assert text.count(old) == 1, f"docs/nginx.conf must name {old} once"
        text = text.replace(old, f"127.0.0.1:{new}")
    site = folder / "keyscope.conf"
    site.write_text(text)
    return site


def start_nginx(folder: Path, authorizer: int, backend: int) -> tuple[subprocess.Popen[bytes], int]:
    """nginx with docs/nginx.conf in front of `backend`, asking the authorizer on port `authorizer`."""
    assert NGINX is not None
    port = free_port()
    prefix = folder / "prefix"
    prefix.mkdir()
    main = prefix / "nginx.conf"
    main.write_text(MAIN.format(prefix=prefix, site=site_config(folder, port, authorizer, backend)))
    tested = subprocess.run([NGINX, "-t", "-p", str(prefix), "-c", str(main), "-e", str(prefix / "error.log")],
                            check=False, capture_output=True, text=True, timeout=30)
    assert tested.returncode == 0, tested.stderr
    nginx = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(main), "-e", str(prefix / "error.log")])
    try:
        wait_listening(port, nginx, "nginx")
    except RuntimeError:
        stop(nginx)
        raise
    return nginx, port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("nginx")
    store_url, keys = seeded_store(folder)
    echo = Echo.start()
    authorizer = Authorizer.start("nginx", store_url, folder, "--trusted-proxies", "127.0.0.1")
    nginx = None
    try:
        nginx, port = start_nginx(folder, authorizer.port, echo.port)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        yield Stack(nginx, port, echo, authorizer, keys, client)
        client.close()
    finally:
        stop(nginx)
        authorizer.stop()
        echo.stop()


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    stack.echo.clear()
    return stack


def header(saw: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in saw["headers"] if key.lower() == name]


def test_allowed_reaches_the_backend_with_the_identity_headers(fresh: Stack) -> None:
    answer = fresh.get("/sms/1/logs?applicationId=marketing&entityId=customer-a", fresh.keys["pair"],
                       headers={"X-Keyscope-Application-Id": "transactional", "X-Request-Id": "req-nginx-1"})
    assert answer.status_code == 200, answer.text
    (saw,) = fresh.backend_saw()
    assert saw["path"] == "/sms/1/logs" and saw["query"] == "applicationId=marketing&entityId=customer-a"
    assert header(saw, "x-keyscope-key-id") == [fresh.keys["pair"].id]
    assert header(saw, "x-keyscope-application-id") == ["marketing"]  # the client's copy is replaced
    assert header(saw, "x-keyscope-entity-id") == ["customer-a"]
    assert header(saw, "x-request-id") == ["req-nginx-1"]
    assert header(saw, "authorization") == []  # the key never reaches the backend, as with keyscope serve


def test_a_primary_key_gets_no_identity_but_its_id_and_no_client_copy(fresh: Stack) -> None:
    answer = fresh.request("DELETE", "/whatever/you/like", fresh.keys["primary"],
                           headers={"X-Keyscope-Application-Id": "transactional", "X-Keyscope-Entity-Id": "x"})
    assert answer.status_code == 200, answer.text
    (saw,) = fresh.backend_saw()
    assert saw["method"] == "DELETE"
    assert header(saw, "x-keyscope-key-id") == [fresh.keys["primary"].id]
    assert header(saw, "x-keyscope-application-id") == [] and header(saw, "x-keyscope-entity-id") == []


def test_a_linked_key_naming_another_application_is_refused(fresh: Stack) -> None:
    answer = fresh.get("/sms/1/logs?applicationId=transactional", fresh.keys["linked"])
    assert answer.status_code == 403
    # keyscope's own body in the endpoint's error family, through error_page and /refusal
    assert answer.headers["content-type"].startswith("application/json")
    assert "transactional" in answer.text and "requestError" in answer.json()
    assert answer.headers.get("x-request-id")
    assert fresh.backend_saw() == []


def test_no_key_is_a_401_with_keyscope_s_challenge(fresh: Stack) -> None:
    answer = fresh.get("/sms/1/logs?applicationId=marketing", None)
    assert answer.status_code == 401
    assert answer.headers.get("www-authenticate") == "App"
    assert "requestError" in answer.json()
    assert fresh.backend_saw() == []


@pytest.mark.parametrize(
    ("target", "key_name", "status", "word"),
    [
        ("/sms/1/logs?applicationId=nobody", "primary", 400, "nobody"),  # existence: not a 500 from nginx
        ("/sms/1/logs?applicationId=marketing&applicationId=marketing", "linked", 400, None),  # ambiguous
        ("/sms/1/logs?" + "&".join(f"p{i}=1" for i in range(150)), "linked", 400, None),  # too many params
    ],
)
def test_other_refusals_keep_their_status_and_body(fresh: Stack, target: str, key_name: str, status: int,
                                                   word: str | None) -> None:
    answer = fresh.get(target, fresh.keys[key_name])
    assert answer.status_code == status, answer.text
    assert "requestError" in answer.json()
    if word:
        assert word in answer.text
    assert fresh.backend_saw() == []


def test_a_431_keeps_its_status_too(fresh: Stack) -> None:
    headers = {f"X-Extra-{i}": "1" for i in range(120)}  # more header lines than --max-headers
    answer = fresh.get("/sms/1/logs?applicationId=marketing", fresh.keys["linked"], headers=headers)
    assert answer.status_code == 431 and "requestError" in answer.json()
    assert fresh.backend_saw() == []


def test_a_rate_limited_key_gets_its_429_and_headers(fresh: Stack) -> None:
    first = fresh.get("/sms/1/logs?applicationId=marketing", fresh.keys["limited"])
    assert first.status_code == 200 and first.headers["ratelimit-remaining"] == "0"
    assert "ratelimit-limit" not in fresh.get("/sms/1/logs?applicationId=marketing", fresh.keys["linked"]).headers
    answer = fresh.get("/sms/1/logs?applicationId=marketing", fresh.keys["limited"])
    assert answer.status_code == 429 and "requestError" in answer.json()
    assert answer.headers["ratelimit-limit"] == "1" and answer.headers["ratelimit-remaining"] == "0"
    assert int(answer.headers["retry-after"]) > 0
    assert len(fresh.backend_saw()) == 2
    # decided and counted once: the replay through /refusal is no second check
    assert len(_lines(fresh.authorizer, lambda line: line["key"] == fresh.keys["limited"].id)) == 2


def test_without_error_page_a_refusal_is_still_a_refusal(fresh: Stack) -> None:
    """The check answers nginx 401 or 403 whatever keyscope's status, never something nginx makes a 500."""
    check = _check(fresh, "GET", "/sms/1/logs?applicationId=nobody", fresh.keys["primary"])
    assert check.status == 403
    got = {name.lower(): value for name, value in check.headers}
    assert got["x-keyscope-status"] == "400"
    assert b"nobody" in base64.urlsafe_b64decode(got["x-keyscope-refusal"])  # the body, for /refusal


def test_a_body_id_endpoint_is_refused_for_a_linked_key(fresh: Stack) -> None:
    doc = {"messages": [{"applicationId": "marketing", "text": "hi"}]}
    answer = fresh.request("POST", "/sms/2/text/advanced", fresh.keys["linked"], json=doc)
    assert answer.status_code == 403
    assert "does not send" in answer.text  # body_not_forwarded, said in the body
    # chunked (no Content-Length): X-Original-Body says there is a body all the same
    answer = fresh.request("POST", "/sms/2/text/advanced", fresh.keys["linked"],
                           content=iter([json.dumps(doc).encode()]), headers={"Content-Type": "application/json"})
    assert answer.status_code == 403 and "does not send" in answer.text
    assert fresh.backend_saw() == []
    lines = _lines(fresh.authorizer, lambda line: line["reason"] == "body_not_forwarded")
    assert lines[-1]["decision"] == "refused" and lines[-1]["status"] == 403


def test_a_fill_key_without_ids_is_refused_rather_than_rewritten(fresh: Stack) -> None:
    assert fresh.get("/sms/1/logs?applicationId=marketing", fresh.keys["fill"]).status_code == 200
    answer = fresh.get("/sms/1/logs", fresh.keys["fill"])
    assert answer.status_code == 403 and "FILL/FORCE" in answer.text
    assert len(fresh.backend_saw()) == 1


def test_a_client_sent_x_original_uri_is_replaced_by_nginx(fresh: Stack) -> None:
    answer = fresh.get("/sms/1/logs?applicationId=transactional", fresh.keys["linked"],
                       headers={"X-Original-URI": "/sms/1/logs?applicationId=marketing",
                                "X-Original-Method": "GET", "X-Original-Body": ","})
    assert answer.status_code == 403 and "transactional" in answer.text
    assert fresh.backend_saw() == []


def test_non_canonical_targets_are_refused_before_the_backend(fresh: Stack) -> None:
    request = (b"GET /sms/1/%6Cogs?applicationId=marketing HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n"
               b"Authorization: App " + fresh.keys["linked"].secret.encode() + b"\r\n\r\n")
    answer = raw(fresh.port, request)
    assert answer.status == 400 and b"requestError" in answer.body
    assert fresh.backend_saw() == []


def test_every_check_has_its_access_line(fresh: Stack) -> None:
    fresh.get("/sms/1/logs?applicationId=marketing", fresh.keys["linked"], headers={"X-Request-Id": "line-1"})
    line = _lines(fresh.authorizer, lambda line: line["request_id"] == "line-1")[-1]
    assert line["decision"] == "admitted" and line["path"] == "/sms/1/logs" and line["method"] == "GET"
    assert line["function"] == "Get outbound SMS message logs" and line["client"] == "127.0.0.1"


def test_an_envoy_mode_authorizer_never_follows_x_original_uri(stack: Stack, tmp_path: Path) -> None:
    """The contract is the authorizer's configuration: the same nginx asking an Envoy-mode authorizer gets the
    check request's own path checked (/_keyscope/check, not allowlisted) and its X-Original-URI refused (400,
    which nginx makes a 500): never an admission of the URI a header names."""
    envoy = Authorizer.start("envoy", stack.authorizer.store_url, tmp_path)  # the same store, as a second worker
    nginx = None
    try:
        nginx, port = start_nginx(tmp_path, envoy.port, stack.echo.port)
        stack.echo.clear()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for key in (stack.keys["linked"], stack.keys["primary"]):
                answer = client.get("/sms/1/logs?applicationId=marketing",
                                    headers={"Authorization": f"App {key.secret}"})
                assert answer.status_code == 500
        assert stack.backend_saw() == []
        lines = _lines(envoy, lambda line: line["reason"] == "rewrite_header")
        assert {line["path"] for line in lines} == {"/_keyscope/check"}
    finally:
        stop(nginx)
        envoy.stop()


def test_a_5xx_is_a_5xx_for_the_client_too(stack: Stack, tmp_path: Path) -> None:
    """A rate-limit store that does not answer, with `--rate-limit-on-error deny`: 503, through nginx."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nowhere = closed.getsockname()[1]
    denying = Authorizer.start("nginx", stack.authorizer.store_url, tmp_path, "--rate-limit-on-error", "deny",
                               "--rate-limit-store", f"redis://127.0.0.1:{nowhere}/0")
    nginx = None
    try:
        nginx, port = start_nginx(tmp_path, denying.port, stack.echo.port)
        stack.echo.clear()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            answer = client.get("/sms/1/logs?applicationId=marketing",
                                headers={"Authorization": f"App {stack.keys['limited'].secret}"})
            assert answer.status_code == 503 and "requestError" in answer.json()
            unlimited = client.get("/sms/1/logs?applicationId=marketing",
                                   headers={"Authorization": f"App {stack.keys['linked'].secret}"})
            assert unlimited.status_code == 200
        assert len(stack.backend_saw()) == 1
    finally:
        stop(nginx)
        denying.stop()


def _check(stack: Stack, method: str, target: str, key: Key) -> Any:
    """A check request as docs/nginx.conf makes it, sent straight to the authorizer."""
    data = (f"GET /_keyscope/check HTTP/1.0\r\nHost: keyscope_authorizer\r\nConnection: close\r\n"
            f"X-Original-URI: {target}\r\nX-Original-Method: {method}\r\nX-Original-Body: ,\r\n"
            f"Authorization: App {key.secret}\r\n\r\n").encode()
    return raw(stack.authorizer.port, data)


def _lines(authorizer: Authorizer, wanted: Any, timeout: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in authorizer.lines() if wanted(line)]
        if lines or time.monotonic() > deadline:
            assert lines, authorizer.access_log.read_text()[-2000:]
            return lines
        time.sleep(0.1)

