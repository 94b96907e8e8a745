"""`endpoints.yaml`: read, parse and validate the allowlist, or say everything that is wrong with it.

Validated whole before anything starts: a broken file never yields a running gateway. Every problem found is
reported, one line each, naming the entry (its number, counted from 1, its method and path, and its line in
the file when loaded from one). The records are `keyscope.allowlist.model`'s, importable from here too; a
path is checked by `keyscope.allowlist.template`, the same grammar the matcher compiles, so a file that loads
is a file the gateway can serve.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from pathlib import Path
from typing import Any

import yaml

from keyscope.allowlist import template
from keyscope.allowlist.model import ERROR_FAMILIES, METHODS, Endpoint, ErrorFamily, IdLocation, JsonStep

__all__ = [
    "ERROR_FAMILIES", "FIELDS", "METHODS", "REQUIRED_FIELDS", "Endpoint", "EndpointsError", "ErrorFamily",
    "IdLocation", "JsonStep", "default_path", "load", "parse",
]

REQUIRED_FIELDS = ("function", "method", "path", "group", "ids", "errors")
FIELDS = (*REQUIRED_FIELDS, "deprecated")


class EndpointsError(ValueError):
    """endpoints.yaml is unusable; the message names the entry and the problem, one line per problem."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)


def default_path() -> Path:
    """The packaged copy when keyscope is installed from a wheel, else the repository's top-level file."""
    packaged = importlib.resources.files("keyscope") / "endpoints.yaml"
    if isinstance(packaged, Path) and packaged.is_file():
        return packaged
    in_repo = Path(__file__).resolve().parents[3] / "endpoints.yaml"
    if in_repo.is_file():
        return in_repo
    raise EndpointsError(f"no endpoints.yaml found: looked for {packaged} and {in_repo}")


def load(path: str | os.PathLike[str] | None = None) -> list[Endpoint]:
    """Read, parse and validate an endpoints file; `None` means `default_path()`."""
    file = Path(path) if path is not None else default_path()
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EndpointsError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise EndpointsError(f"{source}: cannot read: {exc.strerror or exc}") from None
    return _parse_text(text, source)


def parse(document: Any, source: str = "<document>") -> list[Endpoint]:
    """Validate an already-parsed YAML document (a mapping with key `endpoints`)."""
    return _validate(document, source, lines=None, key_problems={})


def _parse_text(text: str, source: str) -> list[Endpoint]:
    try:
        document = yaml.safe_load(text)
        # safe_load keeps the last of two equal keys silently; the node tree shows both, and each entry's line.
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        raise EndpointsError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise EndpointsError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    lines, key_problems = _inspect_nodes(root)
    return _validate(document, source, lines, key_problems)


def _inspect_nodes(root: yaml.Node | None) -> tuple[list[int] | None, dict[int, list[str]]]:
    """Each entry's line, and duplicate mapping keys per entry (-1: outside any entry)."""
    problems: dict[int, list[str]] = {}
    if not isinstance(root, yaml.MappingNode):
        return None, problems
    problems[-1] = _duplicate_keys(root, deep=False)
    entries = [value for key, value in root.value if isinstance(key, yaml.ScalarNode) and key.value == "endpoints"]
    if not entries or not isinstance(entries[-1], yaml.SequenceNode):
        return None, problems
    items = entries[-1].value
    for index, item in enumerate(items):
        problems[index] = _duplicate_keys(item, deep=True)
    return [item.start_mark.line + 1 for item in items], problems


def _duplicate_keys(node: yaml.Node, deep: bool) -> list[str]:
    found: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if key.value in seen:
                    found.append(f"duplicate key {key.value!r} at line {key.start_mark.line + 1}")
                seen.add(key.value)
            if deep:
                found += _duplicate_keys(value, deep)
    elif deep and isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found += _duplicate_keys(item, deep)
    return found


def _validate(
    document: Any, source: str, lines: list[int] | None, key_problems: dict[int, list[str]]
) -> list[Endpoint]:
    problems = [f"{source}: {problem}" for problem in key_problems.get(-1, [])]
    raw_entries = _top_level(document, source, problems)
    endpoints: list[Endpoint] = []
    routes: dict[tuple[str, str], tuple[int, str]] = {}
    for index, raw in enumerate(raw_entries):
        where = f"{source}:{lines[index]}" if lines and index < len(lines) else source
        label = f"{where}: entry {index + 1}{_describe(raw)}"
        entry_problems = list(key_problems.get(index, []))
        endpoint = _entry(raw, entry_problems)
        if endpoint is not None:
            route = (endpoint.method, template.shape(endpoint.path))
            if route in routes:
                first, first_path = routes[route]
                same = "the same" if first_path == endpoint.path else f"the same route as {first_path!r},"
                entry_problems.append(f"duplicate (method, path): {same} as entry {first}")
            else:
                routes[route] = (index + 1, endpoint.path)
                endpoints.append(endpoint)
        problems += [f"{label}: {problem}" for problem in entry_problems]
    if problems:
        raise EndpointsError("\n".join(problems), tuple(problems))
    return endpoints


