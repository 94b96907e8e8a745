"""Refusals and their bodies, in the two error families the platform's clients parse.

`legacy` is the `requestError.serviceException` body of the older APIs and of provisioning; `api-error` is the
`errorCode`/`description`/`action`/`violations`/`resources` body of the newer ones. Each endpoint declares its
family so that a client's own SDK can read keyscope's refusals. Bodies without a field are encoded once.
`describe` reads such a body back into words: the one reader of the CLI and of the web interface.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

Family = Literal["legacy", "api-error"]

DOCS = "https://www.infobip.com/docs/essentials/api-essentials"

# status -> (legacy messageId, legacy text, api-error description, api-error action); an unlisted status
# takes 500's texts when it is 5xx and 400's otherwise. The api-error `resources` are in _RESOURCES.
_TEXTS: dict[int, tuple[str, str, str, str]] = {
    400: ("BAD_REQUEST", "Bad request", "The request is malformed.", "Fix the request syntax and try again."),
    401: (
        "UNAUTHORIZED",
        "Invalid login details",
        "The request lacks valid authentication credentials for the requested resource.",
        "Check the resources and adjust authentication credentials.",
    ),
    403: (
        "UNAUTHORIZED",
        "Unauthorized access",
        "Insufficient permissions to access the requested resource.",
        "Repeat the request with new or different credentials.",
    ),
    404: ("NOT_FOUND", "Not found", "The requested resource was not found.", "Check the request path."),
    405: ("METHOD_NOT_ALLOWED", "Method not allowed", "The method is not allowed here.", "Use an allowed method."),
    409: (
        "CONFLICT",
        "Conflict",
        "The request conflicts with existing resources.",
        "Check the existing resources and adjust the request.",
    ),
    413: ("PAYLOAD_TOO_LARGE", "Request body too large", "The request body is too large.", "Send a smaller body."),
    414: ("URI_TOO_LONG", "Request target too long", "The request target is too long.", "Send a shorter target."),
    415: (
        "UNSUPPORTED_MEDIA_TYPE",
        "Unsupported media type",
        "The request body cannot be inspected in this format.",
        "Send the body as uncompressed JSON or form data.",
    ),
    429: ("TOO_MANY_REQUESTS", "Too many requests", "Too many requests.", "Slow down and retry."),
    431: (
        "REQUEST_HEADER_FIELDS_TOO_LARGE",
        "Request headers too large",
        "The request headers are too large or too many.",
        "Send fewer or smaller headers.",
    ),
    500: (
        "GENERAL_ERROR",
        "Something went wrong. Please contact support.",
        "Something went wrong.",
        "Contact support.",
    ),
    502: ("BAD_GATEWAY", "Bad gateway", "The upstream service could not be reached.", "Retry later."),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable", "The service is temporarily unavailable.", "Retry later."),
    504: ("GATEWAY_TIMEOUT", "Gateway timeout", "The upstream service did not answer in time.", "Retry later."),
}
_RESOURCES = {
    401: [{"name": "API Authentication", "url": f"{DOCS}/api-authentication"}],
    403: [{"name": "API Scopes", "url": f"{DOCS}/api-authentication#api-scopes"}],
}


@dataclass(frozen=True, slots=True)
class Refusal(Exception):
    """A decision not to serve a request.

    `reason` is a stable machine code (it goes to the access log and the explainer), `step` the stage of the
    request path that refused, `field` the offending field or id when there is one (it becomes the key of
    `validationErrors` or the `property` of a violation), `detail` the human sentence about it.
    """

    status: int
    reason: str
    step: str = ""
    field: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.detail}" if self.detail else f"{self.status} {self.reason}"


def body(status: int, family: Family, field: str | None = None, detail: str = "") -> bytes:
    """The encoded error body; without a field it is built once per (status, family)."""
    if field is None:
        return _plain_body(status, family)
    return _encode(status, family, field, detail)


@lru_cache(maxsize=64)
def _plain_body(status: int, family: Family) -> bytes:
    return _encode(status, family, None, "")


def _encode(status: int, family: Family, field: str | None, detail: str) -> bytes:
    message_id, text, description, action = _TEXTS.get(status, _TEXTS[500 if status >= 500 else 400])
    if family == "legacy":
        exception: dict[str, object] = {"messageId": message_id, "text": text}
        if field is not None:
            exception["validationErrors"] = {field: [detail or text]}
        doc: dict[str, object] = {"requestError": {"serviceException": exception}}
    else:
        doc = {
            "errorCode": f"E{status}",
            "description": description,
            "action": action,
            "violations": [{"property": field, "violation": detail or description}] if field is not None else [],
            "resources": _RESOURCES.get(status, []),
        }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def refusal_body(refusal: Refusal, family: Family) -> bytes:
    return body(refusal.status, family, refusal.field, refusal.detail)


JSON_HEADERS = [(b"content-type", b"application/json;charset=UTF-8")]


@dataclass(frozen=True, slots=True)
class ErrorText:
    """What an error body says, read from either family.

    `headline` is the body's own (legacy `text`, else `messageId`; api-error `description`, else `errorCode`; a
    body that is not JSON, or is a JSON string, is its own headline), None when it says nothing usable. `fields`
    holds, in the body's order, each field it names with its messages: one entry per legacy `validationErrors`
    key with all its messages, one per api-error violation (`property` and `violation`).
    """

    status: int
    headline: str | None
    fields: tuple[tuple[str, tuple[str, ...]], ...] = ()


def describe(status: int, raw: bytes) -> ErrorText:
    """The words of the error body `raw` answered with `status`; never raises, whatever the body holds."""
    doc: Any = None
    if raw:
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = raw.decode("utf-8", "replace")
    if isinstance(doc, str):
        return ErrorText(status, doc.strip() or None)
    if not isinstance(doc, dict):
        return ErrorText(status, None)
    request_error = doc.get("requestError")
    exception = request_error.get("serviceException") if isinstance(request_error, dict) else None
    if isinstance(exception, dict):
        errors = exception.get("validationErrors")
        fields = tuple(
            (str(name), tuple(str(m) for m in messages) if isinstance(messages, list) else (str(messages),))
            for name, messages in (errors.items() if isinstance(errors, dict) else ())
        )
        return ErrorText(status, _said(exception.get("text") or exception.get("messageId")), fields)
    if "errorCode" in doc:
        violations = doc.get("violations")
        fields = tuple(
            (str(violation.get("property")), (str(violation.get("violation")),))
            for violation in (violations if isinstance(violations, list) else ())
            if isinstance(violation, dict)
        )
        return ErrorText(status, _said(doc.get("description") or doc["errorCode"]), fields)
    return ErrorText(status, None)


def _said(value: object) -> str | None:
    return str(value) if value else None
