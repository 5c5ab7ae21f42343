"""Webhook-ingest's publisher -> real broker -> the ledger's consumer, end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from billing_cli import stripe_sim
from billing_cli.stack import Stack
from billing_events.kafka import ConsumerRunner, InboundMessage, KafkaPublisher, RetryPolicy
from billing_events.topics import Topics
from billing_events.v1 import dlq_pb2
from billing_platform import context, tracing
from billing_platform.db import Database
from opentelemetry import trace
from webhook_ingest.events import envelope_from_body, publish_stripe_event

HERE = Path(__file__).parent


def stripe_event() -> tuple[bytes, str]:
    """A Stripe event body and the ledger inbox key it must land under."""
    event = {
        "id": f"evt_{uuid.uuid4().hex[:16]}",
        "object": "event",
        "type": "checkout.session.completed",
        "api_version": "2024-06-20",
        "created": int(time.time()),
        "livemode": False,
        "data": {
            "object": {"id": f"cs_test_{uuid.uuid4().hex[:16]}", "object": "checkout.session"}
        },
    }
    return json.dumps(event).encode(), f"stripe:{event['id']}"


async def publish_as_webhook_ingest(
    publisher: KafkaPublisher, topics: Topics, body: bytes, correlation_id: str
) -> str:
    """Publish inside a span, as the webhook service does; returns that span's trace id."""
    tracing.configure_tracing("webhook-ingest-test")
    context.correlation_id_var.set(correlation_id)
    with trace.get_tracer("test").start_as_current_span("POST /webhooks/stripe"):
        trace_id = tracing.current_trace_id()
        await publish_stripe_event(publisher, topics, envelope_from_body(body))
    assert trace_id is not None
    return trace_id


