"""What keyscope costs per request under load, next to the proxies people use (issue 6's load benchmark).

Starts on 127.0.0.1 a minimal raw-ASGI backend (200-byte JSON), keyscope (`keyscope serve`, SQLite store seeded
here), a bare aiohttp proxy, the Starlette + httpx tutorial proxy, nginx when installed, a minimal Starlette app
with and without KeyScopeMiddleware, and two diagnostic rows: keyscope's forwarding step alone (full gateway
minus it is what the checks cost, it minus the bare proxy is what keyscope's forwarding adds) and keyscope's
server alone answering the refusal's bytes with no checks (`ks-floor`: what any answer costs that server).
Each row gets a warm-up, then the same load for the same time, `--runs` times, rows taking turns (wrk -t1
when installed, else benchmarks/gateway/loadgen.py). The load generator runs on CPU 0, servers on CPU 1
(taskset), except the --workers rows, whose servers (and their own backend) get CPUs 0-1, both rows alike so
that they compare.

Printed: one markdown table (req/s, p50/p99 latency, CPU µs per request of the server under test and of the
backend, from /proc utime+stime deltas of each whole process tree) and the issue's target ratios. Saved:
benchmarks/results/gateway-<UTC time>.json, with every run. A row whose answers were not all the expected
status, that had socket errors, or whose requests did not (or, for refusals, did) reach the backend, is
flagged in the `check` column.

    .venv/bin/python benchmarks/bench_gateway.py [--duration 10] [--connections 64] [--runs 2] [--warmup 2]
        [--only direct,aiohttp,ks-post,...] [--loadgen auto|wrk|python] [--profile ks-post]
        [--keyscope-arg=--no-access-log] [--compare benchmarks/results/gateway-<earlier>.json]

benchmarks/gateway/steps.py times each step of the request path in-process, without sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from gateway import procs, pyspy, report, verify  # noqa: E402
from gateway.fixtures import APP, BODY_SIZE, OTHER_APP, message_body, seed, seed_limited  # noqa: E402
from gateway.load import Generator, Request  # noqa: E402

UVICORN = ["--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools"]
BASELINE = "proxy-baseline.md, POST 1 KB c64: nginx 63, bare aiohttp 448 (GET 391), tutorial ~4,400 µs/req"


@dataclass(frozen=True)
class Row:
    id: str
    label: str
    server: str
    """Which server the load goes to (a key of Bench.servers)."""
    request: str
    """Which request (a key of Bench.requests)."""
    status: int
    reaches_backend: bool


ROWS = [
    Row("direct", "backend direct", "backend", "post", 200, True),
    Row("nginx", "nginx proxy_pass, upstream keepalive", "nginx", "post", 200, True),
    Row("aiohttp", "bare aiohttp proxy, no checks", "aiohttp", "post", 200, True),
    Row("tutorial", "Starlette + httpx tutorial proxy, no checks", "tutorial", "post", 200, True),
    Row("ks-forward", "keyscope's forwarding alone (gateway.upstream.Upstream, no checks)", "forward-only", "post",
        200, True),
    Row("ks-post", "keyscope linked key, POST 1 KB (full check)", "keyscope", "post", 200, True),
    Row("ks-get", "keyscope linked key, GET logs?applicationId", "keyscope", "get-linked", 200, True),
    Row("ks-get-primary", "keyscope primary key, GET logs", "keyscope", "get-primary", 200, True),
    Row("ks-refused", "keyscope refusing (other application, 403)", "keyscope", "post-refused", 403, False),
    Row("ks-floor", "keyscope's server alone: the same 403 bytes, no checks, no log line", "floor", "post-refused",
        403, False),
    Row("mw-bare", "Starlette app, no middleware", "mw-bare", "post", 200, False),
    Row("mw-keyscope", "Starlette app + KeyScopeMiddleware", "mw-keyscope", "post", 200, False),
    Row("ks-w1", "keyscope --workers 1, POST (servers on CPUs 0-1)", "keyscope-w1", "post", 200, True),
    Row("ks-w2", "keyscope --workers 2, POST (servers on CPUs 0-1)", "keyscope-w2", "post", 200, True),
    Row("ks-limited", "keyscope rate-limited key, local counters, POST 1 KB", "keyscope", "post-limited", 200, True),
    Row("ks-limited-redis", "keyscope rate-limited key, Redis counters, POST 1 KB", "keyscope-redis",
        "post-limited", 200, True),
]
WIDE = {"keyscope-w1", "keyscope-w2"}
"""Servers that get both CPUs (with their own backend on both CPUs)."""


class Bench:
    def __init__(self, args: argparse.Namespace, run_dir: Path) -> None:
        self.args = args
        self.run_dir = run_dir
        self.placement = procs.Placement.detect(not args.no_pin)
        self.generator = Generator.choose(args.loadgen)
        self.servers: dict[str, procs.Server] = {}
        self.backends: dict[str, procs.Server] = {}
        self.notes: list[str] = [self.placement.note]
        self.store_url = f"sqlite:///{(run_dir / 'keyscope.db').resolve()}"
        linked, primary = asyncio.run(seed(self.store_url))
        limited = asyncio.run(seed_limited(self.store_url))
        self.requests = self._requests(linked, primary, limited)
        self.keyscope_module = _keyscope_entry()

    def _requests(self, linked: str, primary: str, limited: str) -> dict[str, Request]:
        bodies = {}
        for name, application in (("post", APP), ("post-refused", OTHER_APP)):
            path = self.run_dir / f"body-{name}.json"
            path.write_bytes(message_body(application))
            bodies[name] = path
        json_type = ("Content-Type", "application/json")
        return {
            "post": Request("POST", "/sms/2/text/advanced", (json_type, ("Authorization", f"App {linked}")),
                            bodies["post"]),
            "post-limited": Request("POST", "/sms/2/text/advanced",
                                    (json_type, ("Authorization", f"App {limited}")), bodies["post"]),
            "post-refused": Request("POST", "/sms/2/text/advanced",
                                    (json_type, ("Authorization", f"App {linked}")), bodies["post-refused"]),
            "get-linked": Request("GET", f"/sms/1/logs?applicationId={APP}", (("Authorization", f"App {linked}"),)),
            "get-primary": Request("GET", f"/sms/1/logs?applicationId={APP}",
                                   (("Authorization", f"App {primary}"),)),
        }

    # servers ---------------------------------------------------------------------------------------------
    def backend_for(self, server: str) -> procs.Server:
        which = "wide" if server in WIDE else "pinned"
        if which not in self.backends:
            prefix = self.placement.wide if which == "wide" else self.placement.servers
            self.backends[which] = self._uvicorn(f"backend-{which}", "backend:app", prefix, {})
        return self.backends[which]

    def _uvicorn(self, name: str, app: str, prefix: tuple[str, ...], env: dict[str, str]) -> procs.Server:
        port = procs.free_port()
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE / "gateway"), *UVICORN,
                   "--host", procs.HOST, "--port", str(port), app]
        return procs.start(name, command, prefix=prefix, port=port, log=self.run_dir / f"{name}.log",
                           env={**_clean_env(), **env})

    def server(self, name: str) -> procs.Server | None:
        """The server under test for a row (None for the backend itself), started on first use."""
        if name == "backend":
            self.backend_for(name)
            return None
        if name in self.servers:
            return self.servers[name]
        backend = self.backend_for(name)
        upstream = f"http://{procs.HOST}:{backend.port}"
        prefix = self.placement.wide if name in WIDE else self.placement.servers
        if name == "aiohttp":
            server = self._uvicorn(name, "bare_proxy:app", prefix, {"BENCH_UPSTREAM": upstream})
        elif name == "tutorial":
            server = self._uvicorn(name, "tutorial_proxy:app", prefix, {"BENCH_UPSTREAM": upstream})
        elif name == "forward-only":
            server = self._uvicorn(name, "forward_only:app", prefix, {"BENCH_UPSTREAM": upstream})
        elif name in ("mw-bare", "mw-keyscope"):
            env = {"BENCH_MIDDLEWARE": "1" if name == "mw-keyscope" else "0", "BENCH_STORE": self.store_url}
            server = self._uvicorn(name, "mw_app:app", prefix, env)
        elif name == "floor":
            port = procs.free_port()
            server = procs.start(name, [sys.executable, str(HERE / "gateway" / "floor.py"), "--host", procs.HOST,
                                        "--port", str(port)], prefix=prefix, port=port,
                                 log=self.run_dir / f"{name}.log", env=_clean_env())
        elif name == "nginx":
            server = self._nginx(backend.port)
        else:
            workers = 2 if name == "keyscope-w2" else 1
            redis = ("--rate-limit-store", self.args.redis) if name == "keyscope-redis" else ()
            server = self._keyscope(name, upstream, workers, prefix, *redis)
        self.servers[name] = server
        return server

    def _keyscope(self, name: str, upstream: str, workers: int, prefix: tuple[str, ...], *extra: str) -> procs.Server:
        port = procs.free_port()
        command = [sys.executable, "-m", self.keyscope_module, "serve", "--upstream", upstream,
                   "--store", self.store_url, "--host", procs.HOST, "--port", str(port), "--workers", str(workers),
                   *extra, *self.args.keyscope_arg]
        env = {**_clean_env(), "KEYSCOPE_ADMIN_TOKEN": secrets.token_urlsafe(24)}
        return procs.start(name, command, prefix=prefix, port=port, log=self.run_dir / f"{name}.log", env=env)

    def _nginx(self, upstream_port: int) -> procs.Server:
        port = procs.free_port()
        conf = (HERE / "gateway" / "nginx.conf.in").read_text()
        for marker, value in (("@RUN_DIR@", str(self.run_dir.resolve())), ("@PORT@", str(port)),
                              ("@UPSTREAM_PORT@", str(upstream_port))):
            conf = conf.replace(marker, value)
        (self.run_dir / "nginx.conf").write_text(conf)
        command = [shutil.which("nginx") or "nginx", "-p", str(self.run_dir.resolve()), "-c", "nginx.conf",
                   "-e", str(self.run_dir.resolve() / "nginx-error.log")]
        return procs.start("nginx", command, prefix=self.placement.servers, port=port,
                           log=self.run_dir / "nginx.log")

    def stop_all(self) -> None:
        for server in [*self.servers.values(), *self.backends.values()]:
            server.stop()
        self.servers.clear()
        self.backends.clear()

    # measuring -------------------------------------------------------------------------------------------
    def target(self, row: Row) -> tuple[procs.Server | None, procs.Server, int]:
        """(server under test or None for the backend itself, its backend, the port the load goes to)."""
        server = self.server(row.server)
        backend = self.backend_for(row.server)
        return server, backend, server.port if server is not None else backend.port

    def prepare(self, row: Row) -> list[str]:
        """Start what the row needs and check one request; the problems found (empty: ready)."""
        try:
            _, _, port = self.target(row)
            return verify.precheck(port, self.requests[row.request], row.status)
        except (RuntimeError, OSError) as exc:
            return [f"start-up: {exc}"]

    def measure(self, row: Row) -> dict[str, Any]:
        """A warm-up, then one measured run."""
        server, backend, port = self.target(row)
        request = self.requests[row.request]
        if self.args.warmup > 0:
            self.generator.run(port, request, self.args.connections, self.args.warmup, self.placement.loadgen)
        return self._run(row, server, backend, port, request)

    def profile(self, row: Row) -> dict[str, str]:
        server, backend, port = self.target(row)
        request = self.requests[row.request]
        if self.args.warmup > 0:  # idle pooled connections were closed by the backend meanwhile: reopen them first
            self.generator.run(port, request, self.args.connections, self.args.warmup, self.placement.loadgen)
        return pyspy.record(
            server or backend, self.run_dir / f"profile-{row.id}.txt",
            lambda: self.generator.run(port, request, self.args.connections, self.args.duration,
                                       self.placement.loadgen),
        )

    def _run(self, row: Row, server: procs.Server | None, backend: procs.Server, port: int,
             request: Request) -> dict[str, Any]:
        served_before, connections_before = verify.settle(backend.port)
        server_before = server.cpu_ticks() if server is not None else {}
        server_user_before = server.user_ticks() if server is not None else {}
        backend_before = backend.cpu_ticks()
        busy_before = procs.system_busy_ticks()
        self_before = os.times()
        wall_before = time.monotonic()
        outcome, loadgen_cpu = self.generator.run(
            port, request, self.args.connections, self.args.duration, self.placement.loadgen
        )
        busy = procs.system_busy_ticks() - busy_before
        wall = time.monotonic() - wall_before
        self_times = os.times()
        by_process = procs.ticks_used(server_before, server.cpu_ticks()) if server is not None else {}
        server_ticks = sum(by_process.values()) if server is not None else None
        server_user_ticks = (
            sum(procs.ticks_used(server_user_before, server.user_ticks()).values()) if server is not None else None
        )
        backend_ticks = sum(procs.ticks_used(backend_before, backend.cpu_ticks()).values())
        served_after, connections_after = verify.settle(backend.port)
        requests = int(outcome["requests"])
        seconds = outcome["duration_us"] / 1e6
        ours = ((server_ticks or 0) + backend_ticks) / procs.CLOCK_TICKS + loadgen_cpu + (
            (self_times.user - self_before.user) + (self_times.system - self_before.system))
        other = max(0.0, busy / procs.CLOCK_TICKS - ours)
        return {
            **outcome,
            "rps": requests / seconds if seconds else 0.0,
            "server_cpu_us_per_req": _per_request(server_ticks, requests),
            "server_cpu_us_per_req_by_process": {str(pid): _per_request(t, requests) for pid, t in by_process.items()},
            "server_user_cpu_us_per_req": _per_request(server_user_ticks, requests),  # without the kernel's share
            "backend_cpu_us_per_req": _per_request(backend_ticks, requests),
            "backend_reached": served_after - served_before,
            "backend_new_connections": connections_after - connections_before,
            # Shares of one CPU over the whole window (the generator's start-up included).
            "loadgen_cpu_pct": 100 * loadgen_cpu / wall,
            "other_cpu_pct": 100 * other / wall,
        }


def _per_request(ticks: int | None, requests: int) -> float | None:
    if ticks is None or not requests:
        return None
    return ticks / procs.CLOCK_TICKS * 1e6 / requests


def _clean_env() -> dict[str, str]:
    """This environment without KEYSCOPE_* settings, so a stray one cannot change what is measured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def _keyscope_entry() -> str:
    """`python -m keyscope.cli serve`, the console script's command, else `keyscope.serve.server serve`."""
    done = subprocess.run([sys.executable, "-m", "keyscope.cli", "serve", "--help"], capture_output=True,
                          env=_clean_env(), timeout=60)
    return "keyscope.cli" if done.returncode == 0 else "keyscope.serve.server"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in ("keyscope", "uvicorn", "uvloop", "httptools", "starlette", "aiohttp", "httpx", "sniffio"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15", metavar="URL",
                        help="the Redis of the ks-limited-redis row (default redis://127.0.0.1:6379/15)")
    parser.add_argument("--runs", type=int, default=2, help="measured runs per row (default 2)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first (default 2)")
    parser.add_argument("--only", default="", help="comma-separated row ids: " + ",".join(r.id for r in ROWS))
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--keyscope-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for keyscope serve, e.g. --keyscope-arg=--no-access-log")
    parser.add_argument("--profile", default="", metavar="ROWS",
                        help="after measuring these rows, one more run under py-spy (not in the table)")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="directory for the JSON file")
    parser.add_argument("--compare", type=Path, metavar="JSON", help="an earlier results file to compare with")
    args = parser.parse_args(argv)
    known = {r.id for r in ROWS}
    args.only = [r for r in args.only.split(",") if r] or [r.id for r in ROWS]
    args.profile = [r for r in args.profile.split(",") if r]
    for name in (*args.only, *args.profile):
        if name not in known:
            parser.error(f"unknown row {name!r}; rows: {', '.join(r.id for r in ROWS)}")
    if not 0 < args.duration <= 120:
        parser.error("--duration must be in (0, 120] seconds")
    if not 0 <= args.warmup <= 30:
        parser.error("--warmup must be in [0, 30] seconds")
    if not 1 <= args.connections <= 512:
        parser.error("--connections must be 1..512")
    if not 1 <= args.runs <= 5:
        parser.error("--runs must be 1..5")
    if args.compare is not None:
        try:
            args.earlier = json.loads(args.compare.read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--compare {args.compare}: {exc}")
    return args


def run_rows(bench: Bench, rows: list[Row], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row's runs and problems (and profile), servers stopped afterwards whatever happens."""
    results = {row.id: {"row": row.id, "label": row.label, "runs": [], "problems": []} for row in rows}
    try:
        ready = []
        for row in rows:
            results[row.id]["problems"] = bench.prepare(row)
            if not results[row.id]["problems"]:
                ready.append(row)
        for number in range(1, args.runs + 1):
            # Rows take turns, run by run, so a burst of other load on the machine spreads over all of them.
            for row in ready:
                print(f"  run {number}/{args.runs}: {row.id}", file=sys.stderr, flush=True)
                try:
                    results[row.id]["runs"].append(bench.measure(row))
                except (RuntimeError, OSError) as exc:
                    results[row.id]["problems"].append(f"run {number}: {exc}")
        for row in ready:
            results[row.id]["problems"] += verify.check_runs(
                results[row.id]["runs"], row.status, row.reaches_backend, args.connections
            )
            if row.id in args.profile:
                print(f"  profiling {row.id}", file=sys.stderr, flush=True)
                results[row.id]["profile"] = bench.profile(row)
    finally:
        bench.stop_all()
    return list(results.values())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = args.results / f"gateway-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(args, run_dir)
    rows = [r for r in ROWS if r.id in args.only]
    if "nginx" in args.only and shutil.which("nginx") is None:
        rows = [r for r in rows if r.id != "nginx"]
        bench.notes.append("nginx not installed: its row is skipped")
    if bench.placement.servers:
        os.sched_setaffinity(0, {0})  # this script's own work stays off the servers' CPU
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the servers
    print(f"bench_gateway: {len(rows)} rows, {args.runs} x {args.duration:g}s after {args.warmup:g}s warm-up, "
          f"c{args.connections}, load generator: {bench.generator.description}; logs in {run_dir}",
          file=sys.stderr)
    results = run_rows(bench, rows, args)
    summary = {r["row"]: report.summarize(r) for r in results}
    goals = report.targets(summary)
    flagged = {r["row"] for r in results if r["problems"]}
    bench.notes.append(f"load generator: {bench.generator.description}")
    bench.notes.append(
        f"keyscope: `python -m {bench.keyscope_module} serve` {' '.join(args.keyscope_arg) or 'with defaults'}; "
        "its stdout (the access log, on by default) goes to /dev/null"
    )
    bench.notes.append("middleware rows: no access log (KeyScopeMiddleware logs only where the app turns on "
                       "the keyscope.access logger)")
    bench.notes.append(f"baseline figures: {BASELINE}")
    floor = report.floor_note(summary)
    if floor is not None:
        bench.notes.append(floor)
    busiest = max((s["other_cpu_pct"] or 0 for s in summary.values()), default=0)
    if busiest > 25:
        bench.notes.append(f"CAUTION: other processes used up to {busiest:.0f}% of a CPU during these runs; "
                           "absolute figures are low and noisy, compare ratios, re-run on a quiet machine")
    document = {
        "format": report.FORMAT, "time": stamp, "host": platform.node(), "cpus": os.cpu_count(),
        "versions": versions(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "earlier"},
        "notes": bench.notes, "results": results, "summary": summary, "targets": goals,
    }
    out = args.results / f"gateway-{stamp}.json"
    out.write_text(json.dumps(document, indent=1))
    print(f"\n## keyscope gateway benchmark ({stamp}, format {report.FORMAT})\n")
    print(f"POST /sms/2/text/advanced with a {BODY_SIZE}-byte JSON body unless the row says GET; "
          f"c{args.connections}, {args.runs} x {args.duration:g}s per row (figures are medians of the runs).\n")
    print(report.table(results, summary))
    print()
    print(report.target_table(goals, flagged))
    print()
    for note in bench.notes:
        print(f"- {note}")
    if args.compare is not None:
        print()
        print(report.comparison(args.earlier, summary, goals))
    for result in results:
        for problem in result["problems"]:
            print(f"- FLAGGED {result['row']}: {problem}")
        if "profile" in result:
            print(f"\nprofile of {result['row']} ({result['profile']['file']}):\n{result['profile']['text']}")
    print(f"\nresults: {out}")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
