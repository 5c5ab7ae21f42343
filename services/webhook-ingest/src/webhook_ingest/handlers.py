"""webhook-ingest's consumer of its own topic: the store put back after a restore.

Every event is stored before it is published, so in steady state each record read here is
already a row: a batch costs one look-up of its event ids, and nothing is written (its
position is saved a moment later, as for any record with no effect). After the database is
restored to an earlier moment, the events received since exist only in Kafka; this puts them
back, so the reconciliation and the admin replay still find every event a grant was made
from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from billing_events.kafka import BatchHandler, Handler, InboundMessage
from billing_events.offsets import unit_of_work
from billing_events.stripe import stripe_event
from billing_platform.db import HasPool
from prometheus_client import Counter

from webhook_ingest import repository

log = logging.getLogger(__name__)

RESTORED = Counter(
    "stripe_webhook_events_restored_total",
    "Stored Stripe events missing from the database and written back from Kafka",
)


def stored_events_batch_handler(db: HasPool) -> BatchHandler:
    """A fetched batch of events (one or more partitions): the missing ones inserted, in
    one statement."""

    async def handle(messages: Sequence[InboundMessage]) -> None:
        # Distinct ids: a replayed event is on the topic twice, and one statement may not
        # insert one id from two rows.
        envelopes = {e.stripe_event_id: e for e in map(stripe_event, messages)}
        async with db.pool.acquire() as conn:
            missing = await repository.missing_events(conn, list(envelopes))
        if not missing:
            return
        async with unit_of_work(db) as conn:
            restored = await repository.insert_events(conn, [envelopes[i] for i in missing])
        if restored:
            RESTORED.inc(len(restored))
            log.warning("stripe events restored from kafka", extra={"count": len(restored)})

    return handle


def stored_event_handler(db: HasPool) -> Handler:
    """One record at a time: how the consumer isolates a record its batch failed on."""
    batch = stored_events_batch_handler(db)

    async def handle(message: InboundMessage) -> None:
        await batch([message])

    return handle
