"""How long a receiver is left alone after a failed attempt: exponential back-off with a cap and jitter.

The n-th failure in a row waits between half and all of min(cap, FIRST * 2**(n-1)) ("equal jitter"): doubling
spares a receiver that is down, the cap bounds how late the first event gets through once it is back, and the
jitter keeps instances and receivers that failed together from retrying in lockstep, while the lower half still
guarantees the wait grows. The count lives in the store (`event_targets.attempts`), so the back-off survives a
restart and a takeover by another instance.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

FIRST = 0.5
"""Seconds before the first retry, at most."""


@dataclass(frozen=True, slots=True)
class Backoff:
    cap: float = 60.0
    first: float = FIRST

    def delay(self, failures: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait after `failures` (1 or more) failed attempts in a row; `draw` is in [0, 1)."""
        ceiling = min(self.cap, self.first * 2.0 ** min(max(failures, 1) - 1, 40))
        return ceiling / 2 + draw() * ceiling / 2
