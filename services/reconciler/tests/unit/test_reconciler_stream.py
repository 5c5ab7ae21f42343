"""What the consumers keep of each message (the read model rows), and schedule slots."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest
from billing_events.kafka import PermanentError
from billing_events.v1 import common_pb2, ledger_pb2, stripe_pb2, usage_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from reconciler import stream
from reconciler.period import Period
from reconciler.scheduler import scheduled_request, seconds_to_next_slot

AT = datetime(2025, 2, 28, 10, 0, tzinfo=UTC)


def ts(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def stripe_event(kind: str, obj: dict[str, object]) -> stripe_pb2.StripeEventReceived:
    body = {"id": "evt_1", "type": kind, "created": int(AT.timestamp()), "data": {"object": obj}}
    return stripe_pb2.StripeEventReceived(
        stripe_event_id="evt_1",
        type=kind,
        object_id=str(obj["id"]),
        payload=json.dumps(body).encode(),
    )


def test_a_paid_session_keeps_its_purchase_amount_and_time() -> None:
    obj = {"id": "cs_1", "client_reference_id": "p1", "amount_total": 999, "payment_status": "paid"}

    seen = stream.seen_stripe_event(stripe_event("checkout.session.completed", obj))

    assert (seen.object_id, seen.purchase_id, seen.amount, seen.amount_refunded) == (
        "cs_1",
        "p1",
        999,
        None,
    )
    assert seen.created == AT
    assert json.loads(seen.payload)["data"]["object"]["payment_status"] == "paid"


def test_a_session_falls_back_to_metadata_for_its_purchase() -> None:
    obj = {"id": "cs_1", "metadata": {"purchase_id": "p2"}, "amount_total": 999}

    seen = stream.seen_stripe_event(stripe_event("checkout.session.completed", obj))

    assert seen.purchase_id == "p2"


def test_a_refunded_charge_keeps_its_cumulative_refund() -> None:
    obj = {
        "id": "ch_1",
        "amount": 999,
        "amount_refunded": 500,
        "client_reference_id": "ignored",
        "metadata": {"purchase_id": "p1"},
    }

    seen = stream.seen_stripe_event(stripe_event("charge.refunded", obj))

    assert (seen.purchase_id, seen.amount, seen.amount_refunded) == ("p1", 999, 500)


def test_an_unreadable_stripe_payload_is_dead_lettered_at_once() -> None:
    event = stripe_pb2.StripeEventReceived(stripe_event_id="evt_1", type="x", payload=b"{nope")

    with pytest.raises(PermanentError):
        stream.seen_stripe_event(event)


def test_a_usage_record_keeps_mode_and_amounts() -> None:
    record = usage_pb2.UsageRecorded(
        meta=common_pb2.EventMeta(occurred_at=ts(AT)),
        usage_id="use-1",
        user_id="u1",
        model="gpt-4o",
        charged_millicredits=50_000,
        cost_millicredits=12_500,
        mode=usage_pb2.BILLING_MODE_SHADOW,
    )

    seen = stream.seen_usage(record, datetime(2030, 1, 1, tzinfo=UTC))

    assert (seen.mode, seen.charged_millicredits, seen.cost_millicredits) == (
        "shadow",
        50_000,
        12_500,
    )
    assert seen.created == AT


def test_a_usage_record_without_time_takes_the_receipt_time() -> None:
    record = usage_pb2.UsageRecorded(usage_id="use-1", user_id="u1", mode=99)  # type: ignore[arg-type]

    seen = stream.seen_usage(record, AT)

    assert (seen.created, seen.mode) == (AT, "unknown_99")


def test_a_ledger_transaction_keeps_the_move_on_the_users_wallet() -> None:
    posted = ledger_pb2.LedgerTransactionPosted(
        transaction_id="t1",
        kind=ledger_pb2.TRANSACTION_KIND_PURCHASE,
        user_id="u1",
        reference_id="p1",
        posted_at=ts(AT),
        entries=[
            ledger_pb2.LedgerEntry(account="wallet:u1", amount_millicredits=10_000_000),
            ledger_pb2.LedgerEntry(account="stripe_clearing", amount_millicredits=-9_990_000),
            ledger_pb2.LedgerEntry(account="promotional", amount_millicredits=-10_000),
        ],
    )

    seen = stream.seen_ledger_transaction(posted, datetime(2030, 1, 1, tzinfo=UTC))

    assert (seen.kind, seen.wallet_delta_millicredits, seen.posted_at) == (
        "purchase",
        10_000_000,
        AT,
    )


def test_messages_without_their_natural_key_are_refused() -> None:
    with pytest.raises(PermanentError):
        stream.seen_usage(usage_pb2.UsageRecorded(user_id="u1"), AT)
    with pytest.raises(PermanentError):
        stream.seen_ledger_transaction(ledger_pb2.LedgerTransactionPosted(user_id="u1"), AT)


def test_a_scheduled_run_reconciles_yesterday_once_per_slot() -> None:
    now = datetime(2025, 3, 1, 0, 7, tzinfo=UTC)

    request = scheduled_request(now, 86_400)

    assert request.period == Period(date(2025, 2, 28))
    assert request.trigger == "schedule"
    assert request.idempotency_key == f"schedule:2025-02-28:{int(now.timestamp()) // 86_400}"
    assert scheduled_request(now.replace(hour=23), 86_400) == request


def test_the_next_slot_starts_at_the_next_aligned_boundary() -> None:
    now = datetime(2025, 3, 1, 23, 0, tzinfo=UTC)

    assert seconds_to_next_slot(now, 86_400) == 3600
    assert seconds_to_next_slot(now, 3600) == 3600
