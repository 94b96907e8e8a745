"""`/provisioning/1/associations`: which resources (numbers, domains, ...) belong to which application and entity.

An association is identified by its whole document, so a delete carries the document in its body and a single
one is read by query (`/associations/single`). Creating one that names a missing application or entity is a
404 naming the field (the platform's answer), unlike a key entry's 400.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyscope.control import render
from keyscope.control.applications import DEFAULT_SIZE, MAX_SIZE, PAGING
from keyscope.control.audit import announce, begin
from keyscope.control.bodies import query, read_json
from keyscope.control.handling import Control, reply, route, stored
from keyscope.core.models import Association
from keyscope.documents import schema
from keyscope.store.audit import Audit

PATH = "/provisioning/1/associations"
FIELDS = frozenset({"resourceType", "channel", "applicationId", "entityId", "resourceId"})


async def list_associations(control: Control, request: Request) -> Response:
    params = query(request, PAGING | FIELDS)
    page, size = schema.parse_paging(params, DEFAULT_SIZE, MAX_SIZE)
    found = await control.store.list_associations(schema.parse_association_filter(params), page, size)
    return reply(200, render.render_page(found, render.render_association))


async def get_association(control: Control, request: Request) -> Response:
    wanted = schema.parse_association_key(query(request, FIELDS))
    found = await stored(
        control.store.get_association(
            wanted.resource_type, wanted.channel, wanted.application_id, wanted.resource_id, wanted.entity_id
        )
    )
    return reply(200, render.render_association(found))


async def create_association(control: Control, request: Request) -> Response:
    association = schema.parse_association(await read_json(request))
    audit = _audit(request, "association.create", association)
    await stored(control.store.create_association(association, audit=audit), missing_status=404)
    announce(audit)
    await control.changed(keys=False)
    return reply(201)


async def delete_association(control: Control, request: Request) -> Response:
    association = schema.parse_association(await read_json(request))
    audit = _audit(request, "association.delete", association)
    await stored(control.store.delete_association(association, audit=audit))
    announce(audit)
    await control.changed(keys=False)
    return reply(204)


def _audit(request: Request, action: str, association: Association) -> Audit:
    """An association's record names its application and its entity; details are the association itself."""
    audit = begin(request, action, "application", association.application_id, **render.render_association(association))
    audit.name("entity", association.entity_id)
    return audit


def routes(control: Control) -> list[Route]:
    return [
        route(control, PATH, "GET", list_associations),
        route(control, PATH, "POST", create_association),
        route(control, PATH, "DELETE", delete_association),
        route(control, PATH + "/single", "GET", get_association),
    ]
