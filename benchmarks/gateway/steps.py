"""CPU per call of each step of keyscope's request path, in-process: no sockets, no server, no load generator.

No sockets, so none of the network and server costs that dominate the load benchmark: a change to one step
shows here plainly. Each figure is process CPU time over many calls, the median of several rounds; other load
on the machine still moves it (caches, frequency), so compare figures taken back to back.

    .venv/bin/python benchmarks/gateway/steps.py [--calls 20000] [--rounds 5] [--only steps] [--cprofile refusal]

Instruction counts are steadier than CPU time on a shared machine: run one row under valgrind at two call
counts and take the difference (`valgrind --tool=callgrind ... steps.py --only "steps 2-5: Checks.admit, linked
POST" --calls 300 --rounds 1 --steady`, then `--calls 900`: (I900 - I300) / 600 instructions per call).

Measured, on the 1 KB POST of the load benchmark unless said otherwise:
    step 1     Checks.target (canonical target)
    steps 2-5  Checks.admit: linked POST, linked GET, primary GET
    forward    what keyscope computes before aiohttp: identity and upstream request headers
    log        one access-log line (to /dev/null)
    refusal    the whole gateway on the refused POST (steps 1-5, the 403 answer, the log line): on the ASGI
               path, and as `Gateway.early` (what `keyscope serve` runs for a request that arrives whole)
    early      `Gateway.early` admitting the POST (it is then only forwarded)
    middleware KeyScopeMiddleware around a trivial ASGI app, against that app alone
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.fixtures import APP, OTHER_APP, message_body, seed, seed_limited  # noqa: E402
from keyscope.observe import accesslog, metrics  # noqa: E402
from keyscope.core.errors import Refusal  # noqa: E402
from keyscope.core.settings import Settings  # noqa: E402
from keyscope.decide.admission import Admission  # noqa: E402
from keyscope.gateway.app import _ADMITTED as ADMITTED  # noqa: E402
from keyscope.gateway.app import Gateway  # noqa: E402
from keyscope.gateway.middleware import KeyScopeMiddleware  # noqa: E402
from keyscope.store import store_from_url  # noqa: E402

_ANSWER = b'{"ok":true}'


def http_scope(method: str, target: bytes, secret: str, body: bytes) -> dict[str, Any]:
    """The scope uvicorn builds for wrk's request."""
    path, _, query = target.partition(b"?")
    headers = [(b"host", b"127.0.0.1:8080"), (b"authorization", f"App {secret}".encode())]
    if body:
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 50000), "scheme": "http", "method": method,
        "root_path": "", "path": path.decode(), "raw_path": path, "query_string": query, "headers": headers,
        "state": {},
    }


def receiver(body: bytes) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def discard(message: dict[str, Any]) -> None:
    return None


async def trivial_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": _ANSWER})


