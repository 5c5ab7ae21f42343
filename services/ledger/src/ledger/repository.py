"""All SQL of the ledger service."""

from __future__ import annotations

from typing import Any

from billing_events.kafka import InboundMessage


async def claim_message(
    conn: Any, message_key: str, kind: str, message: InboundMessage, trace_id: str | None
) -> bool:
    """Record a message as handled; False when it already was (a redelivery)."""
    inserted = await conn.fetchval(
        "INSERT INTO inbox (message_key, kind, topic, kafka_partition, kafka_offset,"
        " correlation_id, trace_id) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (message_key) DO NOTHING RETURNING true",
        message_key,
        kind,
        message.topic,
        message.partition,
        message.offset,
        message.correlation_id,
        trace_id,
    )
    return bool(inserted)


async def inbox_entry(conn: Any, message_key: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM inbox WHERE message_key = $1", message_key)
    return dict(row) if row else None
