"""What the gateway would decide about one request, step by step, without forwarding anything.

`explain()` drives the gateway's own checks (`Checks.target` and `Checks.admit`, with the same matcher,
authenticator, scope inspection and existence check) over a request built from its arguments, with a recorder
that hears what each step saw, and describes it. The verdict, status and error body are the gateway's: nothing
here re-implements or re-runs a rule.
Three things differ from live traffic, each said in the trace:

- the key may be chosen by id instead of by secret: the secret check is skipped, while the key's enabled
  flag, validity window and allowed addresses are checked by the real authenticator;
- nothing is cached: keys and ids are read from the store now (the gateway may lag by its cache TTL);
- explaining is not using: the key's "last used" time is not touched, and rate limits are counted on counters
  of the explanation's own (the gateway's are never touched; a limit is shown, never found spent).

A key with `enforce: false` (or `--shadow`) is explained as the gateway treats it: the decision is `shadow`,
with the reason and step that would have refused the request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from keyscope import scope as scoping
from keyscope.allowlist import matcher
from keyscope.allowlist.table import Endpoint
from keyscope.core import ratelimits
from keyscope.core.errors import Refusal, refusal_body
from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits
from keyscope.core.models import ApiKey, PlatformEntry
from keyscope.core.types import Message, Scope
from keyscope.decide.admission import Admission
from keyscope.decide.answers import refusal_headers
from keyscope.decide.auth import KeyAuthenticator
from keyscope.decide.checks import Checks
from keyscope.decide.management import is_management
from keyscope.decide.usage import NotRecorded
from keyscope.store.base import NotFound, Store

CHOSEN_KEY_CREDENTIALS = b"App explain-chosen-key"
"""The Authorization header of a request explained for a key chosen by id: any secret maps to that key."""


@dataclass(slots=True)
class Step:
    """One stage of the request path: `ok` is None for a stage that did not run."""

    name: str
    title: str
    ok: bool | None
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Explanation:
    method: str
    target: str
    steps: list[Step]
    decision: str  # "forwarded", "refused", "management" or "shadow" (forwarded, though it would be refused)
    status: int | None = None  # the gateway's own status; None when the upstream would answer
    reason: str | None = None
    step: str | None = None
    error_body: Any = None
    error_headers: list[tuple[str, str]] = field(default_factory=list)
    forwarded: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return self.decision != "refused"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target": self.target,
            "decision": self.decision,
            "status": self.status,
            "reason": self.reason,
            "step": self.step,
            "errorBody": self.error_body,
            "errorHeaders": [list(pair) for pair in self.error_headers],
            "forwarded": self.forwarded,
            "steps": [
                {"name": s.name, "title": s.title, "ok": s.ok, "summary": s.summary, "details": s.details}
                for s in self.steps
            ],
            "notes": self.notes,
        }

    def to_text(self) -> str:
        lines = [f"{self.method} {self.target}"]
        for number, step in enumerate(self.steps, 1):
            mark = {True: "ok", False: "REFUSED", None: "skipped"}[step.ok]
            lines.append(f"{number}. {step.title}: {mark}: {step.summary}")
            for name, value in step.details.items():
                lines.append(f"     {name}: {_text(value)}")
        if self.decision == "refused":
            lines.append(f"=> refused with {self.status} ({self.reason}, step {self.step})")
            lines.append("   body: " + json.dumps(self.error_body, ensure_ascii=False))
        elif self.decision == "management":
            lines.append("=> answered by the management API, never forwarded")
        elif self.decision == "shadow":
            lines.append(f"=> forwarded in shadow mode, with X-Keyscope-Shadow-Refusal: {self.reason} "
                         f"(an enforcing key would be refused at step {self.step})")
            for name, value in self.forwarded.items():
                lines.append(f"   {name}: {_text(value)}")
        else:
            lines.append("=> forwarded upstream (the upstream's status is the answer)")
            for name, value in self.forwarded.items():
                lines.append(f"   {name}: {_text(value)}")
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value.rstrip("\n") or "(empty)"
    return json.dumps(value, ensure_ascii=False)


class _OneKey:
    """The only store method the authenticator calls, answering every secret with the chosen key."""

    def __init__(self, key: ApiKey) -> None:
        self.key = key

    async def find_key_by_hash(self, secret_hash: bytes) -> ApiKey:
        return self.key


class _Trace:
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


class KeyNotFound(LookupError):
    """`key_id` names no key: there is nothing to explain."""


async def explain(
    store: Store,
    endpoints: Sequence[Endpoint],
    method: str,
    target: str,
    *,
    secret: str | None = None,
    key_id: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
    client: str | None = None,
    trusted_proxies: Sequence[str] = (),
    max_body_size: int = 1024 * 1024,
    limits: Limits = DEFAULT_LIMITS,
) -> Explanation:
    """Explain `method target` sent with `secret` (as `Authorization: App <secret>`) or as the key `key_id`.

    Raises KeyNotFound for an unknown `key_id`, ValueError when neither or both are given.
    """
    if (secret is None) == (key_id is None):
        raise ValueError("give either a secret or a key id")
    notes = ["nothing is cached or forwarded: keys and ids are read from the store as they are now"]
    if key_id is not None:
        try:
            chosen = await store.get_key(key_id)
        except NotFound:
            raise KeyNotFound(f"no key {key_id!r}") from None
        authenticator = KeyAuthenticator(cast(Store, _OneKey(chosen)), trusted_proxies=trusted_proxies)
        credentials = CHOSEN_KEY_CREDENTIALS
        notes.append(f"key {key_id} was chosen by id: its secret was not checked")
    else:
        assert secret is not None
        authenticator = KeyAuthenticator(store, trusted_proxies=trusted_proxies)
        credentials = b"App " + secret.encode("utf-8", "surrogateescape")
    checks = Checks(
        endpoints=endpoints, store=store, authenticator=authenticator, max_body_size=max_body_size, limits=limits
    )
    checks.usage = NotRecorded(store)
    scope = _scope(method, target, credentials, body, content_type, client)
    return await _run(checks, scope, body, Explanation(method, target, [], "forwarded", notes=notes))


def _scope(
    method: str, target: str, credentials: bytes, body: bytes, content_type: str | None, client: str | None
) -> Scope:
    raw = target.encode("utf-8", "surrogateescape")
    raw_path, _, query = raw.partition(b"?")
    headers = [(b"authorization", credentials)]
    if body:
        headers.append((b"content-length", str(len(body)).encode()))
    if content_type:
        headers.append((b"content-type", content_type.encode("utf-8", "surrogateescape")))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": (client, 0) if client else None,
        "server": None,
    }


async def _run(checks: Checks, scope: Scope, body: bytes, result: Explanation) -> Explanation:
    admission = Admission()
    steps = result.steps
    try:
        checks.target(scope)
    except Refusal as refusal:
        steps.append(Step("canonical", "Canonical target", False, refusal.detail, {"reason": refusal.reason}))
        return _refused(result, refusal, admission)
    steps.append(Step("canonical", "Canonical target", True, "the target and framing headers are canonical"))
    if is_management(scope["raw_path"]):
        steps.append(
            Step(
                "management",
                "Management path",
                True,
                "a management API path: answered by keyscope itself (admin token or primary key), never forwarded",
            )
        )
        result.decision = "management"
        return result
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    trace = _Trace()
    try:
        await checks.admit(scope, receive, admission, recorder=trace)
    except Refusal as refusal:
        _describe(trace, scope, admission, steps, refusal)
        return _refused(result, refusal, admission)
    shadow = admission.shadow
    _describe(trace, scope, admission, steps, shadow)
    if shadow is not None:
        result.decision, result.reason, result.step = "shadow", shadow.reason, shadow.step
        result.notes.append(f"shadow mode: the key does not enforce ({shadow.status} {shadow.reason} otherwise)")
    result.forwarded = {
        "headers": dict(admission.identity_headers()),
        "query": admission.query.decode("latin-1"),
    }
    if admission.body is not None and admission.changed:
        result.forwarded["body"] = admission.body.decode("utf-8", "replace")
    return result


def _refused(result: Explanation, refusal: Refusal, admission: Admission) -> Explanation:
    payload = refusal_body(refusal, admission.family)
    result.decision = "refused"
    result.status = refusal.status
    result.reason = refusal.reason
    result.step = refusal.step
    result.error_body = json.loads(payload)
    headers = refusal_headers(refusal.status, len(payload))
    result.error_headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]
    return result


def _describe(trace: _Trace, scope: Scope, admission: Admission, steps: list[Step], refusal: Refusal | None) -> None:
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


def _ids_step(scope: Scope, trace: _Trace, admission: Admission, key: ApiKey) -> Step:
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
