"""Rate limits through real processes: `keyscope serve` on either store, local and Redis counters.

A limited key is refused with 429 in the endpoint's error family, with Retry-After, and every answer to it
carries RateLimit-*; two instances on one Redis share one limit under concurrent load; local counters are per
worker; a limit changed through the management API holds within the key-cache TTL on another instance; and
when Redis goes away, requests follow --rate-limit-on-error until it is back.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_helpers import Echo, Gateway, Key, free_port, wait_listening
from ratelimit_helpers import redis_or_skip
from stores import STORE_KINDS, STORE_MARKS, STORE_URLS

LOGS = "/sms/1/logs"


@pytest.fixture(params=[pytest.param(kind, marks=STORE_MARKS.get(kind, [])) for kind in STORE_KINDS])
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_url(store_kind: str, tmp_path: Path) -> Iterator[str]:
    with STORE_URLS[store_kind](tmp_path) as url:
        yield url


def start(echo: Echo, folder: Path, store_url: str, *extra: str) -> Gateway:  # noqa: F811
    folder.mkdir(parents=True, exist_ok=True)
    return Gateway.start(echo.url, folder, *extra, store_url=store_url)


def lines(gateway: Gateway) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5
    while True:
        found = [json.loads(line) for line in gateway.access_log.read_text().splitlines() if line.startswith("{")]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def limited_key(gateway: Gateway, *limits: tuple[int, str], **fields: object) -> Key:
    doc = [{"requests": requests, "per": per} for requests, per in limits]
    return gateway.create_key(f"limited-{uuid.uuid4().hex[:6]}", rateLimits=doc, **fields)


def test_a_limited_key_gets_429_with_retry_after_and_ratelimit_headers(
    echo: Echo, tmp_path: Path, store_url: str  # noqa: F811
) -> None:
    gateway = start(echo, tmp_path / "gw", store_url)
    try:
        gateway.create_application("app-a")
        key = limited_key(gateway, (2, "hour"), (100, "second"), platform=[{"applicationId": "app-a"}])
        shown = gateway.admin("GET", f"/settings/2/api-keys/{key.id}").json()
        assert shown["rateLimits"] == [{"requests": 100, "per": "second"}, {"requests": 2, "per": "hour"}]
        answers = [gateway.request("GET", LOGS + "?applicationId=app-a", key) for _ in range(3)]
        assert [answer.status_code for answer in answers] == [200, 200, 429]
        first, second, refused = answers
        assert (first.headers["ratelimit-limit"], first.headers["ratelimit-remaining"]) == ("2", "1")
        assert (second.headers["ratelimit-limit"], second.headers["ratelimit-remaining"]) == ("2", "0")
        assert int(first.headers["ratelimit-reset"]) == 1800  # half an hour until the bucket is full again
        assert refused.headers["ratelimit-remaining"] == "0"
        assert 1795 <= int(refused.headers["retry-after"]) <= 1800
        assert refused.json() == {"requestError": {"serviceException": {"messageId": "TOO_MANY_REQUESTS",
                                                                          "text": "Too many requests"}}}
        assert len(echo.log()) == 2  # the refused one never reached the backend
        refused_line = [line for line in lines(gateway) if line.get("status") == 429][0]
        assert (refused_line["decision"], refused_line["reason"], refused_line["step"]) == (
            "refused", "rate_limited", "ratelimit")
        # the same through the ASGI path: a raw request whose body arrives after the head
        slow = gateway.raw(
            f"POST /sms/2/text/advanced HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
            f"Authorization: App {key.secret}\r\nContent-Type: application/json\r\n"
            f"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n{{}}".encode(), "POST")
        assert slow.status == 429 and {name.lower() for name, _ in slow.headers} >= {"retry-after", "ratelimit-reset"}
        # the primary key: limited too; an unlimited key: no headers
        primary = limited_key(gateway, (1, "day"))
        assert gateway.request("GET", "/anything", primary).status_code == 200
        assert gateway.request("GET", "/anything", primary).status_code == 429
        plain = gateway.create_key("plain")
        assert "ratelimit-limit" not in gateway.request("GET", "/anything", plain).headers
    finally:
        gateway.stop()


def test_an_admitted_request_the_upstream_fails_still_carries_its_ratelimit_headers(
    tmp_path: Path, store_url: str
) -> None:
    folder = tmp_path / "gw"
    folder.mkdir()
    gateway = Gateway.start(f"http://127.0.0.1:{free_port()}", folder, store_url=store_url)  # nothing listens
    try:
        key = limited_key(gateway, (5, "hour"))
        answer = gateway.request("GET", "/anything", key)
        assert answer.status_code == 502
        assert (answer.headers["ratelimit-limit"], answer.headers["ratelimit-remaining"]) == ("5", "4")
        assert "x-request-id" in answer.headers
    finally:
        gateway.stop()


def test_an_application_limit_is_shared_and_changes_at_runtime_within_the_key_cache_ttl(
    echo: Echo, tmp_path: Path, store_url: str  # noqa: F811
) -> None:
    one = start(echo, tmp_path / "one", store_url, "--key-cache-ttl", "1")
    other = start(echo, tmp_path / "other", store_url, "--key-cache-ttl", "1")
    try:
        one.create_application("app-a")
        first = one.create_key("first", {"applicationId": "app-a"})
        second = one.create_key("second", {"applicationId": "app-a"})
        target = LOGS + "?applicationId=app-a"
        assert other.request("GET", target, first).status_code == 200  # cached by `other` now, unlimited
        response = one.admin("PUT", "/provisioning/1/applications/app-a",
                             {"applicationName": "A", "rateLimits": [{"requests": 3, "per": "hour"}]})
        assert response.status_code == 204, response.text
        assert one.admin("GET", "/provisioning/1/applications/app-a").json()["rateLimits"] == [
            {"requests": 3, "per": "hour"}]
        changed = time.monotonic()
        while other.request("GET", target, first).headers.get("ratelimit-limit") != "3":
            assert time.monotonic() - changed < 2.5, "the new limit did not hold within the key-cache TTL"
            time.sleep(0.05)
        statuses = [other.request("GET", target, key).status_code for key in (second, first, second, first)]
        assert statuses.count(429) >= 2 and statuses[-1] == 429  # the two keys spend from one limit
        # a key's own limit, set by PUT on one instance, holds on the other; a bad one is a 400 naming it
        third = one.create_key("third")
        assert other.request("GET", "/anything", third).status_code == 200
        refused = one.admin("PUT", f"/settings/2/api-keys/{third.id}", {"rateLimits": [{"requests": 0, "per": "hour"}]})
        assert refused.status_code == 400
        assert refused.json()["violations"] == [{"property": "rateLimits[0].requests",
                                                 "violation": "must be from 1 to 1000000000"}]
        one.update_key(third, {"rateLimits": [{"requests": 1, "per": "day"}]})
        changed = time.monotonic()
        while other.request("GET", "/anything", third).status_code != 429:
            assert time.monotonic() - changed < 2.5, "the new limit did not hold within the key-cache TTL"
            time.sleep(0.05)
        response = one.admin("PUT", "/provisioning/1/applications/app-a", {"rateLimits": []})
        assert response.status_code == 204
        assert one.admin("GET", "/provisioning/1/applications/app-a").json() == {
            "applicationId": "app-a", "applicationName": None}
    finally:
        one.stop()
        other.stop()


def test_local_counters_are_per_worker(echo: Echo, tmp_path: Path, store_url: str) -> None:  # noqa: F811
    gateway = start(echo, tmp_path / "gw", store_url, "--workers", "2")
    try:
        key = limited_key(gateway, (5, "hour"))
        admitted = 0
        for _ in range(60):  # a new connection each: SO_REUSEPORT spreads them over the two workers
            with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}") as client:
                status = client.get("/anything", headers={"Authorization": f"App {key.secret}"}).status_code
            admitted += status == 200
        assert 5 < admitted <= 10
    finally:
        gateway.stop()


def hammer(gateways: list[Gateway], key: Key, seconds: float, threads: int = 8) -> tuple[int, int, float]:
    """Concurrent requests spread over the gateways for `seconds`: (admitted, refused, seconds taken)."""
    counts = [0, 0]
    lock = threading.Lock()
    started = time.monotonic()

    def run(index: int) -> None:
        gateway = gateways[index % len(gateways)]
        with httpx.Client(base_url=f"http://127.0.0.1:{gateway.port}", timeout=10) as client:
            while time.monotonic() - started < seconds:
                status = client.get("/anything", headers={"Authorization": f"App {key.secret}"}).status_code
                assert status in (200, 429), status
                with lock:
                    counts[status == 429] += 1

    workers = [threading.Thread(target=run, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return counts[0], counts[1], time.monotonic() - started


def test_two_instances_on_one_redis_share_one_limit(echo: Echo, tmp_path: Path, store_url: str) -> None:  # noqa: F811
    redis = redis_or_skip()
    one = start(echo, tmp_path / "one", store_url, "--rate-limit-store", redis)
    other = start(echo, tmp_path / "other", store_url, "--rate-limit-store", redis, "--workers", "2")
    try:
        key = limited_key(one, (25, "hour"))
        admitted, refused, _ = hammer([one, other], key, 2.0)
        assert admitted == 25 and refused > 25  # every worker of both instances spent from one count
        per_second = limited_key(one, (10, "second"))
        admitted, refused, took = hammer([one, other], per_second, 3.0)
        assert refused > 0
        assert admitted <= 10 + int(took * 10) + 1  # GCRA: the burst, then one per 100 ms
        assert admitted >= 10 + int((took - 1) * 10) - 2
    finally:
        one.stop()
        other.stop()


class RedisServer:
    """A Redis of the test's own, to stop and start again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.process, "redis-server")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.mark.parametrize("policy", ["allow", "deny"])
