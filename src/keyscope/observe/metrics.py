"""keyscope's Prometheus metrics: the registry, the instruments, and the one call per request that records them.

Served as Prometheus text by the status listener at `GET /metrics` (`keyscope.serve.status`), never on the traffic
port. Recorded in one place per request, where its access line is written (`Admission.log`; and
`GatewayProtocol.refuse_head` for a head refused while it arrives, `GatewayProtocol.head_timed_out` for the 408
`header_timeout` line of a head that never completed), whether or not the access log is on.

    keyscope_requests_total{decision,reason,step,function,status}   one per request, as its access line
    keyscope_duration_seconds                                       keyscope's own time (the line's keyscope_ms)
    keyscope_upstream_duration_seconds                              the upstream's time (upstream_ms): forwarded ones
    keyscope_upstream_failures_total{cause}                         refused, timeout, reset
    keyscope_key_cache_total{result}                                per key lookup: hit (the cache answered,
                                                                    known or unknown secret) or miss (the store)
    keyscope_requests_in_flight                                     requests inside the gateway's ASGI app
    keyscope_change_seconds_since                                   since the last change notification or poll
    keyscope_events_delivered_total                                 deletion events receivers took (2xx)
    keyscope_events_failed_total                                    attempts that failed (retried after back-off)
    keyscope_events_pending{target}                                 events a receiver has not taken yet

Under `--workers N` the figures are summed over the workers (prometheus-client's multiprocess mode): the
supervising process makes a private directory (`shared_directory()`) and names it in PROMETHEUS_MULTIPROC_DIR
before the workers start, so that each worker's prometheus-client keeps its values in files of its own there;
whichever worker the kernel gives a scrape to reads them all (`MultiProcessCollector`). Counters and histograms
are summed, a dead worker's included (a restart never takes a count back); the two gauges count live workers
only (the supervisor calls `forget()` for each worker that exits): requests in flight are summed (`livesum`),
and the seconds since the store was heard are the largest of any worker (`livemax`: the gauge is there to show
a worker that stopped hearing of changes, and so goes on using revoked keys, which an average or a minimum
would hide). The `process_*` metrics are one process's and are left out there. With one worker nothing of this
happens: one registry in the process, as before.

Recorded only where they are served (`enable()`, called with --status-listen). Cheap on the request path: the
labelled child of each label tuple is made once and kept, so a request costs a dict lookup, a counter increment
and one or two histogram observations. Under `--workers N` those are plain Python additions (`_Batch`), written
to the shared files once a second, before each scrape the worker answers, and as made from an exit signal on:
another worker's figures in a scrape are at most a second old.
"""

from __future__ import annotations

import logging
import operator
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from keyscope.observe.multiprocess import MULTIPROC_ENV, forget, shared_directory

