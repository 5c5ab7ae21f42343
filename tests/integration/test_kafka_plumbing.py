"""Webhook-ingest's publisher -> real broker -> the ledger's consumer, end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import confluent_kafka
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from billing_cli import stripe_sim
from billing_cli.procs import wait_until
from billing_cli.stack import Stack
from billing_events.kafka import ConsumerRunner, InboundMessage, KafkaPublisher, RetryPolicy
from billing_events.topics import Topics
from billing_events.v1 import dlq_pb2
from billing_platform import context, tracing
from billing_platform.db import Database
from opentelemetry import trace
from prometheus_client import REGISTRY
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


async def ledger_with_pending_purchase(
    migrated_db: Any, pending_purchase: Any, schema: str, user: str
) -> tuple[str, Database, stripe_sim.SimPurchase]:
    """A ledger schema, a checkout schema beside it, and a pending starter purchase there."""
    checkout_schema = f"{schema}_co"
    checkout = await migrated_db(checkout_schema, "checkout")
    db: Database = await migrated_db(schema, "ledger")
    return checkout_schema, db, await pending_purchase(checkout, user)


def ledger_env(topics: Topics, schema: str, checkout_schema: str | None = None) -> dict[str, str]:
    env = {"BILLING_TOPIC_NAMESPACE": topics.namespace, "LEDGER_DB_SCHEMA": schema}
    return {**env, "LEDGER_CHECKOUT_SCHEMA": checkout_schema} if checkout_schema else env


def paid_session(purchase: stripe_sim.SimPurchase) -> tuple[bytes, str]:
    """The body of a paid Checkout Session event, and the ledger inbox key it lands under."""
    event = stripe_sim.session_completed(purchase)
    return json.dumps(event).encode(), f"stripe:{event['id']}"


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


async def stored_position(db: Database, topics: Topics) -> list[tuple[int, int]]:
    """The ledger group's (partition, next offset) rows for the Stripe topic in its schema."""
    rows = await db.pool.fetch(
        "SELECT partition, next_offset FROM consumer_offsets"
        " WHERE group_id = $1 AND topic = $2 ORDER BY partition",
        f"{topics.namespace}.ledger",
        topics.stripe_events,
    )
    return [(r["partition"], r["next_offset"]) for r in rows]


async def kafka_position(stack: Stack, group: str, topics: Topics, partition: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap)
    await admin.start()
    try:
        tp = TopicPartition(topics.stripe_events, partition)
        committed = await admin.list_consumer_group_offsets(group, partitions=[tp])
        return int(committed[tp].offset)
    finally:
        await admin.close()


