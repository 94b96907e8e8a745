"""`GET /metrics` on the status listener (`keyscope.observe.metrics`), through a real `keyscope serve --status-listen`.

The counters are checked against the access lines of the same requests: one count per line, with its labels.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_helpers import Echo, Gateway, Key, free_port, request_bytes
from prometheus_client.parser import text_string_to_metric_families

LOGS = "/sms/1/logs?applicationId=app-a"


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    backend = Echo.start()
    yield backend
    backend.stop()


def start(upstream: str, folder: Path, *extra: str) -> tuple[Gateway, httpx.Client]:
    port = free_port()
    gateway = Gateway.start(upstream, folder, "--status-listen", f"127.0.0.1:{port}", *extra)
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


def samples(status: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = status.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def access_lines(gateway: Gateway, count: int) -> list[dict]:  # type: ignore[type-arg]
    def lines() -> list[dict]:  # type: ignore[type-arg]
        return [json.loads(line) for line in gateway.access_log.read_text().splitlines() if line.startswith("{")]

    wait_for(lambda: len(lines()) >= count, f"{count} access lines")  # written at most every half second
    return lines()


def linked_key(gateway: Gateway) -> Key:
    gateway.create_application("app-a")
    return gateway.create_key("linked", {"applicationId": "app-a"})


def test_requests_refusals_and_502_are_counted_as_logged(tmp_path: Path) -> None:
    backend = Echo.start()  # stopped halfway: the last request meets a refused connection
    gateway, status = start(backend.url, tmp_path)
    try:
        key = linked_key(gateway)
        assert gateway.raw(request_bytes("GET", LOGS, key)).status == 200
        assert gateway.raw(request_bytes("GET", LOGS, None)).status == 401
        too_long = "/sms/1/logs?" + "a" * 9000  # refused by the protocol while the head arrives
        assert gateway.raw(request_bytes("GET", too_long, key)).status == 414
        backend.stop()
        assert gateway.raw(request_bytes("GET", LOGS, key)).status == 502
        lines = access_lines(gateway, 6)  # 2 management calls, the 4 above
        assert len(lines) == 6
        found = samples(status)

        expected = Counter(
            (line["decision"], line["reason"] or "", line["step"] or "", line["function"] or "", str(line["status"]))
            for line in lines
        )
        counted = {
            (labels["decision"], labels["reason"], labels["step"], labels["function"], labels["status"]): count
            for (name, pairs), count in found.items()
            if name == "keyscope_requests_total"
            for labels in [dict(pairs)]
        }
        assert counted == dict(expected)
        function = lines[2]["function"]
        assert function  # /sms/1/logs names its endpoint
        assert value(found, "keyscope_requests_total", decision="forwarded", reason="", step="",
                     function=function, status="200") == 1
        assert value(found, "keyscope_requests_total", decision="refused", reason="too_long", step="canonical",
                     function="", status="414") == 1
        assert value(found, "keyscope_requests_total", decision="failed", reason="upstream_refused",
                     step="upstream", function=function, status="502") == 1
        refusal = lines[3]
        assert (refusal["status"], refusal["decision"]) == (401, "refused")
        assert value(found, "keyscope_requests_total", decision="refused", reason=refusal["reason"],
                     step=refusal["step"], function=refusal["function"] or "", status="401") == 1

        assert value(found, "keyscope_duration_seconds_count") == 6
        timed_upstream = sum(line["upstream_ms"] is not None for line in lines)
        assert timed_upstream >= 1
        assert value(found, "keyscope_upstream_duration_seconds_count") == timed_upstream
        assert value(found, "keyscope_duration_seconds_bucket", le="+Inf") == 6
        assert value(found, "keyscope_upstream_failures_total", cause="refused") == 1
        assert value(found, "keyscope_upstream_failures_total", cause="timeout") == 0
        assert value(found, "keyscope_upstream_failures_total", cause="reset") == 0
        assert ("keyscope_upstream_failures_total", (("cause", "timeout"),)) in found  # shown at 0
        assert value(found, "keyscope_requests_in_flight") == 0
        since = found[("keyscope_change_seconds_since", ())]
        assert 0 <= since < 5  # SQLite is polled from the request path, and was at start-up
    finally:
        status.close()
        gateway.stop()
        backend.stop()


def test_key_cache_hits_and_misses(echo: Echo, tmp_path: Path) -> None:
    gateway, status = start(echo.url, tmp_path)
    try:
        key = linked_key(gateway)
        before = samples(status)

        def moved(found: dict) -> tuple[float, float]:  # type: ignore[type-arg]
            return (value(found, "keyscope_key_cache_total", result="hit")
                    - value(before, "keyscope_key_cache_total", result="hit"),
                    value(found, "keyscope_key_cache_total", result="miss")
                    - value(before, "keyscope_key_cache_total", result="miss"))

        assert gateway.raw(request_bytes("GET", LOGS, key)).status == 200
        assert moved(samples(status)) == (0, 1)  # the store was asked
        assert gateway.raw(request_bytes("GET", LOGS, key)).status == 200
        assert moved(samples(status)) == (1, 1)  # the cache answered
        unknown = Key("nobody", "not-a-known-secret")
        assert gateway.raw(request_bytes("GET", LOGS, unknown)).status == 401
        assert moved(samples(status)) == (1, 2)
        assert gateway.raw(request_bytes("GET", LOGS, unknown)).status == 401
        assert moved(samples(status)) == (2, 2)  # unknown secrets are cached too
    finally:
        status.close()
        gateway.stop()


def test_metrics_only_on_the_status_listener(echo: Echo, tmp_path: Path) -> None:
    gateway, status = start(echo.url, tmp_path)
    try:
        assert status.head("/metrics").status_code == 200
        assert status.post("/metrics").status_code == 405
        assert status.get("/metrics/").status_code == 404
        assert b"keyscope_requests_in_flight" in status.get("/metrics").content
        # the traffic port knows nothing of it: a request without a key is refused as any other
        assert gateway.request("GET", "/metrics", None).status_code == 401
        assert all(entry["path"] != "/metrics" for entry in echo.log())
    finally:
        status.close()
        gateway.stop()
