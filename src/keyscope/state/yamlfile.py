"""The state document as a YAML file: written deterministically, read strictly.

Written in the document's own order (sections, then items by id, then fields in a fixed order; never sorted
alphabetically, so `id` stays first) with PyYAML, the library keyscope's settings and `endpoints.yaml` are read
with. Strings that YAML would read as something else (`"4477"`, `"off"`, a date) are quoted by the dumper.

Read with two of YAML's surprises taken out, so that what a person writes means what it says: a mapping key
given twice is refused with its line (PyYAML keeps the last one silently), and timestamps stay text (PyYAML
turns `2026-01-01T00:00:00Z` into a datetime; the document's rules parse the text as the API does). Anything
else that is not JSON (a binary, a set, a non-string key) is refused, since the document travels as JSON.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

HEADER = "# keyscope state (keyscope export): applications, entities, associations and keys; never secrets\n"


class FileProblem(Exception):
    """The file cannot be read as a document: one line, naming the file and, when known, the line."""


class _Loader(yaml.SafeLoader):
    """SafeLoader without timestamps, refusing duplicate keys."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key must be text, not {key!r}", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(text: str, name: str) -> Any:
    """The document in `text` (from the file `name`), as plain JSON values; FileProblem if it is not one."""
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 -- a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        raise FileProblem(f"{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise FileProblem(f"{name}: {exc}") from None
    _check_json(doc, name)
    return doc


def _check_json(doc: Any, name: str) -> None:
    pending = [doc]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise FileProblem(f"{name}: {value!r} is not a number the document can hold")
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            raise FileProblem(f"{name}: a {type(value).__name__} value is not something the document can hold")


def dump(doc: Any) -> str:
    """The document as YAML text, the same bytes for the same document."""
    return HEADER + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=False, width=120)


__all__ = ["FileProblem", "dump", "load"]