log = logging.getLogger("keyscope")

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
    multiprocess_mode="livesum",  # --workers N: the sum over the live workers
)
CHANGE_SINCE = Gauge(
    "keyscope_change_seconds_since",
    "Seconds since this process last heard from the store's revision: a change notification or a poll"
    " (--workers N: the longest of any worker)",
    registry=REGISTRY,
    multiprocess_mode="livemax",  # --workers N: the worker that has gone longest without hearing
)
STORE_DURATION = Histogram(
    "keyscope_store_duration_seconds",
    "Store calls on the request path, by operation: find_key (a key-cache miss), missing_ids (ids not known to"
    " exist), revision (a change poll); failed calls included",
    ["operation"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "keyscope_store_errors",
    "Store calls on the request path that failed (the store unreachable or erring), by operation",
    ["operation"],
    registry=REGISTRY,
)
RATE_LIMIT_STORE_ERRORS = Counter(
    "keyscope_rate_limit_store_errors",
    "Requests with rate limits that found the Redis counters unavailable and followed --rate-limit-on-error",
    registry=REGISTRY,
)

EVENTS_DELIVERED = Counter(
    "keyscope_events_delivered",
    "Deletion events a receiver answered 2xx to, sent by this process (keyscope.events)",
    registry=REGISTRY,
)
EVENTS_FAILED = Counter(
    "keyscope_events_failed",
    "Attempts to send a deletion event that failed (no connection, timeout, a status outside 2xx); each is retried",
    registry=REGISTRY,
)
EVENTS_PENDING = Gauge(
    "keyscope_events_pending",
    "Deletion events a receiver (the target: its URL without the query) has not taken yet, as the store says",
    ["target"],
    registry=REGISTRY,
    multiprocess_mode="livemax",  # every worker reads the same figure from the store
)

for _cause in ("refused", "timeout", "reset"):
    UPSTREAM_FAILURES.labels(_cause)  # shown at 0 from the start
STORE_OPERATIONS = ("find_key", "missing_ids", "revision")
for _operation in STORE_OPERATIONS:
    STORE_ERRORS.labels(_operation)
_hit = KEY_CACHE.labels("hit").inc
_miss = KEY_CACHE.labels("miss").inc
_inc = IN_FLIGHT.inc
_dec = IN_FLIGHT.dec
_on = False
_served: Any = REGISTRY
"""What `render()` serves: this process's registry, or under `--workers N` the shared directory's collector."""

_HELP = {family.name: family.documentation
         for instrument in (REQUESTS, DURATION, UPSTREAM_DURATION, UPSTREAM_FAILURES, KEY_CACHE, IN_FLIGHT, CHANGE_SINCE,
                            RATE_LIMIT_STORE_ERRORS, EVENTS_DELIVERED, EVENTS_FAILED, EVENTS_PENDING)
         for family in instrument.describe()}


class _Documented:
    """The multiprocess collector with each family's own help text (it says "Multiprocess metric" for all)."""

    def __init__(self, collector: MultiProcessCollector) -> None:
        self.collector = collector

    def collect(self) -> Iterable[Any]:
        for family in self.collector.collect():
            family.documentation = _HELP.get(family.name, family.documentation)
            yield family


def enable(workers: int = 1) -> None:
    """Record from now on: called where metrics are served (`keyscope.serve.status`, with --status-listen). Until then
    nothing is recorded, so a gateway without a status listener pays nothing for them on its request path.

    Counts are kept in plain numbers and written into prometheus-client's values when a scrape reads them
    (`update()`), and under `--workers N` every second too.

    `workers` > 1: this is one of several workers, whose supervisor made the shared directory; scrapes answer
    for all of them. Without that directory (a worker started some other way) each answers for itself, as
    one line on stderr says."""
    global _on, _served
    _on = True
    if workers <= 1:
        _served = REGISTRY
        _batch_from_now_on()  # plain numbers, written at each scrape: prometheus-client's own take a lock each
        return
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory or not os.path.isdir(directory) or not getattr(values.ValueClass, "_multiprocess", False):
        log.warning("metrics: %s is not a directory shared by the workers: /metrics answers for one worker",
                    MULTIPROC_ENV)
        _served = REGISTRY
        return
    _served = CollectorRegistry(auto_describe=False)
    _served.register(_Documented(MultiProcessCollector(None, directory)))
    _batch_from_now_on()


def key_cache_hit() -> None:
    if _on:
        _hit()


def key_cache_miss() -> None:
    if _on:
        _miss()


def rate_limit_store_error() -> None:
    if _on:
        RATE_LIMIT_STORE_ERRORS.inc()


def events_on() -> bool:
    return _on


def events_targets(targets: Iterable[str]) -> None:
    """The receivers this process delivers to, shown from the start (pending 0 until the store says more)."""
    for target in targets:
        EVENTS_PENDING.labels(target)


def event_delivered() -> None:
    """Deletion events are rare: written as they happen, never batched (as `store_call`)."""
    if _on:
        EVENTS_DELIVERED.inc()


def event_failed() -> None:
    if _on:
        EVENTS_FAILED.inc()


def events_pending(target: str, count: int) -> None:
    if _on:
        EVENTS_PENDING.labels(target).set(max(0, count))


def store_call(operation: str, started: float, failed: bool = False) -> None:
    """A store call of the request path ended (`started`: its time.perf_counter()). Store calls are the cache
    misses, rare by design, so they are written as they happen, never batched."""
    if _on:
        STORE_DURATION.labels(operation).observe(_perf_counter() - started)
        if failed:
            STORE_ERRORS.labels(operation).inc()


def in_flight_inc() -> None:
    if _on:
        _inc()


def in_flight_dec() -> None:
    if _on:
        _dec()

_observe_own = DURATION.observe
_observe_upstream = UPSTREAM_DURATION.observe
_counting = _direct = operator.attrgetter("inc")  # a counter's child -> what counts one (see `_Batch`)
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
        child = _request_children[labels] = _counting(REQUESTS.labels(
            decision, reason or "", step or "", function or "", str(status)
        ))
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
            failed = _failure_children[cause] = _counting(UPSTREAM_FAILURES.labels(cause.removeprefix("upstream_")))
        failed()


def update(gateway: Any = None) -> None:
    """Bring what scrapes read of this process up to date: the gauges that are read rather than recorded, and
    under `--workers N` what was counted since the last time. At each scrape, and under `--workers N` every
    second in each worker (`keyscope.serve.status.watch`), since a scrape reads every worker's. On the event
    loop, as recording is."""
    watcher = getattr(getattr(gateway, "checks", None), "watcher", None)
    heard = getattr(watcher, "heard", None)
    if heard is not None:
        CHANGE_SINCE.set(max(0.0, time.monotonic() - heard))
    if _batch is not None:
        _batch.flush()


# --workers N: the worker's side --------------------------------------------------------------------------------
class _Batch:
    """What this worker counted since the last `flush()`, kept in plain Python numbers.

    In multiprocess mode every prometheus-client increment is a write to a memory-mapped file under a lock:
    per request (a count, two histogram observations, the in-flight gauge up and down, a key-cache count)
    that measured about 14 µs more than in one process, some 15% of a request's CPU. Counted here instead,
    and written once a second (and before each scrape this worker answers), a request costs what it costs
    with one worker; the other workers' figures in a scrape are at most a second old. From an exit signal on
    (`write_through()`) every count is written at once, since a worker stopped by a signal runs no exit hook."""

    def __init__(self) -> None:
        self.counters: list[_PendingCount] = []
        self.histograms: list[_PendingHistogram] = []
        self.in_flight = 0
        self.in_flight_written = 0

    def counter(self, child: Any) -> Callable[[], None]:
        pending = _PendingCount(child)
        self.counters.append(pending)
        return pending.inc

    def histogram(self, histogram: Histogram) -> Callable[[float], None]:
        pending = _PendingHistogram(histogram)
        self.histograms.append(pending)
        return pending.observe

    def inc(self) -> None:
        self.in_flight += 1

    def dec(self) -> None:
        self.in_flight -= 1

    def flush(self) -> None:
        for counter in self.counters:
            if counter.count:
                counter.write()
        for histogram in self.histograms:
            if histogram.dirty:
                histogram.write()
        if self.in_flight != self.in_flight_written:
            self.in_flight_written = self.in_flight
            IN_FLIGHT.set(self.in_flight)


class _PendingCount:
    __slots__ = ("child", "count")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.count = 0

    def inc(self) -> None:
        self.count += 1

    def write(self) -> None:
        count, self.count = self.count, 0
        self.child.inc(count)


class _PendingHistogram:
    """Observations by bucket, as `Histogram.observe` files them (the first bound at or above the value)."""

    __slots__ = ("bounds", "counts", "dirty", "histogram", "sum")

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.bounds = list(histogram._upper_bounds)  # prometheus-client's own (see write): tests/test_metrics.py
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.dirty = False

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount
        self.dirty = True

    def write(self) -> None:
        """What `Histogram.observe` writes, n observations at a time: a bucket's value, and the sum."""
        buckets = self.histogram._buckets  # one value per bucket, not cumulative (as observe writes them)
        for index, count in enumerate(self.counts):
            if count:
                buckets[index].inc(count)
                self.counts[index] = 0
        self.histogram._sum.inc(self.sum)
        self.sum = 0.0
        self.dirty = False


_batch: _Batch | None = None


def _batch_from_now_on() -> None:
    global _batch, _hit, _miss, _inc, _dec, _observe_own, _observe_upstream, _counting
    _batch = _Batch()
    _hit = _batch.counter(KEY_CACHE.labels("hit"))
    _miss = _batch.counter(KEY_CACHE.labels("miss"))
    _inc, _dec = _batch.inc, _batch.dec
    _observe_own = _batch.histogram(DURATION)
    _observe_upstream = _batch.histogram(UPSTREAM_DURATION)
    _counting = _batch.counter
    _request_children.clear()
    _failure_children.clear()


def write_through() -> None:
    """From now on every count is written as it is made (`keyscope.serve.status` calls it on the event loop at
    the first SIGTERM or SIGINT): a worker that a signal stops dies by it, with no exit hook to flush in."""
    global _batch, _hit, _miss, _inc, _dec, _observe_own, _observe_upstream, _counting
    if _batch is None:
        return
    batch, _batch = _batch, None
    _hit = KEY_CACHE.labels("hit").inc
    _miss = KEY_CACHE.labels("miss").inc
    _inc, _dec = IN_FLIGHT.inc, IN_FLIGHT.dec
    _observe_own = DURATION.observe
    _observe_upstream = UPSTREAM_DURATION.observe
    _counting = _direct
    _request_children.clear()
    _failure_children.clear()
    batch.flush()
    IN_FLIGHT.set(batch.in_flight)


def render(gateway: Any = None) -> bytes:
    """The exposition, the per-scrape gauges brought up to date first."""
    update(gateway)
    return generate_latest(_served)


__all__ = ["CONTENT_TYPE", "REGISTRY", "enable", "forget", "record", "render", "shared_directory", "update",
           "write_through"]
