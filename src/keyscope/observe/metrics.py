"""keyscope's Prometheus metrics: the registry, the instruments, and the one call per request that records them.

Served as Prometheus text by the status listener at `GET /metrics` (`keyscope.serve.status`), never on the traffic
port. Recorded in one place per request, where its access line is written (`Admission.log`, and
`GatewayProtocol.refuse_head` for a head refused while it arrives), whether or not the access log is on. Not
yet counted: the 408 `header_timeout` line of a head that never completed (`GatewayProtocol.head_timed_out`).

    keyscope_requests_total{decision,reason,step,function,status}   one per request, as its access line
    keyscope_duration_seconds                                       keyscope's own time (the line's keyscope_ms)
    keyscope_upstream_duration_seconds                              the upstream's time (upstream_ms): forwarded ones
    keyscope_upstream_failures_total{cause}                         refused, timeout, reset
    keyscope_key_cache_total{result}                                per key lookup: hit (the cache answered,
                                                                    known or unknown secret) or miss (the store)
    keyscope_requests_in_flight                                     requests inside the gateway's ASGI app
    keyscope_change_seconds_since                                   since the last change notification or poll

Per process: under `--workers N` each worker counts its own requests and `/metrics` answers for the worker
the kernel gave the connection to (as /readyz does).

Recorded only where they are served (`enable()`, called with --status-listen). Cheap on the request path: the
labelled child of each label tuple is made once and kept, so a request costs
a dict lookup, a counter increment and one or two histogram observations.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter(
    "keyscope_requests",
    "Requests, as their access lines: decision, reason and step of a refusal or failure, endpoint function, status",
    ["decision", "reason", "step", "function", "status"],
    registry=REGISTRY,
)
DURATION = Histogram(
    "keyscope_duration_seconds",
    "keyscope's own time per request (the upstream's time left out)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "keyscope_upstream_duration_seconds",
    "The upstream's time per forwarded request, until it answered or failed",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)
UPSTREAM_FAILURES = Counter(
    "keyscope_upstream_failures",
    "Forwarded requests the upstream failed: refused (no connection), timeout, reset",
    ["cause"],
    registry=REGISTRY,
)
KEY_CACHE = Counter(
    "keyscope_key_cache",
    "Key lookups: hit when the key cache answered (known or unknown secret), miss when the store was asked",
    ["result"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "keyscope_requests_in_flight",
    "Requests inside the gateway's ASGI app (refusals answered as they arrive never are)",
    registry=REGISTRY,
)
CHANGE_SINCE = Gauge(
    "keyscope_change_seconds_since",
    "Seconds since this process last heard from the store's revision: a change notification or a poll",
    registry=REGISTRY,
)

for _cause in ("refused", "timeout", "reset"):
    UPSTREAM_FAILURES.labels(_cause)  # shown at 0 from the start
_hit = KEY_CACHE.labels("hit").inc
_miss = KEY_CACHE.labels("miss").inc
_inc = IN_FLIGHT.inc
_dec = IN_FLIGHT.dec
_on = False


def enable() -> None:
    """Record from now on: called where metrics are served (`keyscope.serve.status`, with --status-listen). Until then
    nothing is recorded, so a gateway without a status listener pays nothing for them on its request path."""
    global _on
    _on = True


def key_cache_hit() -> None:
    if _on:
        _hit()


def key_cache_miss() -> None:
    if _on:
        _miss()


def in_flight_inc() -> None:
    if _on:
        _inc()


def in_flight_dec() -> None:
    if _on:
        _dec()

_observe_own = DURATION.observe
_observe_upstream = UPSTREAM_DURATION.observe
_failure_children: dict[str, Any] = {}
_request_children: dict[tuple[str, str | None, str | None, str | None, int], Any] = {}
_perf_counter = time.perf_counter


def record(
    started: float,
    decision: str,
    status: int,
    reason: str | None,
    step: str | None,
    function: str | None,
    upstream_ms: float | None,
    cause: str | None,
) -> None:
    """One request: counted by its labels, its times observed. `cause`: upstream_refused, _timeout, _reset."""
    if not _on:
        return
    labels = (decision, reason, step, function, status)
    child = _request_children.get(labels)
    if child is None:
        child = _request_children[labels] = REQUESTS.labels(
            decision, reason or "", step or "", function or "", str(status)
        ).inc
    child()
    elapsed = _perf_counter() - started
    if upstream_ms is None:
        _observe_own(elapsed)
    else:
        upstream = upstream_ms / 1000
        own = elapsed - upstream
        _observe_own(own if own > 0 else 0.0)
        _observe_upstream(upstream)
    if cause is not None:
        failed = _failure_children.get(cause)
        if failed is None:
            failed = _failure_children[cause] = UPSTREAM_FAILURES.labels(cause.removeprefix("upstream_")).inc
        failed()


def render(gateway: Any = None) -> bytes:
    """The exposition, the per-scrape gauges brought up to date first."""
    watcher = getattr(getattr(gateway, "checks", None), "watcher", None)
    heard = getattr(watcher, "heard", None)
    if heard is not None:
        CHANGE_SINCE.set(max(0.0, time.monotonic() - heard))
    return generate_latest(REGISTRY)


__all__ = ["CONTENT_TYPE", "REGISTRY", "enable", "record", "render"]
