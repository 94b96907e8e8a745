"""Driving a server: wrk with report.lua when installed, else loadgen.py; both print one `BENCH_JSON` line."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MARKER = "BENCH_JSON "
TIMEOUT = 10.0
"""Seconds before a request counts as failed. Longer than wrk's 2 s default: wrk leaves timed-out requests out of
its latency figures, so a short timeout would hide the slowest answers of an overloaded server from p99."""


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    """Path and query, as sent."""
    headers: tuple[tuple[str, str], ...]
    body_file: Path | None = None

    @property
    def body(self) -> bytes:
        return self.body_file.read_bytes() if self.body_file is not None else b""


@dataclass(frozen=True)
class Generator:
    name: str
    """"wrk" or "python"."""
    description: str

    @classmethod
    def choose(cls, wanted: str) -> Generator:
        wrk = shutil.which("wrk")
        if wanted == "wrk" and wrk is None:
            raise SystemExit("--loadgen wrk: wrk is not installed (apt-get install wrk), or use --loadgen python")
        if wanted in ("auto", "wrk") and wrk is not None:
            version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
            return cls("wrk", f"{version or 'wrk'} -t1 with report.lua")
        return cls("python", "loadgen.py (aiohttp, uvloop if installed): wrk not found or not chosen")

    def command(self, port: int, request: Request, connections: int, duration: float) -> list[str]:
        url = f"http://127.0.0.1:{port}{request.target}"
        if self.name == "wrk":
            return [
                "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", f"{TIMEOUT:g}s",
                "-s", str(HERE / "report.lua"), url,
            ]
        command = [sys.executable, str(HERE / "loadgen.py"), "--url", url, "--method", request.method,
                   "--connections", str(connections), "--duration", f"{duration:g}"]
        if request.body_file is not None:
            command += ["--body-file", str(request.body_file)]
        for name, value in request.headers:
            command += ["--header", f"{name}: {value}"]
        return command

    def env(self, request: Request) -> dict[str, str]:
        env = dict(os.environ)
        if self.name == "wrk":
            env["WRK_METHOD"] = request.method
            env["WRK_BODY_FILE"] = str(request.body_file) if request.body_file is not None else ""
            env["WRK_HEADERS"] = "\n".join(f"{name}: {value}" for name, value in request.headers)
        return env

    def run(
        self, port: int, request: Request, connections: int, duration: float, prefix: Sequence[str]
    ) -> tuple[dict[str, object], float]:
        """One run: (the report, the generator's own CPU seconds)."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(
            [*prefix, *self.command(port, request, connections, duration)],
            capture_output=True, text=True, env=self.env(request), timeout=duration + 60,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        for line in done.stdout.splitlines():
            if line.startswith(MARKER):
                return json.loads(line[len(MARKER):]), cpu
        raise RuntimeError(
            f"{self.name} gave no report (exit {done.returncode}): {done.stderr.strip()[-500:] or done.stdout[-500:]}"
        )
