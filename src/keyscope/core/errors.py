"""Refusals and their bodies, in the two error families the platform's clients parse.

`legacy` is the `requestError.serviceException` body of the older APIs and of provisioning; `api-error` is the
`errorCode`/`description`/`action`/`violations`/`resources` body of the newer ones. Each endpoint declares its
family so that a client's own SDK can read keyscope's refusals. Bodies without a field are encoded once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

Family = Literal["legacy", "api-error"]

DOCS = "https://www.infobip.com/docs/essentials/api-essentials"

# status -> (legacy messageId, legacy text, api-error description, api-error action, resource name, url)
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
