"""Step 8 end to end: the access line a real `keyscope serve` writes for each kind of answer, the X-Request-Id
round trip (client -> keyscope -> backend -> keyscope -> client), `--log-format text`, and uvicorn's own lines
as JSON on stderr."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import ADMIN_TOKEN, Echo, Gateway, Key, free_port, request_bytes

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
FIELDS = ["time", "client", "request_id", "method", "path", "key", "function", "decision", "status", "reason", "step",
          "upstream", "bytes_in", "bytes_out", "user_agent", "ms", "keyscope_ms", "upstream_ms"]


@pytest.fixture(scope="module")
def gateway(echo: Echo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:  # noqa: F811
    server = Gateway.start(echo.url, tmp_path_factory.mktemp("line"), "--upstream-timeout", "1",
                           "--trusted-proxies", "127.0.0.0/8")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keys(gateway: Gateway) -> dict[str, Key]:
    gateway.create_application("app-a")
    return {"primary": gateway.create_key("primary"), "linked": gateway.create_key("linked", {"applicationId": "app-a"})}


@pytest.fixture(scope="module")
def unreachable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    server = Gateway.start(f"http://127.0.0.1:{free_port()}", tmp_path_factory.mktemp("down"))  # nothing listens
    yield server
    server.stop()


def lines_of(path: Path, wanted: Callable[[dict[str, Any]], bool], count: int = 1) -> list[dict[str, Any]]:
    """The JSON lines of `path` that `wanted` picks, once there are `count` (access lines leave within 0.5 s)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        picked = [line for line in lines if wanted(line)]
        if len(picked) >= count or time.monotonic() > deadline:
            return picked
        time.sleep(0.05)


