"""`GET /metrics` on the status listener (`keyscope.observe.metrics`), through a real `keyscope serve --status-listen`.

The counters are checked against the access lines of the same requests: one count per line, with its labels.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gateway_helpers import Echo, Gateway, Key, free_port, request_bytes
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from keyscope.observe import metrics

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
        assert ("process_cpu_seconds_total", ()) in found  # one process: its own
    finally:
        status.close()
        gateway.stop()
        backend.stop()


def test_a_head_that_never_completes_is_counted_as_logged(echo: Echo, tmp_path: Path) -> None:
    gateway, status = start(echo.url, tmp_path, "--header-timeout", "0.5")
    try:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as slow:
            slow.sendall(b"GET /sms/1/logs?applicationId=app-a HTTP/1.1\r\nHost: gateway.test\r\n")
            assert slow.recv(1024) == b""  # closed after --header-timeout, without an answer
        [line] = access_lines(gateway, 1)
        assert (line["status"], line["reason"], line["step"]) == (408, "header_timeout", "canonical")
        found = samples(status)
        assert value(found, "keyscope_requests_total", decision="refused", reason="header_timeout", step="canonical",
                     function="", status="408") == 1
        assert total(found) == 1
        assert value(found, "keyscope_duration_seconds_count") == 1
    finally:
        status.close()
        gateway.stop()


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

        calls = value(before, "keyscope_store_duration_seconds_count", operation="find_key")
        assert gateway.raw(request_bytes("GET", LOGS, key)).status == 200
        assert moved(samples(status)) == (0, 1)  # the store was asked
        found = samples(status)
        assert value(found, "keyscope_store_duration_seconds_count", operation="find_key") == calls + 1
        assert value(found, "keyscope_store_errors_total", operation="find_key") == 0
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


# --workers N: one sum over the workers ------------------------------------------------------------------------------
def metrics_folders(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("keyscope-metrics-*"))


def counted_by_worker(folder: Path) -> dict[int, float]:
    """keyscope_requests_total in each worker's own file of the shared directory, by process id."""
    counts = {}
    for path in folder.glob("counter_*.db"):
        pid = int(re.fullmatch(r"counter_(\d+)\.db", path.name).group(1))  # type: ignore[union-attr]
        counts[pid] = sum(sample.value for family in MultiProcessCollector.merge([str(path)])
                          for sample in family.samples if sample.name == "keyscope_requests_total")
    return counts


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """On a new connection each time: the kernel picks the worker that answers (SO_REUSEPORT)."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        return samples(client)


def total(found: dict) -> float:  # type: ignore[type-arg]
    return sum(count for (name, _), count in found.items() if name == "keyscope_requests_total")


def test_workers_are_summed_and_their_directory_removed(echo: Echo, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = free_port()
    gateway = Gateway.start(echo.url, tmp_path, "--workers", "2", "--status-listen", f"127.0.0.1:{port}",
                            "--drain-seconds", "0", env={"TMPDIR": str(tmp)})
    status = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    stderr = gateway.error_log.read_text
    try:
        wait_for(lambda: stderr().count("Application startup complete") == 2, "both workers to start", timeout=30)
        wait_for(lambda: _answers(status), "the status listener to answer")
        [folder] = metrics_folders(tmp)
        assert folder.name.startswith(f"keyscope-metrics-{gateway.process.pid}-")
        assert folder.stat().st_mode & 0o777 == 0o700
        key = linked_key(gateway)  # two management calls, counted too
        sent = 2

        def one(_: int) -> int:
            return gateway.raw(request_bytes("GET", LOGS, key)).status  # Connection: close: a new one each time

        def burst(pool: ThreadPoolExecutor) -> int:
            assert set(pool.map(one, range(20))) == {200}
            return 20

        def written() -> float:  # each worker writes its counts once a second, and before a scrape it answers
            return sum(counted_by_worker(folder).values())

        with ThreadPoolExecutor(4) as pool:  # until both workers have answered some (the kernel chooses)
            while sent < 400 and len([n for n in counted_by_worker(folder).values() if n]) < 2:
                sent += burst(pool)
                time.sleep(0.2)
        wait_for(lambda: written() == sent, f"{sent} requests in the workers' files", timeout=3)
        workers = counted_by_worker(folder)
        assert len(workers) == 2 and all(workers.values()), workers
        function = access_lines(gateway, sent)[-1]["function"]

        for _ in range(6):  # whichever worker answers the scrape, the same sums
            found = scrape(port)
            assert total(found) == sent
            assert value(found, "keyscope_requests_total", decision="forwarded", reason="", step="",
                         function=function, status="200") == sent - 2
            assert value(found, "keyscope_duration_seconds_count") == sent
            assert value(found, "keyscope_duration_seconds_bucket", le="+Inf") == sent
            assert value(found, "keyscope_upstream_duration_seconds_count") == sent - 2
            assert value(found, "keyscope_key_cache_total", result="miss") >= 1
            assert value(found, "keyscope_upstream_failures_total", cause="refused") == 0
            assert ("keyscope_upstream_failures_total", (("cause", "reset"),)) in found  # shown at 0
            assert value(found, "keyscope_requests_in_flight") == 0
            assert 0 <= found[("keyscope_change_seconds_since", ())] < 5
            assert not [name for name, _ in found if name.startswith("process_")]  # one process's: left out
        assert "Multiprocess metric" not in status.get("/metrics").text  # each family keeps its help

        # a worker stopped by SIGTERM right after a burst: what it had not yet written is written at the signal
        first, second = sorted(workers)
        with ThreadPoolExecutor(4) as pool:
            sent += burst(pool)
        os.kill(first, signal.SIGTERM)
        wait_for(lambda: f"Child process [{first}] died" in stderr(), "the supervisor to see it go")
        wait_for(lambda: stderr().count("Application startup complete") == 3, "its replacement", timeout=30)
        wait_for(lambda: written() == sent, "every count written, the stopped worker's too", timeout=3)  # or lost
        assert total(scrape(port)) == sent

        # a worker killed: the supervisor replaces it, its counts stay in the sums, its gauges go
        wait_for(lambda: written() == sent, "everything written")
        os.kill(second, signal.SIGKILL)
        wait_for(lambda: f"Child process [{second}] died" in stderr(), "the supervisor to see it die")
        wait_for(lambda: not list(folder.glob(f"gauge_live*_{second}.db")), "the dead worker's gauges to go")
        assert (folder / f"counter_{second}.db").exists()
        wait_for(lambda: stderr().count("Application startup complete") == 4, "its replacement", timeout=30)
        for _ in range(3):
            found = scrape(port)
            assert total(found) == sent
            assert value(found, "keyscope_requests_in_flight") == 0
        with ThreadPoolExecutor(4) as pool:
            sent += burst(pool)
        wait_for(lambda: written() == sent, "the new requests to be written", timeout=3)
        assert total(scrape(port)) == sent

        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=20) == 0, stderr()[-2000:]
        assert metrics_folders(tmp) == []  # removed at exit
    finally:
        status.close()
        gateway.stop()
    assert metrics_folders(tmp) == []


def test_the_shared_directory_is_private_and_removes_orphans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a supervisor killed by SIGKILL left behind goes at the next start; a live one's stays."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/elsewhere")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    orphan = tmp_path / f"keyscope-metrics-{int(gone.stdout)}-abc_12"
    orphan.mkdir()
    (orphan / "counter_1.db").write_bytes(b"")
    alive = tmp_path / f"keyscope-metrics-{os.getppid()}-def_34"  # pytest's parent: a running process
    alive.mkdir()
    unrelated = tmp_path / "keyscope-metricsless"
    unrelated.mkdir()
    with metrics.shared_directory() as directory:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == directory
        assert Path(directory).parent == tmp_path and Path(directory).name.startswith(f"keyscope-metrics-{os.getpid()}-")
        assert os.stat(directory).st_mode & 0o777 == 0o700
        assert not orphan.exists() and alive.exists() and unrelated.exists()
        (Path(directory) / "gauge_livesum_123.db").write_bytes(b"")
        (Path(directory) / "gauge_livemax_123.db").write_bytes(b"")
        (Path(directory) / "counter_123.db").write_bytes(b"")
        assert metrics.forget(directory, [None, 456]) == [123]
        assert sorted(path.name for path in Path(directory).iterdir()) == ["counter_123.db"]  # counts stay
    assert not Path(directory).exists()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == "/elsewhere"


def test_a_batch_writes_what_observe_would() -> None:
    """Under --workers N counts are kept in plain numbers and written once a second; a histogram's are written
    into prometheus-client's own bucket values (`_buckets`, `_sum`, `_upper_bounds`): the same as observe()."""
    buckets = (0.001, 0.01, 0.1, 1.0)
    registry = CollectorRegistry()
    direct = Histogram("direct_seconds", "d", buckets=buckets, registry=registry)
    batched = Histogram("batched_seconds", "b", buckets=buckets, registry=registry)
    counter = PromCounter("batched", "c", ["k"], registry=registry)
    batch = metrics._Batch()
    observe = batch.histogram(batched)
    count = batch.counter(counter.labels("x"))
    for amount in (0.0, 0.0005, 0.001, 0.002, 0.01, 0.5, 1.0, 7.0, 7.0):
        direct.observe(amount)
        observe(amount)
        count()
    assert registry.get_sample_value("batched_seconds_count") == 0  # not written yet
    batch.flush()
    for suffix, labels in [("_count", {}), ("_sum", {}), *(("_bucket", {"le": le}) for le in
                                                            ("0.001", "0.01", "0.1", "1.0", "+Inf"))]:
        assert (registry.get_sample_value("batched_seconds" + suffix, labels)
                == registry.get_sample_value("direct_seconds" + suffix, labels)), (suffix, labels)
    assert registry.get_sample_value("batched_total", {"k": "x"}) == 9
    batch.flush()  # nothing new: nothing written twice
    assert registry.get_sample_value("batched_total", {"k": "x"}) == 9
    assert registry.get_sample_value("batched_seconds_count") == 9
