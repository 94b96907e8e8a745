"""`/settings/2/api-keys`: list, create, read, update and delete API keys (the admin token only).

The secret is made here and shown once, in the create response; the store keeps its SHA-256 and a display
prefix. Every write invalidates the key's cached record before it answers, so a revoked key stops working at
once in this process, and the change hook tells the other workers.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyscope.control import render
from keyscope.control.audit import announce, begin, key_details, name_links
from keyscope.control.bodies import query, read_json
from keyscope.control.handling import Control, reply, route, stored
from keyscope.core.keys import new_key_id
from keyscope.core.models import UNSET
from keyscope.documents import keyschema, schema
from keyscope.documents.fields import check_name

PATH = "/settings/2/api-keys"
DEFAULT_SIZE = 100
MAX_SIZE = 100
QUERY = frozenset({"page", "size", "name", "enabled"})


async def list_keys(control: Control, request: Request) -> Response:
    params = query(request, QUERY)
    page, size = schema.parse_paging(params, DEFAULT_SIZE, MAX_SIZE)
    name = check_name(params["name"], "name") if "name" in params else None
    enabled = schema.parse_bool_param(params, "enabled")
    found = await control.store.list_keys(page, size, name=name, enabled=enabled)
    return reply(200, render.render_key_page(found))


async def create_key(control: Control, request: Request) -> Response:
    now = datetime.now(UTC).replace(microsecond=0)
    draft = keyschema.parse_key_create(await read_json(request), now)
    key, secret = keyschema.issue(draft, new_key_id(), now)
    audit = begin(request, "key.create", "key", key.id, **key_details(key))
    name_links(audit, key)
    created = await stored(control.store.create_key(key, audit=audit))
    announce(audit)
    await control.changed(created.id)
    return reply(200, render.render_key(created, secret=secret))


async def get_key(control: Control, request: Request) -> Response:
    return reply(200, render.render_key(await stored(control.store.get_key(request.path_params["id"]))))


async def update_key(control: Control, request: Request) -> Response:
    doc = await read_json(request)
    update = keyschema.parse_key_update(doc)
    current = await stored(control.store.get_key(request.path_params["id"]))
    keyschema.check_key_update(current, update)
    audit = begin(request, "key.update", "key", current.id, set=doc)  # validated: names no secret
    name_links(audit, current)
    for link in update.platform if update.platform is not UNSET else ():  # type: ignore[union-attr]
        audit.name("application", link.application_id)
        audit.name("entity", link.entity_id)
    updated = await stored(control.store.update_key(current.id, update, audit=audit))
    announce(audit)
    await control.changed(updated.id)
    return reply(200, render.render_key(updated))


async def delete_key(control: Control, request: Request) -> Response:
    key_id = request.path_params["id"]
    audit = begin(request, "key.delete", "key", key_id)
    await stored(control.store.delete_key(key_id, audit=audit))
    announce(audit)
    await control.changed(key_id)
    return reply(204)


def routes(control: Control) -> list[Route]:
    return [
        route(control, PATH, "GET", list_keys),
        route(control, PATH, "POST", create_key),
        route(control, PATH + "/{id}", "GET", get_key),
        route(control, PATH + "/{id}", "PUT", update_key),
        route(control, PATH + "/{id}", "DELETE", delete_key),
    ]
