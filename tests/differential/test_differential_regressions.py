"""The exact attacks of each class, written out, so that a failure names the attack plainly. Each was found by the
property tests (or is the one the class is named after); the id of each case says which readers misread it when
keyscope forwarded it (as it did before step 4's rewrite, commit f879937, or still did after it). "Loose binders"
is the oracle's near-name rule (a snake_case, kebab-case or case-insensitive binder would read the member)."""

from __future__ import annotations

import pytest

from .attacks import Attack, Multipart, Obj, Part, form, ids, json_request, multipart, query
from .harness import World
from .strategies import EVENTS, FORM, MESSAGES, METRICS, NESTED, PLATFORM, QUERY, ROOT, Case
from .strategies_body import BOUNDARY, smuggled

pytestmark = pytest.mark.differential

IDS = [f"{n}={v}" for n, v in ids()]
A, B = Obj(*ids()), Obj(("applicationId", "app-b"), ("entityId", "ent-b"))


def case(label: str, attack: Attack, key: str, endpoint) -> object:
    return pytest.param(Case(attack, key, endpoint), id=label)


def carrier(value: str, *, content_type: str | None = None, first: bool = False, **body) -> Multipart:
    """In-scope ids as parts, and a `text` part holding `value` (where a smuggled part hides)."""
    parts = [Part("from", "a@example.com"), *(Part(n, v) for n, v in ids()), Part("text", value)]
    return Multipart(tuple(parts[-1:] + parts[:-1] if first else parts), content_type=content_type, **body)


NAMES = [
    case("query snake_case (loose binders)", query(QUERY.path, [*IDS, "entity_id=ent-b"]), "pair", QUERY),
    case("query dotted (PHP: application_id; loose binders)", query(QUERY.path, [*IDS, "application.id=app-b"]),
         "pair", QUERY),
    case("query leading space (PHP trims it)", query(QUERY.path, ["%20applicationId=app-b"]), "app_fill", QUERY),
    case("query dotless i", query(QUERY.path, [*IDS, "appl%C4%B1cationId=app-b"]), "pair", QUERY),
    case("query applicationId[] (an array to PHP, Rack, qs)", query(QUERY.path, [*IDS, "applicationId[]=app-b"]),
         "pair", QUERY),
    case("query [applicationId] (qs: applicationId)", query(QUERY.path, [*IDS, "%5BapplicationId%5D=app-b"]),
         "pair", QUERY),
    case("query ]entityId (Rack: entityId)", query(QUERY.path, [*IDS, "%5DentityId=ent-b"]), "pair", QUERY),
    case("query nested bracket", query(QUERY.path, [*IDS, "a[b][applicationId]=app-b"]), "pair", QUERY),
    case("form kebab-case (loose binders)", form(FORM.path, [*IDS, "APPLICATION-ID=app-b"]), "pair", FORM),
    case("multipart snake_case (loose binders)", multipart(FORM.path, Multipart(
        (Part("application_id", "app-b"), *(Part(n, v) for n, v in ids())))), "pair", FORM),
    case("json snake_case at $ (loose binders)", json_request(ROOT.path, A.plus(("application_id", "app-b"))),
         "pair_fill", ROOT),
    case("json dotted capital I in messages[] (loose binders)", json_request(MESSAGES.path, Obj(
        ("messages", [A.plus(("appl\u0130cationId", "app-b"))]))), "pair", MESSAGES),
    case("json ]applicationId in messages[] (loose binders)", json_request(MESSAGES.path, Obj(
        ("messages", [Obj(("]applicationId", "app-b"), *ids())]))), "pair", MESSAGES),
    case("multipart name in single quotes (PHP)", multipart(FORM.path, Multipart((
        *(Part(n, v) for n, v in ids()), Part("x", "app-b", disposition="form-data; name='applicationId'"),
    ))), "pair", FORM),
]


@pytest.mark.parametrize("attack", NAMES)
def test_id_names(world: World, attack: Case) -> None:
    world.check(attack.attack, attack.key, attack.endpoint)


