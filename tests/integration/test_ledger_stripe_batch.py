"""The ledger's batch path for verified Stripe events, on the real PostgreSQL.

A fetched batch must mean what the same records mean one by one: each event claimed once
by its Stripe id, paid sessions granted once under their own correlation and trace, the
types the ledger ignores recorded as ignored, and any failure undoing the whole batch.

Through the consumer, a fetch's partitions of the topic go to that handler at once: the
effects and every partition's position commit in one transaction. When that batch fails on
a poison record, each partition is handled on its own, so the partitions without the poison
still commit theirs as batches, and only the poison's partition goes record by record.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from billing_cli import stripe_sim
from billing_cli.stack import Stack
from billing_events.kafka import (
    CORRELATION_HEADER,
    ConsumerRunner,
    InboundMessage,
    KafkaPublisher,
    PermanentError,
    RetryPolicy,
)
from billing_events.offsets import OffsetStore
from billing_events.topics import Topics
from billing_events.v1 import stripe_pb2
from billing_platform.db import Database
from ledger.handlers import stripe_event_handler, stripe_events_batch_handler
from ledger.service import LedgerContext, NotVisibleYet

Offsets = iter(range(10**9))
GROUP = "stripe-batch-test"


def stripe_message(
    topics: Topics, event: dict[str, Any], partition: int = 0, offset: int | None = None
) -> InboundMessage:
    envelope = stripe_pb2.StripeEventReceived(
        stripe_event_id=event["id"], type=event["type"], payload=json.dumps(event).encode()
    )
    trace = uuid.uuid4().hex
    headers = (
        (CORRELATION_HEADER, f"corr-{event['id']}".encode()),
        ("traceparent", f"00-{trace}-{uuid.uuid4().hex[:16]}-01".encode()),
    )
    value = envelope.SerializeToString()
    at = next(Offsets) if offset is None else offset
    return InboundMessage(topics.stripe_events, partition, at, b"k", value, headers, 0)


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


@pytest.fixture
def runner(
    stack: Stack,
    namespace: Topics,
    schema: str,
    schemas: tuple[Database, Database],
    publisher: KafkaPublisher,
) -> ConsumerRunner:
    """The consumer the ledger runs for Stripe events, on the test schemas."""
    topics, (ledger, _) = namespace, schemas
    ctx = LedgerContext(topics, f"{schema}_co", 30.0)
    return ConsumerRunner(
        bootstrap=stack.kafka.bootstrap,
        group_id=GROUP,
        handlers={topics.stripe_events: stripe_event_handler(ledger, ctx)},
        batch_handlers={topics.stripe_events: stripe_events_batch_handler(ledger, ctx)},
        publisher=publisher,
        retry=RetryPolicy(max_attempts=5, initial_backoff_s=0.001, max_backoff_s=0.002),
        offsets=OffsetStore(ledger),
    )


@pytest.fixture
async def three_paid(
    namespace: Topics, schemas: tuple[Database, Database], pending_purchase: Any
) -> list[list[InboundMessage]]:
    """Three partitions fetched, of two records each: a paid session, then an ignored event."""
    fetched = []
    for partition in range(3):
        purchase = await pending_purchase(schemas[1], f"u-{uuid.uuid4().hex[:6]}")
        paid = stripe_sim.session_completed(purchase)
        fetched.append(
            [
                stripe_message(namespace, paid, partition, 40 + partition),
                stripe_message(namespace, ignored_event(), partition, 41 + partition),
            ]
        )
    return fetched


async def transactions_of(ledger: Database) -> dict[str, set[int]]:
    """The transactions (by xmin) that wrote the inbox, with the partitions of their rows."""
    rows = await ledger.pool.fetch("SELECT xmin::text AS xid, kafka_partition FROM inbox")
    found: dict[str, set[int]] = {}
    for row in rows:
        found.setdefault(row["xid"], set()).add(row["kafka_partition"])
    return found


async def stored_positions(ledger: Database, topics: Topics) -> list[tuple[int, int, str]]:
    rows = await ledger.pool.fetch(
        "SELECT partition, next_offset, xmin::text AS xid FROM consumer_offsets"
        " WHERE group_id = $1 AND topic = $2 ORDER BY partition",
        GROUP,
        topics.stripe_events,
    )
    return [(r["partition"], r["next_offset"], r["xid"]) for r in rows]


def reached(fetched: Sequence[Sequence[InboundMessage]]) -> list[tuple[int, int]]:
    return [(ms[0].partition, ms[-1].offset + 1) for ms in fetched]


async def test_a_topics_partitions_commit_in_one_transaction_with_each_position(
    namespace: Topics, schemas: tuple[Database, Database], runner: ConsumerRunner, three_paid: Any
) -> None:
    ledger, fetched = schemas[0], three_paid

    handled = await runner._handle_partitions(fetched)

    assert handled == [((namespace.stripe_events, p), o, True) for p, o in reached(fetched)]
    [(xid, partitions)] = (await transactions_of(ledger)).items()
    assert partitions == {0, 1, 2}
    assert await stored_positions(ledger, namespace) == [(p, o, xid) for p, o in reached(fetched)]
    outcomes = await ledger.pool.fetch("SELECT outcome, count(*) FROM inbox GROUP BY 1 ORDER BY 1")
    assert [tuple(r) for r in outcomes] == [("granted", 3), ("ignored", 3)]


async def test_a_poison_record_leaves_the_other_partitions_to_commit_on_their_own(
    namespace: Topics, schemas: tuple[Database, Database], runner: ConsumerRunner, three_paid: Any
) -> None:
    ledger, fetched = schemas[0], three_paid
    poison = fetched[1][-1]._replace(
        value=b"\xff not an envelope", offset=fetched[1][-1].offset + 1
    )
    fetched[1].append(poison)

    handled = await runner._handle_partitions(fetched)

    # Partitions 0 and 2 went as batches of their own; partition 1's good records one by
    # one, and its position past the poison is saved later (no unit of work covered it).
    assert handled == [((namespace.stripe_events, p), o, p != 1) for p, o in reached(fetched)]
    transactions = await transactions_of(ledger)
    assert sorted(map(sorted, transactions.values())) == [[0], [1], [1], [2]]
    granted = await ledger.pool.fetchval("SELECT count(*) FROM inbox WHERE outcome = 'granted'")
    assert granted == 3
    assert [(p, o) for p, o, _ in await stored_positions(ledger, namespace)] == [
        (0, fetched[0][-1].offset + 1),
        (1, fetched[1][-2].offset + 1),  # the good records' own units of work
        (2, fetched[2][-1].offset + 1),
    ]
