"""One JSON line per request on the `keyscope.access` logger.

A line says who called (the key id, never the secret), what was matched, what was decided and why, and how it
ended. The query string and headers are never logged: clients do put credentials there by mistake.
"""

from __future__ import annotations

import json
import logging
import sys
import time

logger = logging.getLogger("keyscope.access")

FORWARDED = "forwarded"
REFUSED = "refused"
MANAGEMENT = "management"
FAILED = "failed"
"""Decisions: forwarded (or passed to the wrapped app), refused by a check, answered by the management API,
or forwarded but failed upstream (502/504) or abandoned by the client."""

CLIENT_GONE = 499
"""The status logged when the client left before its answer was complete (nginx's code)."""

_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def record(
    *,
    started: float,
    method: str,
    path: bytes,
    decision: str,
    status: int,
    key_id: str | None = None,
    function: str | None = None,
    reason: str | None = None,
    step: str | None = None,
    upstream_status: int | None = None,
) -> None:
    """`started` is a `time.perf_counter()` reading taken when the request arrived."""
    if not logger.isEnabledFor(logging.INFO):
        return
    line = {
        "time": round(time.time(), 3),
        "method": method,
        "path": path.decode("latin-1"),
        "key": key_id,
        "function": function,
        "decision": decision,
        "status": status,
        "reason": reason,
        "step": step,
        "upstream": upstream_status,
        "ms": round((time.perf_counter() - started) * 1000, 3),
    }
    logger.info(_dumps(line))


def enable(stream: object = None) -> None:
    """Send access lines, bare, to `stream` (stdout by default); the server calls this once per worker."""
    if any(getattr(h, "_keyscope", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stdout)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._keyscope = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def disable() -> None:
    logger.setLevel(logging.WARNING)
