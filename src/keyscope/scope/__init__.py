"""Step 4: every applicationId/entityId a request carries, read as every backend would, checked against a key.

The principle: a linked key's request is forwarded only when every mainstream backend (Rack, PHP, Express
with `qs` or `querystring`, Django, Werkzeug, Starlette, Jackson, Go) would read from the forwarded bytes the
same method and the same ids at the same places as keyscope did. Anything one of them could read differently
is refused with 400, never normalised: what keyscope checked is what it forwards.

Reading (`names`, `form`, `multipart`, `jsonbody`). Ids are read wherever a backend could read one: the
query string, a JSON body at any depth, urlencoded and multipart form fields, under every name a backend
folds into an id name (`names`). Ambiguity is 400 for every key, primary keys included, because step 5
checks the ids of primary keys too and needs one reading of the request: see each module for its rules, and
`limits` for the bounds. A linked key's body that keyscope does not read (another content type, a charset
other than UTF-8, any Content-Encoding, XML, a multipart part with a transfer encoding) is 415; a primary
key's is forwarded untouched and only its query ids are collected.

Places (`places`, `locations`). Each JSON object holding an id, the query string and the form is a place. A place is
permitted by an entry when every id it names equals that entry's id of the same kind (a kind the entry
leaves unset is unconstrained). One place no entry permits refuses the request: 403 `id_out_of_scope`. At
the endpoint's declared locations (its `ids`) a kind an entry sets is also required, spelt exactly (a
case-sensitive backend would not see `ApplicationID` there: 400 `id_name_case`); if no entry has it, the
key's action entry decides: FILL writes the missing ids there (creating `options`/`platform` objects,
appending `&applicationId=` to a query, adding a multipart part), FORCE first overwrites the ids at every
declared place with its own, otherwise 403 `id_missing`. A linked key's request must present at least one
declared place; an absent array, such as the metrics `filterBy.platforms[]`, is no place.

Rewriting. A JSON body FILL/FORCE changed is re-serialised compactly, key order kept; an unchanged request
keeps its original bytes (the same objects).

Reasons: 400 semicolon, bad_escape, too_many_params, too_many_parts, too_many_members, duplicate_id, id_array,
method_override, prototype_name, name_collision, invalid_utf8, id_not_string, duplicate_key,
non_finite_number, number_out_of_range, bom, trailing_data, invalid_json, too_deep, lone_surrogate,
bad_multipart, id_file, bad_location, id_name_case; 403 not_allowlisted, id_out_of_scope, id_missing; 415
uninspectable_body.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from keyscope.allowlist.table import Endpoint
from keyscope.core.errors import Refusal
from keyscope.core.limits import DEFAULT, Limits
from keyscope.core.models import ApiKey, PlatformEntry
from keyscope.scope.jsonbody import dump
from keyscope.scope.locations import locate
from keyscope.scope.multipart import media_type
from keyscope.scope.places import NO_BODY, OPAQUE, Body, Reading, Slot, decide, entry_of
from keyscope.scope.refusals import Uninspectable, refuse

__all__ = ["Decision", "Place", "inspect", "needs_body"]

_JSON_TYPES = frozenset({"application/json", "text/json"})
_UTF8 = (b"utf-8", b"utf8", b"us-ascii")


class Place(NamedTuple):
    """For the explainer: where ids were found (`query`, `form`, `$.messages[0]`), which, and who permitted them."""

    where: str
    ids: dict[str, str | None]
    entry: PlatformEntry | None


class Decision:
    """What to forward. `query`/`body` are the objects passed in unless FILL/FORCE rewrote them (`changed`);
    `entry` is what X-Keyscope-Application-Id/-Entity-Id carry (None for primary keys; an entry with key ""
    holding only the kinds the places agree on when they used different entries); the id sets are what
    step 5 checks for existence; `places` is for the explainer (located on first use: a walk of the body).
    """

    __slots__ = ("query", "body", "changed", "entry", "application_ids", "entity_ids", "_slots", "_doc")

    def __init__(self, reading: Reading, slots: list[Slot], entry: PlatformEntry | None) -> None:
        if reading.body_changed and reading.kind.kind == "json":
            reading.body = dump(reading.doc)
        self.query = reading.query
        self.body = reading.body
        self.changed = reading.body_changed or reading.query_changed
        self.entry = entry
        applications, entities = set(), set()
        for slot in slots:
            ids = slot.ids
            if ids:
                named = ids.get("applicationId")
                if named is not None:
                    applications.add(named)
                named = ids.get("entityId")
                if named is not None:
                    entities.add(named)
        self.application_ids = frozenset(applications)
        self.entity_ids = frozenset(entities)
        self._slots = slots
        self._doc = reading.doc

    @property
    def places(self) -> list[Place]:
        unknown = {id(s.obj) for s in self._slots if not s.located() and s.obj is not None}
        found = locate(self._doc, unknown) if unknown else {}
        return [Place(s.where or found[id(s.obj)], s.ids, s.entries[0] if s.entries else None) for s in self._slots]

    def __repr__(self) -> str:
        return (
            f"Decision(query={self.query!r}, body={self.body[:60]!r}, changed={self.changed}, entry={self.entry}, "
            f"application_ids={set(self.application_ids)}, entity_ids={set(self.entity_ids)})"
        )


def _body_kind(content_type: bytes | None, content_encoding: bytes | None, body: bytes) -> Body:
    if not body:
        return NO_BODY
    if content_encoding is not None and content_encoding.strip() or content_type is None:
        return OPAQUE
    return _media_kind(content_type)


@lru_cache(maxsize=256)
def _media_kind(content_type: bytes) -> Body:
    """How a body of this Content-Type is read (clients send a handful of distinct values)."""
    try:
        mime, params = media_type(content_type)
    except Uninspectable:
        return OPAQUE
    charset = params.get("charset", b"utf-8").lower()
    if mime in _JSON_TYPES or mime.endswith("+json"):
        return Body("json") if charset in _UTF8 else OPAQUE
    if mime == "application/x-www-form-urlencoded":
        return Body("form") if charset in _UTF8 else OPAQUE
    if mime == "multipart/form-data" and params.get("boundary"):
        # Django and Starlette decode part names and values by a charset parameter (utf-7 spells ids anew)
        return Body("multipart", params["boundary"]) if charset in _UTF8 else OPAQUE
    return OPAQUE


def needs_body(
    endpoint: Endpoint | None, key: ApiKey, content_type: bytes | None, content_encoding: bytes | None = None
) -> bool:
    """Whether the gateway must buffer the body for inspect(); otherwise it may stream it untouched."""
    if key.platform:
        return True
    return _body_kind(content_type, content_encoding, b"-").kind != "opaque"


def inspect(
    endpoint: Endpoint | None,
    key: ApiKey,
    *,
    query: bytes,
    content_type: bytes | None,
    content_encoding: bytes | None,
    body: bytes,
    limits: Limits = DEFAULT,
) -> Decision:
    """Collect the request's ids; for a linked key also check, FILL or FORCE them. Raises Refusal."""
    platform = key.platform
    if platform and endpoint is None:
        raise _not_allowlisted()
    reading = Reading(query, body, _body_kind(content_type, content_encoding, body), bool(platform), limits)
    if endpoint is None or not platform:
        return Decision(reading, reading.named(), None)
    slots = decide(platform, reading, endpoint.ids)
    return Decision(reading, slots, entry_of(slots, platform))


def _not_allowlisted() -> Refusal:
    return refuse(403, "not_allowlisted", None, "This key may not call this endpoint.")


