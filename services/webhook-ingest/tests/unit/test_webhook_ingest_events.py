"""The stripe.events.v1 envelope built from a verified body, and its Kafka key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from billing_platform import context
from webhook_ingest.events import MalformedEvent, envelope_from_body, event_key


def _event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "evt_1",
        "type": "checkout.session.completed",
        "api_version": "2024-06-20",
        "created": 1_700_000_000,
        "livemode": False,
        "data": {"object": {"id": "cs_test_1", "object": "checkout.session"}},
    }
    event.update(overrides)
    return event


def _body(**overrides: Any) -> bytes:
    return json.dumps(_event(**overrides)).encode()


def test_the_envelope_carries_the_raw_body_and_the_request_correlation_id() -> None:
    body = _body()
    token = context.correlation_id_var.set("corr-42")
    try:
        envelope = envelope_from_body(body)
    finally:
        context.correlation_id_var.reset(token)

    assert envelope.payload == body
    assert envelope.meta.correlation_id == "corr-42"
    assert (envelope.stripe_event_id, envelope.object_id) == ("evt_1", "cs_test_1")
    assert envelope.stripe_created.seconds == 1_700_000_000


def test_the_key_is_the_stripe_object_id() -> None:
    assert event_key(envelope_from_body(_body())) == "cs_test_1"


def test_the_key_falls_back_to_the_event_id_without_an_object_id() -> None:
    envelope = envelope_from_body(_body(data={"object": {"object": "balance"}}))

    assert event_key(envelope) == "evt_1"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'"evt_1"',
        json.dumps({"id": "evt_1"}).encode(),
        _body(data={"object": "cs_1"}),
        _body(id=None),
        _body(id=""),
        _body(id=42),
        _body(type=None),
        _body(created="yesterday"),
        _body(created=10**20),
        _body(created=-(2**63)),
        _body(id="evt_\u0000"),
        _body(id="evt_" + "x" * 300),
        _body(type="checkout.session.completed\u0000"),
        _body(api_version="2024\u0000"),
        _body(data={"object": {"id": "cs_\u0000"}}),
        b"\xff\xfe",
    ],
)
def test_a_body_that_is_not_a_stripe_event_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedEvent):
        envelope_from_body(body)
