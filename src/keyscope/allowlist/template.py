"""Path templates (`/sms/3/messages/{messageId}`): the one grammar the loader checks and the compiler compiles.

    template  = 1*( "/" segment )
    segment   = parameter / static
    parameter = "{" identifier "}"              ; exactly one non-empty request segment
    static    = 1*( unreserved / sub-delims but ";" / ":" / "@" ), not "." or ".."

A static segment is compared byte for byte with the request's raw path, so it may hold only what a canonical
request carries unescaped (`keyscope.http.rfc3986.SEGMENT`): no `;` (step 1 refuses it in every request) and
no percent-escape (step 1 accepts either hex case, so an escape could never be compared byte for byte; a
request's escapes are matched by a parameter). There is no empty segment, so neither a trailing `/` nor the root `/` alone.

`problems()` lists everything wrong with a template, for the loader's one-line-per-problem report;
`parse()` is what the compiler builds on and refuses exactly the same templates, with the first problem.
"""

from __future__ import annotations

import re

from keyscope.http.rfc3986 import HEXDIG, HEXDIG_UPPER, SEGMENT, escape_refusal

_PARAM = re.compile(r"\{([^{}/]*)\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STATIC = frozenset(SEGMENT.decode("ascii"))
_HEX = frozenset(HEXDIG_UPPER.decode("ascii"))
_HEX_ANY_CASE = frozenset(HEXDIG.decode("ascii"))
_UNENCODED = "a template's segments are written unencoded (a request's escapes are matched by a parameter)"

Segments = tuple[bytes | None, ...]
"""A parsed template: each static segment's bytes, None for a parameter."""


def parse(path: str) -> tuple[Segments, tuple[str, ...]]:
    """The template's segments and its parameter names, in order; ValueError (the first problem) if invalid."""
    found = problems(path)
    if found:
        raise ValueError(found[0])
    segments: list[bytes | None] = []
    names: list[str] = []
    for text in path[1:].split("/"):
        param = _PARAM.fullmatch(text)
        if param is None:
            segments.append(text.encode("ascii"))
        else:
            segments.append(None)
            names.append(param.group(1))
    return tuple(segments), tuple(names)


def shape(path: str) -> str:
    """The template with its parameters unnamed: two templates of one shape match the same paths."""
    return _PARAM.sub("{}", path)


def problems(path: str) -> list[str]:
    """Everything wrong with a template, one sentence each, each naming the path; [] when it is valid."""
    if not path.startswith("/"):
        return [f"path {path!r} must start with '/'"]
    depth = 0
    for char in path:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth > 1:
            return [f"path {path!r} has nested braces"]
        if depth and char == "/":
            return [f"path {path!r}: a parameter must be a whole segment ('/' inside braces)"]
        if depth < 0:
            return [f"path {path!r} has unbalanced braces"]
    if depth:
        return [f"path {path!r} has unbalanced braces"]
    found: list[str] = []
    names: set[str] = set()
    for segment in path[1:].split("/"):
        if not segment:
            found.append(f"path {path!r} has an empty segment ('//' or a trailing '/')")
        elif "{" in segment or "}" in segment:
            match = _PARAM.fullmatch(segment)
            name = match.group(1) if match else ""
            if not match:
                found.append(f"path {path!r}: parameter in {segment!r} must be a whole segment")
            elif not _IDENTIFIER.fullmatch(name):
                found.append(f"path {path!r}: parameter name {name!r} is not an identifier")
            elif name in names:
                found.append(f"path {path!r}: duplicate parameter name {name!r}")
            names.add(name)
        elif segment in (".", ".."):
            found.append(f"path {path!r} has a {segment!r} segment")
        else:
            problem = _static_problem(segment)
            if problem:
                found.append(f"path {path!r}: {problem}")
    return found


def _static_problem(segment: str) -> str | None:
    for index, char in enumerate(segment):
        if char == "%":
            return _escape_problem(segment, segment[index : index + 3])
        if char == ";":
            return f"';' in {segment!r}: path parameters are refused in every request (step 1: semicolon)"
        if char not in _STATIC:
            return f"character {char!r} in {segment!r} is not allowed in a path segment (RFC 3986 pchar)"
    return None


def _escape_problem(segment: str, escape: str) -> str:
    """Why `escape` (a `%` and what follows it) cannot be in a template: a template holds no escapes, and
    the escapes of unreserved characters or of what step 1 refuses are named as such."""
    digits = escape[1:]
    if len(digits) != 2 or not all(digit in _HEX_ANY_CASE for digit in digits):
        return f"malformed percent-encoding in {segment!r}: {_UNENCODED}"
    if not all(digit in _HEX for digit in digits):
        return f"malformed percent-encoding {escape!r} in {segment!r} (lower-case hex), and {_UNENCODED}"
    value = int(digits, 16)
    reason = escape_refusal(value)
    if reason == "encoded_unreserved":
        return f"{escape!r} in {segment!r} encodes {chr(value)!r}: write it unencoded"
    if reason is not None:
        return f"{escape!r} in {segment!r} encodes {chr(value)!r}, which step 1 refuses in every request ({reason})"
    return f"{escape!r} in {segment!r}: {_UNENCODED}"
