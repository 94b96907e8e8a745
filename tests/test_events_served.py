"""Deletion events through real processes: `keyscope serve` subprocesses, a real HTTP receiver on 127.0.0.1.

A receiver that is down, then up, gets everything; a gateway killed with SIGKILL while a receiver holds an event
delivers it (again) after a restart; two instances on one PostgreSQL database deliver each event once, in order.
Short back-off (`--events-retry-max`) and leases (`--events-lease`) keep it quick.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from events_receiver import SECRET, Receiver, wait_for
from gateway_helpers import PYTHON, Echo, Gateway, free_port, init_store

from keyscope.events import signing

FAST = ("--events-retry-max", "0.3", "--events-lease", "2")
ENV = {"KEYSCOPE_EVENTS_SECRET": SECRET}


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    backend = Echo.start()
    yield backend
    backend.stop()


def start(echo: Echo, folder: Path, receiver: Receiver, *extra: str, store_url: str | None = None) -> Gateway:
    return Gateway.start(echo.url, folder, "--events-url", receiver.url, *FAST, *extra, env=ENV, store_url=store_url)


def world(gateway: Gateway, app: str, entity: str) -> None:
    """An application and an entity, an association and two keys linking them: a cascade with something in it."""
    gateway.create_application(app)
    gateway.create_entity(entity)
    answer = gateway.admin("POST", "/provisioning/1/associations", {
        "resourceType": "NUMBER", "channel": "SMS", "applicationId": app, "entityId": entity,
        "resourceId": str(abs(hash(app)) % 10**12)})
    assert answer.status_code in (200, 201), answer.text
    gateway.create_key(f"{app}-pair", {"applicationId": app, "entityId": entity})
    gateway.create_key(f"{app}-app", {"applicationId": app})


def listing(gateway: Gateway, query: str = "size=100") -> dict[str, Any]:
    answer = gateway.admin("GET", f"/keyscope/1/events?{query}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def settled(gateway: Gateway) -> bool:
    targets = listing(gateway, "size=1")["targets"]
    return bool(targets) and all(target["pending"] == 0 for target in targets)


def check_signed(receiver: Receiver) -> None:
    for item in receiver.taken():
        assert signing.verify(SECRET, item.body, item.headers["x-keyscope-signature"])
        assert item.headers["x-keyscope-event-id"] == item.doc["id"]


def test_a_receiver_down_then_up_loses_nothing(echo: Echo, tmp_path: Path) -> None:
    receiver = Receiver(free_port())  # not started: down
    gateway = start(echo, tmp_path, receiver)
    try:
        world(gateway, "shop", "c1")
        assert gateway.admin("DELETE", "/provisioning/1/applications/shop").status_code == 200
        assert gateway.admin("DELETE", "/provisioning/1/entities/c1").status_code == 200
        written = sorted(listing(gateway)["results"], key=lambda event: event["seq"])
        assert [event["type"] for event in written] == [
            "application.deleted", "association.removed", "key.link.removed", "key.link.removed",
            "key.disabled", "key.disabled", "entity.deleted"]

        def retried() -> bool:
            target = listing(gateway, "size=1")["targets"][0]
            return target["attempts"] >= 3

        wait_for(retried, "a few failed attempts")
        target = listing(gateway, "pending=true&size=100")
        row = target["targets"][0]
        assert row["url"] == receiver.url and row["pending"] == 7 and row["deliveredUpTo"] == 0
        assert "ConnectionRefusedError" in row["lastError"] and row["nextAttempt"] is not None
        head = min(target["results"], key=lambda event: event["seq"])
        assert head["deliveries"][0]["state"] == "retrying"
        receiver.start()  # up
        wait_for(lambda: settled(gateway), "every event taken")
        docs = receiver.docs()
        assert [doc["id"] for doc in docs] == [event["id"] for event in written]  # once each, in order
        assert [doc for doc in docs] == [event["event"] for event in written]
        check_signed(receiver)
        assert listing(gateway, "pending=true")["results"] == []
        assert listing(gateway, "type=entity.deleted")["results"][0]["object"] == "entity:c1"
        assert "events: delivery of event" in gateway.error_log.read_text()  # the failure was logged
        assert SECRET not in gateway.error_log.read_text() + gateway.access_log.read_text()
    finally:
        gateway.stop()
        receiver.stop()


def test_a_gateway_killed_mid_delivery_delivers_after_a_restart(echo: Echo, tmp_path: Path) -> None:
    receiver = Receiver(free_port(), mode="hold").start()  # takes the first event and does not answer
    gateway = start(echo, tmp_path, receiver)
    restarted = None
    try:
        world(gateway, "shop", "c1")
        assert gateway.admin("DELETE", "/provisioning/1/entities/c1").status_code == 200
        written = sorted(listing(gateway)["results"], key=lambda event: event["seq"])
        assert receiver.held.wait(20), "the receiver never got the first event"
        gateway.process.kill()  # SIGKILL: no clean stop, its lease must lapse
        gateway.process.wait(10)
        gateway.client.close()
        receiver.release.set()  # answers the dead connection; nobody records that answer
        restarted = start(echo, tmp_path, receiver, store_url=gateway.store_url)
        wait_for(lambda: settled(restarted), "every event taken after the restart")
        ids = [doc["id"] for doc in receiver.docs()]
        assert ids[0] == ids[1] == written[0]["id"]  # at least once: the one in flight is sent again
        assert ids[1:] == [event["id"] for event in written]  # then everything, once, in order
        check_signed(receiver)
        assert receiver.received[1].headers["x-keyscope-delivery-attempt"] == "1"  # its first recorded attempt
    finally:
        gateway.stop()
        if restarted is not None:
            restarted.stop()
        receiver.stop()


@pytest.mark.postgres
def test_two_instances_on_postgresql_deliver_each_event_once(echo: Echo, database: str, tmp_path: Path) -> None:
    receiver = Receiver(free_port()).start()
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    first = start(echo, tmp_path / "one", receiver, store_url=database)
    second = None
    try:
        second = start(echo, tmp_path / "two", receiver, store_url=database)
        count = 12
        for number in range(count):
            world(first if number % 2 else second, f"app{number}", f"ent{number}")
        for number in range(count):  # deletions through both instances, interleaved
            gateway = first if number % 2 else second
            assert gateway.admin("DELETE", f"/provisioning/1/applications/app{number}").status_code == 200
            assert gateway.admin("DELETE", f"/provisioning/1/entities/ent{number}").status_code == 200
        total = count * 7
        wait_for(lambda: settled(first) and len(receiver.docs()) >= total, "every event taken", timeout=40)
        docs = receiver.docs()
        ids = [doc["id"] for doc in docs]
        assert len(ids) == total and len(set(ids)) == total, "an event was delivered twice"
        assert [doc["seq"] for doc in docs] == list(range(1, total + 1))  # in order: per object and overall
        check_signed(receiver)
        owners = {target["owner"] for target in listing(second, "size=1")["targets"]}
        assert len(owners) == 1  # one instance holds the receiver's lease
    finally:
        first.stop()
        if second is not None:
            second.stop()
        receiver.stop()


def test_events_url_without_a_secret_stops_start_up(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'keyscope.db'}"
    init_store(store)
    command = [PYTHON, "-m", "keyscope.serve.server", "--upstream", "http://127.0.0.1:9", "--store", store,
               "--port", str(free_port()), "--events-url", "http://127.0.0.1:9/hook"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KEYSCOPE_")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "keyscope serve: events-url needs --events-secret (or KEYSCOPE_EVENTS_SECRET): events are always signed")