def line_for(gateway: Gateway, request_id: str) -> dict[str, Any]:
    [line] = lines_of(gateway.access_log, lambda line: line["request_id"] == request_id)
    assert list(line) == FIELDS
    assert ISO.fullmatch(line["time"])
    stamp = datetime.strptime(line["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert abs(stamp - time.time()) < 60
    assert line["ms"] >= 0 and line["keyscope_ms"] >= 0
    if line["upstream_ms"] is None:
        assert line["keyscope_ms"] == line["ms"]
    else:
        assert abs(line["keyscope_ms"] + line["upstream_ms"] - line["ms"]) <= 0.002
    return line


def header(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


def test_a_forwarded_request(gateway: Gateway, echo: Echo, keys: dict[str, Key]) -> None:  # noqa: F811
    echo.clear()
    body = b'{"hello":"world"}'
    answer = gateway.raw(request_bytes("POST", "/fwd/one?token=hidden", keys["primary"], "X-Request-Id: req.1:a-B_2",
                                       "User-Agent: probe/1.0 (\"quoted\")", "X-Forwarded-For: 203.0.113.9",
                                       "Content-Type: application/json", body=body))
    assert answer.status == 200
    assert header(answer.headers, "x-request-id") == ["req.1:a-B_2"]
    [seen] = echo.log()
    assert [value for name, value in seen["headers"] if name.lower() == "x-request-id"] == ["req.1:a-B_2"]
    line = line_for(gateway, "req.1:a-B_2")
    assert {name: line[name] for name in FIELDS if name not in ("time", "ms", "keyscope_ms", "upstream_ms")} == {
        "client": "203.0.113.9",  # through --trusted-proxies, as authentication reads it
        "request_id": "req.1:a-B_2", "method": "POST", "path": "/fwd/one", "key": keys["primary"].id,
        "function": None, "decision": "forwarded", "status": 200, "reason": None, "step": None, "upstream": 200,
        "bytes_in": len(body), "bytes_out": len(answer.body), "user_agent": 'probe/1.0 ("quoted")',
    }
    assert line["upstream_ms"] > 0
    text = gateway.access_log.read_text()
    assert keys["primary"].secret not in text and "hidden" not in text


def test_an_insane_request_id_is_replaced_everywhere(gateway: Gateway, echo: Echo, keys: dict[str, Key]) -> None:  # noqa: F811
    for given in ("bad id", "x" * 129, "a/b", ""):
        echo.clear()
        answer = gateway.raw(request_bytes("GET", "/fwd/two", keys["primary"], f"X-Request-Id: {given}"))
        assert answer.status == 200
        [returned] = header(answer.headers, "x-request-id")
        assert returned != given and SANE.fullmatch(returned)
        [seen] = echo.log()
        assert [value for name, value in seen["headers"] if name.lower() == "x-request-id"] == [returned]
        line = line_for(gateway, returned)
        assert (line["client"], line["decision"], line["user_agent"]) == ("127.0.0.1", "forwarded", None)


def test_a_refusal_then_the_same_refusal_answered_early(gateway: Gateway, echo: Echo,  # noqa: F811
                                                        keys: dict[str, Key]) -> None:
    """The first request goes the ASGI path (the key is not cached yet); the second is answered as it arrives."""
    echo.clear()
    lines = []
    for request_id in ("refused-asgi", "refused-early"):
        answer = gateway.raw(request_bytes("GET", "/sms/9/unlisted?applicationId=app-a", keys["linked"],
                                           f"X-Request-Id: {request_id}", "User-Agent: sdk/2"))
        assert answer.status == 403
        assert header(answer.headers, "x-request-id") == [request_id]
        line = line_for(gateway, request_id)
        assert line["bytes_out"] == len(answer.body) > 0
        lines.append({name: value for name, value in line.items()
                      if name not in ("time", "ms", "keyscope_ms", "request_id")})
    assert echo.log() == []
    assert lines[0] == lines[1] == {
        "client": "127.0.0.1", "method": "GET", "path": "/sms/9/unlisted", "key": keys["linked"].id,
        "function": None, "decision": "refused", "status": 403, "reason": lines[0]["reason"], "step": "allowlist",
        "upstream": None, "bytes_in": 0, "bytes_out": lines[0]["bytes_out"], "user_agent": "sdk/2",
        "upstream_ms": None,
    }
    assert lines[0]["reason"]


def test_an_early_refusal_of_a_body_counts_its_bytes(gateway: Gateway, keys: dict[str, Key]) -> None:
    body = json.dumps({"messages": [{"applicationId": "app-other"}]}).encode()
    for number in range(2):  # the first warms the caches; the second is answered early
        request_id = f"body-{number}"
        answer = gateway.raw(request_bytes("POST", "/sms/2/text/advanced", keys["linked"], f"X-Request-Id: {request_id}",
                                           "Content-Type: application/json", body=body))
        assert answer.status in (400, 403)
        assert header(answer.headers, "x-request-id") == [request_id]
        line = line_for(gateway, request_id)
        assert (line["function"], line["decision"], line["bytes_out"]) == ("Send SMS message", "refused",
                                                                            len(answer.body))
        assert line["reason"] and line["step"] and line["key"] == keys["linked"].id
        assert line["bytes_in"] == len(body)  # on either path


def test_a_refusal_without_a_key(gateway: Gateway) -> None:
    answer = gateway.raw(request_bytes("GET", "/anything", None))
    assert answer.status == 401
    [request_id] = header(answer.headers, "x-request-id")
    line = line_for(gateway, request_id)
    assert (line["key"], line["reason"], line["step"], line["status"]) == (None, "missing_credentials", "auth", 401)


def test_management_calls_log_who_made_them(gateway: Gateway, keys: dict[str, Key]) -> None:
    answer = gateway.raw(request_bytes("GET", "/provisioning/1/applications", None, f"Authorization: Bearer {ADMIN_TOKEN}",
                                       "X-Request-Id: by-admin"))
    assert answer.status == 200 and header(answer.headers, "x-request-id") == ["by-admin"]
    line = line_for(gateway, "by-admin")
    assert (line["key"], line["decision"], line["status"], line["bytes_out"]) == ("admin", "management", 200,
                                                                                   len(answer.body))
    answer = gateway.raw(request_bytes("GET", "/provisioning/1/applications", keys["primary"], "X-Request-Id: by-key"))
    assert answer.status == 200 and header(answer.headers, "x-request-id") == ["by-key"]
    assert (line_for(gateway, "by-key")["key"], line["decision"]) == (keys["primary"].id, "management")
    answer = gateway.raw(request_bytes("GET", "/provisioning/1/applications", None, "Authorization: Bearer wrong",
                                       "X-Request-Id: by-nobody"))
    assert answer.status == 401
    assert line_for(gateway, "by-nobody")["key"] is None
    text = gateway.access_log.read_text()
    assert ADMIN_TOKEN not in text and "wrong" not in text and keys["primary"].secret not in text


def stderr_lines(gateway: Gateway, wanted: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    return lines_of(gateway.error_log, wanted)


def test_a_502_says_why_in_its_line_and_on_stderr(unreachable: Gateway) -> None:
    key = unreachable.create_key("primary")
    answer = unreachable.raw(request_bytes("GET", "/down", key, "X-Request-Id: to-nowhere"))
    assert answer.status == 502 and header(answer.headers, "x-request-id") == ["to-nowhere"]
    line = line_for(unreachable, "to-nowhere")
    assert (line["decision"], line["status"], line["reason"], line["step"], line["upstream"]) == (
        "failed", 502, "upstream_refused", "upstream", None)
    assert line["bytes_out"] == len(answer.body) and line["upstream_ms"] is not None
    warnings = stderr_lines(unreachable, lambda entry: "to-nowhere" in entry["message"])
    assert len(warnings) == 1
    assert (warnings[0]["level"], warnings[0]["logger"]) == ("warning", "keyscope.proxy")
    assert "upstream_refused" in warnings[0]["message"]


def test_a_504_says_why_in_its_line_and_on_stderr(gateway: Gateway, keys: dict[str, Key]) -> None:
    answer = gateway.raw(request_bytes("GET", "/__echo/slow?seconds=3", keys["primary"], "X-Request-Id: too-slow"))
    assert answer.status == 504 and header(answer.headers, "x-request-id") == ["too-slow"]
    line = line_for(gateway, "too-slow")
    assert (line["decision"], line["status"], line["reason"], line["step"], line["upstream"]) == (
        "failed", 504, "upstream_timeout", "upstream", None)
    assert line["upstream_ms"] >= 900
    warnings = stderr_lines(gateway, lambda entry: "too-slow" in entry["message"])
    assert len(warnings) == 1 and "upstream_timeout" in warnings[0]["message"]


def test_uvicorn_and_keyscope_write_json_on_stderr(gateway: Gateway) -> None:
    started = stderr_lines(gateway, lambda entry: entry["logger"].startswith("uvicorn"))
    assert any("Uvicorn running on" in entry["message"] for entry in started)
    for text in gateway.error_log.read_text().splitlines():
        entry = json.loads(text)  # every line: nothing in uvicorn's own text format
        assert list(entry)[:4] == ["time", "level", "logger", "message"] and ISO.fullmatch(entry["time"])
        # only the audit trail's lines carry fields of their own, after these four (tests/test_audit.py)
        assert len(entry) == 4 or entry["logger"] == "keyscope.audit", entry


def test_the_text_format(echo: Echo, tmp_path: Path) -> None:  # noqa: F811
    server = Gateway.start(echo.url, tmp_path, "--log-format", "text", "--log-level", "warning")
    try:
        key = server.create_key("primary")
        answer = server.raw(request_bytes("GET", "/texty", key, "X-Request-Id: in-text", "User-Agent: a b"))
        assert answer.status == 200
        deadline = time.monotonic() + 5
        while "in-text" not in server.access_log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.stop()
    [line] = [text for text in server.access_log.read_text().splitlines() if 'request_id="in-text"' in text]
    assert re.match(r'time="\d{4}-\d\d-\d\dT[\d:.]+Z" client="127.0.0.1" request_id="in-text" method="GET" '
                    r'path="/texty" key="[^"]+" decision="forwarded" status=200 upstream=200 bytes_in=0 '
                    r'bytes_out=\d+ user_agent="a b" ms=[\d.]+ keyscope_ms=[\d.]+ upstream_ms=[\d.]+$', line), line
    errors = server.error_log.read_text()
    assert "Uvicorn running on" not in errors  # --log-level warning: uvicorn's info lines are left out
    assert not errors.lstrip().startswith("{")
