"""State as code in-process: export, plan and apply (`keyscope.state`) and `/keyscope/1/state`, on real stores.

Every test runs on each store kind of `KEYSCOPE_TEST_STORES` (SQLite files, PostgreSQL schemas). The property:
any valid state, written as its YAML file, read back and applied to an empty store, exports as the same document,
and applying it again changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stores import STORE_URLS, store_params

from keyscope.control import admin
from keyscope.core.keys import hash_secret, new_secret
from keyscope.core.models import (
    CHANNELS,
    RESOURCE_TYPES,
    ApiKey,
    Application,
    Association,
    Entity,
    PlatformEntry,
    PlatformLink,
)
from keyscope.core.ratelimits import PERIODS, RateLimit
from keyscope.decide.auth import KeyAuthenticator
from keyscope.state import yamlfile
from keyscope.state.apply import run
from keyscope.state.document import KeySpec, State, StateInvalid, association_id, parse, to_doc
from keyscope.state.export import read_state
from keyscope.state.plan import Change, compute
from keyscope.state.sync import export, sync
from keyscope.store import NotFound, Store, store_from_url

pytestmark = pytest.mark.anyio

TOKEN = "state-test-token"
SECRETS = {name: new_secret() for name in ("linked", "primary", "acme-only")}
START = datetime(2026, 1, 1, tzinfo=UTC)


# random valid states ---------------------------------------------------------------------------------

ids = st.text("abcdefgh.-_~", min_size=1, max_size=6)
names = st.none() | st.text(st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="\x85"), max_size=12)
limits = st.lists(st.sampled_from(sorted(PERIODS)), unique=True, max_size=2).flatmap(
    lambda periods: st.tuples(*[st.builds(RateLimit, st.integers(1, 10**9), st.just(p)) for p in periods])
).map(lambda found: tuple(sorted(found, key=lambda limit: limit.seconds)))
moments = st.integers(0, 10**14).map(lambda micros: START + timedelta(microseconds=micros))
ips = st.lists(st.sampled_from(["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1", "127.0.0.1"]),
               unique=True, max_size=3).map(tuple)


@st.composite
def states(draw: st.DrawFn) -> State:
    app_ids = ["default", *draw(st.lists(ids.filter(lambda i: i != "default"), unique=True, max_size=3))]
    applications = {i: Application(i, draw(names) if i != "default" or draw(st.booleans()) else "Default",
                                   draw(limits)) for i in app_ids}
    entity_ids = draw(st.lists(ids, unique=True, max_size=3))
    entities = {i: Entity(i, draw(names)) for i in entity_ids}
    associations: dict[Any, Association] = {}
    for _ in range(draw(st.integers(0, 3))):
        channel = draw(st.sampled_from(CHANNELS))
        kinds = [t for t in RESOURCE_TYPES if t != "DOMAIN" or channel == "EMAIL"]
        association = Association(draw(st.sampled_from(kinds)), channel, draw(st.sampled_from(app_ids)),
                                  draw(st.none() | st.sampled_from(entity_ids)) if entity_ids else None,
                                  draw(st.sampled_from(["4477", "off", "a b", "x.com", "2026-01-01"])))
        associations.setdefault(association_id(association), association)
    keys = {}
    for key_id in draw(st.lists(st.text("0123456789ABCDEF", min_size=1, max_size=32), unique=True, max_size=3)):
        pairs = draw(st.lists(st.tuples(st.none() | st.sampled_from(app_ids),
                                        st.none() | st.sampled_from(entity_ids or ["-"])).filter(
            lambda pair: pair != (None, None) and pair[1] != "-"), unique=True, max_size=3))
        acting = draw(st.none() | st.integers(0, max(len(pairs) - 1, 0)))
        platform = tuple(PlatformLink(a, e, draw(st.sampled_from(["FILL", "FORCE"])) if n == acting else None)
                         for n, (a, e) in enumerate(pairs))
        start = draw(moments)
        keys[key_id] = KeySpec(key_id, draw(names.filter(bool)), platform, draw(st.booleans()), draw(st.booleans()),
                               draw(ips), draw(limits), start, start + timedelta(microseconds=draw(st.integers(1, 10**13))))
    return State(dict(sorted(applications.items())), dict(sorted(entities.items())),
                 dict(sorted(associations.items())), keys=dict(sorted(keys.items())))


async def _fresh_round_trip(kind: str, state: State) -> None:
    doc = to_doc(state)
    text = yamlfile.dump(doc)
    with tempfile.TemporaryDirectory() as folder, STORE_URLS[kind](Path(folder)) as url:
        store = store_from_url(url, create=True)
        await store.open()
        try:
            applied = await sync(store, yamlfile.load(text, "state.yaml"), prune=False, dry_run=False, principal="t")
            assert (applied.applied is None) == (applied.plan.changes == ())
            assert len(applied.applied.secrets if applied.applied else []) == len(state.keys)
            exported = await export(store)
            assert exported == doc
            assert yamlfile.dump(exported) == text  # the same bytes: a git diff shows nothing
            again = await sync(store, doc, prune=True, dry_run=False, principal="t")
            assert again.plan.changes == () and again.applied is None
        finally:
            await store.close()


@pytest.mark.parametrize("kind", store_params())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=states())
def test_export_of_an_applied_state_is_the_state_and_a_second_apply_changes_nothing(kind: str, state: State) -> None:
    asyncio.run(_fresh_round_trip(kind, state))


# a store to work on ---------------------------------------------------------------------------------


async def seed(store: Store) -> dict[str, ApiKey]:
    """shop (limited), acme, beta, an association each, and three keys: linked, primary, linked to acme only."""
    await store.create_application(Application("shop", "Shop", (RateLimit(5, "second"),)))
    await store.create_entity(Entity("acme", "Acme"))
    await store.create_entity(Entity("beta", None))
    await store.create_association(Association("NUMBER", "SMS", "shop", "acme", "4477"))
    await store.create_association(Association("DOMAIN", "EMAIL", "default", "beta", "b.com"))
    keys = {}
    for name, links in (("linked", [("shop", "beta")]), ("primary", []), ("acme-only", [("default", "acme")])):
        key = ApiKey(f"K{name.upper().replace('-', '')}", name, hash_secret(SECRETS[name]), name[:8], (), START,
                     START + timedelta(days=3650), True, tuple(PlatformEntry("", a, e) for a, e in links))
        keys[name] = await store.create_key(key)
    return keys


def doc_of(**sections: list[dict[str, Any]]) -> dict[str, Any]:
    return {"version": 1, **sections}


async def test_without_prune_nothing_the_file_omits_is_deleted_and_the_plan_says_it_is_kept(store: Store) -> None:
    await seed(store)
    before = await export(store)
    outcome = await sync(store, doc_of(applications=[{"applicationId": "new"}]), prune=False, dry_run=False,
                         principal="t")
    assert [(c.op, c.kind, c.id) for c in outcome.plan.changes] == [("create", "application", "new")]
    assert {(k.kind, k.id) for k in outcome.plan.kept} == {
        ("application", "default"), ("application", "shop"), ("entity", "acme"), ("entity", "beta"),
        ("association", "NUMBER/SMS/4477"), ("association", "DOMAIN/EMAIL/b.com"),
        ("key", "KLINKED"), ("key", "KPRIMARY"), ("key", "KACMEONLY")}
    after = await export(store)
    assert after["applications"] == [{"applicationId": "default", "applicationName": "Default"},
                                     {"applicationId": "new"}, *before["applications"][1:]]
    assert {k: v for k, v in after.items() if k != "applications"} == {
        k: v for k, v in before.items() if k != "applications"}


async def test_prune_deletes_exactly_what_the_file_omits_except_default(store: Store) -> None:
    await seed(store)
    await store.create_entity(Entity("default", None))  # only the application of that name always exists
    wanted = doc_of(
        applications=[{"applicationId": "shop", "applicationName": "Shop", "rateLimits": [{"requests": 5,
                                                                                          "per": "second"}]}],
        entities=[{"entityId": "beta"}],
        keys=[{"id": "KLINKED", "name": "linked", "validFrom": "2026-01-01T00:00:00+00:00",
               "validTo": "2035-12-30T00:00:00+00:00", "platform": [{"applicationId": "shop", "entityId": "beta"}]}],
    )
    plan = (await sync(store, wanted, prune=True, dry_run=True, principal="t")).plan
    deletions = {(c.kind, c.id): c.cascade for c in plan.changes if c.op == "delete"}
    assert deletions == {
        ("association", "DOMAIN/EMAIL/b.com"): None, ("association", "NUMBER/SMS/4477"): None,
        ("key", "KPRIMARY"): None, ("key", "KACMEONLY"): None,
        ("entity", "default"): {"associationsRemoved": 0, "entriesRemoved": 0, "keysUnlinked": [], "keysDisabled": []},
        # what the store holds that names acme: the plan removes each of them before acme goes
        ("entity", "acme"): {"associationsRemoved": 1, "entriesRemoved": 1, "keysUnlinked": ["KACMEONLY"],
                             "keysDisabled": ["KACMEONLY"]},
    }
    assert [(k.kind, k.id, k.reason) for k in plan.kept] == [("application", "default", "always exists")]
    applied = await sync(store, wanted, prune=True, dry_run=False, principal="t")
    assert applied.plan.changes == plan.changes
    assert await export(store) == {**wanted, "applications": [
        {"applicationId": "default", "applicationName": "Default"}, *wanted["applications"]],
        "associations": []}


async def test_dry_run_writes_nothing(store: Store) -> None:
    await seed(store)
    before, revision = await export(store), await store.revision()
    audit = (await store.list_audit(None, 0, 1)).total
    outcome = await sync(store, doc_of(applications=[{"applicationId": "x"}], entities=[]), prune=True, dry_run=True,
                         principal="t")
    assert outcome.applied is None and outcome.plan.summary() == {"create": 1, "update": 0, "delete": 8, "kept": 1}
    assert await export(store) == before
    assert await store.revision() == revision
    assert (await store.list_audit(None, 0, 1)).total == audit


async def test_every_problem_is_reported_at_once_and_nothing_is_written(store: Store) -> None:
    await seed(store)
    before, revision = await export(store), await store.revision()
    broken = doc_of(
        applications=[{"applicationId": "ok"}, {"applicationId": "bad", "rateLimits": [{"requests": 1, "per": "week"}]}],
        entities=[{"entityId": "e"}, {"entityId": "e", "entityName": "again"}],
        associations=[{"resourceType": "NUMBER", "channel": "SMS", "resourceId": "1", "applicationId": "ghost"}],
        keys=[{"id": "N1", "name": "n", "platform": [{"applicationId": "bad"}, {"entityId": "nobody"}]},
              {"id": "N2", "name": "n2", "validFrom": "2030-01-01T00:00:00Z", "validTo": "2029-01-01T00:00:00Z",
               "platform": []},
              {"id": "N3", "name": "n3"},
              {"id": "KLINKED", "name": "linked", "validTo": "2000-01-01T00:00:00Z", "platform": []}],
    )
    with pytest.raises(StateInvalid) as raised:
        await sync(store, broken, prune=False, dry_run=False, principal="t")
    assert [str(p) for p in raised.value.problems] == [
        "applications[1].rateLimits[0].per: must be one of second, minute, hour, day",
        "entities[1].entityId: 'e' is named twice (also entities[0])",
        "associations[0].applicationId: 'ghost' does not exist and the file does not create it",
        "keys[0].platform[1].entityId: 'nobody' does not exist and the file does not create it",
        "keys[1].validTo: must be after validFrom",
        "keys[2].platform: is required ([] for a primary key)",
        "keys[3].validTo: must be after validFrom",  # against the stored validFrom, which the file leaves as is
    ]
    with pytest.raises(StateInvalid) as raised:  # an unknown section is one more problem, not the only one
        await sync(store, {**doc_of(entities=[{"entityId": "e"}, {"entityId": "e"}]), "colour": "blue",
                           "applications": {"shop": {}}}, prune=False, dry_run=False, principal="t")
    assert [str(p) for p in raised.value.problems] == [
        "colour: is not a known field",
        "applications: must be a list",
        "entities[1].entityId: 'e' is named twice (also entities[0])",
    ]
    with pytest.raises(StateInvalid) as raised:  # with --prune, what the store holds but the file omits is gone
        await sync(store, doc_of(keys=[{"id": "K", "name": "k", "platform": [{"entityId": "acme"}]}]),
                   prune=True, dry_run=False, principal="t")
    assert [str(p) for p in raised.value.problems] == [
        "keys[0].platform[0].entityId: 'acme' is not in the file, so --prune would delete it"]
    assert await export(store) == before and await store.revision() == revision


async def test_a_store_error_midway_rolls_back_every_write_of_the_apply(store: Store) -> None:
    await seed(store)
    before, revision = await export(store), await store.revision()
    wanted = parse(doc_of(applications=[{"applicationId": "new"}], entities=[{"entityId": "fresh"}],
                          keys=[{"id": "NEW", "name": "n", "platform": [{"applicationId": "new"}]}]))
    with pytest.raises(NotFound):
        async with store.transaction() as tx:
            plan = compute(await read_state(tx), wanted, prune=False, now=START)
            failing = plan.changes + (Change("delete", "entity", "nobody"),)
            await run(tx, type(plan)(failing, plan.kept, False), "t", START)
    assert await export(store) == before and await store.revision() == revision
    assert not [r for r in (await store.list_audit(None, 0, 100)).items if r.principal == "t"]


async def test_created_keys_are_stored_under_the_file_s_id_with_a_secret_shown_once(store: Store) -> None:
    doc = doc_of(keys=[{"id": "MINE", "name": "ops", "enforce": False, "allowedIPs": ["10.0.0.7/8"],
                        "rateLimits": [{"requests": 9, "per": "minute"}], "platform": []}])
    outcome = await sync(store, doc, prune=False, dry_run=False, principal="t")
    assert outcome.applied is not None
    [created] = outcome.applied.secrets
    key = await store.find_key_by_hash(hash_secret(created["apiKeySecret"]))
    assert key is not None and key.id == "MINE" and key.allowed_ips == ("10.0.0.0/8",) and not key.enforce
    exported = yamlfile.dump(await export(store))
    assert created["apiKeySecret"] not in exported and key.prefix not in exported
    assert key.secret_hash.hex() not in exported
    again = await sync(store, doc, prune=False, dry_run=False, principal="t")
    assert again.applied is None  # no second secret: the key is there


async def call_state(app: Any, method: str, query: dict[str, str] | None = None, body: Any = None,
                     principal: str | None = None) -> tuple[int, Any]:
    status, _, raw = await admin.call(app, method, "/keyscope/1/state", body, query, TOKEN, principal=principal)
    return status, json.loads(raw)


async def test_the_api_applies_in_one_call_and_audits_each_change_as_the_caller(store: Store) -> None:
    keys = await seed(store)
    app = admin.create_app(store, admin_token=TOKEN, authenticator=KeyAuthenticator(store))
    status, doc = await call_state(app, "GET")
    assert status == 200 and doc == await export(store)
    doc["entities"][0]["entityName"] = "Acme Ltd"
    doc["keys"] = [k for k in doc["keys"] if k["id"] != "KPRIMARY"]
    doc["keys"].append({"id": "NEWKEY", "name": "new", "platform": [{"applicationId": "shop", "action": "FILL"}]})
    status, answer = await call_state(app, "POST", {"prune": "true"}, doc, principal="cli:tester")
    assert status == 200, answer
    assert answer["applied"] is True and answer["dryRun"] is False
    assert [(c["op"], c["kind"], c["id"]) for c in answer["changes"]] == [
        ("update", "entity", "acme"), ("create", "key", "NEWKEY"), ("delete", "key", "KPRIMARY")]
    assert answer["changes"][0]["fields"] == {"entityName": {"before": "Acme", "after": "Acme Ltd"}}
    assert [k["id"] for k in answer["createdKeys"]] == ["NEWKEY"]
    records = (await store.list_audit(None, 0, 10)).items
    assert [(r.principal, r.action, r.objects[0]) for r in records[:3]] == [
        ("cli:tester", "key.delete", f"key:{keys['primary'].id}"),
        ("cli:tester", "key.create", "key:NEWKEY"),
        ("cli:tester", "entity.update", "entity:acme"),
    ]
    assert "application:shop" in records[1].objects
    assert answer["createdKeys"][0]["apiKeySecret"] not in json.dumps([r.details for r in records])
    status, answer = await call_state(app, "POST", {"prune": "true"}, doc)  # as the token's bearer, no principal
    assert status == 200 and answer["changes"] == [] and answer["applied"] is False


async def test_the_api_names_every_problem_and_only_the_admin_token_may_call(store: Store) -> None:
    await seed(store)
    app = admin.create_app(store, admin_token=TOKEN, authenticator=KeyAuthenticator(store))
    status, answer = await call_state(app, "POST", {"dryRun": "true"}, {"keys": [{"id": "x"}], "entities": [{}]})
    assert status == 400
    assert answer["requestError"]["serviceException"]["validationErrors"] == {
        "entities[0].entityId": ["is required"],
        "keys[0].name": ["is required"],
    }
    status, answer = await call_state(app, "POST", {"dryRun": "maybe"}, {})
    assert status == 400 and "dryRun" in answer["requestError"]["serviceException"]["validationErrors"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        primary = {"Authorization": f"App {SECRETS['primary']}"}
        assert (await client.get("/provisioning/1/applications", headers=primary)).status_code == 200
        assert (await client.get("/keyscope/1/state", headers=primary)).status_code == 403
        assert (await client.post("/keyscope/1/state", json={}, headers=primary)).status_code == 403
