"""All SQL of the webhook-ingest service."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from billing_events.v1 import stripe_pb2


@dataclass(frozen=True)
class StoredEvent:
    payload: bytes
    received_at: datetime


async def insert_events(conn: Any, envelopes: Sequence[stripe_pb2.StripeEventReceived]) -> set[str]:
    """Store verified events in one statement; the ids of those not stored before.

    The ids must be distinct: of two rows with one id in a statement, which one PostgreSQL
    keeps is not the caller's choice.
    """
    if not envelopes:
        return set()
    rows = await conn.fetch(
        "INSERT INTO stripe_events (event_id, type, object_id, livemode, api_version,"
        " stripe_created, payload, correlation_id, received_at)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::text[],"
        " $6::timestamptz[], $7::bytea[], $8::text[], $9::timestamptz[])"
        " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        *(list(column) for column in zip(*map(_event_row, envelopes), strict=True)),
    )
    return {row["event_id"] for row in rows}


async def missing_events(conn: Any, event_ids: Sequence[str]) -> list[str]:
    """Which of these event ids have no row (only ids travel: payloads stay in Kafka)."""
    rows = await conn.fetch(
        "SELECT id FROM unnest($1::text[]) AS id"
        " WHERE NOT EXISTS (SELECT FROM stripe_events e WHERE e.event_id = id)",
        list(event_ids),
    )
    return [row["id"] for row in rows]


def _event_row(envelope: stripe_pb2.StripeEventReceived) -> tuple[Any, ...]:
    return (
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


async def stored_event(conn: Any, event_id: str) -> StoredEvent | None:
    row = await conn.fetchrow(
        "SELECT payload, received_at FROM stripe_events WHERE event_id = $1", event_id
    )
    return StoredEvent(bytes(row["payload"]), row["received_at"]) if row else None
