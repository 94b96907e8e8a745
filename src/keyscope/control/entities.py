"""`/provisioning/1/entities`: list, create, read, rename and delete entities.

Deleting one cascades like deleting an application (see `applications`), so it invalidates cached keys; the
other writes change no key and only tell the gateway its id caches are stale.
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
from keyscope.documents import schema

PATH = "/provisioning/1/entities"


async def list_entities(control: Control, request: Request) -> Response:
    page, size = schema.parse_paging(query(request, PAGING), DEFAULT_SIZE, MAX_SIZE)
    return reply(200, render.render_page(await control.store.list_entities(page, size), render.render_entity))


async def create_entity(control: Control, request: Request) -> Response:
    entity = schema.parse_entity(await read_json(request))
    audit = begin(request, "entity.create", "entity", entity.entity_id, entityName=entity.entity_name)
    await stored(control.store.create_entity(entity, audit=audit))
    announce(audit)
    await control.changed(keys=False)
    return reply(201)


async def get_entity(control: Control, request: Request) -> Response:
    return reply(200, render.render_entity(await stored(control.store.get_entity(request.path_params["id"]))))


async def rename_entity(control: Control, request: Request) -> Response:
    entity_id = request.path_params["id"]
    name = schema.parse_entity_update(await read_json(request), entity_id)
    audit = begin(request, "entity.update", "entity", entity_id, entityName=name)
    await stored(control.store.rename_entity(entity_id, name, audit=audit))
    announce(audit)
    await control.changed(keys=False)
    return reply(204)


async def delete_entity(control: Control, request: Request) -> Response:
    entity_id = request.path_params["id"]
    audit = begin(request, "entity.delete", "entity", entity_id)
    report = await stored(control.store.delete_entity(entity_id, audit=audit))
    announce(audit)
    await control.changed()
    return reply(200, render.render_cascade(report))


def routes(control: Control) -> list[Route]:
    return [
        route(control, PATH, "GET", list_entities),
        route(control, PATH, "POST", create_entity),
        route(control, PATH + "/{id}", "GET", get_entity),
        route(control, PATH + "/{id}", "PUT", rename_entity),
        route(control, PATH + "/{id}", "DELETE", delete_entity),
    ]