def _top_level(document: Any, source: str, problems: list[str]) -> list[Any]:
    if document is None:
        problems.append(f"{source}: the file is empty; expected a mapping with the key 'endpoints'")
        return []
    if not isinstance(document, dict):
        problems.append(f"{source}: expected a mapping with the key 'endpoints', got {_kind(document)}")
        return []
    problems += [f"{source}: unknown top-level key {key!r}" for key in document if key != "endpoints"]
    if "endpoints" not in document:
        problems.append(f"{source}: missing top-level key 'endpoints'")
        return []
    entries = document["endpoints"]
    if not isinstance(entries, list):
        problems.append(f"{source}: 'endpoints' must be a list, got {_kind(entries)}")
        return []
    return entries


def _describe(raw: Any) -> str:
    """The entry's method and path for its label, escaped if they would break the line."""
    if not isinstance(raw, dict):
        return ""
    method, path = raw.get("method"), raw.get("path")
    if not isinstance(path, str):
        return ""
    path = path if path.isprintable() else repr(path)
    if isinstance(method, str):
        return f" ({method if method.isprintable() else repr(method)} {path})"
    return f" ({path})"


def _entry(raw: Any, problems: list[str]) -> Endpoint | None:
    if not isinstance(raw, dict):
        problems.append(f"must be a mapping, got {_kind(raw)}")
        return None
    problems += [f"unknown field {key!r} (fields are: {', '.join(FIELDS)})" for key in raw if key not in FIELDS]
    problems += [f"missing field {name!r}" for name in REQUIRED_FIELDS if name not in raw]
    start = len(problems)
    for name in ("function", "group"):
        value = raw.get(name)
        if name in raw and (not isinstance(value, str) or not value.strip()):
            problems.append(f"{name} must be a non-empty string, got {_kind(value)}")
    method = raw.get("method")
    if "method" in raw and (not isinstance(method, str) or method not in METHODS):
        problems.append(f"unknown method {method!r} (allowed: {', '.join(sorted(METHODS))})")
    path = raw.get("path")
    if "path" in raw:
        if isinstance(path, str):
            problems += template.problems(path)
        else:
            problems.append(f"path must be a string, got {_kind(path)}")
    ids = _ids(raw["ids"], problems) if "ids" in raw else ()
    errors = raw.get("errors")
    if "errors" in raw and errors not in ERROR_FAMILIES:
        problems.append(f"unknown errors family {errors!r} (allowed: {', '.join(ERROR_FAMILIES)})")
    deprecated = raw.get("deprecated", False)
    if not isinstance(deprecated, bool):
        problems.append(f"deprecated must be true or false, got {_kind(deprecated)}")
    if problems[start:] or any(name not in raw for name in REQUIRED_FIELDS):
        return None
    return Endpoint(method, path, raw["function"], raw["group"], ids, errors, deprecated)


_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)(\[\])?")


def _ids(raw: Any, problems: list[str]) -> tuple[IdLocation, ...]:
    if raw == "none":
        return ()
    if not isinstance(raw, list) or not raw:
        problems.append(f"ids must be 'none' or a non-empty list of locations, got {_kind(raw)}")
        return ()
    locations: list[IdLocation] = []
    for item in raw:
        location = _location(item, problems)
        if location is None:
            continue
        if location in locations:
            problems.append(f"duplicate ids location {location.text!r}")
        locations.append(location)
    return tuple(locations)


def _location(item: Any, problems: list[str]) -> IdLocation | None:
    if item == "none":
        problems.append("ids 'none' cannot be combined with other locations")
    elif item in ("query", "form"):
        return IdLocation(item, (), item)
    elif isinstance(item, dict) and list(item) == ["json"]:
        text = item["json"]
        if not isinstance(text, str):
            problems.append(f"json location must be a string, got {_kind(text)}")
            return None
        steps = _json_steps(text)
        if steps is not None:
            return IdLocation("json", steps, text)
        hint = f" (write {text[2:]!r})" if text.startswith("$.") else ""
        problems.append(
            f"malformed json location {text!r}{hint}: expected '$' or dotted keys, each optionally followed by '[]'"
        )
    else:
        problems.append(f"unknown ids location {item!r} (expected query, form, {{json: LOCATION}} or none)")
    return None


def _json_steps(text: str) -> tuple[JsonStep, ...] | None:
    if text == "$":
        return ()
    steps = []
    for part in text.split("."):
        match = _STEP.fullmatch(part)
        if not match:
            return None
        steps.append(JsonStep(match.group(1), match.group(2) is not None))
    return tuple(steps)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, str):
        return f"string {value!r}"
    return f"{type(value).__name__} {value!r}"
