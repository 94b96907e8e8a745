"""Random sequences of management calls against the HTTP API, checked against a plain in-memory model.

Every response's status (and each cascade report) must be what the model predicts; the keys (enabled, entries)
are compared after every step, since they are what the cascade rules protect; at the end of each run the whole
listed state, and what each key may call, must equal the model's. Id pools are tiny on purpose, so that links,
cascades, conflicts and misses all happen often within a few dozen steps.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from keyscope.control.admin import create_app
from keyscope.decide.auth import KeyAuthenticator
from keyscope.store import store_from_url

TOKEN = "state-machine-admin-token"
KEYS = "/settings/2/api-keys"
ASSOCIATIONS = "/provisioning/1/associations"
KINDS = {"application": "/provisioning/1/applications", "entity": "/provisioning/1/entities"}
POOLS = {"application": ["default", "a", "b"], "entity": ["x", "y"]}
POSITION = {"application": 0, "entity": 1}

kinds = st.sampled_from(sorted(KINDS))
names = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=6)
apps = st.sampled_from(POOLS["application"])
entities = st.sampled_from(POOLS["entity"])
resources = st.tuples(st.sampled_from([("NUMBER", "SMS"), ("DOMAIN", "EMAIL")]), st.sampled_from(["r1", "r2"]))
links = st.lists(
    st.tuples(
        st.none() | apps,
        st.none() | entities,
        st.sampled_from([None, None, None, "FILL", "FORCE"]),
    ).filter(lambda link: link[0] is not None or link[1] is not None),
    max_size=2,
)

Entry = tuple[str | None, str | None, str | None]


@dataclass
class KeyModel:
    secret: str
    enabled: bool
    entries: list[Entry] = field(default_factory=list)


def platform_error(entries: list[Entry], known: dict[str, dict[str, str | None]] | None) -> str | None:
    """The field a platform list is refused for: its shape first, then (given `known`) its references."""
    seen: set[tuple[str | None, str | None]] = set()
    with_action = False
    for i, (app, entity, action) in enumerate(entries):
        if action is not None:
            if with_action:
                return f"platform[{i}].action"
            with_action = True
        if (app, entity) in seen:
            return f"platform[{i}]"
        seen.add((app, entity))
    for i, (app, entity, _) in enumerate(entries if known is not None else []):
        assert known is not None
        if app is not None and app not in known["application"]:
            return f"platform[{i}].applicationId"
        if entity is not None and entity not in known["entity"]:
            return f"platform[{i}].entityId"
    return None


def platform_doc(entries: list[Entry]) -> list[dict[str, Any]]:
    return [{"applicationId": a, "entityId": e, "action": action} for a, e, action in entries]


class AdminMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.TemporaryDirectory()
        self.loop = asyncio.Runner()
        self.store = store_from_url(f"sqlite:///{self.folder.name}/keyscope.db", create=True)
        self.loop.run(self.store.open())
        app = create_app(self.store, admin_token=TOKEN, authenticator=KeyAuthenticator(self.store, ttl=60))
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://keyscope.test",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        self.named: dict[str, dict[str, str | None]] = {"application": {}, "entity": {}}
        self.associations: dict[tuple[str, str, str], tuple[str, str | None]] = {}
        self.keys: dict[str, KeyModel] = {}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.loop.run(self.client.request(method, path, **kwargs))

    def teardown(self) -> None:
        try:
            if self.named["application"]:  # initialize() ran
                self.check_listed_state()
                self.keys_match_the_model()
                for key in self.keys.values():
                    self.check_key_may_call(key)
        finally:
            self.loop.run(self.client.aclose())
            self.loop.run(self.store.close())
            self.loop.close()
            self.folder.cleanup()

    @initialize(seeded=st.lists(links, min_size=2, max_size=3))
    def start(self, seeded: list[list[Entry]]) -> None:
        """Every pool id exists and a few keys link to them, so that deletes cascade from the first step."""
        self.named["application"]["default"] = "Default"
        for kind, pool in POOLS.items():
            for ident in pool[1:] if kind == "application" else pool:
                self.create(kind, ident, ident.upper())
        for entries in seeded:
            self.create_key(entries)

    @rule(kind=kinds, op=st.sampled_from(["create", "rename", "delete"]), data=st.data(), name=names)
    def change_named(self, kind: str, op: str, data: st.DataObject, name: str) -> None:
        """One rule for the three operations, so that rule selection never leaves out deletes."""
        ident = data.draw(st.sampled_from(POOLS[kind]))
        if op == "create":
            self.create(kind, ident, name)
        elif op == "rename":
            self.rename(kind, ident, name)
        else:
            self.delete(kind, ident)

    # applications and entities ---------------------------------------------------------------------
    def create(self, kind: str, ident: str, name: str) -> None:
        table = self.named[kind]
        response = self.request("POST", KINDS[kind], json={f"{kind}Id": ident, f"{kind}Name": name})
        assert response.status_code == (409 if ident in table else 201), response.text
        table.setdefault(ident, name)

    def rename(self, kind: str, ident: str, name: str) -> None:
        table = self.named[kind]
        response = self.request("PUT", f"{KINDS[kind]}/{ident}", json={f"{kind}Name": name})
        assert response.status_code == (204 if ident in table else 404), response.text
        if ident in table:
            table[ident] = name

    def delete(self, kind: str, ident: str) -> None:
        table = self.named[kind]
        response = self.request("DELETE", f"{KINDS[kind]}/{ident}")
        if ident == "default":
            assert response.status_code == 400, response.text
            return
        if ident not in table:
            assert response.status_code == 404, response.text
            return
        assert response.status_code == 200, response.text
        position = POSITION[kind]
        removed = [resource for resource, owner in self.associations.items() if owner[position] == ident]
        for resource in removed:
            del self.associations[resource]
        entries_removed = 0
        disabled = []
        for key_id, key in self.keys.items():
            kept = [entry for entry in key.entries if entry[position] != ident]
            entries_removed += len(key.entries) - len(kept)
            if key.entries and not kept:
                key.enabled = False
                disabled.append(key_id)
            key.entries = kept
        assert response.json() == {
            "associationsRemoved": len(removed),
            "entriesRemoved": entries_removed,
            "keysDisabled": sorted(disabled),
        }
        del table[ident]

    # associations ----------------------------------------------------------------------------------
    def _association(self, resource: tuple[tuple[str, str], str], app: str, entity: str | None) -> dict[str, Any]:
        (resource_type, channel), resource_id = resource
        return {"resourceType": resource_type, "channel": channel, "applicationId": app, "entityId": entity,
                "resourceId": resource_id}  # fmt: skip

    @rule(op=st.sampled_from(["associate", "dissociate"]), resource=resources, app=apps, entity=st.none() | entities)
    def change_association(
        self, op: str, resource: tuple[tuple[str, str], str], app: str, entity: str | None
    ) -> None:
        (self.associate if op == "associate" else self.dissociate)(resource, app, entity)

    def associate(self, resource: tuple[tuple[str, str], str], app: str, entity: str | None) -> None:
        response = self.request("POST", ASSOCIATIONS, json=self._association(resource, app, entity))
        identity = (*resource[0], resource[1])
        if app not in self.named["application"] or (entity is not None and entity not in self.named["entity"]):
            assert response.status_code == 404, response.text
        elif identity in self.associations:
            assert response.status_code == 409, response.text
        else:
            assert response.status_code == 201, response.text
            self.associations[identity] = (app, entity)

    def dissociate(self, resource: tuple[tuple[str, str], str], app: str, entity: str | None) -> None:
        response = self.request("DELETE", ASSOCIATIONS, json=self._association(resource, app, entity))
        identity = (*resource[0], resource[1])
        if self.associations.get(identity) == (app, entity):
            assert response.status_code == 204, response.text
            del self.associations[identity]
        else:
            assert response.status_code == 404, response.text

    # keys ------------------------------------------------------------------------------------------
    @rule(entries=links)
    def create_key(self, entries: list[Entry]) -> None:
        response = self.request("POST", KEYS, json={"name": "k", "platform": platform_doc(entries)})
        error = platform_error(entries, self.named)
        if error is not None:
            assert response.status_code == 400, response.text
            assert [v["property"] for v in response.json()["violations"]] == [error]
            return
        assert response.status_code == 200, response.text
        self.keys[response.json()["id"]] = KeyModel(response.json()["apiKeySecret"], True, list(entries))

    @precondition(lambda self: bool(self.keys))
    @rule(op=st.sampled_from(["relink", "enable", "disable", "delete", "use"]), data=st.data(), entries=links)
    def change_key(self, op: str, data: st.DataObject, entries: list[Entry]) -> None:
        key_id = data.draw(st.sampled_from(sorted(self.keys) + (["0" * 32] if op != "use" else [])))
        if op == "relink":
            self.relink_key(key_id, entries)
        elif op in ("enable", "disable"):
            self.set_enabled(key_id, op == "enable")
        elif op == "delete":
            self.delete_key(key_id)
        else:  # the authenticator caches keys for 60 s here, so a stale cache shows
            self.check_key_may_call(self.keys[key_id])

    def relink_key(self, key_id: str, entries: list[Entry]) -> None:
        response = self.request("PUT", f"{KEYS}/{key_id}", json={"platform": platform_doc(entries)})
        error = platform_error(entries, self.named)
        if platform_error(entries, None) is None and key_id not in self.keys:
            assert response.status_code == 404, response.text
        elif error is not None:
            assert response.status_code == 400, response.text
            assert [v["property"] for v in response.json()["violations"]] == [error]
        else:
            assert response.status_code == 200, response.text
            self.keys[key_id].entries = list(entries)

    def set_enabled(self, key_id: str, enabled: bool) -> None:
        response = self.request("PUT", f"{KEYS}/{key_id}", json={"enabled": enabled})
        key = self.keys.get(key_id)
        if key is None:
            assert response.status_code == 404, response.text
        elif enabled and not key.enabled and not key.entries:
            assert response.status_code == 400, response.text  # may have been emptied by a cascade
        else:
            assert response.status_code == 200, response.text
            key.enabled = enabled

    def delete_key(self, key_id: str) -> None:
        response = self.request("DELETE", f"{KEYS}/{key_id}")
        assert response.status_code == (204 if self.keys.pop(key_id, None) else 404), response.text

    # checks ----------------------------------------------------------------------------------------
    @invariant()
    def keys_match_the_model(self) -> None:
        listed = self.request("GET", KEYS).json()["apiKeys"]
        assert {
            k["id"]: (k["enabled"], [(e["applicationId"], e["entityId"], e["action"]) for e in k["platform"]])
            for k in listed
        } == {key_id: (key.enabled, key.entries) for key_id, key in self.keys.items()}
        assert all("apiKeySecret" not in k for k in listed)

    def check_key_may_call(self, key: KeyModel) -> None:
        response = self.request("GET", KINDS["application"], headers={"Authorization": f"App {key.secret}"})
        assert response.status_code == (401 if not key.enabled else 403 if key.entries else 200)

    def check_listed_state(self) -> None:
        for kind, base in KINDS.items():
            listed = self.request("GET", base, params={"size": 1000}).json()["results"]
            assert {item[f"{kind}Id"]: item[f"{kind}Name"] for item in listed} == self.named[kind]
        associations = self.request("GET", ASSOCIATIONS, params={"size": 1000}).json()["results"]
        assert {
            (a["resourceType"], a["channel"], a["resourceId"]): (a["applicationId"], a["entityId"])
            for a in associations
        } == self.associations


AdminMachine.TestCase.settings = settings(
    max_examples=10, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestAdminState = AdminMachine.TestCase
