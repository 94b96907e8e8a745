"""The oracle: did a reader see what keyscope approved? Written from endpoints.yaml and the reader contract only,
never from keyscope's own code, so that a mistake in keyscope cannot be repeated here and cancel out.

A reader's view is its echo: `method`, `path`, `query`, `form`, `json` (and `query_all`/`form_all` where the
framework keeps every value). At each place the endpoint declares, resolved in that view by exact names, every
id kind the key's entry sets must be a string equal to the entry's value, and no member whose name, loosened
(case folded; `_`, `-`, `.`, spaces and brackets removed), says `applicationid`/`entityid` may hold another
value: that is what a snake_case, kebab-case or case-insensitive binder on top of the framework would read.
At least one declared place must be there in the reader's view (an endpoint with ids never runs without them),
unless the reader read nothing at all from the body and the places are all in the body: a backend that cannot
read the body cannot act on it either (a servlet reading a multipart body with getParameter, say).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ENDPOINTS = Path(__file__).resolve().parents[2] / "endpoints.yaml"
KINDS = ("applicationId", "entityId")
# Characters that case-insensitive comparisons elsewhere (Java's equalsIgnoreCase, ICU) take for ASCII letters.
_ASCII_TWINS = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k", "\u212b": "\u00e5"})
_SEPARATORS = re.compile(r"[_\-. \[\]]")


@dataclass(frozen=True)
class Location:
    kind: str  # "query", "form" or "json"
    steps: tuple[tuple[str, bool], ...] = ()  # (member name, each element of an array) from the top of the body

    def __str__(self) -> str:
        if self.kind != "json":
            return self.kind
        return "json:" + (".".join(name + ("[]" if each else "") for name, each in self.steps) or "$")


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str
    locations: tuple[Location, ...]

    @property
    def path(self) -> str:
        """A concrete path for the template: `{callId}` becomes `p-callId`."""
        return re.sub(r"\{(\w+)\}", r"p-\1", self.template)

    def __str__(self) -> str:
        return f"{self.method} {self.template} {[str(location) for location in self.locations]}"


def _location(spec: Any) -> Location:
    if spec in ("query", "form"):
        return Location(spec)
    text = spec["json"]
    if text == "$":
        return Location("json")
    steps = tuple((part.removesuffix("[]"), part.endswith("[]")) for part in text.split("."))
    return Location("json", steps)


@cache
def endpoints() -> dict[tuple[str, str], Endpoint]:
    """endpoints.yaml by (method, path template)."""
    doc = yaml.safe_load(ENDPOINTS.read_text())
    out = {}
    for row in doc["endpoints"]:
        ids = row["ids"]
        locations = () if ids == "none" else tuple(_location(spec) for spec in ids)
        out[row["method"], row["path"]] = Endpoint(row["method"], row["path"], locations)
    return out


def endpoint(method: str, template: str) -> Endpoint:
    return endpoints()[method, template]


def loosened(name: str) -> str:
    return _SEPARATORS.sub("", name.translate(_ASCII_TWINS)).casefold()


def places(view: dict[str, Any], location: Location) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """The objects at `location` in a reader's view: (where, object, every-value lists or {})."""
    if location.kind in ("query", "form"):
        found = view.get(location.kind)
        every = view.get(f"{location.kind}_all") or {}
        return [(location.kind, found, every)] if isinstance(found, dict) else []
    nodes: list[tuple[str, Any]] = [("$", view.get("json"))]
    for name, each in location.steps:
        deeper = []
        for where, node in nodes:
            child = node.get(name) if isinstance(node, dict) else None
            if each:
                if isinstance(child, list):
                    deeper += [(f"{where}.{name}[{i}]", item) for i, item in enumerate(child)]
            else:
                deeper.append((f"{where}.{name}", child))
        nodes = deeper
    return [(where, node, {}) for where, node in nodes if isinstance(node, dict)]


def place_problems(where: str, found: dict[str, Any], every: dict[str, Any], entry: dict[str, str]) -> list[str]:
    problems = []
    for kind, expected in entry.items():
        if found.get(kind) != expected:
            problems.append(f"at {where}: {kind} is {found.get(kind, '<absent>')!r}, keyscope approved {expected!r}")
        others = [value for value in every.get(kind, []) if value != expected]
        if others:
            problems.append(f"at {where}: {kind} also has the values {others!r}")
    wanted = {kind.lower(): value for kind, value in entry.items()}
    for name, value in found.items():
        expected = wanted.get(loosened(name))
        if expected is not None and name not in entry and value != expected:
            problems.append(f"at {where}: member {name!r} = {value!r} names {loosened(name)} "
                            f"(a loose binder reads it), keyscope approved {expected!r}")
    return problems


def problems(view: dict[str, Any], method: str, path: str, endpoint: Endpoint | None,
             entry: dict[str, str] | None) -> list[str]:
    """What a reader's view gets wrong about a forwarded request ([] if nothing). `entry` is the key's approved
    ids by kind (after FILL/FORCE: the key's own), None for a primary key (only method and path then)."""
    out = []
    if view.get("method") != method:
        out.append(f"method: dispatches {view.get('method')!r}, the request was {method!r}")
    if view.get("path") != path:
        out.append(f"path: routes {view.get('path')!r}, the request was {path!r}")
    if entry is None or endpoint is None or not endpoint.locations:
        return out
    seen = 0
    for location in endpoint.locations:
        for where, found, every in places(view, location):
            seen += 1
            out += place_problems(where, found, every, entry)
    body_unread = view.get("json") is None and view.get("form") is None and not view.get("files")
    if not seen and not (body_unread and all(location.kind != "query" for location in endpoint.locations)):
        out.append(f"no declared place {[str(loc) for loc in endpoint.locations]} in this reader's view: "
                   f"it reads no ids at all")
    return out
