"""Turning a verified Stripe event body into the ``stripe.events.v1`` envelope."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from billing_events.kafka import KafkaPublisher, timestamp_now
from billing_events.topics import Topics
from billing_events.v1 import common_pb2, stripe_pb2
from billing_platform import context
from google.protobuf.timestamp_pb2 import Timestamp

MAX_TEXT_LENGTH = 255


class MalformedEvent(ValueError):
    pass


def envelope_from_body(body: bytes) -> stripe_pb2.StripeEventReceived:
    """Envelope for a verified body; the raw bytes travel unchanged as the payload."""
    try:
        event = json.loads(body)
        obj = event["data"]["object"]
        created = Timestamp()
        created.FromDatetime(datetime.fromtimestamp(int(event["created"]), UTC))
        return stripe_pb2.StripeEventReceived(
            meta=common_pb2.EventMeta(
                event_id=context.new_id(),
                occurred_at=timestamp_now(),
                correlation_id=context.current_correlation_id(),
                producer="webhook-ingest",
            ),
            stripe_event_id=_required_text(event, "id"),
            type=_required_text(event, "type"),
            api_version=_text(str(event.get("api_version") or ""), "api_version"),
            object_id=_text(str(obj.get("id") or ""), "data.object.id"),
            livemode=bool(event.get("livemode", False)),
            stripe_created=created,
            received_at=timestamp_now(),
            payload=body,
        )
    # OSError: a timestamp beyond what the platform's time_t holds.
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, OSError) as exc:
        raise MalformedEvent(f"not a Stripe event: {exc}") from exc


def _required_text(event: dict[str, object], name: str) -> str:
    # The event id is the store's primary key and the consumers' idempotency key.
    value = event[name]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    return _text(value, name)


def _text(value: str, name: str) -> str:
    # Stored as PostgreSQL text (no NUL) and the event id in a btree key (bounded size).
    if len(value) > MAX_TEXT_LENGTH or "\x00" in value:
        raise ValueError(f"{name} must be at most {MAX_TEXT_LENGTH} characters, without NUL")
    return value


def event_key(envelope: stripe_pb2.StripeEventReceived) -> str:
    """Kafka key: the Stripe object id, so all events of one session/charge stay in order."""
    return envelope.object_id or envelope.stripe_event_id


async def publish_stripe_event(
    publisher: KafkaPublisher, topics: Topics, envelope: stripe_pb2.StripeEventReceived
) -> None:
    await publisher.publish(
        topics.stripe_events,
        event_key(envelope),
        envelope,
        correlation_id=envelope.meta.correlation_id,
    )
