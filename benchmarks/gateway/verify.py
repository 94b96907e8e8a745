"""Is a row measuring what it says? One checked request before the load, and the runs' counts after it."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from .load import Request
from .procs import HOST


def fetch(port: int, request: Request) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        connection.request(request.method, request.target, body=request.body or None, headers=dict(request.headers))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def precheck(port: int, request: Request, expected: int) -> list[str]:
    """One request before the load: the expected status and a body showing the request arrived as sent."""
    status, body = fetch(port, request)
    if status != expected:
        return [f"precheck: status {status}, expected {expected}: {body[:200]!r}"]
    try:
        answer = json.loads(body)
    except ValueError:
        return [f"precheck: answer is not JSON: {body[:200]!r}"]
    if expected == 403:
        if answer.get("requestError", {}).get("serviceException", {}).get("messageId") != "UNAUTHORIZED":
            return [f"precheck: not the legacy UNAUTHORIZED body: {body[:200]!r}"]
        return []
    path, _, query = request.target.partition("?")
    seen = (answer.get("bench"), answer.get("method"), answer.get("path"), answer.get("query"),
            answer.get("bodyLength"))
    if seen != ("ok", request.method, path, query, len(request.body)):
        return [f"precheck: the backend saw {seen}, expected {('ok', request.method, path, query, len(request.body))}"]
    return []


def check_runs(runs: list[dict[str, Any]], expected: int, reaches_backend: bool, connections: int) -> list[str]:
    """A run is suspect if anything but the expected status came back, a socket failed, or the backend's count
    disagrees: forwarded rows must reach it (plus up to `connections` abandoned in flight when the load stopped,
    as many more still queued in a slow proxy from the run before, which settle() can miss when they trickle
    in slower than its quiet interval, and any that failed on the client's side), refusals never."""
    problems = []
    for index, run in enumerate(runs, 1):
        errors = {k: v for k, v in run["errors"].items() if k != "status" and v}
        if errors:
            problems.append(f"run {index}: socket errors {errors}")
        unexpected = {s: n for s, n in run["statuses"].items() if int(s) != expected}
        if unexpected:
            problems.append(f"run {index}: statuses {unexpected} besides {expected}")
        if not run["requests"]:
            problems.append(f"run {index}: no requests completed")
        slack = 2 * connections + sum(errors.values())
        if reaches_backend and not run["requests"] <= run["backend_reached"] <= run["requests"] + slack:
            problems.append(f"run {index}: backend saw {run['backend_reached']} of {run['requests']} requests")
        if not reaches_backend and run["backend_reached"]:
            problems.append(f"run {index}: {run['backend_reached']} requests reached the backend")
    return problems


def settle(port: int, limit: float = 10.0) -> tuple[int, int]:
    """The backend's counts once they stop moving (requests queued in a slow proxy arrive after the load ends):
    (requests served, client connections seen)."""
    last = backend_counts(port)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = backend_counts(port)
        if now == last:
            return now
        last = now
    return last


def backend_counts(port: int) -> tuple[int, int]:
    status, body = fetch(port, Request("GET", "/__bench/count", ()))
    if status != 200:
        raise RuntimeError(f"backend count: status {status}")
    counts = json.loads(body)
    return int(counts["served"]), int(counts["connections"])
