"""The state document: applications, entities, associations and keys as one document (`keyscope export`'s output,
`keyscope diff`/`apply`'s input), read whole with every problem named, and written back deterministically.

Each item is spelt as the management API spells it (`applicationId`, `rateLimits`, `platform[].action`, ...) and
is read by the API's own parsers (`keyscope.documents`), so a document the API refuses is refused here too, with
the same words; only the path in front differs (`keys[3].platform[0].applicationId`). Problems are gathered, not
raised at the first: a file with three mistakes says all three before anything is written.

Decisions, so that `export -> apply -> export` is the identity and a second `apply` changes nothing:
- A key is named by its `id` (never by its secret, which the document never holds). `platform` is required
  (`[]` is a primary key on purpose: a document that forgot it must not widen a key).
- An optional field left out means its default (no name, no limits, no allowed IPs, `enabled`/`enforce` true);
  writing puts out only what differs from the default. The exception is a key's `validFrom`/`validTo`: left out,
  they are the store's (a new key gets the API's now..one year on), since "now" is no value a file can compare.
- Sections are lists sorted by id (associations by resourceType, channel, resourceId), and each item's fields
  come in one fixed order, so the same store always exports the same bytes and a git diff shows real changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from keyscope.core import ratelimits
from keyscope.core.models import UNSET, ApiKey, Application, Association, Entity, PlatformLink
from keyscope.core.ratelimits import RateLimit
from keyscope.documents import keyschema, schema
from keyscope.documents.fields import ValidationError, check_id, check_validity, format_datetime, object_of

VERSION = 1
SECTIONS = ("applications", "entities", "associations", "keys")
_TOP = frozenset({"version", *SECTIONS})
_KEY_EXTRA = frozenset({"id"})

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a document: where (`keys[3].platform[0].applicationId`) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class StateInvalid(Exception):
    """The document cannot be applied; every problem found, in document order. Nothing has been written.

    `partial` is what could be read of it (the items without a problem), so that the checks against the store
    can still run and report theirs in the same answer."""

    def __init__(self, problems: list[Problem], partial: State | None = None) -> None:
        problems = sorted(problems, key=_document_order)
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems
        self.partial = partial


_ITEM = re.compile(r"([a-z]+)(?:\[(\d+)\])?")


def _document_order(problem: Problem) -> tuple[int, int]:
    """Problems in the order of the items they name: sections in the document's order, items by position."""
    match = _ITEM.match(problem.path)
    section = match.group(1) if match else ""
    index = int(match.group(2)) if match and match.group(2) else -1
    return (SECTIONS.index(section) + 1 if section in SECTIONS else 0), index


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A key as a state document holds it: everything but the secret (and its hash, prefix, use times).

    `valid_from`/`valid_to` None: the document leaves them to the store (see the module docstring)."""

    id: str
    name: str
    platform: tuple[PlatformLink, ...]
    enabled: bool = True
    enforce: bool = True
    allowed_ips: tuple[str, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    valid_from: datetime | None = None
    valid_to: datetime | None = None

    @classmethod
    def of(cls, key: ApiKey) -> KeySpec:
        links = tuple(PlatformLink(e.application_id, e.entity_id, e.action) for e in key.platform)
        return cls(key.id, key.name, links, key.enabled, key.enforce, key.allowed_ips, key.rate_limits,
                   key.valid_from, key.valid_to)


AssociationId = tuple[str, str, str]
"""(resourceType, channel, resourceId): a resource is associated once, so this names its association."""


def association_id(association: Association) -> AssociationId:
    return association.resource_type, association.channel, association.resource_id


def spell_association(ident: AssociationId) -> str:
    return "/".join(ident)


@dataclass(frozen=True, slots=True)
class State:
    """What a document says, or what a store holds: each kind by its id, in id order."""

    applications: dict[str, Application]
    entities: dict[str, Entity]
    associations: dict[AssociationId, Association]
    keys: dict[str, KeySpec]
    positions: dict[tuple[str, Any], int] = field(default_factory=dict, compare=False)
    """(section, id) -> the item's index in the document it was read from, for problems found later."""
    refused: frozenset[tuple[str, str]] = frozenset()
    """(section, id) of the items refused whose id could still be read: references to them are not reported again
    as missing (their own problem is)."""

    def where(self, section: str, ident: Any) -> str:
        """`keys[3]`: the item as its document places it (the section alone for a state read from a store)."""
        index = self.positions.get((section, ident))
        return section if index is None else f"{section}[{index}]"


# reading -------------------------------------------------------------------------------------------


def parse(doc: Any) -> State:
    """The document as a State, or StateInvalid naming every problem (one per item at most: an item's first)."""
    if not isinstance(doc, dict):
        raise StateInvalid([Problem("document", "must be a JSON object")])
    top: Mapping[str, Any] = doc
    problems = [Problem(name, "is not a known field") for name in top if name not in _TOP]  # reported with the rest
    if "version" in top and top["version"] != VERSION:
        problems.append(Problem("version", f"must be {VERSION} (the only version this keyscope reads)"))
    positions: dict[tuple[str, Any], int] = {}
    refused: set[tuple[str, str]] = set()
    applications = _section(top, "applications", schema.parse_application, lambda a: a.application_id,
                            "applicationId", problems, positions, refused)
    entities = _section(top, "entities", schema.parse_entity, lambda e: e.entity_id, "entityId", problems, positions,
                        refused)
    associations = _section(top, "associations", schema.parse_association, association_id, "resourceId", problems,
                            positions, refused)
    keys = _section(top, "keys", _parse_key, lambda k: k.id, "id", problems, positions, refused)
    state = State(_sorted(applications), _sorted(entities), _sorted(associations), _sorted(keys), positions,
                  frozenset(refused))
    if problems:
        raise StateInvalid(problems, state)
    return state


