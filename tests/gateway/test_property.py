"""Property, through the running gateway: for random JSON documents with ids planted at random depths and places,
the request is forwarded if and only if every planted id is within the key's scope."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Any

import pytest
from gateway_helpers import APP_A, APP_B, ENT_A, ENT_B, Echo, Gateway, World
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

ID_NAMES = {"applicationid", "entityid"}


@dataclass(frozen=True)
class Plant:
    """An id planted as `{name: value}` where the document had a leaf; the name in any letter case."""

    name: str
    value: str | None

    @property
    def kind(self) -> str:
        return self.name.lower()


def spellings(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.upper(), name.lower(), name[0].upper() + name[1:]])


plants = st.one_of(
    st.builds(Plant, spellings("applicationId"), st.sampled_from([APP_A, APP_B, None])),
    st.builds(Plant, spellings("entityId"), st.sampled_from([ENT_A, ENT_B, None])),
)
# Lower-case names: two names of one object that differ only in case or `_` are refused as ambiguous
# (tests/scope/test_names.py), which is not what this property is about.
names = st.text(string.ascii_lowercase, min_size=1, max_size=8).filter(lambda k: k not in ID_NAMES)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
)
documents = st.dictionaries(
    names,
    st.recursive(
        scalars | plants,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(names, children, max_size=4),
        max_leaves=20,
    ),
    max_size=5,
)


def materialise(node: Any, planted: list[Plant]) -> Any:
    if isinstance(node, Plant):
        planted.append(node)
        return {node.name: node.value}
    if isinstance(node, list):
        return [materialise(item, planted) for item in node]
    if isinstance(node, dict):
        return {key: materialise(value, planted) for key, value in node.items()}
    return node


def in_scope(plant: Plant, key: str) -> bool:
    if plant.value is None:  # null counts as missing, and missing is fine away from declared locations
        return True
    if plant.kind == "applicationid":
        return plant.value == APP_A
    return key == "app" or plant.value == ENT_A  # the `app` key leaves entities unconstrained


CASES = [
    # (endpoint, key, how the planted document is wrapped into a request that passes without plants)
    ("/ccaas/1/conversations", "app", lambda doc: doc),  # ids: none
    ("/ccaas/1/conversations", "pair", lambda doc: doc),
    ("/mms/1/advanced", "app", lambda doc: {"messages": [{"to": "1", "applicationId": APP_A}], "extra": doc}),
    (
        "/mms/1/advanced",
        "pair",
        lambda doc: {"messages": [{"to": "1", "applicationId": APP_A, "entityId": ENT_A}], "extra": [doc]},
    ),
]


@pytest.mark.parametrize(("path", "key_name", "wrap"), CASES, ids=[f"{p} {k}" for p, k, _ in CASES])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=documents)
def test_forwarded_iff_every_planted_id_is_in_scope(
    path: str, key_name: str, wrap: Any, document: dict[str, Any], gateway: Gateway, echo: Echo, world: World
) -> None:
    planted: list[Plant] = []
    body = wrap(materialise(document, planted))
    echo.clear()
    response = gateway.request("POST", path, getattr(world, key_name), json=body)
    expected = all(in_scope(plant, key_name) for plant in planted)
    event("forwarded" if expected else "refused")
    assert response.status_code == (200 if expected else 403), (response.text, planted)
    log = echo.log()
    if expected:
        assert [json.loads(record["body"]) for record in log] == [body]
    else:
        assert log == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    document=documents,
    declared=st.lists(st.fixed_dictionaries({}, optional={"applicationId": st.sampled_from([APP_A, APP_B]),
                                                         "entityId": st.sampled_from([ENT_A, ENT_B])}),
                      min_size=1, max_size=3),
)
def test_force_overwrites_declared_ids_and_still_checks_the_rest(
    document: dict[str, Any], declared: list[dict[str, str]], gateway: Gateway, echo: Echo, world: World
) -> None:
    planted: list[Plant] = []
    extra = materialise(document, planted)
    body = {"messages": [{"to": str(i), **ids} for i, ids in enumerate(declared)], "extra": extra}
    echo.clear()
    response = gateway.request("POST", "/mms/1/advanced", world.force, json=body)
    expected = all(in_scope(plant, "pair") for plant in planted)
    event("forwarded" if expected else "refused")
    assert response.status_code == (200 if expected else 403), (response.text, planted)
    log = echo.log()
    if not expected:
        assert log == []
        return
    [record] = log
    forwarded = json.loads(record["body"])
    assert forwarded["extra"] == extra
    assert forwarded["messages"] == [
        {"to": str(i), "applicationId": APP_A, "entityId": ENT_A} for i in range(len(declared))
    ]
