"""--workers N, the supervisor's side of the metrics: the private directory the workers write their counts to
(prometheus-client's multiprocess mode), and forgetting the live gauges of workers that are gone."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from prometheus_client.multiprocess import mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "keyscope-metrics-"
_LIVE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


@contextmanager
def shared_directory() -> Iterator[str]:
    """A private directory (mode 0700) for the workers' metrics, named in PROMETHEUS_MULTIPROC_DIR for the workers
    started inside the block, and removed at its end with everything in it. Its name carries this process's id,
    so that a later run removes one left behind by a supervisor that was killed (SIGKILL leaves no time)."""
    _remove_orphans()
    directory = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)


def _remove_orphans() -> None:
    """Directories of supervisors that no longer exist, this user's only."""
    folder = tempfile.gettempdir()
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not name.startswith(_PREFIX):
            continue
        owner = name[len(_PREFIX):].partition("-")[0]
        path = os.path.join(folder, name)
        try:
            if not owner.isdigit() or os.stat(path).st_uid != os.getuid() or _alive(int(owner)):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget(directory: str, live: Iterable[int | None]) -> list[int]:
    """Drop the gauge values of every worker that is not in `live` (`mark_process_dead`): a dead worker's
    requests are no longer in flight. Its counters and histograms stay, so totals never go back. Returns the
    process ids forgotten."""
    keep = {pid for pid in live if pid is not None}
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    dead = {int(found.group(1)) for name in names if (found := _LIVE_FILE.fullmatch(name))} - keep
    for pid in sorted(dead):
        mark_process_dead(pid, directory)
    return sorted(dead)


