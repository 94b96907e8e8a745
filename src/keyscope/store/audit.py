"""The audit trail's records: who changed what through the management API, kept in the store with the change.

A management call that changes something hands the store an `Audit` (the principal, the action, the objects it
names, what it set); the store writes it in the same transaction as the change, adds what only the transaction
knows (what a cascade removed, the links of a deleted key) and leaves the written `AuditRecord` on the `Audit`
for the caller to log (`keyscope.control.audit`). A change that is refused or rolled back leaves no record.

Objects are named `kind:id` (`application:marketing`, `entity:customer-a`, `key:<32 hex>`): ids never hold a
colon, so the name is unambiguous, and `?object=` finds a record by any object it names. The first object is
the one acted on; the others are those the change touched (a key's linked applications and entities, the keys
and paired ids a cascade reached), so each of their pages shows it too.

Bounded: the store keeps the last `KEEP` records (older ones are removed in the transaction that writes a new
one), whatever objects they name. Records never hold a secret: a key's secret, its hash and its prefix are
never put in one, and the admin token is only ever named `admin`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

KEEP = 100_000
"""Records kept: each audited write removes those more than KEEP records older than itself."""

KINDS = ("application", "entity", "key")


def object_name(kind: str, ident: str) -> str:
    return f"{kind}:{ident}"


def split_object(name: str) -> tuple[str, str]:
    kind, _, ident = name.partition(":")
    return kind, ident


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One change as written: `seq` orders records (newest highest), `time` is when the store wrote it."""

    seq: int
    time: datetime
    principal: str
    action: str
    objects: tuple[str, ...]
    details: dict[str, Any] = field(default_factory=dict)
    cascade: dict[str, Any] | None = None

    def stored(self) -> str:
        """The JSON kept beside the record's columns (seq, time, principal, action)."""
        doc: dict[str, Any] = {"objects": list(self.objects), "details": self.details}
        if self.cascade is not None:
            doc["cascade"] = self.cascade
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_row(cls, seq: int, time: datetime, principal: str, action: str, text: str) -> AuditRecord:
        doc = json.loads(text)
        return cls(seq, time, principal, action, tuple(doc["objects"]), doc.get("details", {}), doc.get("cascade"))


@dataclass(slots=True)
class Audit:
    """A change about to be made, as its caller describes it; `record` is set by the store once it is written.

    `objects` are `kind:id` names, the one acted on first. The store appends the objects only it can see."""

    principal: str
    action: str
    objects: list[str]
    details: dict[str, Any] = field(default_factory=dict)
    record: AuditRecord | None = None

    def name(self, kind: str, ident: str | None) -> None:
        """Adds an object the change touches (once; None is skipped)."""
        if ident is not None:
            name = object_name(kind, ident)
            if name not in self.objects:
                self.objects.append(name)


__all__ = ["KEEP", "KINDS", "Audit", "AuditRecord", "object_name", "split_object"]
