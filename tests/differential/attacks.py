"""Requests as bytes: the attacker's view. Nothing here normalises, so odd requests stay odd.

`Attack` is one request (method, raw target, extra headers, body) written byte for byte with a key; the
builders below make its query, urlencoded form, multipart and JSON parts. JSON objects are `Obj`, a list of
members, so that duplicate and near-duplicate member names survive (a dict would merge them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

CRLF = "\r\n"


@dataclass(frozen=True)
class Attack:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    chunked: bool = False
    note: str = ""

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def raw(self, secret: str | None) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1", "Host: gateway.test", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if secret is not None:
            lines.append(f"Authorization: App {secret}")
        body = self.body
        if self.chunked:
            lines.append("Transfer-Encoding: chunked")
            body = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
        elif body or self.method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body)}")
        return (CRLF.join(lines) + CRLF + CRLF).encode("utf-8") + body

    def __str__(self) -> str:
        target = self.target if len(self.target) <= 400 else (
            f"{self.target[:200]}...({len(self.target)} characters)...{self.target[-150:]}")
        head = f"{self.method} {target}" + "".join(f"\n  {n}: {v}" for n, v in self.headers)
        body = self.body if len(self.body) <= 600 else self.body[:500] + b"..." + self.body[-100:]
        return head + (f"\n  body ({len(self.body)} bytes): {body!r}" if self.body else "") + (
            f"\n  ({self.note})" if self.note else "")


# query strings and urlencoded forms --------------------------------------------------------------------------
def encode(text: str, raw: bool = False) -> str:
    """A query or form name/value: percent-encoded (UTF-8), or as it stands where `raw` (for `[`, `]`, ...)."""
    return text if raw else quote(text, safe="")


def pairs(*items: tuple[str, str], raw: bool = False) -> list[str]:
    return [f"{encode(name, raw)}={encode(value, raw)}" for name, value in items]


def query(path: str, pieces: list[str], method: str = "GET", **kwargs: Any) -> Attack:
    """A request whose query is the `&`-joined pieces (a piece may be empty, or anything at all)."""
    return Attack(method, f"{path}?{'&'.join(pieces)}" if pieces else path, **kwargs)


def form(path: str, pieces: list[str], target_query: list[str] = (), method: str = "POST",
         content_type: str = "application/x-www-form-urlencoded", **kwargs: Any) -> Attack:
    target = f"{path}?{'&'.join(target_query)}" if target_query else path
    headers = (("Content-Type", content_type), *kwargs.pop("headers", ()))
    return Attack(method, target, headers, "&".join(pieces).encode(), **kwargs)


# multipart -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Part:
    name: str
    value: str
    filename: str | None = None
    disposition: str | None = None  # the whole Content-Disposition value, when the default will not do
    headers: tuple[str, ...] = ()

    def head(self) -> str:
        disposition = self.disposition or f'form-data; name="{self.name}"' + (
            f'; filename="{self.filename}"' if self.filename is not None else "")
        return CRLF.join([f"Content-Disposition: {disposition}", *self.headers])


@dataclass(frozen=True)
class Multipart:
    """A multipart/form-data body; `preamble`, `epilogue` and `tail` (raw text after the last value, before the
    close delimiter) are where near-delimiters hide, `padding` is transport padding after each delimiter."""

    parts: tuple[Part, ...]
    boundary: str = "keyscope-differential"
    preamble: str = ""
    epilogue: str = ""
    padding: str = ""
    newline: str = CRLF
    close: bool = True
    content_type: str | None = None  # the whole header value, for boundary tricks

    def body(self) -> bytes:
        nl, out = self.newline, [self.preamble]
        for i, part in enumerate(self.parts):
            out.append(("" if i == 0 and not self.preamble else nl) + f"--{self.boundary}{self.padding}{nl}")
            out.append(part.head().replace(CRLF, nl) + nl + nl + part.value)
        if self.close:
            out.append(f"{nl}--{self.boundary}--{self.padding}{nl}")
        out.append(self.epilogue)
        return "".join(out).encode("utf-8")

    def header(self) -> str:
        return self.content_type or f"multipart/form-data; boundary={self.boundary}"


def multipart(path: str, body: Multipart, method: str = "POST", target_query: list[str] = (), **kwargs) -> Attack:
    target = f"{path}?{'&'.join(target_query)}" if target_query else path
    headers = (("Content-Type", body.header()), *kwargs.pop("headers", ()))
    return Attack(method, target, headers, body.body(), **kwargs)


# JSON -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Obj:
    """A JSON object as written: members in order, duplicates allowed."""

    members: tuple[tuple[str, Any], ...] = field(default=())

    def __init__(self, *members: tuple[str, Any], **named: Any) -> None:
        object.__setattr__(self, "members", tuple(members) + tuple(named.items()))

    def plus(self, *members: tuple[str, Any], first: bool = False) -> Obj:
        return Obj(*members, *self.members) if first else Obj(*self.members, *members)


def dumps(value: Any) -> str:
    if isinstance(value, Obj):
        return "{" + ",".join(f"{json.dumps(k)}:{dumps(v)}" for k, v in value.members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)


def nest(steps: tuple[tuple[str, bool], ...], inner: Obj, outer: Obj = Obj()) -> Obj:
    """`outer` with `inner` put at a declared JSON location (one element for each `[]`)."""
    if not steps:
        return outer.plus(*inner.members)
    (name, each), rest = steps[0], steps[1:]
    child = nest(rest, inner)
    return outer.plus((name, [child] if each else child))


def declared(locations: Any, members: list[tuple[str, Any]] | tuple, base: tuple[tuple[str, Any], ...] = ()) -> Obj:
    """A JSON document: `base` members, then `members` at every declared JSON location (one array element for
    each `[]`); locations sharing a prefix share its objects (`request.filterBy` and its `platforms[]`)."""
    steps = [location.steps for location in locations if location.kind == "json"]
    return Obj(*base, *_build(steps, tuple(members)).members)


def _build(steps: list[tuple[tuple[str, bool], ...]], members: tuple[tuple[str, Any], ...]) -> Obj:
    out = list(members) if any(not path for path in steps) else []
    children: dict[tuple[str, bool], list] = {}
    for path in steps:
        if path:
            children.setdefault(path[0], []).append(path[1:])
    for (name, each), rests in children.items():
        child = _build(rests, members)
        out.append((name, [child] if each else child))
    return Obj(*out)


def json_request(path: str, doc: Any, method: str = "POST", content_type: str = "application/json",
                 target_query: list[str] = (), **kwargs: Any) -> Attack:
    target = f"{path}?{'&'.join(target_query)}" if target_query else path
    headers = (("Content-Type", content_type), *kwargs.pop("headers", ()))
    return Attack(method, target, headers, dumps(doc).encode("utf-8"), **kwargs)


def ids(application_id: str | None = "app-a", entity_id: str | None = "ent-a") -> list[tuple[str, str]]:
    out = []
    if application_id is not None:
        out.append(("applicationId", application_id))
    if entity_id is not None:
        out.append(("entityId", entity_id))
    return out
