"""Module-scoped servers and keys for the end-to-end gateway tests of this package.

One echo backend and one `keyscope serve` per test module and store kind (stores.py); the world of keys is made
through the management API. Every test starts with an empty echo log.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gateway_helpers import APP_A, APP_B, ENT_A, ENT_B, Echo, Gateway, World
from stores import STORE_URLS, store_params


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    server = Echo.start()
    yield server
    server.stop()


@pytest.fixture(scope="module", params=store_params())
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