TWINS = [
    case("platform then Platform null (Jackson: no platform)", json_request(PLATFORM.path, Obj(
        ("platform", A), ("Platform", None))),
         "pair", PLATFORM),
    case("Platform out of scope first", json_request(PLATFORM.path, Obj(("Platform", B), ("platform", A))),
         "pair", PLATFORM),
    case("options twin OPtiONs (Jackson: no platform)", json_request(EVENTS.path, Obj(
        ("events", [Obj(("options", Obj(("platform", A))), ("OPtiONs", Obj()))]))), "pair_fill", EVENTS),
    case("PLatForm twin inside options (Jackson: empty platform)", json_request(NESTED.path, Obj(
        ("messages", [Obj(("options", Obj(("platform", A), ("PLatForm", Obj()))))]))), "pair", NESTED),
    case("MeSSAGEs twin (Go: no messages)", json_request(MESSAGES.path, Obj(("messages", [A]), ("MeSSAGEs", []))),
         "force", MESSAGES),
    case("Request next to request", json_request(METRICS.path, Obj(
        ("request", Obj(("filterBy", A))), ("Request", Obj(("filterBy", B))))), "pair", METRICS),
    case("messages twice", json_request(MESSAGES.path, Obj(("messages", [A]), ("messages", [B]))), "pair", MESSAGES),
    case("meſſages", json_request(MESSAGES.path, Obj(("messages", [A]), ("me\u017f\u017fages", [B]))), "pair",
         MESSAGES),
]


@pytest.mark.parametrize("attack", TWINS)
def test_json_containers_duplicated(world: World, attack: Case) -> None:
    world.check(attack.attack, attack.key, attack.endpoint)


FILLERS = [f"f{i}=v" for i in range(1000)]
COUNTS = [
    case("100 fillers, then applicationId", query(QUERY.path, [*IDS, *FILLERS[:100], "applicationId=app-b"]),
         "pair", QUERY),
    case("empty pieces, then entityId", query(QUERY.path, [*IDS, *FILLERS[:95], *[""] * 5, "entityId=ent-b"]),
         "pair", QUERY),
    case("FILL after 99 fillers", query(QUERY.path, FILLERS[:99]), "app_fill", QUERY),
    case("FILL after 1000 fillers (qs, PHP drop it)", query(QUERY.path, FILLERS), "app_fill", QUERY),
    case("query and form together past 100", form(FORM.path, [*IDS, *FILLERS[:50], "applicationId=app-b"],
                                                  target_query=FILLERS[50:110]), "pair", FORM),
]


@pytest.mark.parametrize("attack", COUNTS)
def test_parameter_counts(world: World, attack: Case) -> None:
    world.check(attack.attack, attack.key, attack.endpoint)


MESSAGES_A = Obj(("messages", [A]))
METHODS = [
    case("query _method on JSON (express, PHP)", json_request(MESSAGES.path, MESSAGES_A,
                                                              target_query=["_method=DELETE"]), "pair", MESSAGES),
    case("form _method (Rack, PHP, express)", form(FORM.path, ["_method=OPTIONS", *IDS]), "pair", FORM),
    case("multipart _method (Rack, PHP, express)", multipart(FORM.path, Multipart((Part("_method", "PUT"), *(
        Part(n, v) for n, v in ids())))), "pair", FORM),
    case("JSON _method (Laravel, express)", json_request(ROOT.path, A.plus(("_method", "PATCH"))), "pair", ROOT),
    case("_METHOD in upper case", form(FORM.path, ["_METHOD=DELETE", *IDS]), "pair", FORM),
    case("X-HTTP-Method-Override header", json_request(MESSAGES.path, MESSAGES_A, headers=(
        ("X-HTTP-Method-Override", "DELETE"),)), "pair", MESSAGES),
]


@pytest.mark.parametrize("attack", METHODS)
def test_method_overrides(world: World, attack: Case) -> None:
    world.check(attack.attack, attack.key, attack.endpoint)


