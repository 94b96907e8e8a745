"""The "Last changes" table of an application's, an entity's and a key's page: the newest records of the audit
trail that name it (`keyscope.store.audit`), read from the same store, each told in one line.

A record names every object a change touched, so an application's page also shows the keys linked to it being
created, re-linked or revoked, and a key's page the cascade that removed its links.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keyscope.store.audit import AuditRecord
from keyscope.store.base import Store

LAST = 10


@dataclass(frozen=True, slots=True)
class Change:
    time: str
    principal: str
    action: str
    what: str


async def last_changes(store: Store, kind: str, ident: str) -> list[Change]:
    found = await store.list_audit(ident, 0, LAST, kind)
    return [_change(record) for record in found.items]


def _change(record: AuditRecord) -> Change:
    when = record.time.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Change(when, record.principal, record.action, describe(record))


def describe(record: AuditRecord) -> str:
    """What the change did, in a line: its object, what it set, what a cascade removed."""
    parts = [record.objects[0]]
    details = {name: value for name, value in record.details.items() if name != "set"}
    details.update(record.details.get("set", {}))
    if details:
        parts.append(", ".join(f"{name}={_value(value)}" for name, value in details.items()))
    if record.cascade is not None:
        cascade = record.cascade
        disabled = ", ".join(cascade["keysDisabled"]) or "none"
        parts.append(
            f"removed {cascade['associationsRemoved']} association(s) and {cascade['entriesRemoved']} key link(s)"
            f" of key(s) {', '.join(cascade['keysUnlinked']) or 'none'}; disabled key(s): {disabled}"
        )
    others = record.objects[1:]
    if others:
        parts.append("touching " + ", ".join(others))
    return "; ".join(parts)


def _value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items() if v is not None) + "}"
    return str(value)
