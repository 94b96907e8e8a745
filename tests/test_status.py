"""`keyscope serve --status-listen`: /healthz and /readyz on a listener of their own, and the drain on SIGTERM.

Everything through real processes: `keyscope serve` in front of the echo backend, on a SQLite store; states are
waited for with deadlines, never with fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_helpers import ADMIN_TOKEN, Echo, Gateway, Key, free_port, request_bytes

from keyscope.core.settings import ConfigError, load
from keyscope.store.sqlite import SQLiteStore

UPSTREAM = "http://127.0.0.1:9"
LOGS = "/sms/1/logs?applicationId=app-a"


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    backend = Echo.start()
    yield backend
    backend.stop()


def start(echo: Echo, folder: Path, *extra: str) -> tuple[Gateway, httpx.Client]:
    port = free_port()
    gateway = Gateway.start(echo.url, folder, "--status-listen", f"127.0.0.1:{port}", *extra)
    status = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    wait_for(lambda: _answers(status), "the status listener to answer")
    return gateway, status


def _answers(status: httpx.Client) -> bool:
    try:
        return status.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def wait_for(condition, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.02)


def linked_key(gateway: Gateway) -> Key:
    gateway.create_application("app-a")
    return gateway.create_key("linked", {"applicationId": "app-a"})


def test_healthz_and_readyz_answer_without_a_key(echo: Echo, tmp_path: Path) -> None:
    gateway, status = start(echo, tmp_path)
    try:
        health = status.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert health.headers["content-type"] == "application/json"
        ready = status.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"ready": True, "store": "ok", "allowlist": "loaded", "draining": False}
        head = status.head("/readyz")
        assert (head.status_code, head.content) == (200, b"")
        assert status.get("/").status_code == 404
        assert status.get("/readyz/").status_code == 404
        assert status.get("/provisioning/1/applications").status_code == 404
        refused = status.post("/healthz")
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
        assert status.delete("/readyz").status_code == 405
        # the traffic port knows nothing of them: a request without a key is refused as before
        assert gateway.request("GET", "/healthz", None).status_code == 401
        assert gateway.request("GET", "/readyz", None).status_code == 401
        assert echo.log() == [] or all(r["path"] not in ("/healthz", "/readyz") for r in echo.log())
    finally:
        status.close()
        gateway.stop()


def test_readyz_names_the_store_when_it_stops_answering(echo: Echo, tmp_path: Path) -> None:
    gateway, status = start(echo, tmp_path)
    try:
        assert status.get("/readyz").status_code == 200
        database = Path(gateway.store_url[len("sqlite:///"):])
        for path in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
            path.unlink(missing_ok=True)
        wait_for(lambda: status.get("/readyz").status_code == 503, "readyz to fail")
        answer = status.get("/readyz").json()
        assert answer == {"ready": False, "store": "unavailable", "allowlist": "loaded", "draining": False}
        assert status.get("/healthz").status_code == 200  # alive all the same
    finally:
        status.close()
        gateway.stop()


def _drain(echo: Echo, tmp_path: Path, *extra: str) -> None:
    gateway, status = start(echo, tmp_path, "--drain-seconds", "2", *extra)
    try:
        key = linked_key(gateway)
        assert gateway.raw(request_bytes("GET", LOGS, key)).status == 200
        assert status.get("/readyz").status_code == 200
        gateway.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        wait_for(lambda: status.get("/readyz").status_code == 503, "readyz to fail after SIGTERM", timeout=1.0)
        assert time.monotonic() - sent < 1.0
        assert status.get("/readyz").json()["draining"] is True
        # traffic is still answered, on new connections, for the drain's length
        answered = 0
        while time.monotonic() - sent < 1.5:
            assert gateway.raw(request_bytes("GET", LOGS, key)).status == 200
            answered += 1
        assert answered >= 5
        assert gateway.process.poll() is None
        gateway.process.wait(timeout=2 + 8)
        elapsed = time.monotonic() - sent
        assert gateway.process.returncode == 0, gateway.error_log.read_text()[-2000:]
        assert elapsed >= 2.0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", gateway.port), timeout=1).close()
        assert "Draining for 2 s" in gateway.error_log.read_text()
    finally:
        status.close()
        gateway.stop()


def test_sigterm_drains_then_exits_0(echo: Echo, tmp_path: Path) -> None:
    _drain(echo, tmp_path)


def test_each_worker_drains(echo: Echo, tmp_path: Path) -> None:
    _drain(echo, tmp_path, "--workers", "2")


def test_a_second_signal_ends_the_drain(echo: Echo, tmp_path: Path) -> None:
    gateway, status = start(echo, tmp_path, "--drain-seconds", "60")
    try:
        gateway.process.send_signal(signal.SIGTERM)
        wait_for(lambda: status.get("/readyz").status_code == 503, "readyz to fail after SIGTERM", timeout=1.0)
        assert gateway.request("GET", "/healthz", None).status_code == 401  # still serving
        gateway.process.send_signal(signal.SIGTERM)
        gateway.process.wait(timeout=8)
        assert gateway.process.returncode == 0, gateway.error_log.read_text()[-2000:]
    finally:
        status.close()
        gateway.stop()


def test_without_a_drain_sigterm_stops_at_once(echo: Echo, tmp_path: Path) -> None:
    gateway, status = start(echo, tmp_path, "--drain-seconds", "0")
    try:
        gateway.process.send_signal(signal.SIGTERM)
        gateway.process.wait(timeout=8)
        assert gateway.process.returncode == 0, gateway.error_log.read_text()[-2000:]
    finally:
        status.close()
        gateway.stop()


def test_status_and_admin_listen_beside_workers(echo: Echo, tmp_path: Path) -> None:
    """The web interface in the supervising process, the status listener in each worker, as each runs alone."""
    tmp = tmp_path / "tmp"  # the metrics directory of --workers N goes there
    tmp.mkdir()
    port, web_port = free_port(), free_port()
    gateway = Gateway.start(echo.url, tmp_path, "--workers", "2", "--status-listen", f"127.0.0.1:{port}",
                            "--admin-listen", f"127.0.0.1:{web_port}", "--drain-seconds", "0",
                            env={"TMPDIR": str(tmp)})
    status = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    web = httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=10)
    try:
        wait_for(lambda: gateway.error_log.read_text().count("Status on http://") == 2, "both workers' listeners",
                 timeout=30)
        assert "Web interface on http://127.0.0.1:" in gateway.error_log.read_text()
        for _ in range(6):  # new connections: the kernel spreads them over the workers
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as probe:
                ready = probe.get("/readyz")
                assert ready.status_code == 200, ready.text
        assert web.post("/signin", data={"token": ADMIN_TOKEN}).status_code == 303
        assert web.get("/applications").status_code == 200
        assert web.get("/readyz").status_code == 404  # each listener serves its own
        assert status.get("/applications").status_code == 404
        for _ in range(5):
            assert gateway.raw(request_bytes("GET", LOGS, None)).status == 401

        def counted() -> float:  # each worker writes its counts once a second, and before a scrape it answers
            return sum(float(line.rsplit(" ", 1)[1]) for line in status.get("/metrics").text.splitlines()
                       if line.startswith('keyscope_requests_total{decision="refused"'))

        wait_for(lambda: counted() == 5, "the 5 requests to be counted", timeout=3)  # the interface's are not
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=20) == 0, gateway.error_log.read_text()[-2000:]
        assert list(tmp.glob("keyscope-metrics-*")) == []
    finally:
        status.close()
        web.close()
        gateway.stop()


def test_settings() -> None:
    settings = load({"upstream": UPSTREAM}, environ={})
    assert (settings.status_listen, settings.drain_seconds) == (None, 5.0)
    settings = load({"upstream": UPSTREAM}, environ={"KEYSCOPE_STATUS_LISTEN": "0.0.0.0:8082",
                                                    "KEYSCOPE_DRAIN_SECONDS": "0"})
    assert (settings.status_listen, settings.drain_seconds) == ("0.0.0.0:8082", 0.0)
    for flags, message in [
        ({"status_listen": "127.0.0.1:8080"}, "must not use the traffic port 8080"),
        ({"status_listen": "8081", "admin_listen": "8081", "admin_token": "t"}, "must not use the admin-listen port"),
        ({"status_listen": "nowhere"}, "must be HOST:PORT"),
        ({"drain_seconds": -1.0}, "drain-seconds"),
        ({"drain_seconds": float("inf")}, "drain-seconds"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load({"upstream": UPSTREAM, **flags}, environ={})


def test_a_taken_status_port_stops_start_up(tmp_path: Path) -> None:
    asyncio.run(_create_store(tmp_path / "keyscope.db"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
        result = subprocess.run(
            [sys.executable, "-m", "keyscope.serve.server", "--upstream", UPSTREAM, "--port", str(free_port()),
             "--store", f"sqlite:///{tmp_path / 'keyscope.db'}", "--status-listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, env=env,
        )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "(status-listen)" in result.stderr


async def _create_store(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    await store.close()
