"""Deletion events at the store (both kinds, `KEYSCOPE_TEST_STORES`): written in the deleting transaction, gone
with it when it rolls back, in cascade order; the receivers' leases and positions; retention; the signature; and
one receiver's delivery loop against a real HTTP receiver, with an injected clock."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from events_receiver import SECRET, Receiver
from gateway_helpers import free_port

from keyscope.core.models import ApiKey, Application, Association, Entity, KeyUpdate, PlatformEntry, PlatformLink
from keyscope.core.keys import display_prefix, hash_secret, new_key_id, new_secret
from keyscope.events import signing
from keyscope.events.backoff import Backoff
from keyscope.events.sender import Sender
from keyscope.events.target import Timing, TargetLoop
from keyscope.store import Store, deliveries, outbox
from keyscope.store.outbox import Event

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def make_key(name: str, *links: tuple[str | None, str | None], enabled: bool = True) -> ApiKey:
    secret = new_secret()
    now = datetime.now(UTC)
    return ApiKey(
        id=new_key_id(), name=name, secret_hash=hash_secret(secret), prefix=display_prefix(secret), allowed_ips=(),
        valid_from=now, valid_to=now + timedelta(days=365), enabled=enabled,
        platform=tuple(PlatformEntry(None, app, entity, None) for app, entity in links),
    )


async def all_events(store: Store) -> list[Event]:
    found, _ = await deliveries.list_events(store, 0, 100)  # type: ignore[arg-type]
    return sorted(found.items, key=lambda event: event.seq)


async def world(store: Store) -> tuple[ApiKey, ApiKey, ApiKey]:
    await store.create_application(Application("shop", "Shop"))
    await store.create_application(Application("other", None))
    await store.create_entity(Entity("c1", None))
    await store.create_association(Association("NUMBER", "SMS", "shop", "c1", "4470001"))
    await store.create_association(Association("NUMBER", "SMS", "shop", None, "4470002"))
    only = await store.create_key(make_key("only", ("shop", "c1")))
    two = await store.create_key(make_key("two", ("shop", None), ("other", None)))
    off = await store.create_key(make_key("off", ("shop", None), enabled=False))
    return only, two, off


async def test_a_cascade_writes_its_events_in_order_in_its_transaction(store: Store) -> None:
    only, two, off = await world(store)
    assert await all_events(store) == []  # creations are not events
    await store.delete_application("shop")
    events = await all_events(store)
    docs = [event.doc() for event in events]
    assert [doc["type"] for doc in docs] == [
        "application.deleted", "association.removed", "association.removed",
        *["key.link.removed"] * 3, "key.disabled",
    ]
    assert [event.seq for event in events] == [1, 2, 3, 4, 5, 6, 7]
    cause = docs[0]["id"]
    assert docs[0] == {"id": cause, "type": "application.deleted", "time": docs[0]["time"], "seq": 1,
                       "applicationId": "shop"}
    assert all(doc["causeId"] == cause for doc in docs[1:])
    assert docs[1] | {"id": "", "time": ""} == {
        "id": "", "type": "association.removed", "time": "", "seq": 2, "resourceType": "NUMBER", "channel": "SMS",
        "resourceId": "4470001", "applicationId": "shop", "entityId": "c1", "causeId": cause}
    assert {(doc["keyId"], doc["applicationId"], doc["entityId"]) for doc in docs[3:6]} == {
        (only.id, "shop", "c1"), (two.id, "shop", None), (off.id, "shop", None)}
    # the key left with no link is disabled; the one disabled already only loses its link
    assert docs[6]["keyId"] == only.id and docs[6]["reason"] == "no_links_left"
    assert events[0].object == "application:shop" and events[1].object == "association:NUMBER/SMS/4470001"
    assert len({doc["id"] for doc in docs}) == 7 and len({doc["time"] for doc in docs}) == 1


async def test_a_rolled_back_deletion_leaves_no_event(store: Store) -> None:
    await world(store)
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.delete_entity("c1")
            assert [event.type for event in await all_events(tx)][:1] == ["entity.deleted"]  # seen inside it
            raise RuntimeError("changed my mind")
    assert await all_events(store) == []
    await store.get_entity("c1")
    async with store.transaction() as tx:  # and committed with it when it commits
        await tx.delete_entity("c1")
        await tx.delete_application("other")
    assert [event.type for event in await all_events(store)] == [
        "entity.deleted", "association.removed", "key.link.removed", "key.disabled",
        "application.deleted", "key.link.removed"]
    assert [event.seq for event in await all_events(store)] == [1, 2, 3, 4, 5, 6]


async def test_direct_removals_and_key_updates(store: Store) -> None:
    only, two, _ = await world(store)
    await store.delete_association(Association("NUMBER", "SMS", "shop", None, "4470002"))
    await store.update_key(two.id, KeyUpdate(platform=(PlatformLink("other", None, "FILL"),)))  # drops shop
    await store.update_key(two.id, KeyUpdate(name="renamed"))  # no event
    await store.update_key(only.id, KeyUpdate(enabled=False))
    await store.update_key(only.id, KeyUpdate(enabled=False))  # already disabled: no event
    await store.delete_key(two.id)
    docs = [event.doc() for event in await all_events(store)]
    assert [(doc["type"], doc.get("causeId")) for doc in docs] == [
        ("association.removed", None), ("key.link.removed", None), ("key.disabled", None), ("key.deleted", None)]
    assert docs[1]["applicationId"] == "shop" and docs[1]["keyId"] == two.id
    assert docs[2] == docs[2] | {"keyId": only.id, "reason": "updated"}
    assert docs[3]["links"] == [{"applicationId": "other", "entityId": None, "action": "FILL"}]


async def test_leases_positions_and_retries(store: Store) -> None:
    url, lease = "http://127.0.0.1:9/hook", 10.0
    first = await deliveries.claim(store, url, "a", T0, lease)  # type: ignore[arg-type]
    assert first is not None and first.done_seq == 0 and first.owner == "a"
    assert await deliveries.claim(store, url, "b", T0 + timedelta(seconds=5), lease) is None  # type: ignore[arg-type]
    assert await deliveries.renew(store, url, "a", T0 + timedelta(seconds=5), lease)  # type: ignore[arg-type]
    assert await deliveries.claim(store, url, "b", T0 + timedelta(seconds=14), lease) is None  # type: ignore[arg-type]
    later = T0 + timedelta(seconds=16)  # a's lease lapsed: b takes over, and a finds out at its next write
    taken = await deliveries.claim(store, url, "b", later, lease)  # type: ignore[arg-type]
    assert taken is not None and taken.owner == "b"
    assert not await deliveries.advance(store, url, "a", 1, later, lease)  # type: ignore[arg-type]
    assert not await deliveries.renew(store, url, "a", later, lease)  # type: ignore[arg-type]
    assert await deliveries.failed(store, url, "b", "HTTP 500", later, later + timedelta(seconds=1), lease)  # type: ignore[arg-type]
    row = await deliveries.target(store, url)  # type: ignore[arg-type]
    assert row is not None and (row.attempts, row.last_error, row.next_attempt) == (
        1, "HTTP 500", later + timedelta(seconds=1))
    assert await deliveries.advance(store, url, "b", 3, later, lease)  # type: ignore[arg-type]
    assert not await deliveries.advance(store, url, "b", 2, later, lease)  # type: ignore[arg-type]  # never back
    row = await deliveries.target(store, url)  # type: ignore[arg-type]
    assert row is not None and (row.done_seq, row.delivered, row.attempts, row.last_error) == (3, 1, 0, None)
    await deliveries.release(store, url, "b")  # type: ignore[arg-type]
    assert await deliveries.claim(store, url, "a", later, lease) is not None  # type: ignore[arg-type]
    # a URL no instance has named for RETIRE is forgotten by the next claim of another
    far = later + deliveries.RETIRE + timedelta(seconds=1)
    assert await deliveries.claim(store, "http://127.0.0.1:9/other", "a", far, lease) is not None  # type: ignore[arg-type]
    assert [t.url for t in await deliveries.targets(store)] == ["http://127.0.0.1:9/other"]  # type: ignore[arg-type]


async def test_retention_keeps_what_a_receiver_lacks(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "KEEP", 3)
    url = "http://127.0.0.1:9/hook"
    assert await deliveries.claim(store, url, "a", T0, 10.0) is not None  # type: ignore[arg-type]
    for number in range(6):
        await store.create_entity(Entity(f"e{number}", None))
        await store.delete_entity(f"e{number}")
    assert [event.seq for event in await all_events(store)] == [1, 2, 3, 4, 5, 6]  # none taken: all kept
    assert await deliveries.advance(store, url, "a", 5, T0, 10.0)  # type: ignore[arg-type]
    await store.create_entity(Entity("e6", None))
    await store.delete_entity("e6")
    assert [event.seq for event in await all_events(store)] == [5, 6, 7]  # KEEP, and nothing beyond 5 dropped
    assert [event.seq for event in await deliveries.pending(store, 5, 10)] == [6, 7]  # type: ignore[arg-type]
    assert await deliveries.last_seq(store) == 7  # type: ignore[arg-type]


def test_the_signature_is_hmac_sha256_over_the_body() -> None:
    body = b'{"id":"x","type":"entity.deleted"}'
    header = signing.signature(SECRET, body)
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(header, expected)
    assert signing.verify(SECRET, body, header)
    assert not signing.verify(SECRET, body + b" ", header) and not signing.verify("other", body, header)


def test_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    backoff = Backoff(cap=4.0)
    assert [backoff.delay(n, lambda: 0.999999) for n in (1, 2, 3, 4, 5, 50)] == pytest.approx(
        [0.5, 1.0, 2.0, 4.0, 4.0, 4.0], rel=1e-5)
    assert [backoff.delay(n, lambda: 0.0) for n in (1, 2, 3, 4)] == [0.25, 0.5, 1.0, 2.0]


async def test_a_loop_retries_with_back_off_then_delivers_in_order(store: Store) -> None:
    """One receiver's loop against a real HTTP receiver that fails, with a clock the test moves."""
    await world(store)
    await store.delete_application("shop")
    receiver = Receiver(free_port(), mode="fail").start()
    now = [T0]
    sender = Sender(receiver.url, timeout=5.0)
    loop = TargetLoop(store, sender, SECRET, "me", Timing(lease=3.0, backoff=Backoff(cap=30.0)),  # type: ignore[arg-type]
                      clock=lambda: now[0])
    try:
        await loop.step()  # claims, tries the first event: 500
        row = await deliveries.target(store, receiver.url)  # type: ignore[arg-type]
        assert row is not None and (row.attempts, row.last_error, row.done_seq) == (1, "HTTP 500", 0)
        assert row.next_attempt is not None and T0 + timedelta(seconds=0.25) <= row.next_attempt <= T0 + timedelta(
            seconds=0.5)
        assert len(receiver.received) == 1
        await asyncio.wait_for(loop.step(), 5)  # too early: waits, sends nothing
        assert len(receiver.received) == 1
        receiver.mode = "ok"
        now[0] = T0 + timedelta(seconds=1)
        await loop.step()
        docs = receiver.docs()
        assert [doc["seq"] for doc in docs] == [1, 1, 2, 3, 4, 5, 6, 7]
        first, second = receiver.received[0], receiver.received[1]
        assert first.body == second.body and first.headers["x-keyscope-event-id"] == docs[0]["id"]
        assert (first.headers["x-keyscope-delivery-attempt"], second.headers["x-keyscope-delivery-attempt"]) == ("1", "2")
        for item in receiver.received:
            assert signing.verify(SECRET, item.body, item.headers["x-keyscope-signature"])
            assert item.headers["content-type"] == "application/json"
        row = await deliveries.target(store, receiver.url)  # type: ignore[arg-type]
        assert row is not None and (row.done_seq, row.delivered, row.attempts) == (7, 7, 0)
    finally:
        await loop.release()
        sender.close()
        receiver.stop()


