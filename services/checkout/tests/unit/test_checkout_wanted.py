"""Checkout reads only the ledger transactions that move a purchase."""

from __future__ import annotations

from billing_events.kafka import KIND_HEADER, InboundMessage
from billing_events.topics import Topics
from checkout.handlers import wanted_for


def _ledger_record(topics: Topics, kind: bytes | None) -> InboundMessage:
    headers = ((KIND_HEADER, kind),) if kind is not None else ()
    return InboundMessage(topics.ledger, 0, 0, b"user", b"", headers, 0)


def test_purchases_refunds_and_unlabelled_records_are_wanted_the_rest_not() -> None:
    topics = Topics()
    [wanted] = wanted_for(topics).values()
    kinds = [b"purchase", b"refund", None, b"usage", b"adjustment", b"reversal"]

    assert [wanted(_ledger_record(topics, k)) for k in kinds] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
