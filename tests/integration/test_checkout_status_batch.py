"""Checkout's purchase status consumer taking a fetched batch at once (real PostgreSQL)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from billing_cli import stripe_sim
from billing_events.kafka import InboundMessage
from billing_events.topics import Topics
from billing_events.v1 import ledger_pb2, stripe_pb2
from billing_platform.db import Database
from checkout.handlers import batch_handlers_for

Offsets = iter(range(10**9))


def inbound(topic: str, value: bytes) -> InboundMessage:
    return InboundMessage(topic, 0, next(Offsets), b"k", value, (), 0)


def paid_event(topics: Topics, purchase: stripe_sim.SimPurchase) -> InboundMessage:
    event = stripe_sim.session_completed(purchase)
    envelope = stripe_pb2.StripeEventReceived(
        stripe_event_id=event["id"], type=event["type"], payload=json.dumps(event).encode()
    )
    return inbound(topics.stripe_events, envelope.SerializeToString())


def posting(topics: Topics, kind: int, reference: str, user: str, amount: int) -> InboundMessage:
    posted = ledger_pb2.LedgerTransactionPosted(
        transaction_id=str(uuid.uuid4()),
        kind=kind,  # type: ignore[arg-type]
        user_id=user,
        reference_id=reference,
        entries=[ledger_pb2.LedgerEntry(account=f"wallet:{user}", amount_millicredits=amount)],
    )
    return inbound(topics.ledger, posted.SerializeToString())


@pytest.fixture
async def checkout_db(migrated_db: Any, schema: str) -> Database:
    db: Database = await migrated_db(schema, "checkout")
    return db


async def status(db: Database, purchase_id: str) -> tuple[str, int]:
    row = await db.pool.fetchrow(
        "SELECT status, refunded_millicredits FROM purchases WHERE id = $1", purchase_id
    )
    return row["status"], row["refunded_millicredits"]


async def test_a_batch_moves_purchases_once_and_skips_what_is_not_theirs(
    namespace: Topics, checkout_db: Database
) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    purchase = stripe_sim.SimPurchase(
        str(uuid.uuid4()), user, "starter", 999, "usd", f"cs_{uuid.uuid4().hex[:8]}"
    )
    await checkout_db.pool.execute(
        "INSERT INTO purchases (id, user_id, package_code, package_name, price_cents, currency,"
        " credits, bonus_credits, grant_millicredits, status, return_to, stripe_session_id)"
        " VALUES ($1, $2, 'starter', 'Starter', 999, 'usd', 9990, 0, 9990000, 'pending', '/',"
        " $3)",
        purchase.purchase_id,
        user,
        purchase.stripe_session_id,
    )
    handlers = batch_handlers_for(checkout_db, namespace)
    usage = ledger_pb2.TRANSACTION_KIND_USAGE
    paid = paid_event(namespace, purchase)
    granted = posting(
        namespace, ledger_pb2.TRANSACTION_KIND_PURCHASE, purchase.purchase_id, user, 9_990_000
    )
    refund = posting(
        namespace, ledger_pb2.TRANSACTION_KIND_REFUND, purchase.purchase_id, user, -1_000_000
    )
    noise = [posting(namespace, usage, f"usage-{i}", user, -500) for i in range(5)]

    await handlers[namespace.stripe_events]([paid, paid])
    assert await status(checkout_db, purchase.purchase_id) == ("paid", 0)
    await handlers[namespace.ledger]([*noise, granted, refund, refund, *noise])
    await handlers[namespace.ledger]([granted, refund])  # the batch redelivered

    assert await status(checkout_db, purchase.purchase_id) == (
        "partially_refunded",
        1_000_000,
    )
    assert await checkout_db.pool.fetchval("SELECT count(*) FROM inbox") == 3


async def test_a_batch_of_records_about_no_purchase_touches_nothing(
    namespace: Topics, checkout_db: Database
) -> None:
    handlers = batch_handlers_for(checkout_db, namespace)
    usage = ledger_pb2.TRANSACTION_KIND_USAGE

    await handlers[namespace.ledger]([posting(namespace, usage, "u-1", "a", -5) for _ in range(3)])

    assert await checkout_db.pool.fetchval("SELECT count(*) FROM inbox") == 0
