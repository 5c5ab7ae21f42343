"""Reading ``stripe.events.v1`` records, the same way in every consumer."""

from __future__ import annotations

from billing_events.kafka import InboundMessage, PermanentError
from billing_events.v1 import stripe_pb2


def stripe_event(message: InboundMessage) -> stripe_pb2.StripeEventReceived:
    """The record's event; one without a Stripe event id can never be applied (poison)."""
    event = message.decode(stripe_pb2.StripeEventReceived)
    if not event.stripe_event_id:
        raise PermanentError("stripe event without an id")
    return event
