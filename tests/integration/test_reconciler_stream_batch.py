"""The reconciler's read model written a fetched batch at a time, on the real PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from billing_events.kafka import InboundMessage
from billing_events.topics import Topics
from billing_events.v1 import ledger_pb2, stripe_pb2, usage_pb2
from billing_platform.db import Database
from prometheus_client import REGISTRY
from reconciler.handlers import batch_handlers, handlers

Offsets = iter(range(10**9))


def inbound(topic: str, value: bytes) -> InboundMessage:
    return InboundMessage(topic, 0, next(Offsets), b"k", value, (), int(time.time() * 1000))


def stripe_event(topics: Topics) -> InboundMessage:
    event_id = f"evt_{uuid.uuid4().hex[:12]}"
    body = {
        "id": event_id,
        "type": "charge.refunded",
        "created": int(time.time()),
        "data": {"object": {"id": "ch_1", "amount": 999, "amount_refunded": 100}},
    }
    envelope = stripe_pb2.StripeEventReceived(
        stripe_event_id=event_id, type="charge.refunded", payload=json.dumps(body).encode()
    )
    return inbound(topics.stripe_events, envelope.SerializeToString())


def usage_record(topics: Topics) -> InboundMessage:
    record = usage_pb2.UsageRecorded(
        usage_id=f"u-{uuid.uuid4().hex[:12]}",
        user_id="alice",
        model="gpt-4o",
        charged_millicredits=50_000,
        cost_millicredits=12_500,
        mode=usage_pb2.BILLING_MODE_CHARGED,
    )
    return inbound(topics.usage, record.SerializeToString())


def ledger_posting(topics: Topics) -> InboundMessage:
    posted = ledger_pb2.LedgerTransactionPosted(
        transaction_id=str(uuid.uuid4()),
        kind=ledger_pb2.TRANSACTION_KIND_USAGE,
        user_id="alice",
        reference_id="u-1",
        entries=[
            ledger_pb2.LedgerEntry(account="wallet:alice", amount_millicredits=-50_000),
            ledger_pb2.LedgerEntry(account="revenue", amount_millicredits=50_000),
        ],
    )
    return inbound(topics.ledger, posted.SerializeToString())


def stream_messages(topic: str) -> dict[str, float | None]:
    name = "reconciler_stream_messages_total"
    return {
        outcome: REGISTRY.get_sample_value(name, {"topic": topic, "outcome": outcome})
        for outcome in ("new", "duplicate")
    }


@pytest.fixture
async def read_model(migrated_db: Any, schema: str) -> Database:
    db: Database = await migrated_db(schema, "reconciler")
    return db


async def test_each_topic_is_taken_a_batch_at_a_time_and_once(
    namespace: Topics, read_model: Database
) -> None:
    together = batch_handlers(read_model, namespace)
    for topic, make in (
        (namespace.stripe_events, stripe_event),
        (namespace.usage, usage_record),
        (namespace.ledger, ledger_posting),
    ):
        batch = [make(namespace) for _ in range(3)]
        await together[topic]([*batch, batch[0]])  # one record twice in the fetch
        await together[topic](batch)  # and the whole batch redelivered

    counts = {
        table: await read_model.pool.fetchval(f"SELECT count(*) FROM {table}")
        for table in ("seen_stripe_events", "seen_usage_records", "seen_ledger_transactions")
    }
    assert counts == dict.fromkeys(counts, 3)
    for topic in (namespace.stripe_events, namespace.usage, namespace.ledger):
        assert stream_messages(topic) == {"new": 3, "duplicate": 4}
    row = await read_model.pool.fetchrow(
        "SELECT amount, amount_refunded, payload -> 'data' -> 'object' ->> 'id' AS object"
        " FROM seen_stripe_events LIMIT 1"
    )
    assert (row["amount"], row["amount_refunded"], row["object"]) == (999, 100, "ch_1")
    usage = await read_model.pool.fetchrow("SELECT * FROM seen_usage_records LIMIT 1")
    assert (usage["mode"], usage["charged_millicredits"], usage["cost_millicredits"]) == (
        "charged",
        50_000,
        12_500,
    )
    delta = await read_model.pool.fetchval(
        "SELECT wallet_delta_millicredits FROM seen_ledger_transactions LIMIT 1"
    )
    assert delta == -50_000


async def test_the_batch_and_record_paths_write_the_same_rows(
    namespace: Topics, read_model: Database
) -> None:
    together = batch_handlers(read_model, namespace)[namespace.usage]
    one = handlers(read_model, namespace)[namespace.usage]
    a, b = usage_record(namespace), usage_record(namespace)

    await together([a, b])
    await one(a)  # a redelivery on the record path changes nothing
    await one(usage_record(namespace))

    columns = "usage_id, user_id, model, mode, charged_millicredits, cost_millicredits"
    rows = await read_model.pool.fetch(f"SELECT {columns} FROM seen_usage_records")
    assert len(rows) == 3
    assert {tuple(r)[1:] for r in rows} == {("alice", "gpt-4o", "charged", 50_000, 12_500)}


async def test_an_undecodable_record_fails_the_whole_batch(
    namespace: Topics, read_model: Database
) -> None:
    together = batch_handlers(read_model, namespace)[namespace.usage]

    with pytest.raises(Exception, match="decode"):
        await together([usage_record(namespace), inbound(namespace.usage, b"\xff\xfe garbage")])

    assert await read_model.pool.fetchval("SELECT count(*) FROM seen_usage_records") == 0