async def test_an_unexpected_error_does_not_end_delivery(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """A bug in one round is logged with its traceback, and the loop goes on: the receiver still gets it all."""
    await world(store)
    await store.delete_application("shop")
    receiver = Receiver(free_port(), mode="ok").start()
    sender = Sender(receiver.url, timeout=5.0)
    post = sender.post
    calls: list[bytes] = []

    async def broken_once(body: bytes, headers: Any) -> Any:
        calls.append(body)
        if len(calls) == 1:
            raise RuntimeError("a bug in the sender")
        return await post(body, headers)

    sender.post = broken_once  # type: ignore[method-assign]
    loop = TargetLoop(store, sender, SECRET, "me", Timing(lease=3.0), clock=lambda: T0)  # type: ignore[arg-type]

    async def at_once(seconds: float) -> None:
        await asyncio.sleep(0)

    loop._sleep = at_once  # type: ignore[method-assign]
    task = asyncio.create_task(loop.run())
    try:
        for _ in range(500):
            if len(receiver.received) >= 7:
                break
            await asyncio.sleep(0.01)
        assert [doc["seq"] for doc in receiver.docs()] == [1, 2, 3, 4, 5, 6, 7]
        assert "failed unexpectedly" in caplog.text and "a bug in the sender" in caplog.text
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await loop.release()
        sender.close()
        receiver.stop()
