"""The shape of a rate limit, as keys and applications carry it: `{"requests": N, "per": "second"}`.

A key or an application holds a list of them, at most one per period:

    "rateLimits": [{"requests": 100, "per": "second"}, {"requests": 100000, "per": "day"}]

`requests` is a whole number from 1 to 1,000,000,000, `per` one of `second`, `minute`, `hour`, `day`. A limit of
N per T lets N requests through at once from rest and then one every T/N (a token bucket holding N, refilled
continuously; `keyscope.decide.ratelimit.gcra` says why). The CLI writes one as `100/s`, `100/second`, `5/m`,
`1000/hour`, `100000/d`. Here: the record, the parsing of both spellings, and the document's rendering; nothing
here counts anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PERIODS: dict[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
"""`per` -> seconds."""
SHORT = {"s": "second", "m": "minute", "h": "hour", "d": "day", "sec": "second", "min": "minute"}
MAX_REQUESTS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class RateLimit:
    requests: int
    per: str

    @property
    def seconds(self) -> int:
        return PERIODS[self.per]

    def to_doc(self) -> dict[str, Any]:
        return {"requests": self.requests, "per": self.per}

    def __str__(self) -> str:
        return f"{self.requests}/{self.per}"


class RateLimitError(ValueError):
    """A rate limit as given is unusable: `field` names where (`rateLimits[1].per`), the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def from_doc(value: Any, field: str = "rateLimits") -> tuple[RateLimit, ...]:
    """The limits of a document's `rateLimits` (a list of `{"requests", "per"}`); RateLimitError at the first
    problem, naming its field. `null` is no limits."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RateLimitError(field, 'must be a list of {"requests": N, "per": "second|minute|hour|day"}')
    limits = []
    for index, item in enumerate(value):
        at = f"{field}[{index}]"
        if not isinstance(item, dict):
            raise RateLimitError(at, 'must be an object {"requests": N, "per": "second|minute|hour|day"}')
        unknown = sorted(set(item) - {"requests", "per"})
        if unknown:
            raise RateLimitError(f"{at}.{unknown[0]}", "unknown field (allowed: requests, per)")
        requests, per = item.get("requests"), item.get("per")
        if isinstance(requests, bool) or not isinstance(requests, int):
            raise RateLimitError(f"{at}.requests", "must be a whole number")
        if not 1 <= requests <= MAX_REQUESTS:
            raise RateLimitError(f"{at}.requests", f"must be from 1 to {MAX_REQUESTS}")
        if per not in PERIODS:
            raise RateLimitError(f"{at}.per", "must be one of second, minute, hour, day")
        limits.append(RateLimit(requests, per))
    return checked(limits, field)


def checked(limits: Sequence[RateLimit], field: str = "rateLimits") -> tuple[RateLimit, ...]:
    """The limits in the order of their periods; RateLimitError if a period is named twice."""
    seen: set[str] = set()
    for index, limit in enumerate(limits):
        if limit.per in seen:
            raise RateLimitError(f"{field}[{index}].per", f"'{limit.per}' is limited twice (one limit per period)")
        seen.add(limit.per)
    return tuple(sorted(limits, key=lambda limit: limit.seconds))


def parse(text: str) -> RateLimit:
    """`100/s`, `100/second`, `5/min`, `1000/h`, `100000/day` (the CLI's `--rate-limit`); ValueError else."""
    count, slash, unit = text.strip().partition("/")
    unit = unit.strip().lower()
    per = SHORT.get(unit, unit)
    if not slash or not count.strip().isdigit() or per not in PERIODS:
        raise ValueError(f"{text!r}: expected REQUESTS/PERIOD, e.g. 100/s, 1000/minute, 100000/day")
    requests = int(count)
    if not 1 <= requests <= MAX_REQUESTS:
        raise ValueError(f"{text!r}: the number of requests must be from 1 to {MAX_REQUESTS}")
    return RateLimit(requests, per)


def to_doc(limits: Sequence[RateLimit]) -> list[dict[str, Any]]:
    return [limit.to_doc() for limit in limits]


def to_text(limits: Sequence[RateLimit]) -> str:
    """`100/second, 100000/day`, or `none`."""
    return ", ".join(str(limit) for limit in limits) or "none"