OTHER = "other-boundary"
MULTIPART = [
    case("boundary* names another boundary (Django, PHP)", multipart(FORM.path, carrier(
        f"{smuggled(boundary=OTHER)}\r\n--{OTHER}--\r\n",
        content_type=f"multipart/form-data; boundary*={OTHER}; boundary={BOUNDARY}")), "pair", FORM),
    case("two boundary parameters", multipart(FORM.path, carrier(
        f"{smuggled(boundary=OTHER)}\r\n--{OTHER}--\r\n",
        content_type=f"multipart/form-data; boundary={BOUNDARY}; boundary={OTHER}")), "pair", FORM),
    case("LF delimiter (werkzeug, PHP)", multipart(FORM.path, carrier("hello" + smuggled("\n"))), "pair", FORM),
    case("CR delimiter (werkzeug)", multipart(FORM.path, carrier("hello" + smuggled("\r"))), "pair", FORM),
    case("transport padding", multipart(FORM.path, carrier("hello" + smuggled(padding=" \t"))), "pair", FORM),
    case("LF part in the preamble", multipart(FORM.path, carrier(
        "hi", preamble=smuggled("\n").lstrip("\n") + "\r\n")), "pair", FORM),
    case("part after the close delimiter", multipart(FORM.path, carrier(
        "hi", epilogue=smuggled().lstrip("\r\n") + f"\r\n--{BOUNDARY}--\r\n")), "pair", FORM),
    case("id part with filename*= (a field to python-multipart)", multipart(FORM.path, Multipart((
        Part("from", "a@example.com"),
        Part("applicationId", "app-b", disposition="form-data; name=\"applicationId\"; filename*=UTF-8''a.txt"),
    ))), "app_fill", FORM),
    case("boundary = x, spaced (werkzeug: no form)", multipart(FORM.path, carrier(
        "hello" + smuggled("\n"), content_type=f"multipart/form-data; boundary = {BOUNDARY}")), "pair", FORM),
    case("FORCE over an id-named file part (aiohttp, express, Rack, Starlette: no id)", multipart(FORM.path, Multipart((
        Part("from", "a@example.com"),
        Part("applicationId", "app-b", filename="id.txt", headers=("Content-Type: text/plain",))))), "force", FORM),
    case("name*= (Django reads it)", multipart(FORM.path, Multipart((
        *(Part(n, v) for n, v in ids()),
        Part("x", "app-b", disposition="form-data; name=\"other\"; name*=UTF-8''applicationId"),
    ))), "pair", FORM),
    case("1001 parts, ids first (Go drops the form)", multipart(FORM.path, Multipart((
        *(Part(n, v) for n, v in ids()), *(Part(f"f{i}", "v") for i in range(1001))))), "pair", FORM),
]


@pytest.mark.parametrize("attack", MULTIPART)
def test_multipart(world: World, attack: Case) -> None:
    world.check(attack.attack, attack.key, attack.endpoint)


FILL_FORCE = [
    case("FORCE leaves APPLICATION-ID (loose binders)", query(
        QUERY.path, ["limit=10", "APPLICATION-ID=app-b", "entityId=ent-a"]),
         "force", QUERY),
    case("FILL one message, another out of scope", json_request(MESSAGES.path, Obj(
        ("messages", [Obj(("text", "a")), Obj(("applicationId", "app-b"))]))), "app_fill", MESSAGES),
    case("FILL a +json body", json_request(MESSAGES.path, Obj(("messages", [Obj(("text", "a"))])),
                                           content_type="application/vnd.api+json"), "app_fill", MESSAGES),
    case("FILL a chunked body", json_request(MESSAGES.path, Obj(("messages", [Obj(("text", "a"))])), chunked=True),
         "pair_fill", MESSAGES),
    case("FORCE over an out-of-scope platform", json_request(PLATFORM.path, Obj(("platform", B))), "force",
         PLATFORM),
    case("FORCE metrics platforms", json_request(METRICS.path, Obj(("request", Obj(("filterBy", Obj(
        ("platforms", [B, Obj()]))))))), "force", METRICS),
    case("FILL a multipart form", multipart(FORM.path, Multipart((Part("from", "a@example.com"),))), "pair_fill",
         FORM),
    case("FILL an urlencoded form with a charset", form(
        FORM.path, ["from=a"], content_type="application/x-www-form-urlencoded; charset=utf-8"), "app_fill", FORM),
]


@pytest.mark.parametrize("attack", FILL_FORCE)
def test_fill_and_force(world: World, attack: Case) -> None:
    world.check(attack.attack, attack.key, attack.endpoint)
