"""The readers: discovered by their `reader.json` manifests under readers/, built once and started as processes.

A manifest is the whole contract between the harness and a reader, so readers written in any language plug in
without the harness knowing them: `name`, optional `build` commands (run once, in the reader's directory),
`start`, the executables it `requires` on PATH and a `startup_timeout`. In argv, `{port}`, `{python}` and
`{dir}` are replaced by the port, this interpreter and the reader's absolute directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gateway_helpers import free_port, stop, wait_listening

READERS = Path(__file__).parent / "readers"
BUILD_TIMEOUT = 600.0
# Set to 1 in CI: a reader that cannot run fails the suite instead of being skipped.
REQUIRED = os.environ.get("KEYSCOPE_REQUIRE_DIFFERENTIAL") == "1"


@dataclass(frozen=True)
class Manifest:
    name: str
    directory: Path
    start: tuple[str, ...]
    build: tuple[tuple[str, ...], ...] = ()
    requires: tuple[str, ...] = ()
    startup_timeout: float = 30.0

    def missing(self) -> list[str]:
        """The required executables that are not on PATH."""
        return [program for program in self.requires if shutil.which(program) is None]

    def argv(self, command: tuple[str, ...], port: int) -> list[str]:
        values = {"{port}": str(port), "{python}": sys.executable, "{dir}": str(self.directory)}
        out = []
        for token in command:
            for placeholder, value in values.items():
                token = token.replace(placeholder, value)
            out.append(token)
        return out


def discover(folder: Path = READERS) -> list[Manifest]:
    """Every readers/*/reader.json, by name."""
    found = []
    for path in sorted(folder.glob("*/reader.json")):
        doc = json.loads(path.read_text())
        found.append(Manifest(
            name=doc["name"], directory=path.parent.resolve(), start=tuple(doc["start"]),
            build=tuple(tuple(command) for command in doc.get("build", ())),
            requires=tuple(doc.get("requires", ())), startup_timeout=float(doc.get("startup_timeout", 30)),
        ))
    return found


@dataclass
class Running:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, size: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""


def _start(manifest: Manifest, logs: Path) -> Running:
    log = logs / f"{manifest.name}.log"
    with log.open("ab") as out:
        for command in manifest.build:
            began = time.monotonic()
            try:
                done = subprocess.run(manifest.argv(command, 0), cwd=manifest.directory, stdout=out,
                                      stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RuntimeError(f"build {command} failed: {exc}") from None
            if done.returncode != 0:
                raise RuntimeError(f"build {command} exited {done.returncode} after "
                                   f"{time.monotonic() - began:.0f} s: {log.read_text(errors='replace')[-1500:]}")
        port = free_port()
        process = subprocess.Popen(manifest.argv(manifest.start, port), cwd=manifest.directory, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_listening(port, process, f"reader {manifest.name}", timeout=manifest.startup_timeout)
    except RuntimeError as exc:
        stop(process)
        raise RuntimeError(f"{exc}: {log.read_text(errors='replace')[-1500:]}") from None
    return Running(manifest.name, port, process, log)


def start_all(manifests: list[Manifest], logs: Path) -> tuple[list[Running], dict[str, str]]:
    """Start every reader whose runtime is present, in parallel (builds can take a while). Returns the running
    readers and, for each one that is not running, why."""
    unavailable: dict[str, str] = {}
    runnable = []
    for manifest in manifests:
        missing = manifest.missing()
        if missing:
            unavailable[manifest.name] = f"needs {', '.join(missing)} on PATH"
        else:
            runnable.append(manifest)
    running = []
    with ThreadPoolExecutor(max_workers=max(1, len(runnable))) as pool:
        futures = {manifest.name: pool.submit(_start, manifest, logs) for manifest in runnable}
        for name, future in futures.items():
            try:
                running.append(future.result())
            except (RuntimeError, OSError) as exc:
                unavailable[name] = f"did not start: {exc}"
    return running, unavailable


def stop_all(running: list[Running]) -> None:
    for reader in running:
        stop(reader.process)
