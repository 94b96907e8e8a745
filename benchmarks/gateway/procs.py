"""Servers as child processes, pinned with taskset, and their CPU time read from /proc.

CPU time is utime+stime of a process and all its descendants (uvicorn workers, nginx's worker), so a
multi-process server is measured whole. Every process started here is stopped here, by its own id.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Placement:
    """Where the load generator and the servers run; empty prefixes when pinning is not possible."""

    loadgen: tuple[str, ...]
    servers: tuple[str, ...]
    wide: tuple[str, ...]
    note: str

    @classmethod
    def detect(cls, enabled: bool = True) -> Placement:
        taskset = shutil.which("taskset")
        cpus = os.sched_getaffinity(0)
        if not enabled:
            return cls((), (), (), "pinning off (--no-pin): every process may run on any CPU")
        if taskset is None:
            return cls((), (), (), "taskset not found: nothing pinned, the load generator shares the servers' CPUs")
        if not {0, 1} <= cpus:
            return cls((), (), (), f"CPUs 0 and 1 are not both available (have {sorted(cpus)}): nothing pinned")
        return cls(
            (taskset, "-c", "0"), (taskset, "-c", "1"), (taskset, "-c", "0,1"),
            "load generator on CPU 0, servers on CPU 1 (taskset); --workers rows: servers on CPUs 0-1",
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def tree(self) -> list[int]:
        return descendants(self.process.pid)

    def cpu_ticks(self) -> dict[int, int]:
        """CPU ticks used so far by each process of the server's tree."""
        return {pid: cpu_ticks(pid) for pid in self.tree()}

    def user_ticks(self) -> dict[int, int]:
        """The user-space part of `cpu_ticks()` (what the server's own code runs, without the kernel's work)."""
        return {pid: cpu_ticks(pid, user_only=True) for pid in self.tree()}

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen on {HOST}:{self.port} within {timeout:g}s; see {self.log}")

    def stop(self) -> None:
        """SIGTERM (uvicorn and nginx pass it to their workers), then SIGKILL what is left of the tree."""
        pids = self.tree()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        for pid in pids[1:]:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def start(
    name: str, command: Sequence[str], *, prefix: Sequence[str], port: int, log: Path,
    env: dict[str, str] | None = None, cwd: Path | None = None,
) -> Server:
    """Start a server; its stdout (keyscope's access log) is discarded, stderr goes to `log`."""
    with log.open("ab") as err:
        process = subprocess.Popen(
            [*prefix, *command], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=cwd,
        )
    server = Server(name, process, port, log)
    try:
        server.wait_listening()
    except BaseException:
        server.stop()
        raise
    return server


def cpu_ticks(pid: int, *, user_only: bool = False) -> int:
    """utime + stime of one process (all its threads), in clock ticks (utime alone with `user_only`); 0 if it
    is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + (0 if user_only else int(fields[12]))


def ticks_used(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    """Per process, the ticks used between two readings (a process born in between counts from zero)."""
    return {pid: ticks - before.get(pid, 0) for pid, ticks in after.items()}


def descendants(root: int) -> list[int]:
    """`root` and every process below it, from the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found = [root]
    index = 0
    while index < len(found):
        found.extend(children.get(found[index], ()))
        index += 1
    return found


def system_busy_ticks() -> int:
    """Busy time of all CPUs (user, nice, system, irq, softirq, steal), for spotting other load on the machine."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return user + nice + system + irq + softirq + steal


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
