"""All SQL of the webhook-ingest service."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from billing_events.v1 import stripe_pb2


@dataclass(frozen=True)
class StoredEvent:
    payload: bytes
    received_at: datetime


async def insert_event(conn: Any, envelope: stripe_pb2.StripeEventReceived) -> bool:
    """Store a verified event; False when its Stripe event id is already stored."""
    inserted = await conn.fetchval(
        "INSERT INTO stripe_events (event_id, type, object_id, livemode, api_version,"
        " stripe_created, payload, correlation_id, received_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        envelope.stripe_event_id,
        envelope.type,
        envelope.object_id or None,
        envelope.livemode,
        envelope.api_version or None,
        envelope.stripe_created.ToDatetime(tzinfo=UTC),
        envelope.payload,
        envelope.meta.correlation_id or None,
        envelope.received_at.ToDatetime(tzinfo=UTC),
    )
    return inserted is not None


async def stored_event(conn: Any, event_id: str) -> StoredEvent | None:
    row = await conn.fetchrow(
        "SELECT payload, received_at FROM stripe_events WHERE event_id = $1", event_id
    )
    return StoredEvent(bytes(row["payload"]), row["received_at"]) if row else None
