"""A topic's fetched partitions in one unit of work, on the real PostgreSQL and broker.

The consumer hands the records it fetched of one topic, from all their partitions, to the
topic's batch handler at once: the effects and every partition's position commit in one
transaction. When that batch fails on a poison record, each partition is handled on its
own, so the partitions without the poison still commit theirs, and the poison alone is
dead-lettered.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from billing_cli import stripe_sim
from billing_cli.stack import Stack
from billing_events.kafka import ConsumerRunner, InboundMessage, KafkaPublisher, RetryPolicy
from billing_events.offsets import OffsetStore
from billing_events.topics import Topics
from billing_events.v1 import stripe_pb2
from billing_platform.db import Database
from ledger.handlers import stripe_event_handler, stripe_events_batch_handler
from ledger.service import LedgerContext

GROUP = "topic-batch-test"


def stripe_message(
    topics: Topics, event: dict[str, Any], partition: int, offset: int
) -> InboundMessage:
    envelope = stripe_pb2.StripeEventReceived(
        stripe_event_id=event["id"], type=event["type"], payload=json.dumps(event).encode()
    )
    value = envelope.SerializeToString()
    return InboundMessage(topics.stripe_events, partition, offset, b"k", value, (), 0)


def ignored_event() -> dict[str, Any]:
    return stripe_sim.event("customer.created", {"id": "cus_1", "object": "customer"})


@pytest.fixture
async def schemas(migrated_db: Any, schema: str) -> tuple[Database, Database]:
    checkout: Database = await migrated_db(f"{schema}_co", "checkout")
    ledger: Database = await migrated_db(schema, "ledger")
    return ledger, checkout


def ledger_runner(
    stack: Stack, topics: Topics, ledger: Database, checkout_schema: str, publisher: KafkaPublisher
) -> ConsumerRunner:
    ctx = LedgerContext(topics, checkout_schema, 30.0)
    return ConsumerRunner(
        bootstrap=stack.kafka.bootstrap,
        group_id=GROUP,
        handlers={topics.stripe_events: stripe_event_handler(ledger, ctx)},
        batch_handlers={topics.stripe_events: stripe_events_batch_handler(ledger, ctx)},
        publisher=publisher,
        retry=RetryPolicy(max_attempts=5, initial_backoff_s=0.001, max_backoff_s=0.002),
        offsets=OffsetStore(ledger),
    )


async def paid_partitions(
    topics: Topics, checkout: Database, pending_purchase: Any, count: int
) -> list[list[InboundMessage]]:
    """``count`` partitions of two records each: a paid session, then an ignored event."""
    fetched = []
    for partition in range(count):
        purchase = await pending_purchase(checkout, f"u-{uuid.uuid4().hex[:6]}")
        paid = stripe_sim.session_completed(purchase)
        fetched.append(
            [
                stripe_message(topics, paid, partition, 40 + partition),
                stripe_message(topics, ignored_event(), partition, 41 + partition),
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
    stack: Stack,
    namespace: Topics,
    schema: str,
    schemas: tuple[Database, Database],
    pending_purchase: Any,
    publisher: KafkaPublisher,
) -> None:
    ledger, checkout = schemas
    fetched = await paid_partitions(namespace, checkout, pending_purchase, 3)
    runner = ledger_runner(stack, namespace, ledger, f"{schema}_co", publisher)

    handled = await runner._handle_partitions(fetched)

    assert handled == [((namespace.stripe_events, p), o, True) for p, o in reached(fetched)]
    [(xid, partitions)] = (await transactions_of(ledger)).items()
    assert partitions == {0, 1, 2}
    assert await stored_positions(ledger, namespace) == [(p, o, xid) for p, o in reached(fetched)]
    outcomes = await ledger.pool.fetch("SELECT outcome, count(*) FROM inbox GROUP BY 1 ORDER BY 1")
    assert [tuple(r) for r in outcomes] == [("granted", 3), ("ignored", 3)]


async def test_a_poison_record_leaves_the_other_partitions_to_commit_on_their_own(
    stack: Stack,
    namespace: Topics,
    schema: str,
    schemas: tuple[Database, Database],
    pending_purchase: Any,
    publisher: KafkaPublisher,
) -> None:
    ledger, checkout = schemas
    fetched = await paid_partitions(namespace, checkout, pending_purchase, 3)
    poison = fetched[1][-1]._replace(
        value=b"\xff not an envelope", offset=fetched[1][-1].offset + 1
    )
    fetched[1].append(poison)
    runner = ledger_runner(stack, namespace, ledger, f"{schema}_co", publisher)

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
