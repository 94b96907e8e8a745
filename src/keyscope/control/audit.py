"""The audit trail: who changed what through the management API, and `GET /keyscope/1/audit` to read it.

Every call that changes something writes one record, in the store's transaction with the change
(`keyscope.store.audit`), and once committed logs it as one line on the `keyscope.audit` logger (under
`keyscope serve`, a JSON line on stderr like keyscope's other lines, its fields beside `message`). A refused call
writes none: nothing changed (its access line says who tried).

The principal is who the admin app authenticated: `admin` for the admin token, the key's id for a primary key.
An in-process caller holding the admin token may say on whose behalf it calls (`admin.call(principal=...)`),
which no HTTP request can (the scope key is set only in-process): the CLI says `cli:<OS user>` (`cli` when the
user cannot be told), the web interface `web:<sign-in>` (`keyscope.web.session`). Records never hold a secret:
a new key's secret, hash and prefix are left out, and the admin token is only ever named `admin`.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyscope.control import render
from keyscope.control.bodies import query
from keyscope.control.handling import Control, reply, route
from keyscope.core.models import ApiKey
from keyscope.documents import schema
from keyscope.documents.fields import ValidationError, check_id, format_datetime
from keyscope.store.audit import KINDS, Audit, AuditRecord, object_name

PATH = "/keyscope/1/audit"
PREFIX = "/keyscope/"
DEFAULT_SIZE = 20
MAX_SIZE = 100
QUERY = frozenset({"object", "kind", "page", "size"})

PRINCIPAL = "keyscope.principal"
"""Scope key: who the admin app authenticated for this request (set by `admin`, read by the handlers)."""
ON_BEHALF_OF = "keyscope.on_behalf_of"
"""Scope key an in-process caller with the admin token sets to name itself (`admin.call(principal=...)`)."""
MAX_PRINCIPAL = 128

log = logging.getLogger("keyscope.audit")
log.setLevel(logging.INFO)  # a record of who changed what is not noise: `--log-level warning` keeps it


def principal_for_admin(scope: dict[str, Any]) -> str:
    """`admin`, or the name an in-process caller with the admin token gave (a plain, bounded string)."""
    given = scope.get(ON_BEHALF_OF)
    if isinstance(given, str) and given and len(given) <= MAX_PRINCIPAL and given.isprintable():
        return given
    return "admin"


def begin(request: Request, action: str, kind: str, ident: str, **details: Any) -> Audit:
    """The record a handler is about to have the store write with its change; `details` are what it set."""
    return Audit(request.scope.get(PRINCIPAL, "admin"), action, [object_name(kind, ident)], details)


def name_links(audit: Audit, *keys: ApiKey) -> None:
    """A key's record also names what its links point at, so those pages show it."""
    for key in keys:
        for entry in key.platform:
            audit.name("application", entry.application_id)
            audit.name("entity", entry.entity_id)


def key_details(key: ApiKey) -> dict[str, Any]:
    """What a key is, without what it is not safe to write down: no secret, hash or prefix."""
    shown = render.render_key(key)
    return {
        name: value
        for name, value in shown.items()
        if name not in ("id", "apiKeySecret", "prefix", "lastUsed", "platform")
    } | {"platform": [{k: v for k, v in entry.items() if k != "key"} for entry in shown["platform"]]}


def announce(audit: Audit) -> None:
    """The written record as one line on `keyscope.audit`; nothing when the store wrote none."""
    record = audit.record
    if record is None:
        return
    message = f"{record.principal} {record.action} {record.objects[0]}"
    if record.cascade is not None:
        cascade = record.cascade
        message += (
            f" (removed {cascade['associationsRemoved']} association(s) and {cascade['entriesRemoved']} key"
            f" link(s); disabled key(s): {', '.join(cascade['keysDisabled']) or 'none'})"
        )
    fields = {"audit_id": record.seq, **{k: v for k, v in render_record(record).items() if k not in ("id", "time")}}
    log.info("%s", message, extra={"fields": fields})


def render_record(record: AuditRecord) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": record.seq,
        "time": format_datetime(record.time),
        "principal": record.principal,
        "action": record.action,
        "objects": list(record.objects),
        "details": record.details,
    }
    if record.cascade is not None:
        doc["cascade"] = record.cascade
    return doc


def parse_object(params: dict[str, str]) -> tuple[str | None, str | None]:
    """`object=ID` (any kind) or `object=KIND:ID`, and `kind=KIND`; an id as the management API spells one."""
    raw = params.get("object")
    kind = params.get("kind")
    if raw is not None and ":" in raw:
        named, _, raw = raw.partition(":")
        if kind is not None and kind != named:
            raise ValidationError("kind", "names another kind than object")
        kind = named
    if kind is not None and kind not in KINDS:
        raise ValidationError("kind", "must be one of " + ", ".join(KINDS))
    if raw is None:
        if kind is not None:
            raise ValidationError("kind", "needs object")
        return None, None
    return check_id(raw, "object"), kind


async def list_audit(control: Control, request: Request) -> Response:
    params = query(request, QUERY)
    page, size = schema.parse_paging(params, DEFAULT_SIZE, MAX_SIZE)
    object_id, kind = parse_object(params)
    found = await control.store.list_audit(object_id, page, size, kind)
    return reply(200, render.render_page(found, render_record))


def routes(control: Control) -> list[Route]:
    return [route(control, PATH, "GET", list_audit)]
