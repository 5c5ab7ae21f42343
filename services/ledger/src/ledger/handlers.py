"""Kafka handlers of the ledger; each is idempotent by the message's natural key."""

from __future__ import annotations

import logging

from billing_events.kafka import Handler, InboundMessage, PermanentError
from billing_events.v1 import stripe_pb2
from billing_platform import tracing
from billing_platform.db import Database
from prometheus_client import Counter

from ledger import repository

log = logging.getLogger(__name__)

STRIPE_EVENTS_RECEIVED = Counter(
    "ledger_stripe_events_received_total",
    "Verified Stripe events consumed by the ledger",
    ["event_type", "outcome"],
)


def stripe_event_handler(db: Database) -> Handler:
    async def handle(message: InboundMessage) -> None:
        event = message.decode(stripe_pb2.StripeEventReceived)
        if not event.stripe_event_id:
            raise PermanentError("stripe event without an id")
        async with db.pool.acquire() as conn, conn.transaction():
            new = await repository.claim_message(
                conn,
                f"stripe:{event.stripe_event_id}",
                event.type,
                message,
                tracing.current_trace_id(),
            )
        outcome = "new" if new else "duplicate"
        STRIPE_EVENTS_RECEIVED.labels(event.type, outcome).inc()
        log.info("stripe event", extra={"event_type": event.type, "outcome": outcome})

    return handle
