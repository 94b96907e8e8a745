"""`/provisioning/1/applications`: list, create, read, rename and delete applications.

Deleting one cascades (its associations, the key entries naming it, keys left with none are disabled), so it
invalidates cached keys; the other writes change no key and only tell the gateway its id caches are stale.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyscope.control import render, schema
from keyscope.control.bodies import query, read_json
from keyscope.control.handling import Control, reply, route, stored

PATH = "/provisioning/1/applications"
DEFAULT_SIZE = 20
MAX_SIZE = 1000
PAGING = frozenset({"page", "size"})


async def list_applications(control: Control, request: Request) -> Response:
    page, size = schema.parse_paging(query(request, PAGING), DEFAULT_SIZE, MAX_SIZE)
    found = await control.store.list_applications(page, size)
    return reply(200, render.render_page(found, render.render_application))


async def create_application(control: Control, request: Request) -> Response:
    app = schema.parse_application(await read_json(request))
    await stored(control.store.create_application(app))
    await control.changed(keys=False)
    return reply(201)


async def get_application(control: Control, request: Request) -> Response:
    found = await stored(control.store.get_application(request.path_params["id"]))
    return reply(200, render.render_application(found))


async def rename_application(control: Control, request: Request) -> Response:
    application_id = request.path_params["id"]
    name = schema.parse_application_update(await read_json(request), application_id)
    await stored(control.store.rename_application(application_id, name))
    await control.changed(keys=False)
    return reply(204)


async def delete_application(control: Control, request: Request) -> Response:
    report = await stored(control.store.delete_application(request.path_params["id"]))
    await control.changed()
    return reply(200, render.render_cascade(report))


def routes(control: Control) -> list[Route]:
    return [
        route(control, PATH, "GET", list_applications),
        route(control, PATH, "POST", create_application),
        route(control, PATH + "/{id}", "GET", get_application),
        route(control, PATH + "/{id}", "PUT", rename_application),
        route(control, PATH + "/{id}", "DELETE", delete_application),
    ]
