"""`explain`'s trace: what each step of the procedure saw as it ran (a `keyscope.decide.checks.Recorder`), and
the steps described from it and from where a refusal stopped them. Nothing here re-runs a rule."""

from __future__ import annotations

from typing import Any

from keyscope import scope as scoping
from keyscope.allowlist import matcher
from keyscope.allowlist.table import Endpoint
from keyscope.core import ratelimits
from keyscope.core.errors import Refusal
from keyscope.core.models import ApiKey, PlatformEntry
from keyscope.core.types import Scope
from keyscope.decide.admission import Admission
from keyscope.gateway.explanation import Step

CHOSEN_KEY_CREDENTIALS = b"App explain-chosen-key"
"""The Authorization header of a request explained for a key chosen by id: any secret maps to that key."""


class Trace:
    """What each step of the procedure saw, as it ran (a `keyscope.decide.checks.Recorder`)."""

    def __init__(self) -> None:
        self.key: ApiKey | None = None
        self.found: matcher.Result | None = None
        self.decision: scoping.Decision | None = None
        self.body: bytes | None = None
        self.exist = False

    def authenticated(self, key: ApiKey) -> None:
        self.key = key

    def matched(self, found: matcher.Result) -> None:
        self.found = found

    def inspected(self, decision: scoping.Decision, body: bytes | None) -> None:
        self.decision, self.body = decision, body

    def existing(self) -> None:
        self.exist = True


def describe(trace: Trace, scope: Scope, admission: Admission, steps: list[Step], refusal: Refusal | None) -> None:
    """The trace of steps 2-5 from what the procedure recorded and, when it refused, where it stopped."""
    failed = refusal.step if refusal is not None else None
    key = trace.key
    # 2. authentication
    if key is None:
        assert refusal is not None
        details = {"reason": refusal.reason}
        if (b"authorization", CHOSEN_KEY_CREDENTIALS) in scope["headers"]:
            details["secret"] = "not checked: the key was chosen by id; its state was"
        if refusal.reason == "ip_not_allowed" and scope["client"] is None:
            details["client"] = "no client address was given, and this key is limited to some addresses"
        steps.append(Step("auth", "Authentication", False, refusal.detail, details))
        _skipped(steps, "allowlist", "ids", "existence")
        return
    details = _key_details(key)
    chosen = (b"authorization", CHOSEN_KEY_CREDENTIALS) in scope["headers"]
    details["secret"] = "not checked: the key was chosen by id" if chosen else "matches this key"
    steps.append(Step("auth", "Authentication", True, _who(key), details))
    # 3. allowlist
    steps.append(_allowlist_step(key, trace.found, failed == "allowlist"))
    if failed == "allowlist":
        _skipped(steps, "ids", "existence")
        return
    # the rate limits, before the body
    if failed == "ratelimit":
        assert refusal is not None
        steps.append(Step("ratelimit", "Rate limits", False, refusal.detail, {"reason": refusal.reason}))
        _skipped(steps, "ids", "existence")
        return
    # 4. ids (and the body they are read from)
    if failed in ("body", "scope"):
        assert refusal is not None
        title = "Request body" if failed == "body" else "Ids in the request"
        details = {"reason": refusal.reason, **({"field": refusal.field} if refusal.field else {})}
        steps.append(Step("ids", title, False, refusal.detail, details))
        _skipped(steps, "existence")
        return
    assert trace.decision is not None
    steps.append(_ids_step(scope, trace, admission, key))
    # 5. existence
    if failed == "existence":
        assert refusal is not None
        steps.append(Step("existence", "Ids exist", False, refusal.detail, {"reason": refusal.reason}))
        return
    if failed is not None:  # a refusal of another stage (the store became unavailable)
        assert refusal is not None
        steps.append(Step(failed, failed, False, refusal.detail, {"reason": refusal.reason}))
        return
    steps.append(Step("existence", "Ids exist", True, "every application and entity id named exists"))


def _skipped(steps: list[Step], *names: str) -> None:
    titles = {"allowlist": "Allowlist", "ids": "Ids in the request", "existence": "Ids exist"}
    for name in names:
        steps.append(Step(name, titles[name], None, "not reached"))


def _who(key: ApiKey) -> str:
    kind = "primary key (every endpoint)" if key.is_primary else f"linked key ({len(key.platform)} link(s))"
    return f"key {key.id} {key.name!r}: {kind}"


def _entry_text(entry: PlatformEntry | None) -> str:
    if entry is None:
        return "-"
    parts = [f"applicationId={entry.application_id or '*'}", f"entityId={entry.entity_id or '*'}"]
    if entry.action:
        parts.append(entry.action)
    return " ".join(parts)


def _key_details(key: ApiKey) -> dict[str, Any]:
    details: dict[str, Any] = {"links": [_entry_text(entry) for entry in key.platform] or "none (primary)"}
    if key.allowed_ips:
        details["allowedIPs"] = list(key.allowed_ips)
    if key.rate_limits:
        details["rateLimits"] = ratelimits.to_text(key.rate_limits)
    for application_id, limits in key.application_limits:
        details[f"rateLimits of {application_id}"] = ratelimits.to_text(limits)
    if not key.enforce:
        details["enforce"] = "false: shadow mode (what steps 4-5 or a rate limit would refuse is forwarded)"
    return details


def _allowlist_step(key: ApiKey, found: Any, refused: bool) -> Step:
    if found:
        endpoint: Endpoint = found.endpoint
        details = {
            "function": endpoint.function,
            "group": endpoint.group,
            "template": f"{endpoint.method} {endpoint.path}",
            "ids": [location.text or location.kind for location in endpoint.ids] or "none",
            "errors": endpoint.errors,
        }
        if endpoint.deprecated:
            details["deprecated"] = True
        return Step("allowlist", "Allowlist", True, f"matches {endpoint.function!r}", details)
    if isinstance(found, matcher.MethodNotAllowed):
        summary = "the path is allowlisted for " + ", ".join(found.allowed) + " only"
    else:
        summary = "the path is not in the allowlist"
    if refused:
        return Step("allowlist", "Allowlist", False, summary + ": linked keys may call only the allowlist")
    return Step("allowlist", "Allowlist", True, summary + ", but a primary key may call any path")


def _ids_step(scope: Scope, trace: Trace, admission: Admission, key: ApiKey) -> Step:
    """Where ids were found and which entry permitted each place; the rewrites FILL/FORCE made."""
    decision = trace.decision
    assert decision is not None
    places = [
        {"where": place.where, "ids": place.ids, "checkedAgainst": _entry_text(place.entry) if key.platform else "-"}
        for place in decision.places
    ]
    details: dict[str, Any] = {"places": places or "none"}
    if key.platform:
        details["entry"] = _entry_text(admission.effective_entry())
    if admission.changed:
        action = next((entry.action for entry in key.platform if entry.action), None)
        details["rewrite"] = action or "rewritten"
        if admission.query != scope["query_string"]:
            details["queryBefore"] = scope["query_string"].decode("latin-1")
            details["queryAfter"] = admission.query.decode("latin-1")
        if trace.body is not None and admission.body is not None and admission.body != trace.body:
            details["bodyBefore"] = trace.body.decode("utf-8", "replace")
            details["bodyAfter"] = admission.body.decode("utf-8", "replace")
    if key.is_primary:
        summary = f"{len(places)} place(s) with ids; a primary key is not limited to any"
    elif places:
        summary = f"{len(places)} place(s) with ids, each permitted by one of the key's links"
    else:
        summary = "this endpoint carries no ids"
    return Step("ids", "Ids in the request", True, summary, details)
