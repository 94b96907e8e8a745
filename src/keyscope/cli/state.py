"""`keyscope export`, `diff` and `apply`: the store as a YAML state file, and making the store match one.

Each is one call to `/keyscope/1/state` (keyscope.control.state), in-process or over HTTP like every management
command: the CLI reads and writes the YAML (keyscope.state.yamlfile) and words the plan the API answers, one
line per change: `+` created, `~` changed (`field before -> after`), `-` deleted (with what its cascade would
take), `=` kept (in the store, not in the file). `--json` prints the API's answer as it is.

Exit status: `diff` (and `apply --dry-run`, which is the same call) 0 when the store already matches, 1 when
there are changes, 2 on any error; `apply` 0 when applied (or nothing to do), 2 on any error, nothing written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from keyscope.cli.api import Api, Refused
from keyscope.cli.errors import Failed, error_lines
from keyscope.cli.output import spell_link, table
from keyscope.core import ratelimits
from keyscope.core.ratelimits import RateLimit
from keyscope.state.yamlfile import FileProblem, dump, load

STATE = "/keyscope/1/state"
SHORT_ID = 8


async def state_export(api: Api, args: argparse.Namespace) -> None:
    doc = await _call(api("GET", STATE), "nothing was exported")
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n" if args.json else dump(doc)
    if args.output is None or args.output == "-":
        sys.stdout.write(text)
        return
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise Failed(f"{args.output}: cannot write: {exc.strerror or exc}", 2) from None
    counts = ", ".join(_count(len(doc.get(section, [])), noun) for section, noun in
                       (("applications", "application"), ("entities", "entity"), ("associations", "association"),
                        ("keys", "key")))
    print(f"exported {counts} to {args.output}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {'entities' if noun == 'entity' else noun + 's'}"


async def state_diff(api: Api, args: argparse.Namespace) -> None:
    await _sync(api, args, dry_run=True)


async def state_apply(api: Api, args: argparse.Namespace) -> None:
    await _sync(api, args, dry_run=args.dry_run)


async def _sync(api: Api, args: argparse.Namespace, *, dry_run: bool) -> None:
    doc = _read(args.file)
    query = {"dryRun": "true" if dry_run else "false", "prune": "true" if args.prune else "false"}
    answer = await _call(api("POST", STATE, query, doc), "nothing was written")
    changes = answer["changes"]
    if dry_run:
        args.exit_status = 1 if changes else 0
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return
    for change in changes:
        print(change_line(change))
    for kept in answer["kept"]:
        print(f"= {_name(kept)} kept: {kept['reason']}")
    print(summary_line(answer, args.file))
    created = answer.get("createdKeys") or []
    if created:
        print("\nSecrets of the keys created, shown once (the file never holds them):")
        print(table(("ID", "NAME", "SECRET"), [(k["id"], k["name"], k["apiKeySecret"]) for k in created]))


def _read(file: str) -> Any:
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Failed(f"{file}: cannot read: {getattr(exc, 'strerror', None) or exc}", 2) from None
    try:
        return load(text, file)
    except FileProblem as exc:
        raise Failed(f"{exc}; nothing was written", 2) from None


async def _call(call: Any, outcome: str) -> Any:
    """The answer; a refusal is printed as the API words it (every problem of a document, one per line) and
    ends the command with status 2."""
    try:
        return await call
    except Refused as refusal:
        print("\n".join(error_lines(refusal)), file=sys.stderr)
        problems = sum(len(messages) for _, messages in refusal.error.fields)
        said = f"{problems} problem(s) in the document; " if refusal.status == 400 and problems else ""
        raise Failed(f"{said}{outcome}", 2) from None


# wording -------------------------------------------------------------------------------------------


def change_line(change: dict[str, Any]) -> str:
    name = _name(change)
    if change["op"] == "create":
        shown = ", ".join(f"{field} {value_text(field, value)}" for field, value in change["set"].items()
                          if not (change["kind"] == "key" and field == "name"))  # in the key's own name
        return f"+ {name}" + (f" ({shown})" if shown else "")
    if change["op"] == "update":
        shown = ", ".join(
            f"{field} {value_text(field, values['before'])} -> {value_text(field, values['after'])}"
            for field, values in change["fields"].items()
        )
        return f"~ {name} {shown}"
    cascade = change.get("cascade")
    return f"- {name}" + (f" (cascade: {cascade_text(cascade)})" if cascade else "")


def _name(item: dict[str, Any]) -> str:
    if item["kind"] != "key":
        return f"{item['kind']} {item['id']}"
    shown = short_id(item["id"])
    return f"key {shown} ({item['name']})" if "name" in item else f"key {shown}"


def short_id(key_id: str) -> str:
    """`3F2A9B1C…`: enough of a key's id to tell keys apart in a plan (--json has them whole)."""
    return key_id if len(key_id) <= SHORT_ID + 4 else key_id[:SHORT_ID] + "…"


def value_text(field: str, value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if field == "rateLimits":
        return ratelimits.to_text([RateLimit(item["requests"], item["per"]) for item in value])
    if field == "platform":
        return "[" + ", ".join(spell_link(entry) for entry in value) + "]" if value else "[] (primary)"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return json.dumps(value, ensure_ascii=False)


def cascade_text(cascade: dict[str, Any]) -> str:
    text = f"{_count(cascade['associationsRemoved'], 'association')}, {_count(cascade['entriesRemoved'], 'key link')}"
    disabled = cascade["keysDisabled"]
    if disabled:
        text += f"; key{'s' * (len(disabled) != 1)} {', '.join(map(short_id, disabled))} disabled"
    return text


def summary_line(answer: dict[str, Any], file: str) -> str:
    counts = answer["summary"]
    kept = f"; {counts['kept']} kept" if counts["kept"] else ""
    if not answer["changes"]:
        return f"no changes: the store matches {file}{kept}"
    if answer["applied"]:
        return f"applied: {counts['create']} created, {counts['update']} changed, {counts['delete']} deleted{kept}"
    return f"{counts['create']} to create, {counts['update']} to change, {counts['delete']} to delete{kept}"


__all__ = ["state_apply", "state_diff", "state_export"]
