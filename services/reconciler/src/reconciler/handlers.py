"""Kafka consumers of the reconciler's read model; each is idempotent by natural key.

A read-model row is written once by its natural key (its table's primary key, ``ON
CONFLICT DO NOTHING``), in the transaction that saves the partitions' positions: a
redelivery changes nothing, and a failed attempt leaves nothing behind, so the retry starts
clean. No separate inbox claim is needed for that; until e821c73 one was written per
record, two rows per AI call that nothing read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from billing_events.kafka import BatchHandler, Handler, InboundMessage, PermanentError
from billing_events.offsets import unit_of_work
from billing_events.topics import Topics
from billing_events.v1 import alert_pb2, ledger_pb2, stripe_pb2, usage_pb2

from reconciler import metrics, repository, stream
from reconciler.alerts import AlertForwarder, alert_key
from reconciler.service import HasPool


def _received(message: InboundMessage) -> datetime:
    return datetime.fromtimestamp(message.timestamp_ms / 1000, UTC)


Seen = Callable[[InboundMessage], Any]


def _stripe_seen(message: InboundMessage) -> stream.SeenStripeEvent:
    return stream.seen_stripe_event(message.decode(stripe_pb2.StripeEventReceived))


def _usage_seen(message: InboundMessage) -> stream.SeenUsage:
    return stream.seen_usage(message.decode(usage_pb2.UsageRecorded), _received(message))


def _ledger_seen(message: InboundMessage) -> stream.SeenLedgerTransaction:
    posted = message.decode(ledger_pb2.LedgerTransactionPosted)
    return stream.seen_ledger_transaction(posted, _received(message))


def batch_handler(db: HasPool, seen_of: Seen, table: repository.SeenTable) -> BatchHandler:
    """A fetched batch of records (one or more partitions) into the read model in one
    transaction.

    A record that does not decode fails the batch; the consumer then takes the records one
    by one (``handlers``), which dead-letters that one alone.
    """

    async def handle(messages: Sequence[InboundMessage]) -> None:
        rows = [seen_of(m) for m in messages]
        async with unit_of_work(db) as conn:
            new = await repository.insert_seen(conn, table, rows)
        topic = messages[0].topic
        metrics.STREAM_MESSAGES.labels(topic, "new").inc(new)
        metrics.STREAM_MESSAGES.labels(topic, "duplicate").inc(len(messages) - new)

    return handle


def batch_handlers(db: HasPool, topics: Topics) -> dict[str, BatchHandler]:
    return {
        topics.stripe_events: batch_handler(db, _stripe_seen, repository.SEEN_STRIPE_EVENTS),
        topics.usage: batch_handler(db, _usage_seen, repository.SEEN_USAGE_RECORDS),
        topics.ledger: batch_handler(db, _ledger_seen, repository.SEEN_LEDGER_TRANSACTIONS),
    }


def _one_at_a_time(handle_batch: BatchHandler) -> Handler:
    async def handle(message: InboundMessage) -> None:
        await handle_batch([message])

    return handle


def alerts_handler(db: HasPool, forwarder: AlertForwarder) -> Handler:
    """Posts each alert once to the webhook; no transaction is held across the post."""

    async def handle(message: InboundMessage) -> None:
        alert = message.decode(alert_pb2.BillingAlert)
        key = alert_key(alert)
        if not key:
            raise PermanentError("alert without an id")
        async with db.pool.acquire() as conn:
            if await repository.alert_forwarded(conn, key):
                metrics.ALERTS_FORWARDED.labels(alert.kind, "duplicate").inc()
                return
        await forwarder.forward(alert)
        async with db.pool.acquire() as conn:
            await repository.mark_alert_forwarded(conn, key, alert.kind)
        metrics.ALERTS_FORWARDED.labels(alert.kind, "forwarded").inc()

    return handle


def handlers(db: HasPool, topics: Topics) -> dict[str, Handler]:
    """The same writes a record at a time: the consumer's fallback from a failed batch."""
    return {topic: _one_at_a_time(h) for topic, h in batch_handlers(db, topics).items()}
