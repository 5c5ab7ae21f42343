"""Kafka consumers of the reconciler's read model; each is idempotent by natural key.

The inbox claim and the row share one transaction: a redelivery finds the claim and
changes nothing; a failed attempt leaves no claim behind, so the retry starts clean.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from billing_events.inbox import first_claimed
from billing_events.kafka import BatchHandler, Handler, InboundMessage, PermanentError
from billing_events.offsets import unit_of_work
from billing_events.topics import Topics
from billing_events.v1 import alert_pb2, ledger_pb2, stripe_pb2, usage_pb2

from reconciler import metrics, repository, service, stream
from reconciler.alerts import AlertForwarder, alert_key
from reconciler.service import HasPool

Write = Callable[[Any], Awaitable[None]]


async def _remember(db: HasPool, message: InboundMessage, key: str, write: Write) -> None:
    async with unit_of_work(db) as conn:
        new = await service.remember(conn, key, message, write)
    metrics.STREAM_MESSAGES.labels(message.topic, "new" if new else "duplicate").inc()


def _received(message: InboundMessage) -> datetime:
    return datetime.fromtimestamp(message.timestamp_ms / 1000, UTC)


def stripe_events_handler(db: HasPool) -> Handler:
    async def handle(message: InboundMessage) -> None:
        seen = stream.seen_stripe_event(message.decode(stripe_pb2.StripeEventReceived))
        write = partial(repository.insert_stripe_event, seen=seen)
        await _remember(db, message, f"stripe:{seen.event_id}", write)

    return handle


def usage_handler(db: HasPool) -> Handler:
    async def handle(message: InboundMessage) -> None:
        record = message.decode(usage_pb2.UsageRecorded)
        seen = stream.seen_usage(record, _received(message))
        write = partial(repository.insert_usage, seen=seen)
        await _remember(db, message, f"usage:{seen.usage_id}", write)

    return handle


def ledger_handler(db: HasPool) -> Handler:
    async def handle(message: InboundMessage) -> None:
        posted = message.decode(ledger_pb2.LedgerTransactionPosted)
        seen = stream.seen_ledger_transaction(posted, _received(message))
        write = partial(repository.insert_ledger_transaction, seen=seen)
        await _remember(db, message, f"ledger:{seen.transaction_id}", write)

    return handle


Seen = Callable[[InboundMessage], tuple[str, Any]]


def _stripe_seen(message: InboundMessage) -> tuple[str, Any]:
    seen = stream.seen_stripe_event(message.decode(stripe_pb2.StripeEventReceived))
    return f"stripe:{seen.event_id}", seen


def _usage_seen(message: InboundMessage) -> tuple[str, Any]:
    seen = stream.seen_usage(message.decode(usage_pb2.UsageRecorded), _received(message))
    return f"usage:{seen.usage_id}", seen


def _ledger_seen(message: InboundMessage) -> tuple[str, Any]:
    posted = message.decode(ledger_pb2.LedgerTransactionPosted)
    seen = stream.seen_ledger_transaction(posted, _received(message))
    return f"ledger:{seen.transaction_id}", seen


def batch_handler(db: HasPool, seen_of: Seen, table: repository.SeenTable) -> BatchHandler:
    """A partition's fetched records into the read model in one transaction, claims first.

    A record that does not decode fails the batch; the consumer then takes the records one
    by one (through ``handlers``), which dead-letters that one alone.
    """

    async def handle(messages: Sequence[InboundMessage]) -> None:
        seen = [(*seen_of(m), m) for m in messages]
        async with unit_of_work(db) as conn:
            new = await repository.claim_messages(conn, [(key, m) for key, _, m in seen])
            rows = [row for _, row, _ in first_claimed(seen, lambda s: s[0], new)]
            await repository.insert_seen(conn, table, rows)
        topic = messages[0].topic
        metrics.STREAM_MESSAGES.labels(topic, "new").inc(len(rows))
        metrics.STREAM_MESSAGES.labels(topic, "duplicate").inc(len(messages) - len(rows))

    return handle


def batch_handlers(db: HasPool, topics: Topics) -> dict[str, BatchHandler]:
    return {
        topics.stripe_events: batch_handler(db, _stripe_seen, repository.SEEN_STRIPE_EVENTS),
        topics.usage: batch_handler(db, _usage_seen, repository.SEEN_USAGE_RECORDS),
        topics.ledger: batch_handler(db, _ledger_seen, repository.SEEN_LEDGER_TRANSACTIONS),
    }


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
    return {
        topics.stripe_events: stripe_events_handler(db),
        topics.usage: usage_handler(db),
        topics.ledger: ledger_handler(db),
    }