async def wait_for_inbox(db: Database, key: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await db.pool.fetchrow("SELECT * FROM inbox WHERE message_key = $1", key)
        if row is not None:
            return dict(row)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{key} never reached the ledger inbox")


async def wait_for_duplicate(ledger: Any, why: str, timeout: float = 30) -> None:
    """Until the ledger process reports it saw (and ignored) a record it already applied."""
    labels = {"event_type": "checkout.session.completed", "outcome": "duplicate"}
    deadline = time.monotonic() + timeout
    while ledger.metric("ledger_stripe_events_received_total", **labels) < 1:
        assert time.monotonic() < deadline, why
        await asyncio.sleep(0.2)


def ledger_env(topics: Topics, schema: str) -> dict[str, str]:
    return {"BILLING_TOPIC_NAMESPACE": topics.namespace, "LEDGER_DB_SCHEMA": schema}


async def test_event_reaches_ledger_with_trace_and_correlation(
    stack: Stack,
    namespace: Topics,
    schema: str,
    publisher: KafkaPublisher,
    migrated_db: Any,
    run_service: Any,
) -> None:
    db = await migrated_db(schema, "ledger")
    body, key = stripe_event()
    with run_service("ledger", ledger_env(namespace, schema)) as ledger:
        trace_id = await publish_as_webhook_ingest(publisher, namespace, body, "corr-plumbing")
        row = await wait_for_inbox(db, key)
        assert row["trace_id"] == trace_id
        assert row["correlation_id"] == "corr-plumbing"
        assert row["kind"] == "checkout.session.completed"

        await publish_as_webhook_ingest(publisher, namespace, body, "corr-again")
        await wait_for_duplicate(ledger, "duplicate delivery never seen")
    assert await db.pool.fetchval("SELECT count(*) FROM inbox") == 1


async def test_crash_between_grant_commit_and_offset_commit_grants_once(
    stack: Stack,
    namespace: Topics,
    schema: str,
    publisher: KafkaPublisher,
    migrated_db: Any,
    run_service: Any,
) -> None:
    checkout_schema = f"{schema}_co"
    checkout = await migrated_db(checkout_schema, "checkout")
    db = await migrated_db(schema, "ledger")
    purchase = stripe_sim.SimPurchase(
        str(uuid.uuid4()), "crash-user", "starter", 999, "usd", "cs_test_crash"
    )
    await checkout.pool.execute(
        "INSERT INTO purchases (id, user_id, package_code, package_name, price_cents, currency,"
        " credits, bonus_credits, grant_millicredits, status, return_to, stripe_session_id)"
        " VALUES ($1, $2, 'starter', 'Starter', 999, 'usd', 9990, 0, 9990000, 'pending', '/',"
        " $3)",
        purchase.purchase_id,
        purchase.user_id,
        purchase.stripe_session_id,
    )
    event = stripe_sim.session_completed(purchase)
    body, key = json.dumps(event).encode(), f"stripe:{event['id']}"
    await publish_as_webhook_ingest(publisher, namespace, body, "corr-crash")

    env = {
        **os.environ,
        **stack.env(),
        **ledger_env(namespace, schema),
        "LEDGER_CHECKOUT_SCHEMA": checkout_schema,
    }
    crashed = subprocess.run(
        [sys.executable, str(HERE / "crashing_ledger_consumer.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    assert (await wait_for_inbox(db, key, timeout=1))["outcome"] == "granted"

    service_env = {**ledger_env(namespace, schema), "LEDGER_CHECKOUT_SCHEMA": checkout_schema}
    with run_service("ledger", service_env) as ledger:
        await wait_for_duplicate(ledger, "the uncommitted record was not redelivered")
        granted = ledger.metric(
            "ledger_stripe_events_received_total",
            event_type="checkout.session.completed",
            outcome="granted",
        )
        assert granted == 0
    assert await db.pool.fetchval("SELECT count(*) FROM journal_transactions") == 1
    balance = await db.pool.fetchval(
        "SELECT balance_millicredits FROM balances WHERE user_id = 'crash-user'"
    )
    assert balance == 9_990_000


async def read_dead_letters(stack: Stack, topic: str, count: int) -> list[dlq_pb2.DeadLetter]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    letters: list[dlq_pb2.DeadLetter] = []
    try:
        deadline = time.monotonic() + 30
        while len(letters) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    letter = dlq_pb2.DeadLetter()
                    letter.ParseFromString(record.value or b"")
                    letters.append(letter)
    finally:
        await consumer.stop()
    return letters


async def test_failing_record_is_dead_lettered_after_five_attempts_and_partition_moves_on(
    stack: Stack, namespace: Topics, publisher: KafkaPublisher
) -> None:
    attempts: dict[bytes, int] = {}
    handled: list[bytes] = []

    async def handler(message: InboundMessage) -> None:
        attempts[message.value] = attempts.get(message.value, 0) + 1
        if message.value.startswith(b"poison"):
            raise RuntimeError("cannot apply this record")
        handled.append(message.value)

    runner = ConsumerRunner(
        bootstrap=stack.kafka.bootstrap,
        group_id=f"{namespace.namespace}.dlq-test",
        handlers={namespace.stripe_events: handler},
        publisher=publisher,
        retry=RetryPolicy(max_attempts=5, initial_backoff_s=0.05, max_backoff_s=0.2),
    )
    # Same key, so the poison record and the good one share a partition, in this order.
    await publisher.publish(namespace.stripe_events, "cs_same", b"poison-1")
    await publisher.publish(namespace.stripe_events, "cs_same", b"good-1")
    await runner.start()
    try:
        letters = await read_dead_letters(stack, namespace.stripe_events_dlq, 1)
        deadline = time.monotonic() + 20
        while b"good-1" not in handled and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await runner.stop()

    assert handled == [b"good-1"]
    assert attempts[b"poison-1"] == 5
    [letter] = letters
    assert letter.original_topic == namespace.stripe_events
    assert letter.original_value == b"poison-1"
    assert letter.original_key == b"cs_same"
    assert letter.attempts == 5
    assert letter.error_type == "RuntimeError"
    assert letter.error_message == "cannot apply this record"
    assert "traceparent" in letter.original_headers
