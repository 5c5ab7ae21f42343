"""The ledger's batch path for usage records, on the real PostgreSQL (and broker at the end).

The batch handler is called with records as the consumer fetched them; each test checks
that the batch means exactly what the record-by-record path means: posted once per usage
id, at most what is available, in order, running balances per entry, one outbox record per
posting, and any failure undoing the whole batch so the records can go one by one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from billing_cli.stack import Stack
from billing_events.kafka import (
    CORRELATION_HEADER,
    ConsumerRunner,
    InboundMessage,
    KafkaPublisher,
    RetryPolicy,
)
from billing_events.topics import Topics
from billing_events.v1 import usage_pb2
from billing_platform.db import Database
from ledger import holds, repository
from ledger.handlers import usage_batch_handler, usage_handler
from ledger.usage import UsageConflict
from prometheus_client import REGISTRY

Offsets = iter(range(10**9))


def usage_message(
    topics: Topics,
    user: str,
    amount: int,
    *,
    usage_id: str | None = None,
    mode: usage_pb2.BillingMode = usage_pb2.BILLING_MODE_CHARGED,
    hold_id: str = "",
) -> InboundMessage:
    record = usage_pb2.UsageRecorded(
        usage_id=usage_id or f"u-{uuid.uuid4().hex[:12]}",
        user_id=user,
        model="gpt-4o-mini",
        input_tokens=10,
        output_tokens=5,
        charged_millicredits=amount,
        rate_card_version="test",
        hold_id=hold_id,
        mode=mode,
    )
    headers = ((CORRELATION_HEADER, f"corr-{record.usage_id}".encode()),)
    return InboundMessage(
        topics.usage, 0, next(Offsets), user.encode(), record.SerializeToString(), headers, 0
    )


async def fund(db: Database, **balances: int) -> None:
    for user, amount in balances.items():
        await db.pool.execute(
            "INSERT INTO balances (user_id, balance_millicredits) VALUES ($1, $2)", user, amount
        )


async def wallet_entries(db: Database, user: str) -> list[tuple[int, int]]:
    rows = await db.pool.fetch(
        "SELECT amount_millicredits, balance_after_millicredits FROM journal_entries"
        " WHERE user_id = $1 ORDER BY id",
        user,
    )
    return [(r[0], r[1]) for r in rows]


# Ask for ``namespace`` before this: it runs its own event loop to completion.
@pytest.fixture
async def ledger_db(migrated_db: Any, schema: str) -> Database:
    db: Database = await migrated_db(schema, "ledger")
    return db


async def test_a_batch_charges_in_order_at_most_what_is_available(
    namespace: Topics, ledger_db: Database
) -> None:
    hot, cold, broke = (f"{k}-{uuid.uuid4().hex[:6]}" for k in ("hot", "cold", "broke"))
    await fund(ledger_db, **{hot: 10_000, cold: 50_000})
    await ledger_db.pool.execute(
        "UPDATE balances SET held_millicredits = 2000 WHERE user_id = $1", hot
    )
    batch = [
        usage_message(namespace, hot, 3_000),
        usage_message(namespace, cold, 1_000),
        usage_message(namespace, hot, 4_000),
        usage_message(namespace, hot, 4_000),  # only 1,000 of 8,000 available is left
        usage_message(namespace, broke, 500),  # no balance at all
        usage_message(namespace, hot, 700),  # nothing left
        usage_message(namespace, cold, 2_000, mode=usage_pb2.BILLING_MODE_SHADOW),
    ]

    await usage_batch_handler(ledger_db, namespace)(batch)

    assert await wallet_entries(ledger_db, hot) == [
        (-3_000, 7_000),
        (-4_000, 3_000),
        (-1_000, 2_000),
    ]
    assert await wallet_entries(ledger_db, cold) == [(-1_000, 49_000)]
    assert await wallet_entries(ledger_db, broke) == []
    outcomes = await ledger_db.pool.fetch(
        "SELECT outcome, count(*) FROM inbox GROUP BY outcome ORDER BY outcome"
    )
    # The shadow record changes nothing, so it is not claimed.
    assert {r[0]: r[1] for r in outcomes} == {"posted": 4, "uncollected": 2}
    balances = await ledger_db.pool.fetch("SELECT user_id, balance_millicredits FROM balances")
    assert {r[0]: r[1] for r in balances} == {hot: 2_000, cold: 49_000}
    assert await ledger_db.pool.fetchval("SELECT count(*) FROM outbox") == 4
    revenue = await ledger_db.pool.fetchval(
        "SELECT sum(amount_millicredits) FROM journal_entries WHERE account = 'revenue'"
    )
    assert revenue == 9_000


async def test_a_redelivered_batch_and_repeats_inside_a_batch_post_once(
    namespace: Topics, ledger_db: Database
) -> None:
    user = f"rep-{uuid.uuid4().hex[:6]}"
    await fund(ledger_db, **{user: 100_000})
    first = usage_message(namespace, user, 1_000)
    batch = [first, usage_message(namespace, user, 2_000), first]
    handler = usage_batch_handler(ledger_db, namespace)

    await handler(batch)
    await handler(batch)

    assert [a for a, _ in await wallet_entries(ledger_db, user)] == [-1_000, -2_000]
    assert await ledger_db.pool.fetchval("SELECT count(*) FROM inbox") == 2
    correlation = await ledger_db.pool.fetchval(
        "SELECT correlation_id FROM journal_transactions ORDER BY created_at LIMIT 1"
    )
    assert correlation == f"corr-{usage_pb2.UsageRecorded.FromString(first.value).usage_id}"


async def test_a_batch_with_a_hold_to_capture_is_refused_whole(
    namespace: Topics, ledger_db: Database
) -> None:
    user = f"hold-{uuid.uuid4().hex[:6]}"
    await fund(ledger_db, **{user: 100_000})
    batch = [
        usage_message(namespace, user, 1_000),
        usage_message(namespace, user, 1_000, hold_id=str(uuid.uuid4())),
    ]

    with pytest.raises(Exception, match="hold to capture"):
        await usage_batch_handler(ledger_db, namespace)(batch)

    assert await ledger_db.pool.fetchval("SELECT count(*) FROM inbox") == 0
    assert await ledger_db.pool.fetchval("SELECT count(*) FROM journal_transactions") == 0
    for message in batch:  # the record path: an unknown hold charges the usage as such
        await usage_handler(ledger_db, namespace)(message)
    assert [a for a, _ in await wallet_entries(ledger_db, user)] == [-1_000, -1_000]


async def test_records_the_gateway_captured_are_answered_without_a_balance_lock(
    namespace: Topics, ledger_db: Database
) -> None:
    user = f"cap-{uuid.uuid4().hex[:6]}"
    await fund(ledger_db, **{user: 10_000})
    captured = [holds.Usage(f"cap-{uuid.uuid4().hex[:8]}", 100, "gpt-4o-mini", 10, 5, "test")]
    captured.append(holds.Usage(f"cap-{uuid.uuid4().hex[:8]}", 200, "gpt-4o-mini", 10, 5, "test"))
    async with ledger_db.pool.acquire() as conn, conn.transaction():  # as the captures did
        await repository.lock_balance(conn, user)
        for usage in captured:
            await holds.charge_usage(conn, namespace, user, usage, None)
    batch = [
        usage_message(namespace, user, u.amount_millicredits, usage_id=u.usage_id, hold_id="h")
        for u in captured
    ]

    async with ledger_db.pool.acquire() as gateway, gateway.transaction():
        await repository.lock_balance(gateway, user)  # a capture for this user, in flight
        await asyncio.wait_for(usage_batch_handler(ledger_db, namespace)(batch), 10)

    assert [a for a, _ in await wallet_entries(ledger_db, user)] == [-100, -200]
    # Posted already, so nothing to claim: no inbox row for either.
    assert await ledger_db.pool.fetchval("SELECT count(*) FROM inbox") == 0


async def test_a_usage_id_charged_to_another_user_undoes_the_batch(
    namespace: Topics, ledger_db: Database
) -> None:
    alice, bob = (f"{k}-{uuid.uuid4().hex[:6]}" for k in ("alice", "bob"))
    await fund(ledger_db, **{alice: 10_000, bob: 10_000})
    shared = f"shared-{uuid.uuid4().hex[:6]}"
    usage = holds.Usage(shared, 100, "gpt-4o-mini", 10, 5, "test")
    async with ledger_db.pool.acquire() as conn, conn.transaction():  # as a capture call would
        await repository.lock_balance(conn, alice)
        await holds.charge_usage(conn, namespace, alice, usage, None)
    batch = [usage_message(namespace, bob, 100), usage_message(namespace, bob, 5, usage_id=shared)]

    with pytest.raises(UsageConflict):
        await usage_batch_handler(ledger_db, namespace)(batch)

    assert await wallet_entries(ledger_db, bob) == []
    assert await ledger_db.pool.fetchval("SELECT count(*) FROM inbox") == 0


async def test_a_poison_record_in_a_batch_is_dead_lettered_and_the_rest_posted(
    stack: Stack, namespace: Topics, ledger_db: Database, publisher: KafkaPublisher
) -> None:
    user = f"poison-{uuid.uuid4().hex[:6]}"
    await fund(ledger_db, **{user: 100_000})
    for amount in (1_000, 2_000):
        message = usage_message(namespace, user, amount)
        await publisher.publish(namespace.usage, user, message.value)
    await publisher.publish(namespace.usage, user, b"\xff not a usage record")
    await publisher.publish(namespace.usage, user, usage_message(namespace, user, 3_000).value)
    runner = ConsumerRunner(
        bootstrap=stack.kafka.bootstrap,
        group_id=f"{namespace.namespace}.ledger-batch",
        handlers={namespace.usage: usage_handler(ledger_db, namespace)},
        batch_handlers={namespace.usage: usage_batch_handler(ledger_db, namespace)},
        publisher=publisher,
        retry=RetryPolicy(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.05),
    )
    await runner.start()
    try:
        deadline = time.monotonic() + 30
        while len(await wallet_entries(ledger_db, user)) < 3:
            assert time.monotonic() < deadline, await wallet_entries(ledger_db, user)
            await asyncio.sleep(0.1)
    finally:
        await runner.stop()

    assert [a for a, _ in await wallet_entries(ledger_db, user)] == [-1_000, -2_000, -3_000]
    assert await ledger_db.pool.fetchval("SELECT count(*) FROM inbox") == 3
    labels = {"topic": namespace.usage, "group": runner.group_id}
    assert REGISTRY.get_sample_value("kafka_dead_lettered_total", labels) == 1