def _section(
    top: Mapping[str, Any],
    name: str,
    parse_item: Callable[[Any], T],
    ident: Callable[[T], Any],
    id_field: str,
    problems: list[Problem],
    positions: dict[tuple[str, Any], int],
    refused: set[tuple[str, str]],
) -> dict[Any, T]:
    """A section's items by id; each refused item and each id given twice becomes a problem."""
    items = top.get(name)
    if items is None:
        return {}
    if not isinstance(items, list):
        problems.append(Problem(name, "must be a list"))
        return {}
    found: dict[Any, T] = {}
    for index, item in enumerate(items):
        where = f"{name}[{index}]"
        try:
            parsed = parse_item(item)
        except ValidationError as exc:
            field = "" if exc.field == "body" else exc.field
            problems.append(Problem(f"{where}.{field}" if field else where, exc.detail))
            if isinstance(item, dict) and isinstance(item.get(id_field), str):
                refused.add((name, item[id_field]))
            continue
        key = ident(parsed)
        if (name, key) in positions:
            shown = spell_association(key) if isinstance(key, tuple) else key
            also = positions[(name, key)]
            problems.append(Problem(f"{where}.{id_field}", f"{shown!r} is named twice (also {name}[{also}])"))
            continue
        positions[(name, key)] = index
        found[key] = parsed
    return found


def _parse_key(doc: Any) -> KeySpec:
    """A key item: `id` and the fields of a key update (`keyschema`, so every rule is the API's), with `name`
    and `platform` required."""
    item = object_of(doc, keyschema.KEY_FIELDS | _KEY_EXTRA)
    if "id" not in item:
        raise ValidationError("id", "is required (a new key needs an id of its own choosing; it never changes)")
    key_id = check_id(item["id"], "id")
    for needed in ("name", "platform"):
        if needed not in item:
            raise ValidationError(needed, "is required" + (" ([] for a primary key)" if needed == "platform" else ""))
    fields = keyschema.parse_key_update({name: value for name, value in item.items() if name != "id"})
    valid_from = None if fields.valid_from is UNSET else fields.valid_from
    valid_to = None if fields.valid_to is UNSET else fields.valid_to
    if valid_from is not None and valid_to is not None:
        check_validity(valid_from, valid_to)  # type: ignore[arg-type]
    return KeySpec(
        id=key_id,
        name=fields.name,  # type: ignore[arg-type]
        platform=fields.platform,  # type: ignore[arg-type]
        enabled=True if fields.enabled is UNSET else fields.enabled,  # type: ignore[arg-type]
        enforce=True if fields.enforce is UNSET else fields.enforce,  # type: ignore[arg-type]
        allowed_ips=() if fields.allowed_ips is UNSET else fields.allowed_ips,  # type: ignore[arg-type]
        rate_limits=() if fields.rate_limits is UNSET else fields.rate_limits,  # type: ignore[arg-type]
        valid_from=valid_from,  # type: ignore[arg-type]
        valid_to=valid_to,  # type: ignore[arg-type]
    )


def _sorted(items: dict[Any, T]) -> dict[Any, T]:
    return dict(sorted(items.items()))


# writing -------------------------------------------------------------------------------------------


def to_doc(state: State) -> dict[str, Any]:
    """The document: sections in a fixed order, items by id, fields in a fixed order, defaults left out."""
    return {
        "version": VERSION,
        "applications": [application_doc(a) for a in state.applications.values()],
        "entities": [entity_doc(e) for e in state.entities.values()],
        "associations": [association_doc(a) for a in state.associations.values()],
        "keys": [key_doc(k) for k in state.keys.values()],
    }


def application_doc(app: Application) -> dict[str, Any]:
    doc: dict[str, Any] = {"applicationId": app.application_id}
    if app.application_name is not None:
        doc["applicationName"] = app.application_name
    if app.rate_limits:
        doc["rateLimits"] = ratelimits.to_doc(app.rate_limits)
    return doc


def entity_doc(entity: Entity) -> dict[str, Any]:
    doc: dict[str, Any] = {"entityId": entity.entity_id}
    if entity.entity_name is not None:
        doc["entityName"] = entity.entity_name
    return doc


def association_doc(association: Association) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": association.resource_type,
        "channel": association.channel,
        "resourceId": association.resource_id,
        "applicationId": association.application_id,
    }
    if association.entity_id is not None:
        doc["entityId"] = association.entity_id
    return doc


def link_doc(link: PlatformLink) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if link.application_id is not None:
        doc["applicationId"] = link.application_id
    if link.entity_id is not None:
        doc["entityId"] = link.entity_id
    if link.action is not None:
        doc["action"] = link.action
    return doc


def key_doc(key: KeySpec) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": key.id, "name": key.name}
    if not key.enabled:
        doc["enabled"] = False
    if not key.enforce:
        doc["enforce"] = False
    if key.valid_from is not None:
        doc["validFrom"] = format_datetime(key.valid_from)
    if key.valid_to is not None:
        doc["validTo"] = format_datetime(key.valid_to)
    if key.allowed_ips:
        doc["allowedIPs"] = list(key.allowed_ips)
    if key.rate_limits:
        doc["rateLimits"] = ratelimits.to_doc(key.rate_limits)
    doc["platform"] = [link_doc(link) for link in key.platform]
    return doc


__all__ = ["SECTIONS", "VERSION", "AssociationId", "KeySpec", "Problem", "State", "StateInvalid", "association_doc",
           "association_id", "entity_doc", "key_doc", "link_doc", "parse", "spell_association", "to_doc"]