def test_redis_down_follows_the_policy_and_recovers(
    echo: Echo, tmp_path: Path, store_url: str, policy: str  # noqa: F811
) -> None:
    redis_or_skip()
    server = RedisServer(free_port())
    server.start()
    status = free_port()
    gateway = start(echo, tmp_path / "gw", store_url, "--rate-limit-store", f"redis://127.0.0.1:{server.port}/0",
                    "--rate-limit-on-error", policy, "--status-listen", f"127.0.0.1:{status}")
    try:
        key = limited_key(gateway, (2, "hour"))
        assert [gateway.request("GET", "/anything", key).status_code for _ in range(3)] == [200, 200, 429]
        server.stop()
        down = [gateway.request("GET", "/anything", key) for _ in range(5)]
        expected = 200 if policy == "allow" else 503
        assert [answer.status_code for answer in down] == [expected] * 5
        assert all("ratelimit-limit" not in answer.headers for answer in down)
        assert "rate-limit store" in gateway.error_log.read_text() and "unavailable" in gateway.error_log.read_text()
        metrics = httpx.get(f"http://127.0.0.1:{status}/metrics").text
        assert "keyscope_rate_limit_store_errors_total 5.0" in metrics
        server.start()  # empty: the counts start again
        deadline = time.monotonic() + 5
        while gateway.request("GET", "/anything", key).headers.get("ratelimit-limit") != "2":
            assert time.monotonic() < deadline, "the gateway did not go back to Redis"
            time.sleep(0.2)
        assert gateway.request("GET", "/anything", key).status_code == 200
        assert gateway.request("GET", "/anything", key).status_code == 429
        assert "answers again" in gateway.error_log.read_text()
    finally:
        gateway.stop()
        server.stop()
