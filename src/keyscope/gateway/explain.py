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
from typing import cast

from keyscope.allowlist.table import Endpoint
from keyscope.core.errors import Refusal, refusal_body
from keyscope.core.limits import DEFAULT as DEFAULT_LIMITS
from keyscope.core.limits import Limits
from keyscope.core.models import ApiKey
from keyscope.core.types import Message, Scope
from keyscope.decide.admission import Admission
from keyscope.decide.answers import refusal_headers
from keyscope.decide.auth import KeyAuthenticator
from keyscope.decide.checks import Checks
from keyscope.decide.management import is_management
from keyscope.decide.usage import NotRecorded
from keyscope.gateway.explanation import Explanation, Step
from keyscope.gateway.trace import CHOSEN_KEY_CREDENTIALS, Trace, describe
from keyscope.store.base import NotFound, Store


class _OneKey:
    """The only store method the authenticator calls, answering every secret with the chosen key."""

    def __init__(self, key: ApiKey) -> None:
        self.key = key

    async def find_key_by_hash(self, secret_hash: bytes) -> ApiKey:
        return self.key


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

    trace = Trace()
    try:
        await checks.admit(scope, receive, admission, recorder=trace)
    except Refusal as refusal:
        describe(trace, scope, admission, steps, refusal)
        return _refused(result, refusal, admission)
    shadow = admission.shadow
    describe(trace, scope, admission, steps, shadow)
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




__all__ = ["CHOSEN_KEY_CREDENTIALS", "Explanation", "KeyNotFound", "Step", "explain"]
