"""`/keyscope/1/state`: the whole store as a state document, and making the store match one (the admin token only,
as everything under `/keyscope/`). The CLI's `export`, `diff` and `apply` are these two calls, in-process or
over HTTP (`keyscope.state` holds what they do).

`GET` answers the document as JSON. `POST ?dryRun=true|false&prune=true|false` (both false by default) takes a
document and answers the plan (`changes`, `kept`, `summary`), whether it was `applied`, and `createdKeys`: each
new key's id, name and secret, shown this once. A document that cannot be applied is a 400 naming every problem
(`validationErrors`, one entry per path), with nothing written; a store error during the writes rolls all of
them back and is answered as the API answers it.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keyscope.control.audit import PRINCIPAL, announce
from keyscope.control.bodies import query, read_json
from keyscope.control.handling import Answer, Control, reply, route, stored
from keyscope.core.errors import body
from keyscope.documents.schema import parse_bool_param
from keyscope.state.document import StateInvalid
from keyscope.state.sync import export, sync

PATH = "/keyscope/1/state"
QUERY = frozenset({"dryRun", "prune"})
MAX_STATE_BODY = 32 * 1024 * 1024
"""A whole store's document (some 100,000 keys); read only once the caller has shown the admin token."""


async def get_state(control: Control, request: Request) -> Response:
    query(request, frozenset())
    return reply(200, await stored(export(control.store)))


async def post_state(control: Control, request: Request) -> Response:
    params = query(request, QUERY)
    dry_run = parse_bool_param(params, "dryRun") or False
    prune = parse_bool_param(params, "prune") or False
    doc = await read_json(request, MAX_STATE_BODY)
    principal = request.scope.get(PRINCIPAL, "admin")
    try:
        outcome = await stored(sync(control.store, doc, prune=prune, dry_run=dry_run, principal=principal))
    except StateInvalid as invalid:
        return invalid_answer(invalid)
    applied = outcome.applied
    if applied is not None:
        for audit in applied.audits:
            announce(audit)
        await control.changed()
    return reply(200, {
        "dryRun": dry_run,
        "applied": applied is not None,
        **outcome.plan.to_doc(),
        "createdKeys": applied.secrets if applied is not None else [],
    })


def invalid_answer(invalid: StateInvalid) -> Answer:
    """400 in the legacy family (as everything under `/keyscope/`), every problem under `validationErrors`."""
    doc = json.loads(body(400, "legacy"))
    errors: dict[str, list[str]] = {}
    for problem in invalid.problems:
        errors.setdefault(problem.path, []).append(problem.message)
    doc["requestError"]["serviceException"]["validationErrors"] = errors
    return Answer(400, json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())


def routes(control: Control) -> list[Route]:
    return [route(control, PATH, "GET", get_state), route(control, PATH, "POST", post_state)]
