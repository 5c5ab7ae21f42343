"""The ledger's batch path for verified Stripe events, on the real PostgreSQL.

A fetched batch must mean what the same records mean one by one: each event claimed once
by its Stripe id, paid sessions granted once under their own correlation and trace, the
types the ledger ignores recorded as ignored, and any failure undoing the whole batch.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from billing_cli import stripe_sim
from billing_events.kafka import CORRELATION_HEADER, InboundMessage, PermanentError
from billing_events.topics import Topics
from billing_events.v1 import stripe_pb2
from billing_platform.db import Database
from ledger.handlers import stripe_events_batch_handler
from ledger.service import LedgerContext, NotVisibleYet

Offsets = iter(range(10**9))


def stripe_message(topics: Topics, event: dict[str, Any]) -> InboundMessage:
    envelope = stripe_pb2.StripeEventReceived(
        stripe_event_id=event["id"], type=event["type"], payload=json.dumps(event).encode()
    )
    trace = uuid.uuid4().hex
    headers = (
        (CORRELATION_HEADER, f"corr-{event['id']}".encode()),
        ("traceparent", f"00-{trace}-{uuid.uuid4().hex[:16]}-01".encode()),
    )
    value = envelope.SerializeToString()
    return InboundMessage(topics.stripe_events, 0, next(Offsets), b"k", value, headers, 0)


def ignored_event() -> dict[str, Any]:
    return stripe_sim.event("customer.created", {"id": "cus_1", "object": "customer"})


@pytest.fixture
async def schemas(migrated_db: Any, schema: str) -> tuple[Database, Database]:
    checkout: Database = await migrated_db(f"{schema}_co", "checkout")
    ledger: Database = await migrated_db(schema, "ledger")
    return ledger, checkout


def handler(ledger: Database, namespace: Topics, checkout_schema: str) -> Any:
    return stripe_events_batch_handler(ledger, LedgerContext(namespace, checkout_schema, 30.0))


async def test_a_batch_grants_once_each_and_records_what_it_ignored(
    namespace: Topics, schema: str, schemas: tuple[Database, Database], pending_purchase: Any
) -> None:
    ledger, checkout = schemas
    one = await pending_purchase(checkout, f"u-{uuid.uuid4().hex[:6]}")
    two = await pending_purchase(checkout, f"u-{uuid.uuid4().hex[:6]}")
    paid_one = stripe_message(namespace, stripe_sim.session_completed(one))
    noise = stripe_message(namespace, ignored_event())
    paid_two = stripe_message(namespace, stripe_sim.session_completed(two))
    batch = [paid_one, noise, paid_two, paid_one]  # a redelivery inside the batch

    await handler(ledger, namespace, f"{schema}_co")(batch)
    await handler(ledger, namespace, f"{schema}_co")([paid_two])  # and one after it

    inbox = await ledger.pool.fetch("SELECT * FROM inbox ORDER BY kafka_offset")
    assert [(r["kafka_offset"], r["outcome"]) for r in inbox] == [
        (paid_one.offset, "granted"),
        (noise.offset, "ignored"),
        (paid_two.offset, "granted"),
    ]
    # Each row keeps its own record's trace and correlation, not the batch's.
    assert [r["trace_id"] for r in inbox] == [m.trace_id for m in (paid_one, noise, paid_two)]
    assert [r["correlation_id"] for r in inbox] == [
        m.correlation_id for m in (paid_one, noise, paid_two)
    ]
    grants = await ledger.pool.fetch(
        "SELECT user_id, correlation_id FROM journal_transactions ORDER BY created_at"
    )
    assert [(r[0], r[1]) for r in grants] == [
        (one.user_id, paid_one.correlation_id),
        (two.user_id, paid_two.correlation_id),
    ]
    assert await ledger.pool.fetchval("SELECT count(*) FROM outbox") >= 2


async def test_a_poison_record_undoes_the_whole_batch(
    namespace: Topics, schema: str, schemas: tuple[Database, Database], pending_purchase: Any
) -> None:
    ledger, checkout = schemas
    purchase = await pending_purchase(checkout, f"u-{uuid.uuid4().hex[:6]}")
    paid = stripe_message(namespace, stripe_sim.session_completed(purchase))
    poison = paid._replace(value=b"\xff not an envelope", offset=next(Offsets))

    with pytest.raises(PermanentError):
        await handler(ledger, namespace, f"{schema}_co")([paid, poison])

    assert await ledger.pool.fetchval("SELECT count(*) FROM inbox") == 0
    assert await ledger.pool.fetchval("SELECT count(*) FROM journal_transactions") == 0


async def test_a_purchase_not_visible_yet_fails_the_batch_for_the_record_path(
    namespace: Topics, schema: str, schemas: tuple[Database, Database]
) -> None:
    ledger, _ = schemas
    unknown = stripe_sim.SimPurchase(str(uuid.uuid4()), "ghost", "starter", 999, "usd", "cs_x")
    batch = [
        stripe_message(namespace, ignored_event()),
        stripe_message(namespace, stripe_sim.session_completed(unknown)),
    ]

    with pytest.raises(NotVisibleYet):
        await handler(ledger, namespace, f"{schema}_co")(batch)

    assert await ledger.pool.fetchval("SELECT count(*) FROM inbox") == 0
