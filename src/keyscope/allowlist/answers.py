"""What the matcher answers: a `Match` (truthy), `NOT_FOUND` or a `MethodNotAllowed` (both falsy).

The caller's test is `if result:` for the common case, then `result is NOT_FOUND`; `isinstance` works too.
Also here, the rule for a parameter's value (`decode_value`), which the generated matcher applies before it
answers a match and `Match.params` applies again to decode the value.
"""

from __future__ import annotations

import re

from keyscope.allowlist.model import Endpoint
from keyscope.http import rfc3986

_VALUE = re.compile(rb"(?:" + rfc3986.SEGMENT_CHAR + rb"|" + rfc3986.PCT_ENCODED + rb")+")
_SIGNIFICANT = rfc3986.DECODED_SIGNIFICANT  # assigned, not imported: see keyscope.http.canonical

Target = tuple[Endpoint, tuple[tuple[str, int], ...]]
"""An endpoint, and each parameter's name with the index of its segment in the split path."""


def decode_value(raw: bytes) -> tuple[str, str] | None:
    """(raw, percent-decoded) for a parameter value, or None when it must not match.

    A value is path-segment characters and escapes (`rfc3986.SEGMENT_CHAR`, `rfc3986.PCT_ENCODED`) whose decoded
    form is strict UTF-8, neither `.` nor `..`, and holds nothing in `rfc3986.SIGNIFICANT`: a backend that decodes
    or strips path parameters (`..;x`, `..%2F`) must never see a different path than the one authorized.
    """
    if _VALUE.fullmatch(raw) is None:
        return None
    text = raw.decode("ascii")
    if b"%" not in raw:
        return None if text == "." or text == ".." else (text, text)
    head, *rest = raw.split(b"%")
    decoded = bytearray(head)
    for part in rest:
        decoded += bytes.fromhex(part[:2].decode("ascii"))
        decoded += part[2:]
    try:
        value = decoded.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if value == "." or value == ".." or _SIGNIFICANT.search(value):
        return None
    return text, value


class Match:
    """The request is for `endpoint`.

    `params` (percent-decoded) and `raw_params` (exactly as on the wire) are built when read: the gateway's
    hot path needs only `endpoint`, and every value was already checked before the answer was a match.
    """

    __slots__ = ("endpoint", "_spec", "_segments")

    def __init__(self, target: Target, segments: list[bytes]) -> None:
        self.endpoint, self._spec = target
        self._segments = segments

    @property
    def params(self) -> dict[str, str]:
        params = {}
        for name, i in self._spec:
            raw = self._segments[i]
            params[name] = raw.decode("ascii") if b"%" not in raw else decode_value(raw)[1]  # type: ignore[index]
        return params

    @property
    def raw_params(self) -> dict[str, str]:
        params = {}
        for name, i in self._spec:
            params[name] = self._segments[i].decode("ascii")
        return params

    def __repr__(self) -> str:
        return f"Match({self.endpoint.method} {self.endpoint.path}, params={self.params!r})"


class MethodNotAllowed:
    """The path matches a template that does not list the request's method."""

    __slots__ = ("allowed",)

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.allowed = allowed

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"MethodNotAllowed(allowed={self.allowed!r})"


class _NotFound:
    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NOT_FOUND"


NOT_FOUND = _NotFound()
Result = Match | MethodNotAllowed | _NotFound