async def profiled(step: Callable[[], Awaitable[object]], calls: int, top: int = 25) -> str:
    """cProfile's view of one step (slower than the real thing, but it names the functions)."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        await step()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


async def per_call(step: Callable[[], Awaitable[object]], calls: int, rounds: int) -> float:
    """Median over rounds of process CPU µs per call."""
    for _ in range(min(calls, 1000)):
        await step()
    results = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(calls):
            await step()
        results.append((time.process_time() - started) * 1e6 / calls)
    return statistics.median(results)


async def measure(
    store_url: str, calls: int, rounds: int, cprofile: str, only: str = "", steady: bool = False
) -> list[tuple[str, float | str]]:
    linked, primary = await seed(store_url)
    limited = await seed_limited(store_url)
    post = message_body(APP)
    refused = message_body(OTHER_APP)
    logs = f"/sms/1/logs?applicationId={APP}".encode()
    gateway = Gateway.from_settings(
        Settings(upstream="http://127.0.0.1:9", store=store_url, key_cache_ttl=3600.0 if steady else 5.0)
    )
    await gateway.startup()
    if steady:  # no revision read every 0.2 s: under valgrind that would be every few calls
        gateway.checks.watcher.interval = 3600.0
    middleware_store = store_from_url(store_url)
    await middleware_store.open()
    middleware = KeyScopeMiddleware(trivial_app, store=middleware_store)
    devnull = open(os.devnull, "w")
    accesslog.enable(devnull)
    try:
        checks = gateway.checks
        post_scope = http_scope("POST", b"/sms/2/text/advanced", linked, post)
        get_scope = http_scope("GET", logs, linked, b"")
        primary_scope = http_scope("GET", logs, primary, b"")
        refused_scope = http_scope("POST", b"/sms/2/text/advanced", linked, refused)
        limited_scope = http_scope("POST", b"/sms/2/text/advanced", limited, post)

        async def target() -> None:
            checks.target(post_scope)

        def admit(scope: dict[str, Any], body: bytes) -> Callable[[], Awaitable[None]]:
            receive = receiver(body)

            async def step() -> None:
                await checks.admit(scope, receive, Admission())

            return step

        admitted = Admission()
        await checks.admit(post_scope, receiver(post), admitted)

        async def headers() -> None:
            gateway.upstream.request_headers(post_scope, admitted.identity_headers())

        async def log_line() -> None:
            accesslog.record(started=time.perf_counter(), method="POST", path=b"/sms/2/text/advanced",
                             decision=accesslog.FORWARDED, status=200, key_id=admitted.key_id,
                             function=admitted.function, upstream_status=200)

        refused_receive = receiver(refused)

        async def refusal() -> None:
            await gateway(refused_scope, refused_receive, discard)

        # What `keyscope serve` does with a request that arrives whole: `Gateway.early`, and the ASGI path when
        # it steps aside (a store round trip due: the revision every 0.2 s, a key every 5 s), as in the server.
        async def early_refusal() -> None:
            scope = {**refused_scope, "headers": list(refused_scope["headers"])}
            if gateway.early(scope, refused) is None:
                await gateway(scope, refused_receive, discard)

        post_receive = receiver(post)

        def early_admission(admitted_scope: dict[str, Any]) -> Callable[[], Awaitable[None]]:
            async def step() -> None:
                scope = {**admitted_scope, "headers": list(admitted_scope["headers"])}
                gateway.early(scope, post)
                if ADMITTED not in scope:  # stepped aside
                    await checks.admit(scope, post_receive, Admission())  # then forwarded, as the early one is

            return step

        async def wrapped() -> None:
            await middleware(post_scope, receiver(post), discard)

        async def bare() -> None:
            await trivial_app(post_scope, receiver(post), discard)

        try:
            await checks.admit(refused_scope, refused_receive, Admission())
        except Refusal:
            pass
        else:
            raise SystemExit("steps: the refused POST was admitted; the fixtures no longer make a refusal")
        if gateway.early(refused_scope, refused) is None:
            raise SystemExit("steps: Gateway.early did not answer the refused POST")
        steps = [
            ("step 1: Checks.target, POST", target),
            ("steps 2-5: Checks.admit, linked POST 1 KB", admit(post_scope, post)),
            ("steps 2-5: Checks.admit, linked GET", admit(get_scope, b"")),
            ("steps 2-5: Checks.admit, primary GET", admit(primary_scope, b"")),
            ("steps 2-5: Checks.admit, rate-limited key's POST 1 KB, local counters", admit(limited_scope, post)),
            ("forward: identity + upstream request headers", headers),
            ("log: one access-log line", log_line),
            ("refusal: whole gateway, refused POST 1 KB (403)", refusal),
            ("refusal: Gateway.early, refused POST 1 KB (what keyscope serve runs)", early_refusal),
            ("early: Gateway.early, admitted POST 1 KB (then only forwarded)", early_admission(post_scope)),
            ("early: Gateway.early, rate-limited key's POST 1 KB, local counters", early_admission(limited_scope)),
            ("middleware: KeyScopeMiddleware + trivial app, POST", wrapped),
            ("middleware: trivial app alone, POST", bare),
        ]
        if cprofile:
            return [(name, await profiled(step, calls)) for name, step in steps if name.startswith(cprofile)]
        return [(name, await per_call(step, calls, rounds)) for name, step in steps if name.startswith(only)]
    finally:
        accesslog.disable()
        devnull.close()
        await middleware.close()
        await middleware_store.close()
        await gateway.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cprofile", default="", metavar="STEP",
                        help="instead of timing, cProfile the steps whose name starts with STEP, e.g. refusal")
    parser.add_argument("--only", default="", metavar="STEP", help="time only the steps whose name starts with STEP")
    parser.add_argument("--steady", action="store_true",
                        help="nothing timed on the request path (the revision read, key reloads): for instruction "
                             "counts under valgrind, which runs fifty times slower and would meet them every few calls")
    parser.add_argument("--metrics", action="store_true",
                        help="record the Prometheus metrics, as a gateway with --status-listen does (one worker)")
    args = parser.parse_args()
    if not 1 <= args.calls <= 1_000_000 or not 1 <= args.rounds <= 50:
        parser.error("--calls must be 1..1,000,000 and --rounds 1..50")
    if args.metrics:
        metrics.enable()
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{Path(directory) / 'keyscope.db'}"
        results = asyncio.run(measure(url, args.calls, args.rounds, args.cprofile, args.only, args.steady))
    if args.cprofile:
        if not results:
            parser.error(f"no step starts with {args.cprofile!r}")
        for name, text in results:
            print(f"## {name}\n{text}")
        return
    print("| step | CPU µs/call |\n|---|---:|")
    for name, micros in results:
        print(f"| {name} | {micros:.1f} |")


if __name__ == "__main__":
    main()
