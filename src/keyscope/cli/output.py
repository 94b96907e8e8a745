"""What the CLI prints for people: values, aligned tables, one record, a key's links, the paging line; and
`--json`, which prints exactly the JSON the HTTP API answered."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

SECRET_FIELD = "apiKeySecret"


def text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(text(item) for item in value) if value else "-"
    return str(value)


def table(headers: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns, two spaces apart, under a header line unless `headers` is None."""
    lines = [*([headers] if headers is not None else []), *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))] if lines else []
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def record(obj: dict[str, Any]) -> str:
    """One object as `field  value` rows; lists of objects become a table below. Never shows a secret."""
    rows = []
    nested = []
    for field, value in obj.items():
        if field == SECRET_FIELD:
            continue
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            nested.append((field, value))
        else:
            rows.append((field, text(value)))
    parts = [table(None, rows)] if rows else []
    for field, items in nested:
        headers = list(dict.fromkeys(name for item in items for name in item))
        parts.append(f"{field}:\n" + table(headers, [[text(item.get(h)) for h in headers] for item in items]))
    return "\n".join(parts)


def spell_link(entry: dict[str, Any]) -> str:
    """One link in the `--link` syntax, APP[:ENTITY][:ACTION], without trailing empty parts."""
    parts = [entry.get("applicationId") or "", entry.get("entityId") or "", entry.get("action") or ""]
    while len(parts) > 1 and not parts[-1]:
        parts.pop()
    return ":".join(parts)


def links(key: dict[str, Any]) -> str:
    """A key's entries in the `--link` syntax, so what a list shows can be pasted back."""
    platform = key.get("platform") or []
    if not platform:
        return "(primary)" if key.get("enabled") else "(none)"
    return ", ".join(spell_link(entry) for entry in platform)


def paging_line(paging: dict[str, Any], shown: int) -> str:
    total = paging.get("totalResults", paging.get("totalCount"))
    return f"page {paging.get('page')} of {paging.get('totalPages')}, {shown} shown, {total} in total"


def emit(args: argparse.Namespace, body: Any, human: str) -> None:
    """`body` as the API's JSON with --json (nothing when it is empty), else `human` (nothing when empty)."""
    if args.json:
        if body is not None:
            print(json.dumps(body, indent=2, ensure_ascii=False))
    elif human:
        print(human)
