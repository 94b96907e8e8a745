"""Module-scoped servers and keys for the end-to-end gateway tests (import the fixtures into a test module).

One echo backend and one `keyscope serve` per test module and store kind; the world below is made through the
management API.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import _MARKS, STORE_KINDS, STORE_URLS
from gateway_helpers import Echo, Gateway, Key

APP_A, APP_B = "app-a", "app-b"
ENT_A, ENT_B = "ent-a", "ent-b"


@dataclass(frozen=True)
class World:
    primary: Key
    app: Key  # app-a, entity unconstrained
    pair: Key  # app-a / ent-a
    entity: Key  # ent-a, application unconstrained
    fill: Key  # app-a / ent-a, FILL
    force: Key  # app-a / ent-a, FORCE
    two: Key  # app-a / ent-a and app-b / ent-b


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    server = Echo.start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=[pytest.param(kind, marks=_MARKS.get(kind, [])) for kind in STORE_KINDS])
def gateway(echo: Echo, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """One gateway per store kind in KEYSCOPE_TEST_STORES (conftest.py), each on a fresh store."""
    folder = tmp_path_factory.mktemp("gateway")
    with STORE_URLS[request.param](folder) as store_url:
        server = Gateway.start(echo.url, folder, store_url=store_url)
        yield server
        server.stop()


@pytest.fixture(scope="module")
def world(gateway: Gateway) -> World:
    for application in (APP_A, APP_B):
        gateway.create_application(application)
    for entity in (ENT_A, ENT_B):
        gateway.create_entity(entity)
    return World(
        primary=gateway.create_key("primary"),
        app=gateway.create_key("app", {"applicationId": APP_A}),
        pair=gateway.create_key("pair", {"applicationId": APP_A, "entityId": ENT_A}),
        entity=gateway.create_key("entity", {"entityId": ENT_A}),
        fill=gateway.create_key("fill", {"applicationId": APP_A, "entityId": ENT_A, "action": "FILL"}),
        force=gateway.create_key("force", {"applicationId": APP_A, "entityId": ENT_A, "action": "FORCE"}),
        two=gateway.create_key(
            "two", {"applicationId": APP_A, "entityId": ENT_A}, {"applicationId": APP_B, "entityId": ENT_B}
        ),
    )


@pytest.fixture(autouse=True)
def fresh_log(echo: Echo) -> None:
    echo.clear()
