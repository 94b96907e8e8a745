"""What keyscope costs per request under load, next to the proxies people use (issue 6's load benchmark).

Starts on 127.0.0.1 a minimal raw-ASGI backend (200-byte JSON), keyscope (`keyscope serve`, SQLite store seeded
here), a bare aiohttp proxy, the Starlette + httpx tutorial proxy, nginx when installed, and a minimal Starlette
app with and without KeyScopeMiddleware. Each row gets a warm-up, then the same load for the same time, `--runs`
times (wrk -t1 when installed, else benchmarks/gateway/loadgen.py). The load generator runs on CPU 0, servers on
CPU 1 (taskset), except the --workers rows, whose servers get CPUs 0-1 (both workers rows alike, so they compare).

Printed: one markdown table (req/s, p50/p99 latency, CPU µs per request of the server under test and of the
backend, from /proc utime+stime deltas of each whole process tree) and the issue's target ratios. Saved:
benchmarks/results/gateway-<UTC time>.json, with every run. A row whose answers were not all the expected
status, that had socket errors, or whose requests did not (or, for refusals, did) reach the backend, is
flagged in the `check` column.

    .venv/bin/python benchmarks/bench_gateway.py [--duration 10] [--connections 64] [--runs 2] [--warmup 2]
        [--only direct,aiohttp,ks-post,...] [--loadgen auto|wrk|python] [--profile ks-post]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from gateway import procs, profile  # noqa: E402
from gateway.load import Generator, Request  # noqa: E402

FORMAT = 1
"""Bumped whenever the table or the JSON changes shape, so later runs know what they compare with."""
APP = "bench-app"
OTHER_APP = "bench-other"
BODY_SIZE = 1024
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
    Row("ks-post", "keyscope linked key, POST 1 KB (full check)", "keyscope", "post", 200, True),
    Row("ks-get", "keyscope linked key, GET logs?applicationId", "keyscope", "get-linked", 200, True),
    Row("ks-get-primary", "keyscope primary key, GET logs", "keyscope", "get-primary", 200, True),
    Row("ks-refused", "keyscope refusing (other application, 403)", "keyscope", "post-refused", 403, False),
    Row("mw-bare", "Starlette app, no middleware", "mw-bare", "post", 200, False),
    Row("mw-keyscope", "Starlette app + KeyScopeMiddleware", "mw-keyscope", "post", 200, False),
    Row("ks-w1", "keyscope --workers 1, POST (servers on CPUs 0-1)", "keyscope-w1", "post", 200, True),
    Row("ks-w2", "keyscope --workers 2, POST (servers on CPUs 0-1)", "keyscope-w2", "post", 200, True),
]
WIDE = {"keyscope-w1", "keyscope-w2"}
"""Servers that get both CPUs (with their own backend on both CPUs)."""


def message_body(application: str) -> bytes:
    """A 1 KB SMS send naming `application` in messages[] (where endpoints.yaml says the ids are)."""
    message = {"destinations": [{"to": "41793026727"}], "from": "InfoSMS", "text": "", "applicationId": application}
    bare = len(json.dumps({"messages": [message]}, separators=(",", ":")))
    message["text"] = "x" * (BODY_SIZE - bare)
    body = json.dumps({"messages": [message]}, separators=(",", ":")).encode()
    assert len(body) == BODY_SIZE, len(body)
    return body


async def seed(store_url: str) -> tuple[str, str]:
    """Two applications and two keys, written through the store as `keyscope.demo` does: (linked, primary)."""
    from keyscope import keys
    from keyscope.models import ApiKey, Application, PlatformEntry
    from keyscope.store import store_from_url

    store = store_from_url(store_url)
    await store.open()
    try:
        await store.create_application(Application(APP, "Benchmark"))
        await store.create_application(Application(OTHER_APP, "Benchmark, other"))
        made = []
        for name, platform_entries in (("bench-linked", (PlatformEntry("", APP, None),)), ("bench-primary", ())):
            secret = keys.new_secret()
            now = datetime.now(timezone.utc).replace(microsecond=0)
            await store.create_key(
                ApiKey(
                    id=keys.new_key_id(), name=name, secret_hash=keys.hash_secret(secret),
                    prefix=keys.display_prefix(secret), allowed_ips=(), valid_from=now,
                    valid_to=now + timedelta(days=1), enabled=True, platform=platform_entries, created_at=now,
                )
            )
            made.append(secret)
    finally:
        await store.close()
    return made[0], made[1]


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
        self.requests = self._requests(linked, primary)
        self.keyscope_module = _keyscope_entry()

    def _requests(self, linked: str, primary: str) -> dict[str, Request]:
        bodies = {}
        for name, application in (("post", APP), ("post-refused", OTHER_APP)):
            path = self.run_dir / f"body-{name}.json"
            path.write_bytes(message_body(application))
            bodies[name] = path
        json_type = ("Content-Type", "application/json")
        return {
            "post": Request("POST", "/sms/2/text/advanced", (json_type, ("Authorization", f"App {linked}")),
                            bodies["post"]),
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
        elif name in ("mw-bare", "mw-keyscope"):
            env = {"BENCH_MIDDLEWARE": "1" if name == "mw-keyscope" else "0", "BENCH_STORE": self.store_url}
            server = self._uvicorn(name, "mw_app:app", prefix, env)
        elif name == "nginx":
            server = self._nginx(backend.port)
        else:
            workers = 2 if name == "keyscope-w2" else 1
            server = self._keyscope(name, upstream, workers, prefix)
        self.servers[name] = server
        return server

    def _keyscope(self, name: str, upstream: str, workers: int, prefix: tuple[str, ...]) -> procs.Server:
        port = procs.free_port()
        command = [sys.executable, "-m", self.keyscope_module, "serve", "--upstream", upstream,
                   "--store", self.store_url, "--host", procs.HOST, "--port", str(port), "--workers", str(workers),
                   *self.args.keyscope_arg]
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
            return precheck(port, self.requests[row.request], row)
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
        return profile.record(
            server or backend, self.run_dir / f"profile-{row.id}.txt",
            lambda: self.generator.run(port, request, self.args.connections, self.args.duration,
                                       self.placement.loadgen),
        )

    def _run(self, row: Row, server: procs.Server | None, backend: procs.Server, port: int,
             request: Request) -> dict[str, Any]:
        count_before = settle(backend.port)
        server_before = server.cpu_ticks() if server is not None else 0
        backend_before = backend.cpu_ticks()
        busy_before = procs.system_busy_ticks()
        self_before = os.times()
        report, loadgen_cpu = self.generator.run(
            port, request, self.args.connections, self.args.duration, self.placement.loadgen
        )
        busy = procs.system_busy_ticks() - busy_before
        self_times = os.times()
        server_ticks = server.cpu_ticks() - server_before if server is not None else None
        backend_ticks = backend.cpu_ticks() - backend_before
        reached = settle(backend.port) - count_before
        requests = int(report["requests"])
        seconds = report["duration_us"] / 1e6
        ours = ((server_ticks or 0) + backend_ticks) / procs.CLOCK_TICKS + loadgen_cpu + (
            (self_times.user - self_before.user) + (self_times.system - self_before.system))
        other = max(0.0, busy / procs.CLOCK_TICKS - ours)
        return {
            **report,
            "rps": requests / seconds if seconds else 0.0,
            "server_cpu_us_per_req": _per_request(server_ticks, requests),
            "backend_cpu_us_per_req": _per_request(backend_ticks, requests),
            "backend_reached": reached,
            "loadgen_cpu_pct": 100 * loadgen_cpu / seconds if seconds else 0.0,
            "other_cpu_pct": 100 * other / seconds if seconds else 0.0,
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
    """`keyscope.cli serve` once the CLI wires it, else `keyscope.server serve`."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "keyscope.cli", "serve", "--help"], capture_output=True,
                          env=_clean_env(), timeout=60)
    return "keyscope.cli" if done.returncode == 0 else "keyscope.server"


