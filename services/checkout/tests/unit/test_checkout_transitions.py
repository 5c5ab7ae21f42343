"""Purchase status transitions and reading Stripe event payloads and ledger refunds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from checkout.transitions import (
    FAILED,
    FULFILLED,
    PAID,
    PARTIALLY_REFUNDED,
    PENDING,
    REFUNDED,
    STATUSES,
    clawed_back,
    next_status,
    observed_status,
    parse_payload,
    purchase_id_of,
    receipt_url_of,
    refund_status,
)

FORWARD = [PENDING, PAID, FULFILLED, PARTIALLY_REFUNDED, REFUNDED]


@pytest.mark.parametrize(
    ("current", "observed", "expected"),
    [
        (PENDING, PAID, PAID),
        (FAILED, PAID, PAID),  # a late success after the session was marked failed
        (PAID, FULFILLED, FULFILLED),
        (PENDING, FULFILLED, FULFILLED),  # ledger event before the Stripe one
        (FULFILLED, PAID, FULFILLED),  # a late "paid" never downgrades
        (REFUNDED, FULFILLED, REFUNDED),
        (PARTIALLY_REFUNDED, FULFILLED, PARTIALLY_REFUNDED),
        (FULFILLED, PARTIALLY_REFUNDED, PARTIALLY_REFUNDED),
        (PARTIALLY_REFUNDED, REFUNDED, REFUNDED),
        (REFUNDED, PARTIALLY_REFUNDED, REFUNDED),
        (PENDING, FAILED, FAILED),
        (PAID, FAILED, PAID),
        (FULFILLED, FAILED, FULFILLED),
        (FAILED, FAILED, FAILED),
    ],
)
def test_transition(current: str, observed: str, expected: str) -> None:
    assert next_status(current, observed) == expected


def test_statuses_never_move_backwards() -> None:
    for i, current in enumerate(FORWARD):
        for observed in FORWARD:
            assert FORWARD.index(next_status(current, observed)) >= i


def test_failed_only_from_pending() -> None:
    for current in STATUSES:
        expected = FAILED if current in (PENDING, FAILED) else current
        assert next_status(current, FAILED) == expected


def test_refund_status() -> None:
    assert refund_status(1_000, 9_990_000) == PARTIALLY_REFUNDED
    assert refund_status(9_990_000, 9_990_000) == REFUNDED
    assert refund_status(10_000_000, 9_990_000) == REFUNDED


@dataclass
class Entry:
    account: str
    amount_millicredits: int


def test_clawed_back_is_the_users_negative_wallet_amount() -> None:
    entries = [
        Entry("wallet:alice", -4_000_000),
        Entry("liability:deferred_revenue", 4_000_000),
        Entry("wallet:bob", -7),
    ]
    assert clawed_back(entries, "alice") == 4_000_000
    assert clawed_back(entries, "carol") == 0


def _event(obj: dict[str, Any], event_type: str = "checkout.session.completed") -> bytes:
    return json.dumps({"id": "evt_1", "type": event_type, "data": {"object": obj}}).encode()


def test_purchase_id_is_the_client_reference_id() -> None:
    event = parse_payload(_event({"client_reference_id": "p-1", "metadata": {"purchase_id": "x"}}))
    assert purchase_id_of(event) == "p-1"


def test_purchase_id_falls_back_to_metadata() -> None:
    event = parse_payload(_event({"client_reference_id": None, "metadata": {"purchase_id": "p-2"}}))
    assert purchase_id_of(event) == "p-2"


@pytest.mark.parametrize(
    "payload",
    [
        _event({}),
        _event({"metadata": {}}),
        _event({"metadata": "nonsense", "client_reference_id": ""}),
        b'{"data": null}',
        b"{}",
    ],
)
def test_no_purchase_id(payload: bytes) -> None:
    assert purchase_id_of(parse_payload(payload)) is None


def test_payload_must_be_a_json_object() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        parse_payload(b"[1, 2]")
    with pytest.raises(json.JSONDecodeError):
        parse_payload(b"not json")


@pytest.mark.parametrize(
    ("event_type", "obj", "expected"),
    [
        ("checkout.session.completed", {"payment_status": "paid"}, PAID),
        ("checkout.session.completed", {"payment_status": "unpaid"}, None),
        ("checkout.session.completed", {"payment_status": "no_payment_required"}, None),
        ("checkout.session.async_payment_succeeded", {}, PAID),
        ("checkout.session.expired", {}, FAILED),
        ("checkout.session.async_payment_failed", {}, FAILED),
        ("charge.refunded", {}, None),
        ("payment_intent.succeeded", {}, None),
    ],
)
def test_observed_status(event_type: str, obj: dict[str, Any], expected: str | None) -> None:
    assert observed_status(event_type, parse_payload(_event(obj, event_type))) == expected


RECEIPT = "https://pay.stripe.com/receipts/payment/abc"


@pytest.mark.parametrize(
    ("event_type", "obj", "expected"),
    [
        ("charge.succeeded", {"object": "charge", "receipt_url": RECEIPT}, RECEIPT),
        ("charge.refunded", {"object": "charge", "receipt_url": RECEIPT}, RECEIPT),
        ("charge.succeeded", {"object": "charge", "receipt_url": None}, None),
        ("charge.succeeded", {"object": "charge"}, None),
        # Rendered as a link: nothing but https, and nothing absurdly long.
        ("charge.succeeded", {"object": "charge", "receipt_url": "javascript:alert(1)"}, None),
        ("charge.succeeded", {"object": "charge", "receipt_url": "http://x.example/r"}, None),
        ("charge.succeeded", {"object": "charge", "receipt_url": RECEIPT + "a" * 2048}, None),
        (
            "checkout.session.completed",
            {"object": "checkout.session", "receipt_url": RECEIPT},
            None,
        ),
        ("charge.dispute.created", {"object": "dispute", "receipt_url": RECEIPT}, None),
    ],
)
def test_receipt_url_of(event_type: str, obj: dict[str, Any], expected: str | None) -> None:
    assert receipt_url_of(event_type, parse_payload(_event(obj, event_type))) == expected
