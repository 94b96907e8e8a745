"""Running a plan: its writes, through the store's ordinary methods, on the transaction view the plan was computed
in (`Store.transaction()`), so the whole document is applied or none of it.

No SQL here and no rule of its own: each change is the call the management API would make for it (the store holds
the rules: references, cascades, the protected `default`), with the audit record the API would write, naming the
caller (`cli:<user>` from the in-process CLI, `admin` over HTTP). A store error ends the transaction: it is raised
as it is and the caller's `async with` rolls everything back, audit records included.

A key the store does not have is created under the document's id with a fresh secret (`core.keys`, as the API
makes them), returned here once and never kept: the document holds no secret, so a key lost from the store comes
back with a new one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keyscope.core import ratelimits
from keyscope.core.models import Application, Association, Entity, KeyUpdate
from keyscope.documents import keyschema
from keyscope.state.document import KeySpec, association_doc, key_doc, link_doc
from keyscope.state.plan import Change, Plan
from keyscope.store.audit import Audit, object_name
from keyscope.store.base import Store


@dataclass(slots=True)
class Applied:
    """What running the plan wrote: each change's audit record (for the caller to log once committed) and the
    secrets of the keys it created, shown once."""

    audits: list[Audit] = field(default_factory=list)
    secrets: list[dict[str, str]] = field(default_factory=list)


async def run(tx: Store, plan: Plan, principal: str, now: datetime) -> Applied:
    """Every change of `plan`, in order, on `tx` (a `Store.transaction()` view); `now` stamps created keys."""
    applied = Applied()
    for change in plan.changes:
        await _write(tx, change, principal, now, applied)
    return applied


async def _write(tx: Store, change: Change, principal: str, now: datetime, applied: Applied) -> None:
    def audit(action: str, kind: str, ident: str, **details: Any) -> Audit:
        record = Audit(principal, action, [object_name(kind, ident)], details)
        applied.audits.append(record)
        return record

    kind, op = change.kind, change.op
    if kind == "application":
        if op == "delete":
            await tx.delete_application(change.id, audit=audit("application.delete", kind, change.id))
            return
        app: Application = change.after
        limits = {"rateLimits": ratelimits.to_doc(app.rate_limits)} if app.rate_limits or op == "update" else {}
        record = audit(f"application.{op}", kind, app.application_id, applicationName=app.application_name, **limits)
        if op == "create":
            await tx.create_application(app, audit=record)
            return
        # as the API's PUT: the name (with the record), then the limits when they change
        await tx.rename_application(app.application_id, app.application_name, audit=record)
        if app.rate_limits != change.before.rate_limits:
            await tx.set_application_rate_limits(app.application_id, app.rate_limits)
    elif kind == "entity":
        if op == "delete":
            await tx.delete_entity(change.id, audit=audit("entity.delete", kind, change.id))
            return
        entity: Entity = change.after
        record = audit(f"entity.{op}", kind, entity.entity_id, entityName=entity.entity_name)
        if op == "create":
            await tx.create_entity(entity, audit=record)
        else:
            await tx.rename_entity(entity.entity_id, entity.entity_name, audit=record)
    elif kind == "association":
        if op in ("delete", "update"):  # an association changes by going and coming back
            await tx.delete_association(change.before, audit=_association_audit(audit, "delete", change.before))
        if op in ("create", "update"):
            await tx.create_association(change.after, audit=_association_audit(audit, "create", change.after))
    elif op == "delete":
        await tx.delete_key(change.id, audit=audit("key.delete", "key", change.id))
    elif op == "create":
        await _create_key(tx, change.after, now, audit, applied)
    else:
        await _update_key(tx, change, audit)


def _association_audit(audit: Any, op: str, association: Association) -> Audit:
    record: Audit = audit(f"association.{op}", "application", association.application_id,
                          **_api_association(association))
    record.name("entity", association.entity_id)
    return record


def _api_association(association: Association) -> dict[str, Any]:
    """The association as the API's audit details spell it (entityId null included)."""
    return {"entityId": None, **association_doc(association)}


async def _create_key(tx: Store, spec: KeySpec, now: datetime, audit: Any, applied: Applied) -> None:
    assert spec.valid_from is not None and spec.valid_to is not None  # the plan resolved them
    key, secret = keyschema.issue(spec, spec.id, now)  # type: ignore[arg-type]
    details = {name: value for name, value in key_doc(spec).items() if name != "id"}
    record: Audit = audit("key.create", "key", spec.id, **details)
    _name_links(record, spec)
    await tx.create_key(key, audit=record)
    applied.secrets.append({"id": spec.id, "name": spec.name, "apiKeySecret": secret})


async def _update_key(tx: Store, change: Change, audit: Any) -> None:
    """Only the fields that differ are set, as a `PUT` naming them would; a re-link replaces every link, and a
    key enabled again with no links is enabled with its (empty) links said, as the API's rule asks."""
    before: KeySpec = change.before
    after: KeySpec = change.after
    fields: dict[str, Any] = {}
    for name, attr in (("name", "name"), ("enabled", "enabled"), ("enforce", "enforce"),
                       ("allowed_ips", "allowed_ips"), ("rate_limits", "rate_limits"),
                       ("valid_from", "valid_from"), ("valid_to", "valid_to"), ("platform", "platform")):
        if getattr(before, attr) != getattr(after, attr):
            fields[name] = getattr(after, attr)
    if after.enabled and not before.enabled and not before.platform:
        fields["platform"] = after.platform
    sent = {name: after_value for name, (_, after_value) in change.fields.items()}
    if "platform" in fields:
        sent["platform"] = [link_doc(link) for link in after.platform]
    record: Audit = audit("key.update", "key", after.id, set=sent)
    _name_links(record, before)
    _name_links(record, after)
    await tx.update_key(after.id, KeyUpdate(**fields), audit=record)


def _name_links(record: Audit, spec: KeySpec) -> None:
    for link in spec.platform:
        record.name("application", link.application_id)
        record.name("entity", link.entity_id)


__all__ = ["Applied", "run"]
