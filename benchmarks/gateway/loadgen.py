"""The fallback load generator, for machines without wrk: N keep-alive connections for D seconds, one JSON line.

Each connection is a task that sends the same request back to back (aiohttp, uvloop when installed) until the
time is up. It reports what report.lua reports, in the same shape, so the benchmark treats both alike. It is
much slower than wrk (Python spends ~100-300 µs of CPU per request), so it caps the fastest rows; the benchmark
says which generator ran.

    python loadgen.py --url http://127.0.0.1:PORT/path [--method POST --body-file F] [--header "Name: value"]
                      [--connections 64] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp
import yarl

MAX_CONNECTIONS = 1024
MAX_DURATION = 600.0
TIMEOUT = 10.0
"""Seconds before a request counts as a timeout, as bench_gateway.py gives wrk."""


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter({"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0})
        self.bytes = 0


async def _connection(
    session: aiohttp.ClientSession, args: argparse.Namespace, body: bytes | None, headers: dict[str, str],
    deadline: float, tally: Tally,
) -> None:
    url = yarl.URL(args.url, encoded=True)
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            async with session.request(args.method, url, data=body, headers=headers) as response:
                payload = await response.read()
        except asyncio.TimeoutError:
            tally.errors["timeout"] += 1
            continue
        except aiohttp.ClientConnectorError:
            tally.errors["connect"] += 1
            await asyncio.sleep(0.01)
            continue
        except aiohttp.ClientError:
            tally.errors["read"] += 1
            continue
        tally.latencies.append((time.perf_counter() - started) * 1e6)
        tally.statuses[response.status] += 1
        tally.bytes += len(payload)
        if not 200 <= response.status < 400:
            tally.errors["status"] += 1


def _percentile(ordered: list[float], percent: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(percent / 100 * len(ordered)) - 1))
    return round(ordered[index], 1)


async def run(args: argparse.Namespace) -> dict[str, object]:
    body = Path(args.body_file).read_bytes() if args.body_file else None
    headers = {}
    for line in args.header:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=args.connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, skip_auto_headers=("User-Agent",),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        started = time.perf_counter()
        deadline = started + args.duration
        await asyncio.gather(
            *(_connection(session, args, body, headers, deadline, tally) for _ in range(args.connections))
        )
        elapsed = time.perf_counter() - started
    ordered = sorted(tally.latencies)
    return {
        "requests": len(ordered),
        "duration_us": round(elapsed * 1e6),
        "bytes": tally.bytes,
        "errors": dict(tally.errors),
        "statuses": {str(status): n for status, n in sorted(tally.statuses.items())},
        "latency_us": {
            "mean": round(sum(ordered) / len(ordered), 1) if ordered else 0.0,
            "max": round(ordered[-1], 1) if ordered else 0.0,
            "p50": _percentile(ordered, 50),
            "p90": _percentile(ordered, 90),
            "p99": _percentile(ordered, 99),
            "p999": _percentile(ordered, 99.9),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body-file")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    if not args.url.startswith("http://127.0.0.1:"):
        parser.error("--url must be http://127.0.0.1:PORT/...: the benchmark only drives local servers")
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        parser.error(f"--connections must be 1..{MAX_CONNECTIONS}")
    if not 0 < args.duration <= MAX_DURATION:
        parser.error(f"--duration must be in (0, {MAX_DURATION:g}] seconds")
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args))
    else:
        result = uvloop.run(run(args))
    print("BENCH_JSON " + json.dumps(result, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
