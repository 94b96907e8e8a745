"""`GET /keyscope/1/events`: the deletion events in the outbox, and where each receiver stands, for the admin token.

Newest first and paged like `GET /keyscope/1/audit` (`page` from 0, `size` 1-100, 20 by default), filtered by
`type` (one of `outbox.TYPES`), `object` (`kind:id` as the events name theirs: `application:shop`, `entity:c1`,
`key:<id>`, `association:NUMBER/SMS/447...`) and `pending=true` (only events some receiver has not taken yet).

Besides `results` and `paging` the answer has `targets`: each receiver URL's row (`keyscope.store.deliveries`),
with how far it got, how many it took, the current retries (attempts, last error, next attempt) and which
process holds its lease. Each event says, per receiver, whether it was `delivered`, is `pending`, or is the one
being `retrying`. Only the admin token may read it (`admin` refuses API keys on every `/keyscope/` path), since
the URLs may hold a receiver's token in their query.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyscope.control import render
from keyscope.control.bodies import query
from keyscope.control.handling import Control, reply, route
from keyscope.documents import schema
from keyscope.documents.fields import ValidationError, format_datetime
from keyscope.store import deliveries
from keyscope.store.deliveries import Target
from keyscope.store.outbox import TYPES, Event
from keyscope.store.sql import SQLStore

PATH = "/keyscope/1/events"
DEFAULT_SIZE = 20
MAX_SIZE = 100
QUERY = frozenset({"type", "object", "pending", "page", "size"})
OBJECT_KINDS = ("application", "entity", "key", "association")
MAX_OBJECT = 600


def _time(value: Any) -> str | None:
    return format_datetime(value) if value is not None else None


def render_target(target: Target, last_seq: int) -> dict[str, Any]:
    return {
        "url": target.url,
        "deliveredUpTo": target.done_seq,
        "pending": max(0, last_seq - target.done_seq),
        "delivered": target.delivered,
        "lastDelivered": _time(target.delivered_at),
        "attempts": target.attempts,
        "lastError": target.last_error,
        "lastAttempt": _time(target.last_attempt),
        "nextAttempt": _time(target.next_attempt),
        "owner": target.owner,
        "leaseUntil": _time(target.lease_until),
        "lastSeen": _time(target.seen_at),
    }


def render_event(event: Event, targets: list[Target]) -> dict[str, Any]:
    deliveries_doc = []
    for target in targets:
        doc: dict[str, Any] = {"url": target.url}
        if event.seq <= target.done_seq:
            doc["state"] = "delivered"
        elif event.seq == target.done_seq + 1 and target.attempts:
            doc |= {"state": "retrying", "attempts": target.attempts, "lastError": target.last_error,
                    "nextAttempt": _time(target.next_attempt)}
        else:
            doc["state"] = "pending"
        deliveries_doc.append(doc)
    return {"id": event.id, "seq": event.seq, "type": event.type, "object": event.object,
            "time": format_datetime(event.time), "event": event.doc(), "deliveries": deliveries_doc}


def parse_filters(params: dict[str, str]) -> tuple[str | None, str | None, bool]:
    kind = params.get("type")
    if kind is not None and kind not in TYPES:
        raise ValidationError("type", "must be one of " + ", ".join(TYPES))
    obj = params.get("object")
    if obj is not None:
        named, sep, ident = obj.partition(":")
        if not sep or named not in OBJECT_KINDS or not ident or len(obj) > MAX_OBJECT or not ident.isprintable():
            raise ValidationError("object", "must be KIND:ID with KIND one of " + ", ".join(OBJECT_KINDS))
    pending = params.get("pending", "false")
    if pending not in ("true", "false"):
        raise ValidationError("pending", "must be true or false")
    return kind, obj, pending == "true"


async def list_events(control: Control, request: Request) -> Response:
    params = query(request, QUERY)
    page, size = schema.parse_paging(params, DEFAULT_SIZE, MAX_SIZE)
    kind, obj, pending = parse_filters(params)
    store = control.store
    if not isinstance(store, SQLStore):  # every store is; a stand-in in a test may not be
        raise ValidationError("store", "keeps no events")
    found, targets = await deliveries.list_events(store, page, size, kind=kind, obj=obj, undelivered=pending)
    last = await deliveries.last_seq(store)
    doc = render.render_page(found, lambda event: render_event(event, targets))
    doc["targets"] = [render_target(target, last) for target in targets]
    return reply(200, doc)


def routes(control: Control) -> list[Route]:
    return [route(control, PATH, "GET", list_events)]
