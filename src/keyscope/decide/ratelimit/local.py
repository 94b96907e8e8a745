"""`--rate-limit-store local`: the counters in this worker's memory.

Per worker: under `--workers N` each worker counts what the kernel gives it, so a key limited to 100 a second
gets up to N x 100 through the host, and every instance counts its own. Nothing here awaits, so the procedure
asks it in line (and `keyscope serve` answers a 429 early, before any ASGI task).

One integer per (subject, limit) in a dict. A bucket that is full again (its TAT is past) holds nothing a new
one would not, so entries whose TAT has passed are dropped whenever the dict has doubled since it was last
swept; what remains is bounded by the subjects that were busy within their last period.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from keyscope.core.ttlcache import Clock
from keyscope.decide.ratelimit.gcra import MICROS, Rule, Verdict, decide

SWEEP_FROM = 4096


class LocalCounters:
    def __init__(self, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self._tats: dict[str, int] = {}
        self._sweep_at = SWEEP_FROM

    def now(self) -> int:
        return round(self.clock() * MICROS)

    def check(self, names: Sequence[str], rules: Sequence[Rule], now: int | None = None) -> Verdict:
        """Count one request against these limits (the state under `names`), unless one of them refuses it."""
        if now is None:
            now = round(self.clock() * MICROS)
        tats = self._tats
        get = tats.get
        verdict, after = decide([get(name, 0) for name in names], rules, now)
        if after is not None:
            for name, tat in zip(names, after):
                tats[name] = tat
            if len(tats) >= self._sweep_at:
                self._sweep(now)
        return verdict

    def undo(self, names: Sequence[str], rules: Sequence[Rule]) -> None:
        """Take back the request counted last against these limits, nothing having been counted since (the
        early path steps aside after counting, and the ASGI path then counts the same request again)."""
        tats = self._tats
        for name, rule in zip(names, rules, strict=True):
            tat = tats.get(name)
            if tat is not None:
                tats[name] = tat - rule.interval

    def _sweep(self, now: int) -> None:
        self._tats = {name: tat for name, tat in self._tats.items() if tat > now}
        self._sweep_at = max(SWEEP_FROM, 2 * len(self._tats))

    def __len__(self) -> int:
        return len(self._tats)
