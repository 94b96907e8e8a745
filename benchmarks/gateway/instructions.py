"""Instructions per request in the `keyscope serve` process, counted by callgrind: a steady view of a row's cost.

CPU time per request on a shared two-core machine swings by ±25% from one run to the next, which hides a change
of a few per cent (the rate-limit rows' targets are +5% and +40% of the unlimited POST). Instructions executed
by the server process do not swing: the same requests cost the same count, run after run, so rows compared
here differ by what their code does. What this leaves out is the kernel's share (syscalls, the loopback
network), which is the same for every keyscope row: a ratio of instruction counts overstates a difference
relative to the CPU time a row costs in full.

    .venv/bin/python benchmarks/gateway/instructions.py [--requests 600] [--rounds 2] [--rows post,post-limited]

One `keyscope serve --workers 1` runs under `valgrind --tool=callgrind` in front of the benchmark's backend (a
second one for the Redis row). Its store is PostgreSQL (`--postgres`, a schema of its own, dropped after) and
its key cache lives for an hour: valgrind runs the server some fifty times slower, so anything timed would
happen fifty times as often per request as it does at full speed (SQLite's revision read every 0.2 s, a key
reload every 5 s) and be counted as the rows' cost; PostgreSQL announces changes instead of being polled. For each round and row: 100 requests to warm up, counters zeroed
(`callgrind_control -z`), `--requests` requests one after another on one keep-alive connection, counters
dumped (`callgrind_control -d`); the figure is the dump's instruction total over the requests, the median of
the rounds. Rows: `post` (the full-check linked POST, 1 KB), `post-limited` (the same with a key that has two
limits it never reaches, local counters), `post-limited-redis` (Redis counters, `--redis`).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from gateway import procs  # noqa: E402
from gateway.fixtures import APP, message_body, seed, seed_limited  # noqa: E402

ROWS = ("post", "post-limited", "post-limited-redis")
WARM_UP = 100


def send(port: int, secret: str, body: bytes, count: int) -> None:
    connection = http.client.HTTPConnection(procs.HOST, port, timeout=120)
    try:
        for _ in range(count):
            connection.request("POST", "/sms/2/text/advanced", body,
                               {"Content-Type": "application/json", "Authorization": f"App {secret}"})
            answer = connection.getresponse()
            answer.read()
            if answer.status != 200:
                raise SystemExit(f"instructions: expected 200, got {answer.status}")
    finally:
        connection.close()


def dumped(folder: Path, pid: int, before: set[Path]) -> int:
    """The instruction total of the dump `callgrind_control -d` just wrote."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = [path for path in folder.glob(f"cg.{pid}*") if path not in before]
        for path in new:
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise SystemExit("instructions: callgrind wrote no dump")


class Server:
    """`keyscope serve` under callgrind."""

    def __init__(self, folder: Path, upstream: str, store_url: str, *extra: str) -> None:
        self.folder = folder
        self.port = procs.free_port()
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={folder}/cg.%p",
            sys.executable, "-m", "keyscope.cli", "serve", "--upstream", upstream, "--store", store_url,
            "--host", procs.HOST, "--port", str(self.port), "--workers", "1", "--key-cache-ttl", "3600", *extra,
        ]
        env = {**os.environ, "KEYSCOPE_ADMIN_TOKEN": secrets.token_urlsafe(24)}
        self.log = open(folder / f"serve-{self.port}.log", "wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_listening(self.port, 180)

    def measure(self, secret: str, body: bytes, count: int) -> float:
        send(self.port, secret, body, WARM_UP)
        subprocess.run(["callgrind_control", "-z", str(self.process.pid)], check=True, capture_output=True)
        send(self.port, secret, body, count)
        before = set(self.folder.glob(f"cg.{self.process.pid}*"))
        subprocess.run(["callgrind_control", "-d", str(self.process.pid)], check=True, capture_output=True)
        return dumped(self.folder, self.process.pid, before) / count

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


async def postgres(url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def wait_listening(port: int, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((procs.HOST, port), 1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"instructions: nothing listens on {port} after {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="the database the store's schema is made in")
    args = parser.parse_args()
    rows = [row for row in args.rows.split(",") if row]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))} (choose from {', '.join(ROWS)})")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("instructions: valgrind is not installed (apt-get install valgrind)")
    folder = Path(tempfile.mkdtemp(prefix="ks-instructions-"))
    schema = f"ks_instructions_{secrets.token_hex(4)}"
    asyncio.run(postgres(args.postgres, f'CREATE SCHEMA "{schema}"'))
    store_url = f"{args.postgres}?search_path={schema}"
    linked, _ = asyncio.run(seed(store_url))
    limited = asyncio.run(seed_limited(store_url))
    body = message_body(APP)
    backend_port = procs.free_port()
    backend = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "backend:app", "--host", procs.HOST,
         "--port", str(backend_port), "--no-access-log", "--log-level", "warning"],
    )
    servers: dict[str, Server] = {}
    try:
        wait_listening(backend_port, 30)
        upstream = f"http://{procs.HOST}:{backend_port}"
        if {"post", "post-limited"} & set(rows):
            servers["local"] = Server(folder, upstream, store_url)
        if "post-limited-redis" in rows:
            servers["redis"] = Server(folder, upstream, store_url, "--rate-limit-store", args.redis)
        figures: dict[str, list[float]] = {row: [] for row in rows}
        for _ in range(args.rounds):
            for row in rows:
                server = servers["redis" if row.endswith("redis") else "local"]
                figures[row].append(server.measure(linked if row == "post" else limited, body, args.requests))
    finally:
        for server in servers.values():
            server.stop()
        backend.terminate()
        backend.wait(10)
        asyncio.run(postgres(args.postgres, f'DROP SCHEMA "{schema}" CASCADE'))
    base = statistics.median(figures["post"]) if "post" in figures else None
    print("| row | instructions/request (median) | rounds | vs post |")
    print("|---|---:|---|---:|")
    for row, values in figures.items():
        median = statistics.median(values)
        ratio = f"{median / base:.3f}" if base else "-"
        print(f"| {row} | {median:,.0f} | {', '.join(f'{v:,.0f}' for v in values)} | {ratio} |")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