# checking ------------------------------------------------------------------------------------------------
def fetch(port: int, request: Request) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(procs.HOST, port, timeout=10)
    try:
        connection.request(request.method, request.target, body=request.body or None, headers=dict(request.headers))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def precheck(port: int, request: Request, row: Row) -> list[str]:
    """One request before the load: the expected status and a body showing the request arrived as sent."""
    status, body = fetch(port, request)
    if status != row.status:
        return [f"precheck: status {status}, expected {row.status}: {body[:200]!r}"]
    try:
        answer = json.loads(body)
    except ValueError:
        return [f"precheck: answer is not JSON: {body[:200]!r}"]
    if row.status == 403:
        if answer.get("requestError", {}).get("serviceException", {}).get("messageId") != "UNAUTHORIZED":
            return [f"precheck: not the legacy UNAUTHORIZED body: {body[:200]!r}"]
        return []
    path, _, query = request.target.partition("?")
    seen = (answer.get("bench"), answer.get("method"), answer.get("path"), answer.get("query"),
            answer.get("bodyLength"))
    if seen != ("ok", request.method, path, query, len(request.body)):
        return [f"precheck: the backend saw {seen}, expected {('ok', request.method, path, query, len(request.body))}"]
    return []


def check_runs(row: Row, runs: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    problems = []
    for index, run in enumerate(runs, 1):
        errors = {k: v for k, v in run["errors"].items() if k != "status" and v}
        if errors:
            problems.append(f"run {index}: socket errors {errors}")
        unexpected = {s: n for s, n in run["statuses"].items() if int(s) != row.status}
        if unexpected:
            problems.append(f"run {index}: statuses {unexpected} besides {row.status}")
        if not run["requests"]:
            problems.append(f"run {index}: no requests completed")
        if row.reaches_backend and not run["requests"] <= run["backend_reached"] <= run["requests"] + args.connections:
            problems.append(f"run {index}: backend saw {run['backend_reached']} of {run['requests']} requests")
        if not row.reaches_backend and run["backend_reached"]:
            problems.append(f"run {index}: {run['backend_reached']} requests reached the backend")
    return problems


def settle(port: int, limit: float = 10.0) -> int:
    """The backend's count once it stops moving: requests queued in a slow proxy arrive after the load ends."""
    last = backend_count(port)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = backend_count(port)
        if now == last:
            return now
        last = now
    return last


def backend_count(port: int) -> int:
    status, body = fetch(port, Request("GET", "/__bench/count", ()))
    if status != 200:
        raise RuntimeError(f"backend count: status {status}")
    return int(json.loads(body)["served"])


# reporting -----------------------------------------------------------------------------------------------
def summarize(result: dict[str, Any]) -> dict[str, Any]:
    runs = result["runs"]

    def median(key: str) -> float | None:
        values = [run[key] for run in runs if run.get(key) is not None]
        return statistics.median(values) if values else None

    def latency(key: str) -> float | None:
        values = [run["latency_us"][key] for run in runs]
        return statistics.median(values) / 1000 if values else None

    return {
        "rps": median("rps"), "rps_runs": [round(run["rps"]) for run in runs],
        "p50_ms": latency("p50"), "p99_ms": latency("p99"),
        "server_cpu_us": median("server_cpu_us_per_req"), "backend_cpu_us": median("backend_cpu_us_per_req"),
        "loadgen_cpu_pct": median("loadgen_cpu_pct"), "other_cpu_pct": median("other_cpu_pct"),
    }


def targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    def value(row: str, key: str) -> float | None:
        return summary.get(row, {}).get(key)

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    mw = ratio(value("mw-keyscope", "server_cpu_us"), value("mw-bare", "server_cpu_us"))
    rows = [
        ("keyscope POST CPU/req / bare aiohttp CPU/req", ("ks-post", "aiohttp"),
         ratio(value("ks-post", "server_cpu_us"), value("aiohttp", "server_cpu_us")), "<= 1.0", lambda v: v <= 1.0),
        ("keyscope POST req/s / tutorial proxy req/s", ("ks-post", "tutorial"),
         ratio(value("ks-post", "rps"), value("tutorial", "rps")), ">= 10", lambda v: v >= 10),
        ("refusal CPU/req / forwarded POST CPU/req", ("ks-refused", "ks-post"),
         ratio(value("ks-refused", "server_cpu_us"), value("ks-post", "server_cpu_us")), "< 0.25", lambda v: v < 0.25),
        ("middleware CPU/req added to bare Starlette app", ("mw-keyscope", "mw-bare"),
         mw - 1 if mw is not None else None, "< 15%", lambda v: v < 0.15),
        ("--workers 2 req/s / --workers 1 req/s", ("ks-w2", "ks-w1"),
         ratio(value("ks-w2", "rps"), value("ks-w1", "rps")), "> 1", lambda v: v > 1),
    ]
    return [
        {"target": name, "rows": list(pair), "value": v, "goal": goal, "met": None if v is None else bool(test(v))}
        for name, pair, v, goal, test in rows
    ]


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def table(results: list[dict[str, Any]], summary: dict[str, dict[str, Any]]) -> str:
    direct = summary.get("direct", {}).get("rps")
    bare = summary.get("aiohttp", {}).get("server_cpu_us")
    lines = [
        "| row | req/s | runs | p50 ms | p99 ms | server CPU µs/req | backend CPU µs/req | req/s / direct "
        "| CPU / bare aiohttp | loadgen CPU % | other CPU % | check |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for result in results:
        s = summary[result["row"]]
        check = "ok" if not result["problems"] else "FLAGGED"
        rps_ratio = s["rps"] / direct if s["rps"] is not None and direct else None
        cpu_ratio = s["server_cpu_us"] / bare if s["server_cpu_us"] is not None and bare else None
        lines.append(
            f"| {result['row']}: {result['label']} | {_fmt(s['rps'])} | {s['rps_runs']} | {_fmt(s['p50_ms'], 2)} "
            f"| {_fmt(s['p99_ms'], 2)} | {_fmt(s['server_cpu_us'])} | {_fmt(s['backend_cpu_us'])} "
            f"| {_fmt(rps_ratio, 2)} | {_fmt(cpu_ratio, 2)} | {_fmt(s['loadgen_cpu_pct'])} "
            f"| {_fmt(s['other_cpu_pct'])} | {check} |"
        )
    return "\n".join(lines)


def target_table(rows: list[dict[str, Any]], flagged: set[str]) -> str:
    lines = ["| target (issue 6) | value | goal | met |", "|---|---:|---|---|"]
    for t in rows:
        value = t["value"]
        shown = "-" if value is None else (f"{value:+.0%}" if t["goal"].endswith("%") else f"{value:.2f}")
        met = "-" if t["met"] is None else ("yes" if t["met"] else "NO")
        if set(t["rows"]) & flagged:
            met += " (row flagged)"
        lines.append(f"| {t['target']} | {shown} | {t['goal']} | {met} |")
    return "\n".join(lines)


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
    return args


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
    print(f"bench_gateway: {len(rows)} rows, {args.runs} x {args.duration:g}s after {args.warmup:g}s warm-up, "
          f"c{args.connections}, load generator: {bench.generator.description}; logs in {run_dir}",
          file=sys.stderr)
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
            results[row.id]["problems"] += check_runs(row, results[row.id]["runs"], args)
            if row.id in args.profile:
                print(f"  profiling {row.id}", file=sys.stderr, flush=True)
                results[row.id]["profile"] = bench.profile(row)
    finally:
        bench.stop_all()
    results = list(results.values())
    summary = {r["row"]: summarize(r) for r in results}
    goals = targets(summary)
    flagged = {r["row"] for r in results if r["problems"]}
    bench.notes.append(f"load generator: {bench.generator.description}")
    bench.notes.append("keyscope: `python -m " + bench.keyscope_module + " serve` with defaults (access log on, "
                       "to /dev/null) " + " ".join(args.keyscope_arg))
    bench.notes.append(f"baseline figures: {BASELINE}")
    document = {
        "format": FORMAT, "time": stamp, "host": platform.node(), "cpus": os.cpu_count(), "versions": versions(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "notes": bench.notes, "results": results, "summary": summary, "targets": goals,
    }
    out = args.results / f"gateway-{stamp}.json"
    out.write_text(json.dumps(document, indent=1))
    print(f"\n## keyscope gateway benchmark ({stamp}, format {FORMAT})\n")
    print(f"POST /sms/2/text/advanced with a {BODY_SIZE}-byte JSON body unless the row says GET; "
          f"c{args.connections}, {args.runs} x {args.duration:g}s per row (req/s is the median of the runs).\n")
    print(table(results, summary))
    print()
    print(target_table(goals, flagged))
    print()
    for note in bench.notes:
        print(f"- {note}")
    for result in results:
        for problem in result["problems"]:
            print(f"- FLAGGED {result['row']}: {problem}")
        if "profile" in result:
            print(f"\nprofile of {result['row']} ({result['profile']['file']}):\n{result['profile']['text']}")
    print(f"\nresults: {out}")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
