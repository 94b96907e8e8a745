"""The rate-limit algorithm: GCRA (the generic cell rate algorithm), a token bucket kept as one timestamp.

A limit of N requests per T seconds is a bucket holding N tokens, refilled continuously at one per I = T/N: N
requests pass at once from rest, then one every I. GCRA stores, per (subject, limit), a single number, the
theoretical arrival time TAT (when the bucket will be full again); a request at `now` conforms when
`max(TAT, now) - now <= (N - 1) * I`, and then TAT becomes `max(TAT, now) + I`. A refused request changes
nothing.

Why GCRA rather than a sliding window:
- one integer of state per limit, however large N (a sliding log keeps N timestamps: 100,000 a day per key);
- exact: no estimate from two fixed windows (the sliding-window counter over- or under-admits at the edges)
  and no doubled burst at a window boundary (a fixed window lets 2N through around it);
- everything a client is told follows from the state: remaining tokens, when the bucket is full again
  (`RateLimit-Reset`), and how long until the next request conforms (`Retry-After`), to the microsecond;
- in Redis it is one GET and one SET with an expiry per limit inside a Lua script (`shared`), and the key
  expires by itself once the bucket is full.
What it promises: over any span of t seconds at most N + floor(t / I) requests pass (N at once, then the rate);
starting from rest, at most N within any span shorter than I.

Time is whole microseconds and I is rounded up to a whole microsecond (so at most 1,000,000 requests a second
per limit; the rate is never above the one asked for), which keeps every value an integer below 2^53: the same
arithmetic in Python and in Redis's Lua (doubles) gives the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from keyscope.core.ratelimits import RateLimit

MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class Rule:
    """A limit as GCRA counts it: `interval` I and `tolerance` (N - 1) * I, in microseconds."""

    limit: RateLimit
    interval: int
    tolerance: int
    requests: int
    capacity: int
    """N x I: how far from full an empty bucket is."""

    @classmethod
    def of(cls, limit: RateLimit) -> Rule:
        interval = -(-limit.seconds * MICROS // limit.requests)  # rounded up
        return cls(limit, interval, (limit.requests - 1) * interval, limit.requests, limit.requests * interval)

    def remaining(self, ahead: int) -> int:
        """Tokens left when the bucket is `ahead` microseconds from full."""
        return max((self.capacity - ahead) // self.interval, 0)


class Verdict(NamedTuple):
    """What the counters said about one request: whether it passes, and for the headers, the limit nearest to
    refusing (the fewest tokens left; at a tie the one full again last) and, when refused, how long until the
    request would pass (the longest wait of the limits that refused)."""

    admitted: bool
    limit: int
    remaining: int
    reset: int
    """Microseconds until that limit's bucket is full again."""
    retry_after: int = 0
    """Microseconds until the refused request would pass; 0 when admitted."""

    def headers(self) -> list[tuple[bytes, bytes]]:
        """The IETF `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (whole seconds, rounded up) and,
        when refused, `Retry-After` (whole seconds, at least 1)."""
        headers = [
            (b"ratelimit-limit", b"%d" % self.limit),
            (b"ratelimit-remaining", b"%d" % self.remaining),
            (b"ratelimit-reset", b"%d" % -(-self.reset // MICROS)),
        ]
        if not self.admitted:
            headers.append((b"retry-after", b"%d" % max(seconds(self.retry_after), 1)))
        return headers


def seconds(micros: int) -> int:
    return -(-micros // MICROS)


def decide(tats: Sequence[int], rules: Sequence[Rule], now: int) -> tuple[Verdict, list[int] | None]:
    """One request at `now` against several limits (`tats`: each one's TAT before it; 0, a limit never used).

    Admitted only if every limit lets it through, and then it counts against every one: returns the Verdict
    and each limit's TAT after the request; refused: the Verdict and None (a refusal changes no TAT). Local
    counters store what it returns; the Redis script decides the same way on Redis's side, in Lua, and answers
    the gaps before the request (each TAT minus the time), which this reads back with `now` 0."""
    admitted = True
    for tat, rule in zip(tats, rules):
        if tat - now > rule.tolerance:
            admitted = False
            break
    after: list[int] | None = [] if admitted else None
    nearest: Rule | None = None
    least = ahead = wait = 0
    for tat, rule in zip(tats, rules):
        gap = tat - now
        if gap < 0:
            gap = 0
        if after is not None:
            gap += rule.interval
            after.append(now + gap)
        elif gap > rule.tolerance and gap - rule.tolerance > wait:
            wait = gap - rule.tolerance
        left = (rule.capacity - gap) // rule.interval  # Rule.remaining()
        if left < 0:
            left = 0
        if nearest is None or left < least or (left == least and gap > ahead):
            nearest, least, ahead = rule, left, gap
    assert nearest is not None
    return _new_verdict(Verdict, (admitted, nearest.requests, least, ahead, wait)), after


_new_verdict = tuple.__new__
