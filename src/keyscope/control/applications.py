"""`/provisioning/1/applications`: list, create, read, rename and delete applications.

Deleting one cascades (its associations, the key entries naming it, keys left with none are disabled), so it
invalidates cached keys, and so does a change of its `rateLimits` (key records carry their applications'
limits); the other writes change no key and only tell the gateway its id caches are stale.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyscope.control import render
from keyscope.control.audit import announce, begin
from keyscope.control.bodies import query, read_json
from keyscope.control.handling import Control, reply, route, stored
from keyscope.core.ratelimits import RateLimit, to_doc
from keyscope.documents import schema
from keyscope.store.audit import Audit
from keyscope.store.base import Store

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
    audit = begin(request, "application.create", "application", app.application_id,
                  applicationName=app.application_name)
    await stored(control.store.create_application(app, audit=audit))
    announce(audit)
    await control.changed(keys=False)
    return reply(201)


async def get_application(control: Control, request: Request) -> Response:
    found = await stored(control.store.get_application(request.path_params["id"]))
    return reply(200, render.render_application(found))


async def rename_application(control: Control, request: Request) -> Response:
    application_id = request.path_params["id"]
    doc = await read_json(request)
    name = schema.parse_application_update(doc, application_id)
    limits = schema.parse_application_limits(doc)  # None: left out, kept as they are
    more = {} if limits is None else {"rateLimits": to_doc(limits)}
    audit = begin(request, "application.update", "application", application_id, applicationName=name, **more)
    await stored(_update(control.store, application_id, name, limits, audit))
    announce(audit)
    await control.changed(keys=limits is not None)
    return reply(204)


async def _update(
    store: Store, application_id: str, name: str | None, limits: Sequence[RateLimit] | None, audit: Audit
) -> None:
    """The name and the limits in one transaction: both change, or neither."""
    async with store.transaction() as tx:
        await tx.rename_application(application_id, name, audit=audit)
        if limits is not None:
            await tx.set_application_rate_limits(application_id, limits)


async def delete_application(control: Control, request: Request) -> Response:
    application_id = request.path_params["id"]
    audit = begin(request, "application.delete", "application", application_id)
    report = await stored(control.store.delete_application(application_id, audit=audit))
    announce(audit)
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
