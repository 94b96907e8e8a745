"""One extra loaded run with py-spy sampling the server under test: where its CPU goes, per function.

py-spy is not a dependency: install it to use --profile (`.venv/bin/pip install py-spy`). The run that is
profiled is not in the table (sampling slows the process down).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .procs import Server

_LINE = re.compile(r":\d+\)$")
_FILE = re.compile(r"\(([^()]*)\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(server: Server, out: Path, load: Callable[[], Any], rate: int = 250, top: int = 25) -> dict[str, str]:
    tool = py_spy()
    if tool is None:
        return {"file": "-", "text": "py-spy is not installed (.venv/bin/pip install py-spy): no profile"}
    sampler = subprocess.Popen(
        [tool, "record", "--pid", str(server.process.pid), "--subprocesses", "--nonblocking", "--rate", str(rate),
         "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(1.0)
    try:
        load()
    finally:
        sampler.send_signal(signal.SIGINT)
        _, err = sampler.communicate(timeout=60)
    if not out.exists():
        return {"file": "-", "text": f"py-spy wrote nothing: {err.strip()[-300:]}"}
    return {"file": str(out), "text": summarize(out.read_text(), top)}


def component(frame: str) -> str:
    """keyscope's module for its own frames, the top-level package (aiohttp, uvicorn, logging...) otherwise."""
    found = _FILE.search(frame)
    path = found.group(1) if found else frame
    if path.startswith("keyscope/") or path.startswith("gateway/"):
        return path
    return path.split("/")[0].removesuffix(".py")


def summarize(collapsed: str, top: int) -> str:
    """Own time by component and by function, and inclusive time by function, from py-spy's collapsed stacks."""
    by_component: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += samples
        own[frames[-1]] += samples
        by_component[component(frames[-1])] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return "no samples"
    lines = [f"{total} samples; own time by component:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_component.most_common(top)]
    lines.append("own time by function (the function itself):")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    # The chain from the program's entry down to the event loop is in every loop sample: leave it out.
    loop = [n for name, n in inclusive.items() if name.startswith("Runner.run (")]
    chain = loop[0] if loop else max(inclusive.values())
    lines.append("inclusive time (the function and what it calls), below the event loop:")
    below = [(name, n) for name, n in inclusive.most_common() if n < chain][:top]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in below]
    return "\n".join(lines)
