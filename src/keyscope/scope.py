"""Steps 4-5: collect every applicationId/entityId a request carries, check them against a key's entries, FILL/FORCE.

Collecting. Ids are read wherever a backend could read one: the query string, a JSON body at any depth,
urlencoded and multipart form fields; names are compared case-insensitively (`ApplicationID` counts).
Ambiguity is 400 for every key, primary keys included, because step 5 checks the ids of primary keys too
and needs one reading of the request: a raw `;` in the query or form, a malformed escape, an id name twice
in the query, a form or one JSON object (in any case), `applicationId[]`, a duplicate key in any JSON
object, NaN/Infinity, an out-of-range number, invalid UTF-8, a BOM, trailing data, nesting deeper than 64,
a lone surrogate, an id that is neither a string nor null (null counts as missing), a malformed multipart
body. A linked key's body that keyscope does not read (another content type, a charset other than UTF-8,
any Content-Encoding, XML, a multipart part with a transfer encoding) is 415; a primary key's is forwarded
untouched and only its query ids are collected.

Places. Each JSON object holding an id key, the query string and the form is a place. A place is permitted
by an entry when every id it names equals that entry's id of the same kind (a kind the entry leaves unset is
unconstrained). One place no entry permits refuses the request: 403 `id_out_of_scope`. An empty string is an
id like any other (it matches no entry, and step 5 finds no application of that name).

Declared locations (the endpoint's `ids`). There, a kind an entry sets is also required: an entry permits a
declared place only if the place names that kind. If no entry does, the key's action entry decides: FILL
writes the missing ids there (creating `options`/`platform` objects, appending `&applicationId=` to a query,
adding a multipart part), otherwise 403 `id_missing`. FORCE first overwrites the ids at every declared
place with its own, whatever they were. Ids found elsewhere are checked all the same. An id at a declared
location must be spelt exactly (`applicationId`), because a case-sensitive backend would not see
`ApplicationID` there and would act outside the scope: 400 `id_name_case`. A linked key's request must
present at least one declared place (a batch with no messages is 403 `id_missing`); an absent array, such as
the metrics `filterBy.platforms[]`, is no place. `ids: none` endpoints have no declared places.

Rewriting. A JSON body FILL/FORCE changed is re-serialised compactly, key order kept, numbers as Python
writes them (exact for every double); an unchanged request keeps its original bytes (the same objects).

Cost. Most requests are plain (ASCII, ids spelt exactly where declared, a key with one entry) and already
permitted as they stand: inspect() decides those without building places, with one parse of the body. The
common refusal, a plain request of a one-entry key naming an id outside its entry or missing its ids, is
refused the same way and as cheaply, with the full reading's Refusal (`scope_plain`, the short way).
Anything else, parse included, goes to the full reading above (`scope_places`, the long way; see `inspect`).

Reasons: 400 semicolon, bad_escape, duplicate_id, id_array, invalid_utf8, id_not_string, duplicate_key,
non_finite_number, number_out_of_range, bom, trailing_data, invalid_json, too_deep, lone_surrogate,
bad_multipart, bad_location (a declared location holds a non-object), id_name_case; 403 not_allowlisted
(a linked key without an endpoint), id_out_of_scope, id_missing; 415 uninspectable_body.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from . import scope_json
from .endpoints import Endpoint
from .errors import Refusal
from .models import ApiKey, PlatformEntry
from .scope_form import Query, Uninspectable, media_type, parse_query, plain_ids, refuse
from .scope_places import NO_BODY, OPAQUE, Body, Check, Place, Request, entry_of
from .scope_plain import plain_decision, plain_refusal

__all__ = ["Decision", "Place", "Query", "inspect", "needs_body", "parse_query"]

_JSON_TYPES = frozenset({"application/json", "text/json"})
_UTF8 = (b"utf-8", b"utf8", b"us-ascii")


class Decision:
    """What to forward. `query`/`body` are the objects passed in unless FILL/FORCE rewrote them (`changed`);
    `entry` is what X-Keyscope-Application-Id/-Entity-Id carry (None for primary keys; an entry with key ""
    holding only the kinds the places agree on when they used different entries); the id sets are what
    step 5 checks for existence; `places` is for the explainer. Read only.

    A request decided the short way (see `inspect`) gets its places on first use, by deciding it again the
    long way: only the explainer asks, and locating places can take a walk of the whole body.
    """

    __slots__ = ("query", "body", "changed", "entry", "application_ids", "entity_ids", "_places", "_inputs")

    def __init__(
        self,
        query: bytes,
        body: bytes,
        changed: bool,
        entry: PlatformEntry | None,
        application_ids: frozenset[str],
        entity_ids: frozenset[str],
        places: list[Place] | None,
        inputs: _Inputs | None = None,
    ) -> None:
        self.query = query
        self.body = body
        self.changed = changed
        self.entry = entry
        self.application_ids = application_ids
        self.entity_ids = entity_ids
        self._places = places
        self._inputs = inputs

    @property
    def places(self) -> list[Place]:
        if self._places is None:
            assert self._inputs is not None
            self._places = inspect_slowly(*self._inputs).places
        return self._places

    def __repr__(self) -> str:
        return (
            f"Decision(query={self.query!r}, body={self.body[:60]!r}, changed={self.changed}, entry={self.entry}, "
            f"application_ids={set(self.application_ids)}, entity_ids={set(self.entity_ids)})"
        )


# inspect()'s arguments: endpoint, key, query, content_type, content_encoding, body
_Inputs = tuple["Endpoint | None", ApiKey, bytes, "bytes | None", "bytes | None", bytes]


def _body_kind(content_type: bytes | None, content_encoding: bytes | None, body: bytes) -> Body:
    if not body:
        return NO_BODY
    if content_encoding is not None and content_encoding.strip() or content_type is None:
        return OPAQUE
    return _media_kind(content_type)


@lru_cache(maxsize=256)
def _media_kind(content_type: bytes) -> Body:
    """How a body of this Content-Type is read (cached: clients send a handful of distinct values)."""
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
        return Body("multipart", params["boundary"])
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
) -> Decision:
    """Collect the request's ids; for a linked key also check, FILL or FORCE them. Raises Refusal.

    The short way first: a primary key or a key with one entry, a plain query (`plain_ids`), no body or a
    plain JSON one (`scope_json.read_plain`), and every place simply permitted as it stands: nothing to
    fill, force or refuse. It builds no places and rewrites nothing. A plain request of a one-entry key that
    a place refuses (an id outside the entry, a declared place without the entry's ids and nothing to fill
    it, no declared place at all) is refused the short way too, with the long way's Refusal for the first
    such place in the long way's order (`plain_refusal`): refusals are what an attacker sends, so they
    must cost no more than what is forwarded. Anything else, or any doubt, is decided the long way
    (`inspect_slowly`), which the short way agrees with (tests/test_scope_plain.py); a JSON body already
    parsed is handed over, not parsed twice.
    """
    platform = key.platform
    if platform and endpoint is None:
        raise _not_allowlisted()
    body_kind = _body_kind(content_type, content_encoding, body)
    parsed = None
    if len(platform) <= 1:
        query_ids = plain_ids(query)
        if query_ids is not None:
            kind = body_kind.kind
            if kind == "json":
                parsed = scope_json.read_plain(body)
            if parsed is not None or kind == "none" or kind == "opaque" and not platform:
                permitted = plain_decision(endpoint, platform, query_ids, parsed)
                if permitted is not None:
                    entry, application_ids, entity_ids = permitted
                    return Decision(query, body, False, entry, application_ids, entity_ids, None,
                                    (endpoint, key, query, content_type, content_encoding, body))
                if platform:
                    assert endpoint is not None
                    refusal = plain_refusal(endpoint.ids, platform[0], query_ids, parsed)
                    if refusal is not None:
                        try:
                            raise refusal
                        finally:  # this frame, in the traceback, must not hold its own exception: a cycle for the GC
                            del refusal
    return _inspect(endpoint, key, query, body, body_kind, parsed)


def inspect_slowly(
    endpoint: Endpoint | None,
    key: ApiKey,
    query: bytes,
    content_type: bytes | None,
    content_encoding: bytes | None,
    body: bytes,
) -> Decision:
    """What inspect() decides, always the long way: every place found, located and checked."""
    if key.platform and endpoint is None:
        raise _not_allowlisted()
    return _inspect(endpoint, key, query, body, _body_kind(content_type, content_encoding, body), None)


def _inspect(
    endpoint: Endpoint | None,
    key: ApiKey,
    query: bytes,
    body: bytes,
    body_kind: Body,
    parsed: tuple[Any, list[dict[str, Any]]] | None,
) -> Decision:
    linked = bool(key.platform)
    request = Request(query, body)
    try:
        request.read_query()
        request.read_body(body_kind, linked, parsed)
        if endpoint is None or not linked:
            return Decision(*request.outcome(None))
        Check(key.platform, request).run(endpoint.ids)
        return Decision(*request.outcome(entry_of(request.slots, key.platform)))
    finally:
        request.close()


def _not_allowlisted() -> Refusal:
    return refuse(403, "not_allowlisted", None, "This key may not call this endpoint.")
