"""Rate limits per key and per application: which limits a request counts against, and the counters.

The request procedure (`keyscope.decide.checks`) asks, after authentication and the allowlist and before the
body is read:

    plan = limiter.plan(key)        # None for a key with no limits, nor applications with any: nothing to do
    verdict = limiter.count(plan)   # local counters: counted in line; Redis: None, ask it (a need, LIMITS)
    verdict = await limiter.ask(plan)

A request counts against its key's limits and, for a linked key, against the limits of every application the
key's entries name (each once). It is decided before the body is read, so it cannot be the one entry the
body's ids turn out to use: a key linked to `marketing` and `transactional` spends from both applications'
limits on every request. An entry naming only an entity counts against no application. A request counts when
it passes this step, whatever a later step decides; a refused one (429) counts against nothing.

`gcra` is the algorithm, `local` and `shared` the two counter stores (`--rate-limit-store`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from keyscope.core.errors import Refusal
from keyscope.core.models import ApiKey
from keyscope.core.ttlcache import Clock
from keyscope.decide.ratelimit.gcra import Rule, Verdict
from keyscope.decide.ratelimit.local import LocalCounters
from keyscope.decide.ratelimit.shared import RedisCounters, Unavailable
from keyscope.observe import metrics

__all__ = ["LOCAL", "ON_ERROR", "Limiter", "Plan", "Unavailable", "Verdict", "too_many"]

LOCAL = "local"
ON_ERROR = ("allow", "deny")
PREFIX = "keyscope:rl:"

_PLANS_MAX = 4096


@dataclass(frozen=True, slots=True)
class Plan:
    """The limits one request counts against: each limit's counter name and its rule, in one order."""

    names: tuple[str, ...]
    rules: tuple[Rule, ...]


def too_many(verdict: Verdict) -> Refusal:
    return Refusal(429, reason="rate_limited", step="ratelimit", detail=f"over {verdict.limit} requests per period")


def unavailable() -> Refusal:
    return Refusal(503, reason="rate_limit_unavailable", step="ratelimit",
                   detail="the rate-limit store is unavailable")


def plan_of(key: ApiKey) -> Plan | None:
    """The key's own limits, then each of its applications' (as the store read them with the key)."""
    names: list[str] = []
    rules: list[Rule] = []
    for limit in key.rate_limits:
        names.append(f"{PREFIX}key:{key.id}:{limit.seconds}")
        rules.append(Rule.of(limit))
    linked = {entry.application_id for entry in key.platform if entry.application_id is not None}
    for application_id, limits in key.application_limits:
        if application_id in linked:
            for limit in limits:
                names.append(f"{PREFIX}app:{application_id}:{limit.seconds}")
                rules.append(Rule.of(limit))
    return Plan(tuple(names), tuple(rules)) if names else None


class Limiter:
    """The counters of one worker: `local` (in memory) or a Redis URL, and what to do when Redis fails."""

    def __init__(self, store: str = LOCAL, *, on_error: str = "allow", clock: Clock = time.monotonic) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}")
        self.store = store
        self.on_error = on_error
        self.local = LocalCounters(clock)
        self.shared: RedisCounters | None = None if store == LOCAL else RedisCounters(store)
        if self.shared is not None:
            self.shared.policy = on_error
        self._plans: dict[int, tuple[ApiKey, Plan | None]] = {}

    def plan(self, key: ApiKey) -> Plan | None:
        """What a request with this key counts against; None when nothing (the common case costs two reads)."""
        if not key.rate_limits and not key.application_limits:
            return None
        known = self._plans.get(id(key))
        if known is not None and known[0] is key:  # the cache holds the key, so its id cannot have been reused
            return known[1]
        plan = plan_of(key)
        if len(self._plans) >= _PLANS_MAX:
            self._plans.clear()
        self._plans[id(key)] = (key, plan)
        return plan

    def count(self, plan: Plan) -> Verdict | None:
        """Local counters: the request counted (or refused) now. Redis: None, `ask()` it; Unavailable while it is
        left alone after a failure."""
        shared = self.shared
        if shared is None:
            return self.local.check(plan.names, plan.rules)
        if not shared.available():
            raise Unavailable("left alone after a failure")
        return None

    async def ask(self, plan: Plan) -> Verdict:
        """The request counted in Redis; Unavailable if it does not answer."""
        assert self.shared is not None
        return await self.shared.check(plan.names, plan.rules)

    def failed(self) -> None:
        """Redis did not answer: let the request through (`--rate-limit-on-error allow`: returns None), or raise
        the 503 (`deny`); counted either way (`keyscope_rate_limit_store_errors_total`)."""
        metrics.rate_limit_store_error()
        if self.on_error != "allow":
            raise unavailable()

    def undo(self, plan: Plan) -> None:
        """Take back a local count (the early path stepped aside after counting; the ASGI path counts again)."""
        if self.shared is None:
            self.local.undo(plan.names, plan.rules)

    def changed(self) -> None:
        """Keys or applications may have changed: plans are made again from the records the key cache loads."""
        self._plans.clear()

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()
