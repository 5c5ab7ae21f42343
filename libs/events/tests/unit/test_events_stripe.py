"""Reading stripe.events.v1 records: an event without its Stripe id is poison."""

from __future__ import annotations

import pytest
from billing_events.kafka import InboundMessage, PermanentError
from billing_events.stripe import stripe_event
from billing_events.v1 import stripe_pb2


def _record(event: stripe_pb2.StripeEventReceived) -> InboundMessage:
    return InboundMessage("stripe.events.v1", 0, 7, b"cs_1", event.SerializeToString(), (), 0)


def test_an_event_is_read_with_its_fields() -> None:
    sent = stripe_pb2.StripeEventReceived(stripe_event_id="evt_1", type="charge.succeeded")
    assert stripe_event(_record(sent)).type == "charge.succeeded"


def test_an_event_without_its_stripe_id_is_poison() -> None:
    with pytest.raises(PermanentError, match="without an id"):
        stripe_event(_record(stripe_pb2.StripeEventReceived(type="charge.succeeded")))
