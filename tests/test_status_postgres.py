"""`/readyz` on a PostgreSQL store, through a real `keyscope serve --status-listen`: 503 naming the store while
the server cannot be reached (refused, or hung), 200 again once it can, without a restart.

The outage is made without stopping the shared server at 127.0.0.1:5432: keyscope reaches it through a TCP relay
(`test_postgres.Relay`) that the test cuts (connections reset, new ones refused), freezes (bytes held back, a hung
server) and restores. The store is a fresh schema of the `test` database, as for the store suite.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from stores import STORE_URLS
from gateway_helpers import Echo, Gateway, Key, free_port, request_bytes
from relay import Relay

pytestmark = pytest.mark.postgres

READY = {"ready": True, "store": "ok", "allowlist": "loaded", "draining": False}
STORE_DOWN = {"ready": False, "store": "unavailable", "allowlist": "loaded", "draining": False}


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    backend = Echo.start()
    yield backend
    backend.stop()


def wait_for(condition, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


def readyz(status: httpx.Client) -> tuple[int, dict]:  # type: ignore[type-arg]
    answer = status.get("/readyz")
    return answer.status_code, answer.json()


def test_readyz_follows_the_postgresql_store(echo: Echo, tmp_path: Path) -> None:
    with STORE_URLS["postgresql"](tmp_path) as url, Relay() as relay:
        relayed = url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}", 1)
        assert relayed != url
        port = free_port()
        gateway = Gateway.start(echo.url, tmp_path, "--status-listen", f"127.0.0.1:{port}", "--drain-seconds", "0",
                                store_url=relayed)
        status = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        try:
            wait_for(lambda: _answers(status), "the status listener to answer")
            assert readyz(status) == (200, READY)
            gateway.create_application("app-a")  # the store works through the relay
            assert gateway.raw(request_bytes("GET", "/sms/1/logs?applicationId=app-a", None)).status == 401

            relay.cut()  # the server is gone: open connections reset, new ones refused
            wait_for(lambda: readyz(status)[0] == 503, "readyz to fail while the store is unreachable")
            assert readyz(status) == (503, STORE_DOWN)
            assert status.get("/healthz").status_code == 200  # alive all the same
            # a key the cache does not know must be looked up: 503, and the failed store call is counted
            unknown = Key("nobody", "not-a-known-secret")
            assert gateway.raw(request_bytes("GET", "/sms/1/logs?applicationId=app-a", unknown)).status == 503
            assert _metric(status, 'keyscope_store_errors_total{operation="find_key"}') >= 1
            assert _metric(status, 'keyscope_store_duration_seconds_count{operation="find_key"}') >= 1

            relay.restore()
            wait_for(lambda: readyz(status)[0] == 200, "readyz to recover with the store", timeout=15)
            assert readyz(status) == (200, READY)

            relay.frozen.set()  # the server hangs: readiness gives up after its 1 s and says so
            asked = time.monotonic()
            assert readyz(status) == (503, STORE_DOWN)
            assert time.monotonic() - asked < 3
            relay.frozen.clear()
            wait_for(lambda: readyz(status)[0] == 200, "readyz to recover after the hang", timeout=15)
            assert readyz(status) == (200, READY)
        finally:
            status.close()
            gateway.stop()


def _metric(status: httpx.Client, sample: str) -> float:
    for line in status.get("/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _answers(status: httpx.Client) -> bool:
    try:
        return status.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False
