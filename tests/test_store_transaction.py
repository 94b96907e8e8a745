"""`Store.transaction()`: several writes applied whole or not at all (what `keyscope apply` relies on)."""

from __future__ import annotations

import pytest

from keyscope.core.models import Application, Association, AssociationFilter, Entity
from keyscope.store import Conflict, NotFound, Store

pytestmark = pytest.mark.anyio


async def test_writes_in_a_transaction_are_seen_inside_and_committed_together(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.create_application(Application("shop", "Shop"))
        await tx.create_entity(Entity("acme", None))
        await tx.create_association(Association("NUMBER", "SMS", "shop", "acme", "4477"))
        assert (await tx.get_application("shop")).application_name == "Shop"  # reads see the transaction
        assert (await tx.list_associations(AssociationFilter(), 0, 10)).total == 1
    assert (await store.get_entity("acme")).entity_id == "acme"
    assert (await store.list_associations(AssociationFilter(application_id="shop"), 0, 10)).total == 1


async def test_a_failing_write_rolls_back_every_write_before_it(store: Store) -> None:
    await store.create_entity(Entity("acme", None))
    revision = await store.revision()
    with pytest.raises(Conflict):
        async with store.transaction() as tx:
            await tx.create_application(Application("shop", "Shop"))
            await tx.delete_entity("acme")
            await tx.create_application(Application("shop", "Again"))
    with pytest.raises(NotFound):
        await store.get_application("shop")
    assert (await store.get_entity("acme")).entity_id == "acme"
    assert await store.revision() == revision


async def test_an_exception_in_the_block_rolls_back(store: Store) -> None:
    with pytest.raises(RuntimeError, match="changed my mind"):
        async with store.transaction() as tx:
            await tx.create_application(Application("shop", None))
            raise RuntimeError("changed my mind")
    with pytest.raises(NotFound):
        await store.get_application("shop")


async def test_transactions_do_not_nest(store: Store) -> None:
    async with store.transaction() as tx:
        with pytest.raises(RuntimeError, match="nest"):
            async with tx.transaction():
                pass
