"""Shadow mode, in process: a shadow key and its enforcing twin over random requests.

The twin property: what enforcement refuses at the allowlist, a rate limit, the scope or the existence check,
shadow forwards (as the client sent it, the refusal noted); what enforcement admits, shadow admits the same way;
anything else (steps 1-2, a body over the limit, 503) shadow refuses the same way. The two keys have the same
entries and limits and their own counters, so the counters must move in step too. Both drivers, `admit()` and
`decide()`, and both switches, a key's `enforce: false` and the gateway's `--shadow`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from ratelimit_helpers import Store, admit, checks, decide, http_scope

from keyscope.core.errors import Refusal
from keyscope.core.models import ApiKey, PlatformEntry
from keyscope.core.ratelimits import RateLimit
from keyscope.decide.admission import Admission
from keyscope.decide.checks import SHADOWED

APPLICATION_IDS = st.sampled_from([None, "app-a", "app-b", "nope", "APP-A"])
ENTITY_IDS = st.sampled_from([None, "ent-a", "ent-b", "nope"])
ENTRIES = st.sampled_from([
    (PlatformEntry("", "app-a", "ent-a"),),
    (PlatformEntry("", "app-a", None, "FILL"),),
    (PlatformEntry("", "app-a", "ent-a", "FORCE"),),
    (PlatformEntry("", "app-a", None), PlatformEntry("", "app-b", "ent-b")),
    (),  # primary
])
LIMITS = st.sampled_from([(), (RateLimit(3, "minute"),), (RateLimit(2, "second"), RateLimit(5, "minute"))])


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes, list[tuple[bytes, bytes]]]:
    """(method, target, body, extra headers) over a few endpoints, paths off the allowlist and bad bodies."""
    kind = draw(st.sampled_from(["logs", "send", "none", "off", "method", "form", "bad-json", "too-big"]))
    application, entity = draw(APPLICATION_IDS), draw(ENTITY_IDS)
    query = "&".join(f"{name}={value}" for name, value in (("applicationId", application), ("entityId", entity))
                     if value is not None)
    json_type = [(b"content-type", b"application/json")]
    if kind == "logs":
        return "GET", "/sms/1/logs" + ("?" + query if query else ""), b"", []
    if kind == "method":
        return "DELETE", "/sms/1/logs", b"", []
    if kind == "off":
        return draw(st.sampled_from(["GET", "POST"])), "/not/on/the/allowlist", b"", []
    if kind == "none":
        return "POST", "/ccaas/1/conversations/c1/messages", b'{"text": "hi"}', json_type
    if kind == "form":
        return "POST", "/email/3/send", query.encode(), [(b"content-type", b"application/x-www-form-urlencoded")]
    message: dict[str, Any] = {"destinations": [{"to": "41793026727"}], "text": "hi"}
    if application is not None:
        message["applicationId"] = application
    if entity is not None:
        message["entityId"] = entity
    body = json.dumps({"messages": [message, *draw(st.sampled_from([[], [dict(message)]]))]}).encode()
    if kind == "bad-json":
        body = body[:-1]
    elif kind == "too-big":
        body = body + b" " * 600
    return "POST", "/sms/2/text/advanced", body, json_type


def outcome(result: Admission | Refusal | None, body: bytes = b"") -> tuple[Any, ...]:
    """What a driver decided; a body left unread (None: streamed as it comes) is the body sent, as decide()
    hands it over."""
    if result is None:
        return ("stepped aside",)
    if isinstance(result, Refusal):
        return ("refused", result.status, result.reason, result.step)
    entry = result.entry
    scope = entry and (entry.application_id, entry.entity_id, entry.action)
    return ("admitted", result.query, body if result.body is None else result.body, scope, result.changed,
            None if result.shadow is None else (result.shadow.status, result.shadow.reason, result.shadow.step),
            tuple(result.answer_headers()))


def twin(key: ApiKey, key_id: str, enforce: bool) -> ApiKey:
    platform = tuple(replace(entry, key=key_id) for entry in key.platform)
    return replace(key, id=key_id, platform=platform, enforce=enforce)


@settings(max_examples=150, deadline=None)
@given(ENTRIES, LIMITS, st.lists(st.tuples(requests(), st.sampled_from([0.0, 0.1, 0.5, 20.0])), min_size=1,
                                   max_size=25), st.booleans(), st.booleans())
def test_shadow_forwards_exactly_what_enforcement_refuses_at_steps_4_5_and_nothing_else(
    entries: tuple[PlatformEntry, ...], limits: tuple[RateLimit, ...],
    sequence: list[tuple[tuple[str, str, bytes, list[tuple[bytes, bytes]]], float]],
    gateway_wide: bool, early: bool,
) -> None:
    now = datetime.now(UTC)
    base = ApiKey("", "twin", b"", "prefix", (), now, now, True, entries, rate_limits=limits)
    store, clock = Store(), [1000.0]
    enforcing = store.add(twin(base, "enforcing", True))
    # the shadow key: `enforce: false`, or an enforcing key behind a gateway in --shadow
    shadow_key = store.add(twin(base, "shadow", gateway_wide))
    plain = checks(store, clock, max_body_size=500)
    shadowing = checks(store, clock, max_body_size=500, shadow=True) if gateway_wide else plain
    run = decide if early else admit
    for (method, target, body, headers), pause in sequence:
        clock[0] += pause
        results = []
        for made, secret in ((plain, enforcing), (shadowing, shadow_key)):
            result = run(made, http_scope(method, target, secret, *headers), body)
            if result is None:  # decide() stepped aside for a store lookup: the ASGI path decides it
                result = admit(made, http_scope(method, target, secret, *headers), body)
            results.append(outcome(result, body))
        enforced, shadowed = results
        event(f"enforced: {enforced[:4] if enforced[0] == 'refused' else 'admitted'}")
        query = target.partition("?")[2].encode()
        if enforced[0] == "refused" and enforced[3] in SHADOWED and enforced[1] != 503:
            assert shadowed[0] == "admitted" and shadowed[5] == enforced[1:], (target, enforced, shadowed)
            assert shadowed[1] == query and shadowed[4] is False  # as the client sent it
            assert shadowed[2] == body
        elif enforced[0] == "admitted":
            assert shadowed == enforced, target
        else:
            assert shadowed == enforced, target


def test_the_backend_is_told_and_the_line_says_shadow() -> None:
    now = datetime.now(UTC)
    store, clock = Store(), [0.0]
    secret = store.add(ApiKey("K", "n", b"", "p", (), now, now, True, (PlatformEntry("K", "app-a", None),),
                              enforce=False))
    made = checks(store, clock)
    admission = admit(made, http_scope("GET", "/sms/1/logs?applicationId=app-b", secret))
    assert isinstance(admission, Admission) and admission.shadow is not None
    assert ("X-Keyscope-Shadow-Refusal", "id_out_of_scope") in admission.identity_headers()
    assert admission.query == b"applicationId=app-b"
    # steps 1-2 are never shadowed
    refused = admit(made, http_scope("GET", "/sms/1/logs?applicationId=app-b", "not-a-key"))
    assert isinstance(refused, Refusal) and refused.status == 401
    refused = admit(made, http_scope("GET", "/sms/1/logs/../x", secret))
    assert isinstance(refused, Refusal) and refused.step == "canonical"


def test_explain_says_shadow_and_shows_the_flag_and_the_limits() -> None:
    from keyscope.gateway.explain import explain

    now = datetime.now(UTC)
    store = Store()
    secret = store.add(ApiKey("K", "n", b"", "p", (), now, now, True, (PlatformEntry("K", "app-a", None),),
                              rate_limits=(RateLimit(5, "second"),), enforce=False))
    from ratelimit_helpers import ENDPOINTS as endpoints
    from ratelimit_helpers import LOOP

    explained = LOOP.run_until_complete(
        explain(store, endpoints, "GET", "/sms/1/logs?applicationId=app-b", secret=secret))  # type: ignore[arg-type]
    assert (explained.decision, explained.reason, explained.step) == ("shadow", "id_out_of_scope", "scope")
    assert explained.allowed
    auth = explained.steps[1]
    assert auth.details["rateLimits"] == "5/second" and auth.details["enforce"].startswith("false")
    assert "forwarded in shadow mode" in explained.to_text()
    elsewhere = LOOP.run_until_complete(
        explain(store, endpoints, "GET", "/not/listed", secret=secret))  # type: ignore[arg-type]
    assert (elsewhere.decision, elsewhere.step) == ("shadow", "allowlist")