async def test_a_crash_right_after_the_grant_commits_resumes_past_it_and_grants_once(
    stack: Stack,
    namespace: Topics,
    schema: str,
    publisher: KafkaPublisher,
    migrated_db: Any,
    pending_purchase: Any,
    run_service: Any,
) -> None:
    checkout_schema, db, purchase = await ledger_with_pending_purchase(
        migrated_db, pending_purchase, schema, "crash-user"
    )
    body, key = paid_session(purchase)
    await publish_as_webhook_ingest(publisher, namespace, body, "corr-crash")

    env = {
        **os.environ,
        **stack.env(),
        **ledger_env(namespace, schema, checkout_schema),
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
    # The position was saved in the grant's own transaction; Kafka was never told.
    [(partition, position)] = await stored_position(db, namespace)
    assert position == 1

    service_env = ledger_env(namespace, schema, checkout_schema)
    with run_service("ledger", service_env) as ledger:
        later, later_key = stripe_event()
        await publish_as_webhook_ingest(publisher, namespace, later, "corr-later")
        await wait_for_inbox(db, later_key)
        duplicates = ledger.metric(
            "ledger_stripe_events_received_total",
            event_type="checkout.session.completed",
            outcome="duplicate",
        )
    assert duplicates == 0, "the granted record was read again"
    assert await db.pool.fetchval("SELECT count(*) FROM journal_transactions") == 1
    balance = await db.pool.fetchval(
        "SELECT balance_millicredits FROM balances WHERE user_id = 'crash-user'"
    )
    assert balance == 9_990_000


async def test_a_database_rewound_to_an_earlier_position_replays_and_the_inbox_absorbs_it(
    stack: Stack,
    namespace: Topics,
    schema: str,
    publisher: KafkaPublisher,
    migrated_db: Any,
    pending_purchase: Any,
    run_service: Any,
) -> None:
    """As after a restore: the consumer resumes from the database's position, not Kafka's."""
    checkout_schema, db, purchase = await ledger_with_pending_purchase(
        migrated_db, pending_purchase, schema, "rewound-user"
    )
    body, key = paid_session(purchase)
    service_env = ledger_env(namespace, schema, checkout_schema)
    with run_service("ledger", service_env):
        await publish_as_webhook_ingest(publisher, namespace, body, "corr-rewind")
        assert (await wait_for_inbox(db, key))["outcome"] == "granted"
    [(partition, position)] = await stored_position(db, namespace)
    assert position == 1
    # Kafka holds the same position (copied for lag tooling); the database's must win.
    assert await kafka_position(stack, f"{namespace.namespace}.ledger", namespace, partition) == 1
    await db.pool.execute("UPDATE consumer_offsets SET next_offset = 0")

    with run_service("ledger", service_env) as ledger:
        await wait_for_duplicate(ledger, "the rewound position was not replayed")
    assert await db.pool.fetchval("SELECT count(*) FROM journal_transactions") == 1
    assert [p for _, p in await stored_position(db, namespace)] == [1]


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


async def test_consumer_lag_rises_while_the_handler_is_blocked_and_falls_once_released(
    stack: Stack, namespace: Topics, publisher: KafkaPublisher
) -> None:
    group = f"{namespace.namespace}.lag-test"
    released = asyncio.Event()
    handled: list[InboundMessage] = []
    partition = ""  # known once the first record is handled

    async def handler(message: InboundMessage) -> None:
        handled.append(message)
        if len(handled) > 1:  # the first goes through, so the partition has a position
            await released.wait()

    def lag() -> float | None:
        labels = {"group": group, "topic": namespace.stripe_events, "partition": partition}
        return REGISTRY.get_sample_value("kafka_consumer_lag", labels)

    async def until(predicate: Callable[[], object], why: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"{why}; lag {lag()}"
            await asyncio.sleep(0.1)

    runner = ConsumerRunner(
        bootstrap=stack.kafka.bootstrap,
        group_id=group,
        handlers={namespace.stripe_events: handler},
        publisher=publisher,
    )
    # Same key: one partition, whose number the first record tells.
    await publisher.publish(namespace.stripe_events, "cs_lag", b"first")
    await runner.start()
    try:
        await until(lambda: handled, "the first record was never handled")
        partition = str(handled[0].partition)
        await until(lambda: lag() == 0, "no lag reported for the partition")
        for i in range(20):
            await publisher.publish(namespace.stripe_events, "cs_lag", f"r-{i}".encode())
        await until(lambda: lag() == 20, "the lag did not rise while the handler was blocked")
        released.set()
        await until(lambda: len(handled) == 21 and lag() == 0, "the lag did not fall")
    finally:
        released.set()
        await runner.stop()
    assert lag() is None, "a stopped consumer still reports lag"


async def test_a_membership_that_does_not_settle_gets_a_new_client_which_then_consumes(
    stack: Stack, namespace: Topics, publisher: KafkaPublisher
) -> None:
    group = f"{namespace.namespace}.settle-test"
    handled: list[InboundMessage] = []

    async def handler(message: InboundMessage) -> None:
        handled.append(message)

    def rebuilds() -> float:
        labels = {"group": group, "client": group}
        return REGISTRY.get_sample_value("kafka_consumer_rebuilds_total", labels) or 0.0

    # A member that stops polling holds the group's next rebalance until its poll interval
    # runs out (its rebalance callbacks are served by polls): the runner joining meanwhile
    # stays unsettled for some 20 s.
    frozen = confluent_kafka.Consumer(
        {
            "bootstrap.servers": stack.kafka.bootstrap,
            "group.id": group,
            "session.timeout.ms": 6000,
            "max.poll.interval.ms": 20_000,
            "log_level": 0,
        }
    )
    frozen.subscribe(
        [namespace.stripe_events],
        on_assign=lambda c, parts: c.assign(parts),
        on_revoke=lambda c, _: c.unassign(),
    )

    def frozen_assigned() -> bool:
        frozen.poll(0.2)
        return bool(frozen.assignment())

    assert wait_until(frozen_assigned, 30)
    runner = ConsumerRunner(
        bootstrap=stack.kafka.bootstrap,
        group_id=group,
        handlers={namespace.stripe_events: handler},
        publisher=publisher,
        settle_deadline_s=4,
    )
    await publisher.publish(namespace.stripe_events, "cs_settle", b"while unsettled")
    await runner.start()
    try:
        deadline = time.monotonic() + 15
        while rebuilds() < 1:
            assert time.monotonic() < deadline, "the unsettled client was never replaced"
            await asyncio.sleep(0.2)
        assert not handled, "the runner consumed before its group settled"
        deadline = time.monotonic() + 60
        while not handled:
            assert time.monotonic() < deadline, "the new client never consumed"
            await asyncio.sleep(0.2)
        await runner.check()  # ready again
    finally:
        await runner.stop()
        frozen.close()
    assert [m.value for m in handled] == [b"while unsettled"]


class CuttableProxy:
    """A TCP relay to PostgreSQL that can be cut: the database, as the service sees it, is down.

    It runs its own event loop in a thread: the fixtures that start services block the
    test's loop while they wait for readiness.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)

    def cut(self) -> None:
        """Refuse new connections and drop the open ones, as a crashed server would."""
        asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(5)

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers |= {client_w, server_w}
        await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


async def test_a_database_outage_holds_the_partition_and_grants_once_it_is_back(
    stack: Stack,
    namespace: Topics,
    schema: str,
    publisher: KafkaPublisher,
    migrated_db: Any,
    pending_purchase: Any,
    run_service: Any,
) -> None:
    checkout_schema, db, purchase = await ledger_with_pending_purchase(
        migrated_db, pending_purchase, schema, "outage-user"
    )
    proxy = CuttableProxy(stack.layout.postgres_port)
    proxy.start()
    dsn = stack.postgres.dsn.replace(f":{stack.layout.postgres_port}/", f":{proxy.port}/")
    env = {
        **ledger_env(namespace, schema, checkout_schema),
        "BILLING_DATABASE_URL": dsn,
        "LEDGER_DATABASE_URL": dsn,
    }
    try:
        with run_service("ledger", env) as ledger:
            # Cut once the partitions are assigned (that reads their positions from the
            # database): the outage must meet the record, not the assignment.
            group = f"{namespace.namespace}.ledger"
            assigned = {"group": group, "client": group}
            assert wait_until(
                lambda: ledger.metric("kafka_assigned_partitions", **assigned) > 0, 30
            )
            proxy.cut()
            body, key = paid_session(purchase)
            await publish_as_webhook_ingest(publisher, namespace, body, "corr-outage")
            # Longer than the five attempts' backoff (about 3 s) that used to dead-letter it.
            await asyncio.sleep(8)
            readiness = httpx.get(f"{ledger.url}/readyz", timeout=5)
            assert readiness.status_code == 503
            assert readiness.json()["checks"]["consumer"].startswith("error")
            assert await db.pool.fetchval("SELECT count(*) FROM journal_transactions") == 0
            proxy.start()
            await wait_for_inbox(db, key, timeout=30)
            assert wait_until(ledger.ready, 15)
            assert ledger.metric("kafka_dead_lettered_total") == 0
            assert ledger.metric("kafka_handler_outage_retries_total") > 0
    finally:
        proxy.close()
    assert await db.pool.fetchval("SELECT count(*) FROM journal_transactions") == 1
    balance = await db.pool.fetchval(
        "SELECT balance_millicredits FROM balances WHERE user_id = 'outage-user'"
    )
    assert balance == 9_990_000
