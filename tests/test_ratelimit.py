"""Rate limits: the algorithm against a reference model (window edges, injected clock), the Redis script against
the same model, the limit shape, and the request procedure counting, refusing and taking back counts."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ratelimit_helpers import (
    Model,
    Store,
    admit,
    checks,
    decide,
    http_scope,
    redis_or_skip,
)

from keyscope.core import ratelimits
from keyscope.core.errors import Refusal
from keyscope.core.models import ApiKey, PlatformEntry
from keyscope.core.ratelimits import RateLimit, RateLimitError
from keyscope.decide.admission import Admission
from keyscope.decide.ratelimit import Limiter, Plan, plan_of
from keyscope.decide.ratelimit.gcra import Rule, Verdict
from keyscope.decide.ratelimit.local import LocalCounters
from keyscope.decide.ratelimit.shared import RedisCounters, Unavailable

PERIODS = list(ratelimits.PERIODS)
limit_sets = st.lists(
    st.builds(RateLimit, st.integers(1, 7), st.sampled_from(PERIODS)), min_size=1, max_size=3,
    unique_by=lambda limit: limit.per,
)


@st.composite
def timelines(draw: st.DrawFn) -> tuple[list[RateLimit], list[int]]:
    """Limits, and request times that dwell on the edges: whole intervals, one microsecond either side of them,
    the same instant again, and anything."""
    limits = draw(limit_sets)
    intervals = [Rule.of(limit).interval for limit in limits]
    step = st.one_of(
        st.just(0),
        st.sampled_from(intervals).flatmap(lambda i: st.sampled_from([i - 1, i, i + 1])),
        st.tuples(st.sampled_from(intervals), st.integers(1, 8)).map(lambda p: p[0] * p[1]),
        st.integers(0, 2 * max(intervals)),
    )
    start = draw(st.integers(0, 10**12))
    times, now = [], start
    for delta in draw(st.lists(step, min_size=1, max_size=40)):
        now += delta
        times.append(now)
    return limits, times


def as_tuple(verdict: Verdict) -> tuple[bool, int, int, int, int]:
    return verdict.admitted, verdict.limit, verdict.remaining, verdict.reset, verdict.retry_after


@settings(max_examples=400, deadline=None)
@given(timelines())
def test_local_counters_agree_with_the_token_bucket_model(timeline: tuple[list[RateLimit], list[int]]) -> None:
    limits, times = timeline
    clock_at = [0]
    counters = LocalCounters(clock=lambda: clock_at[0] / 1_000_000)
    names = [f"n{index}" for index in range(len(limits))]
    rules = [Rule.of(limit) for limit in limits]
    model = Model(limits)
    for now in times:
        clock_at[0] = now
        expected = model.request(now)
        assert as_tuple(counters.check(names, rules, now)) == expected, now


def test_a_burst_of_n_then_one_per_interval() -> None:
    counters = LocalCounters(clock=lambda: 0.0)
    rule = Rule.of(RateLimit(3, "second"))
    outcomes = [counters.check(["k"], [rule], now).admitted for now in (0, 0, 0, 0, 333_333, 333_334, 333_334)]
    assert outcomes == [True, True, True, False, False, True, False]
    refused = counters.check(["k"], [rule], 333_334)
    assert refused.headers() == [(b"ratelimit-limit", b"3"), (b"ratelimit-remaining", b"0"),
                                 (b"ratelimit-reset", b"2"), (b"retry-after", b"1")]  # full in 1.000002 s


def test_undo_takes_back_exactly_one_count() -> None:
    counters = LocalCounters(clock=lambda: 0.0)
    rule = Rule.of(RateLimit(2, "minute"))
    assert counters.check(["k"], [rule], 5).admitted
    counters.undo(["k"], [rule])
    assert counters.check(["k"], [rule], 5).admitted
    assert counters.check(["k"], [rule], 5).admitted
    assert not counters.check(["k"], [rule], 5).admitted


def test_swept_buckets_are_the_full_ones() -> None:
    counters = LocalCounters(clock=lambda: 0.0)
    rule = Rule.of(RateLimit(10, "second"))
    for index in range(20_000):
        counters.check([f"k{index}"], [rule], index * 1000)  # each bucket full again 100 ms after its request
        assert len(counters) <= 4096


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(timelines())
def test_the_redis_script_agrees_with_the_model(timeline: tuple[list[RateLimit], list[int]]) -> None:
    url = redis_or_skip()
    limits, times = timeline
    names = [f"keyscope:rl:test:{uuid.uuid4()}:{limit.seconds}" for limit in limits]
    rules = [Rule.of(limit) for limit in limits]
    model = Model(limits)

    async def run() -> None:
        counters = RedisCounters(url)
        try:
            for now in times:
                assert as_tuple(await counters.check(names, rules, now)) == model.request(now), now
        finally:
            await counters.close()

    asyncio.run(run())


def test_concurrent_requests_share_one_connection_and_the_limit_holds() -> None:
    """Many requests at once on one worker: one exchange at a time on its connection, every answer to its own
    request, and exactly the limit admitted."""
    url = redis_or_skip()
    names = [f"keyscope:rl:test:{uuid.uuid4()}:3600"]
    rules = [Rule.of(RateLimit(100, "hour"))]

    async def run() -> list[bool]:
        counters = RedisCounters(url)
        try:
            verdicts = await asyncio.gather(*(counters.check(names, rules) for _ in range(300)))
        finally:
            await counters.close()
        return [verdict.admitted for verdict in verdicts]

    admitted = asyncio.run(run())
    assert admitted.count(True) == 100 and len(admitted) == 300


def test_the_connection_selects_its_database_and_returns_error_answers_in_place() -> None:
    from urllib.parse import urlsplit

    from keyscope.core.redisurl import RedisAddress as Address
    from keyscope.decide.ratelimit.resp import RedisError, RespConnection

    base = urlsplit(redis_or_skip())
    key = f"keyscope:test:{uuid.uuid4()}".encode()

    async def run() -> None:
        in_13 = RespConnection(f"redis://{base.netloc}/13", 1.0)
        in_14 = RespConnection(f"redis://{base.netloc}/14", 1.0)
        try:
            answers = await in_13.call([(b"SET", key, b"text"), (b"INCR", key), (b"GET", key)])
            assert answers[0] == b"OK" and answers[2] == b"text"  # the answers after an error still come
            assert isinstance(answers[1], RedisError) and "not an integer" in str(answers[1])
            assert await in_14.call([(b"GET", key)]) == [None]  # another database
            assert await in_13.call([(b"DEL", key)]) == [1]
        finally:
            in_13.close()
            in_14.close()

    asyncio.run(run())
    assert Address.parse("rediss://ops:s%40cret@redis.internal:6380/2") == Address(
        "redis.internal", 6380, 2, "ops", "s@cret", True)
    assert Address.parse("redis://:pw@127.0.0.1") == Address("127.0.0.1", 6379, 0, None, "pw", False)
    for bad in ("http://127.0.0.1:6379", "redis://127.0.0.1/zero", "redis:///0"):
        with pytest.raises(ValueError):
            Address.parse(bad)


def test_redis_unavailable_then_left_alone() -> None:
    async def run() -> None:
        counters = RedisCounters("redis://127.0.0.1:1/0", retry_after=60)
        rules = [Rule.of(RateLimit(1, "second"))]
        assert counters.available()
        with pytest.raises(Unavailable):
            await counters.check(["x"], rules)
        assert not counters.available()
        await counters.close()

    asyncio.run(run())


# the shape ---------------------------------------------------------------------------------------------------
def test_the_shape_and_its_errors() -> None:
    doc = [{"requests": 100, "per": "day"}, {"requests": 5, "per": "second"}]
    assert ratelimits.from_doc(doc) == (RateLimit(5, "second"), RateLimit(100, "day"))
    assert ratelimits.to_doc(ratelimits.from_doc(doc)) == [{"requests": 5, "per": "second"},
                                                           {"requests": 100, "per": "day"}]
    assert ratelimits.from_doc(None) == ()
    problems = {
        "x": "rateLimits",
        "[1]": "rateLimits[0]",
        '[{"requests": 0, "per": "second"}]': "rateLimits[0].requests",
        '[{"requests": true, "per": "second"}]': "rateLimits[0].requests",
        '[{"requests": 1.5, "per": "second"}]': "rateLimits[0].requests",
        '[{"requests": 1, "per": "week"}]': "rateLimits[0].per",
        '[{"requests": 1, "per": "second", "burst": 2}]': "rateLimits[0].burst",
        '[{"requests": 1, "per": "second"}, {"requests": 2, "per": "second"}]': "rateLimits[1].per",
    }
    import json

    for text, field in problems.items():
        with pytest.raises(RateLimitError) as error:
            ratelimits.from_doc(json.loads(text) if text != "x" else "x")
        assert error.value.field == field, text


@pytest.mark.parametrize(("text", "limit"), [
    ("100/s", RateLimit(100, "second")), ("5/min", RateLimit(5, "minute")), ("7/hour", RateLimit(7, "hour")),
    (" 1000 / d ", RateLimit(1000, "day")), ("3/second", RateLimit(3, "second")), ("2/m", RateLimit(2, "minute")),
])
def test_the_cli_spelling(text: str, limit: RateLimit) -> None:
    assert ratelimits.parse(text) == limit


@pytest.mark.parametrize("text", ["100", "0/s", "x/s", "5/week", "/s", "-1/s", "5/"])
def test_the_cli_spelling_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected|must be"):
        ratelimits.parse(text)


# which limits a request counts against -----------------------------------------------------------------------
def _key(platform: tuple[PlatformEntry, ...] = (), limits: tuple[RateLimit, ...] = (),
         applications: tuple[tuple[str, tuple[RateLimit, ...]], ...] = (), enforce: bool = True) -> ApiKey:
    now = datetime.now(UTC)
    return ApiKey("K1", "name", b"h" * 32, "prefix", (), now, now, True, platform, rate_limits=limits,
                  enforce=enforce, application_limits=applications)


def test_a_plan_is_the_key_then_each_linked_application_once() -> None:
    minute, day = RateLimit(10, "minute"), RateLimit(1000, "day")
    assert plan_of(_key()) is None
    key = _key(
        (PlatformEntry("1", "app-a", "e1"), PlatformEntry("2", "app-a", "e2"), PlatformEntry("3", None, "e3")),
        (minute,), (("app-a", (minute, day)), ("app-z", (minute,))),
    )
    plan = plan_of(key)
    assert plan == Plan(
        ("keyscope:rl:key:K1:60", "keyscope:rl:app:app-a:60", "keyscope:rl:app:app-a:86400"),
        (Rule.of(minute), Rule.of(minute), Rule.of(day)),
    )
    limiter = Limiter()
    assert limiter.plan(key) is limiter.plan(key)  # made once per key record
    assert limiter.plan(_key()) is None


# the procedure ---------------------------------------------------------------------------------------------------
def test_the_procedure_counts_refuses_with_429_and_says_so() -> None:
    store, clock = Store(), [100.0]
    secret = store.add(_key(limits=(RateLimit(2, "minute"),)))
    made = checks(store, clock)
    scope = http_scope("GET", "/sms/1/logs", secret)
    first, second, third = (admit(made, scope) for _ in range(3))
    assert isinstance(first, Admission) and isinstance(second, Admission)
    assert first.answer_headers() == [(b"ratelimit-limit", b"2"), (b"ratelimit-remaining", b"1"),
                                      (b"ratelimit-reset", b"30")]
    assert isinstance(third, Refusal) and (third.status, third.reason, third.step) == (429, "rate_limited", "ratelimit")
    clock[0] += 30  # one interval: one token back
    assert isinstance(admit(made, scope), Admission)


def test_an_application_limit_is_shared_by_its_keys_and_the_primary_key_is_limited_too() -> None:
    store, clock = Store(), [0.0]
    applications = (("app-a", (RateLimit(3, "hour"),)),)
    one = store.add(_key((PlatformEntry("1", "app-a", None),), applications=applications))
    two = store.add(_key((PlatformEntry("2", "app-a", None),), applications=applications))
    primary = store.add(_key(limits=(RateLimit(1, "second"),)))
    made = checks(store, clock)
    outcomes = [admit(made, http_scope("GET", "/sms/1/logs?applicationId=app-a", secret))
                for secret in (one, two, one, two)]
    assert [isinstance(outcome, Admission) for outcome in outcomes] == [True, True, True, False]
    assert isinstance(admit(made, http_scope("GET", "/anything", primary)), Admission)
    assert isinstance(admit(made, http_scope("GET", "/anything", primary)), Refusal)


def test_early_decide_steps_aside_after_counting_and_the_count_is_taken_back() -> None:
    store, clock = Store(), [0.0]
    secret = store.add(_key((PlatformEntry("1", "app-a", None),), limits=(RateLimit(2, "hour"),)))
    made = checks(store, clock)
    scope = http_scope("GET", "/sms/1/logs?applicationId=app-a", secret)
    assert decide(made, scope) is None  # the key must be loaded
    for _ in range(2):
        made.known_ids.clear()
        assert decide(made, scope) is None  # counted, then the id must be looked up: taken back
        assert isinstance(admit(made, scope), Admission)  # ...and the ASGI path counts it once
    refused = decide(made, scope)  # the id is known now: decided early, and refused
    assert isinstance(refused, Refusal) and refused.status == 429


def test_redis_counts_through_the_limits_need_and_decide_steps_aside() -> None:
    url = redis_or_skip()
    store, clock = Store(), [0.0]
    key = _key(limits=(RateLimit(2, "hour"),))
    key = ApiKey(str(uuid.uuid4()), *[getattr(key, f) for f in ("name", "secret_hash", "prefix", "allowed_ips",
                 "valid_from", "valid_to", "enabled")], rate_limits=key.rate_limits)
    secret = store.add(key)
    made = checks(store, clock, Limiter(url))
    scope = http_scope("GET", "/anything", secret)
    assert decide(made, scope) is None  # the key must be loaded
    assert decide(made, scope) is None  # Redis must be asked
    outcomes = [admit(made, scope) for _ in range(3)]
    assert [type(outcome).__name__ for outcome in outcomes] == ["Admission", "Admission", "Refusal"]
    assert outcomes[1].answer_headers()[1] == (b"ratelimit-remaining", b"0")  # type: ignore[union-attr]


@pytest.mark.parametrize(("policy", "expected"), [("allow", "Admission"), ("deny", "Refusal")])
def test_redis_down_follows_the_policy(policy: str, expected: str) -> None:
    store, clock = Store(), [0.0]
    secret = store.add(_key(limits=(RateLimit(1, "hour"),)))
    made = checks(store, clock, Limiter("redis://127.0.0.1:1/0", on_error=policy))
    scope = http_scope("GET", "/anything", secret)
    for _ in range(3):
        outcome = admit(made, scope)
        assert type(outcome).__name__ == expected
        if isinstance(outcome, Refusal):
            assert (outcome.status, outcome.reason) == (503, "rate_limit_unavailable")
        else:
            assert outcome.rate is None and outcome.answer_headers() == []


def test_the_middleware_limits_too_and_adds_the_headers_to_the_app_s_answer() -> None:
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from keyscope.gateway.middleware import KeyScopeMiddleware

    async def logs(request: Any) -> JSONResponse:
        return JSONResponse({"ok": True})

    store = Store()
    secret = store.add(_key((PlatformEntry("1", "app-a", None),), limits=(RateLimit(1, "hour"),)))
    app = KeyScopeMiddleware(Starlette(routes=[Route("/sms/1/logs", logs)]), store=store)  # type: ignore[arg-type]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw.test") as client:
            return [await client.get("/sms/1/logs?applicationId=app-a", headers={"Authorization": f"App {secret}"})
                    for _ in range(2)]

    admitted, refused = asyncio.run(run())
    assert admitted.status_code == 200 and admitted.headers["ratelimit-remaining"] == "0"
    assert refused.status_code == 429 and refused.headers["retry-after"] == "3600"
