"""`make demo` as a newcomer runs it: the printed commands do what the text next to them says."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(
    tmp_path: Path, port: int, backend_port: int, status_port: int | None = None
) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "keyscope.demo", "--port", str(port), "--backend-port", str(backend_port),
         "--status-port", str(status_port or _free_port()), "--data-dir", str(tmp_path / "demo-data")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C stops"):
            return process, "".join(lines)
    process.kill()
    raise AssertionError("the demo did not print its instructions:\n" + "".join(lines))


def _keys(text: str) -> dict[str, str]:
    found = dict(re.findall(r"^  (primary|linked|admin)[^\n]*?\s(\S+)$", text, re.M))
    found["fill"] = re.search(r"action FILL\s+(\S+)$", text, re.M).group(1)  # type: ignore[union-attr]
    return found


def _stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=20)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_demo_commands_do_what_they_say_and_stop_cleanly(tmp_path: Path, stop_signal: signal.Signals) -> None:
    port, backend_port = _free_port(), _free_port()
    process, text = _start(tmp_path, port, backend_port)
    try:
        keys = _keys(text)
        base = f"http://127.0.0.1:{port}"
        send = {"messages": [{"destinations": [{"to": "41793026727"}], "text": "Hi",
                              "applicationId": "marketing", "entityId": "customer-a"}]}
        with httpx.Client(base_url=base, timeout=10) as client:
            allowed = client.post("/sms/2/text/advanced", json=send, headers={"Authorization": f"App {keys['linked']}"})
            assert allowed.status_code == 200
            echoed = allowed.json()
            assert echoed["path"] == "/sms/2/text/advanced"
            assert ["x-keyscope-application-id", "marketing"] in echoed["headers"]

            send["messages"][0]["applicationId"] = "transactional"
            refused = client.post("/sms/2/text/advanced", json=send, headers={"Authorization": f"App {keys['linked']}"})
            assert refused.status_code == 403

            management = client.get("/provisioning/1/applications", headers={"Authorization": f"App {keys['linked']}"})
            assert management.status_code == 403

            filled = client.get("/sms/1/logs?limit=10", headers={"Authorization": f"App {keys['fill']}"})
            assert filled.status_code == 200
            assert filled.json()["query"] == "limit=10&applicationId=marketing"

            listed = client.get("/provisioning/1/applications", headers={"Authorization": f"App {keys['primary']}"})
            ids = [a["applicationId"] for a in listed.json()["results"]]
            assert ids == ["default", "marketing", "transactional"]
        # every curl command printed is complete and names this run's gateway
        commands = [line.strip() for line in text.splitlines() if line.strip().startswith("curl ")]
        assert len(commands) == 5 and all(base in command for command in commands)
    finally:
        process.send_signal(stop_signal)
        code = process.wait(timeout=20)
    assert code == 0
    for number in (port, backend_port):  # nothing left listening
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", number)) != 0


def test_a_second_demo_needs_no_cleanup(tmp_path: Path) -> None:
    secrets = []
    for _ in range(2):
        port, backend_port = _free_port(), _free_port()
        process, text = _start(tmp_path, port, backend_port)
        try:
            keys = _keys(text)
            secrets.append(keys["linked"])
            response = httpx.get(f"http://127.0.0.1:{port}/provisioning/1/applications",
                                 headers={"Authorization": f"App {keys['primary']}"}, timeout=10)
            assert response.status_code == 200
            assert json.loads(response.text)["paging"]["totalResults"] == 3
        finally:
            assert _stop(process) == 0
    assert secrets[0] != secrets[1]


def test_demo_refuses_a_busy_port(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "keyscope.demo", "--port", str(taken), "--backend-port", str(_free_port()),
             "--status-port", "0",
             "--data-dir", str(tmp_path / "d")],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 2
    assert f"127.0.0.1:{taken}" in result.stderr and "in use" in result.stderr


def test_the_demo_serves_health_and_readiness(tmp_path: Path) -> None:
    status_port = _free_port()
    process, _ = _start(tmp_path, _free_port(), _free_port(), status_port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{status_port}", timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True
    finally:
        assert _stop(process) == 0
