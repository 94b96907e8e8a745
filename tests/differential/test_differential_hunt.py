"""Holes found by a hand hunt beyond the strategies of strategies.py/strategies_body.py: each written out, and a
property over each neighbourhood (strategies_hunt.py). They fail until keyscope refuses these requests; the id of
each case says which readers misread it when keyscope forwarded it.

1. Multipart `charset=`: keyscope reads every multipart body as UTF-8 whatever the Content-Type's charset says;
   Django (MultiPartParser with request.encoding) and Starlette (python-multipart with the charset parameter)
   decode part names and values with it, so under `charset=utf-7` the part `+AGE-pplicationId` is
   `applicationId` to them. Rule: refuse (415 uninspectable_body) a multipart Content-Type whose charset is not
   UTF-8/US-ASCII, as keyscope already does for JSON and urlencoded bodies.
2. Bracket-split id names: `entity[id`, `application[Id`, `entity]id`, `entity[]id`, `entity][id`,
   `applicationI[d`. names.classify() reads the components between brackets (`entity`, `id`), none of which is
   an id, so keyscope ignores the name; PHP turns the unclosed `[` into `_` (`entity_id`, `application_Id`) and
   every other reader keeps the name as written, which a snake_case/loose binder reads as the id (the oracle's
   near-name rule). Rule: classify a name whose brackets, removed (and `[` read as `_`), fold to an id as that
   id (then duplicate_id / id_name_case refuse it).
3. JSON integers beyond a double: `number_out_of_range` refuses `1e400` but not a 400-digit integer literal, which
   PHP's json_decode reads as INF (the PHP reader cannot even echo it). Rule: apply number_out_of_range to
   integer literals too (beyond +/-(2**53) or beyond a double, as keyscope decides).
"""

from __future__ import annotations

import pytest
from hypothesis import given

from . import strategies_hunt
from .attacks import Attack, Multipart, Obj, Part, form, ids, json_request, multipart, query
from .harness import World
from .strategies import FORM, MESSAGES, QUERY, ROOT, Case
from .strategies_body import BOUNDARY
from .test_differential_properties import examples

pytestmark = pytest.mark.differential

IDS = [f"{n}={v}" for n, v in ids()]
A = Obj(*ids())


def case(label: str, attack: Attack, key: str, endpoint) -> object:
    return pytest.param(Case(attack, key, endpoint), id=label)


def in_scope(*extra: Part) -> tuple[Part, ...]:
    return (Part("from", "a@example.com"), *(Part(n, v) for n, v in ids()), *extra)


UTF7 = f"multipart/form-data; boundary={BOUNDARY}; charset=utf-7"
CHARSETS = [
    case("charset=utf-7, +AGE-pplicationId (Django, Starlette: applicationId app-b)", multipart(FORM.path, Multipart(
        in_scope(Part("+AGE-pplicationId", "app-b")), content_type=UTF7)), "pair", FORM),
    case("charset=utf-7, +AGU-ntityId (Django, Starlette: entityId ent-b)", multipart(FORM.path, Multipart(
        in_scope(Part("+AGU-ntityId", "ent-b")), content_type=UTF7)), "pair", FORM),
    case("charset=\"utf-7\" quoted (Django, Starlette)", multipart(FORM.path, Multipart(
        in_scope(Part("+AGE-pplicationId", "app-b")),
        content_type=f'multipart/form-data; boundary={BOUNDARY}; charset="utf-7"')), "pair", FORM),
    case("charset=utf-7 under FILL (Django, Starlette: a second applicationId app-b)", multipart(FORM.path, Multipart(
        (Part("from", "x"), Part("+AGE-pplicationId", "app-b")), content_type=UTF7)), "app_fill", FORM),
    case("charset=utf-16 (Django: no ids; Starlette: no entityId)", multipart(FORM.path, Multipart(
        in_scope(), content_type=f"multipart/form-data; boundary={BOUNDARY}; charset=utf-16")), "pair", FORM),
]


@pytest.mark.parametrize("attack", CHARSETS)
def test_multipart_charset(world: World, attack: Case) -> None:
    world.check(attack.attack, attack.key, attack.endpoint)


SPLIT = [
    case("query entity[id (PHP: entity_id; loose binders)", query(QUERY.path, [*IDS, "entity[id=ent-b"]), "pair",
         QUERY),
    case("query applicationI[d (PHP: applicationI_d; loose binders)", query(QUERY.path, [*IDS, "applicationI[d=app-b"]),
         "pair", QUERY),
    case("query entity]id (loose binders)", query(QUERY.path, [*IDS, "entity]id=ent-b"]), "pair", QUERY),
    case("query entity[]id (loose binders)", query(QUERY.path, [*IDS, "entity[]id=ent-b"]), "pair", QUERY),
    case("query entity][id (PHP: entity]_id; loose binders)", query(QUERY.path, [*IDS, "entity][id=ent-b"]), "pair",
         QUERY),
    case("form application[Id (PHP: application_Id; loose binders)", form(FORM.path, [*IDS, "application[Id=app-b"]),
         "pair", FORM),
    case("form entity[id (PHP: entity_id; loose binders)", form(FORM.path, [*IDS, "entity[id=ent-b"]), "pair", FORM),
    case("multipart entity[id (PHP: entity_id; loose binders)", multipart(FORM.path, Multipart(
        in_scope(Part("entity[id", "ent-b")))), "pair", FORM),
    case("json entity[id at $ (loose binders)", json_request(ROOT.path, A.plus(("entity[id", "ent-b"))), "pair", ROOT),
    case("json entity]id in messages[] (loose binders)", json_request(MESSAGES.path, Obj(
        ("messages", [A.plus(("entity]id", "ent-b"))]))), "pair", MESSAGES),
]


@pytest.mark.parametrize("attack", SPLIT)
def test_bracket_split_names(world: World, attack: Case) -> None:
    world.check(attack.attack, attack.key, attack.endpoint)


def test_json_integer_beyond_a_double(world: World) -> None:
    """PHP's json_decode reads a 400-digit integer as INF (its reader breaks); keyscope refuses 1e400 only."""
    body = b'{"applicationId":"app-a","entityId":"ent-a","n":' + b"9" * 400 + b"}"
    attack = Attack("POST", ROOT.path, (("Content-Type", "application/json"),), body)
    world.check(attack, "pair", ROOT)


@examples(100)
@given(case=strategies_hunt.split_id_names())
def test_bracket_split_names_property(world: World, case: Case) -> None:
    world.check(case.attack, case.key, case.endpoint)


@examples(60)
@given(case=strategies_hunt.multipart_charsets())
def test_multipart_charset_property(world: World, case: Case) -> None:
    world.check(case.attack, case.key, case.endpoint)
