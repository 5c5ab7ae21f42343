"""Grant and refund arithmetic, postings and the parsing of Stripe events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from billing_platform.errors import ApiError
from ledger import journal
from ledger.api import decode_cursor, encode_cursor
from ledger.service import paid_session_problem, session_mismatch
from ledger.stripe_events import ChargeRefunded, SessionPaid, UnreadableEvent, interpret

STARTER: dict[str, Any] = {
    "user_id": "u1",
    "price_cents": 999,
    "currency": "usd",
    "grant_millicredits": 9_990_000,
}
PRO: dict[str, Any] = {
    "user_id": "u1",
    "price_cents": 4999,
    "currency": "usd",
    "grant_millicredits": 54_990_000,
}


def test_purchase_posting_balances_and_funds_bonus_from_promotions() -> None:
    entries = journal.purchase_entries("u1", PRO["price_cents"], PRO["grant_millicredits"])
    amounts = {e.account: e.amount_millicredits for e in entries}
    assert amounts == {
        "wallet:u1": 54_990_000,
        "stripe_clearing": -49_990_000,
        "promotional": -5_000_000,
    }
    posting = journal.Posting("purchase", "u1", "p1", "test", entries)
    assert posting.wallet_delta == 54_990_000


def test_unbalanced_posting_is_refused() -> None:
    with pytest.raises(ValueError, match="does not balance"):
        journal.Posting("adjustment", "u1", "r", "t", (journal.Entry("wallet:u1", 5),))


def test_partial_refunds_add_up_to_the_full_grant() -> None:
    refunded, clawed = 0, 0
    for cumulative in (1000, 2500, 4999):
        claw = journal.refund_clawback(
            price_cents=PRO["price_cents"],
            grant_millicredits=PRO["grant_millicredits"],
            refunded_cents_before=refunded,
            clawed_back_before=clawed,
            refunded_total_cents=cumulative,
        )
        assert claw is not None
        entries = journal.refund_entries("u1", claw)
        assert sum(e.amount_millicredits for e in entries) == 0
        refunded += claw.refund_cents
        clawed += claw.clawback_millicredits
    assert (refunded, clawed) == (4999, PRO["grant_millicredits"])


def test_partial_refund_claws_back_the_proportional_share_rounded_down() -> None:
    claw = journal.refund_clawback(
        price_cents=999,
        grant_millicredits=9_990_000,
        refunded_cents_before=0,
        clawed_back_before=0,
        refunded_total_cents=333,
    )
    assert claw == journal.Clawback(333, 3_330_000)


@pytest.mark.parametrize("cumulative", [0, 500, 400])
def test_stale_or_repeated_refund_totals_add_nothing(cumulative: int) -> None:
    claw = journal.refund_clawback(
        price_cents=999,
        grant_millicredits=9_990_000,
        refunded_cents_before=500,
        clawed_back_before=5_000_000,
        refunded_total_cents=cumulative,
    )
    assert claw is None


def test_refund_above_the_price_is_capped_at_the_price() -> None:
    claw = journal.refund_clawback(
        price_cents=999,
        grant_millicredits=9_990_000,
        refunded_cents_before=0,
        clawed_back_before=0,
        refunded_total_cents=5000,
    )
    assert claw == journal.Clawback(999, 9_990_000)


def event(kind: str, obj: dict[str, Any]) -> bytes:
    body = {"id": "evt_1", "type": kind, "created": 1700000000, "data": {"object": obj}}
    return json.dumps(body).encode()


def session(**overrides: Any) -> dict[str, Any]:
    obj = {
        "id": "cs_1",
        "object": "checkout.session",
        "payment_status": "paid",
        "amount_total": 999,
        "currency": "usd",
        "client_reference_id": "p1",
        "metadata": {"purchase_id": "p-meta", "user_id": "u1"},
        "payment_intent": "pi_1",
    }
    return {**obj, **overrides}


def test_paid_session_names_its_purchase_by_client_reference_id() -> None:
    meaning = interpret(event("checkout.session.completed", session()))
    assert isinstance(meaning, SessionPaid)
    assert (meaning.purchase_id, meaning.amount_total, meaning.user_id) == ("p1", 999, "u1")
    assert meaning.payment_intent == "pi_1"


def test_metadata_purchase_id_is_the_fallback() -> None:
    meaning = interpret(event("checkout.session.completed", session(client_reference_id=None)))
    assert isinstance(meaning, SessionPaid)
    assert meaning.purchase_id == "p-meta"


def test_unpaid_sessions_and_unrelated_events_move_nothing() -> None:
    assert interpret(event("checkout.session.completed", session(payment_status="unpaid"))) is None
    assert interpret(event("customer.created", {"id": "cus_1"})) is None


def test_async_payment_success_is_a_paid_session() -> None:
    meaning = interpret(event("checkout.session.async_payment_succeeded", session()))
    assert isinstance(meaning, SessionPaid)


def test_charge_refunded_carries_the_cumulative_refund() -> None:
    charge = {
        "id": "ch_1",
        "amount": 999,
        "amount_refunded": 500,
        "currency": "USD",
        "payment_intent": {"id": "pi_1"},
        "metadata": {"purchase_id": "p1"},
    }
    meaning = interpret(event("charge.refunded", charge))
    assert meaning == ChargeRefunded("evt_1", 1700000000, "ch_1", "p1", "pi_1", 500, "usd")


def test_broken_payloads_are_unreadable_not_retried() -> None:
    with pytest.raises(UnreadableEvent):
        interpret(b"{not json")
    with pytest.raises(UnreadableEvent):
        interpret(event("charge.refunded", {"id": "ch_1"}))


def paid(**overrides: Any) -> SessionPaid:
    meaning = interpret(event("checkout.session.completed", session(**overrides)))
    assert isinstance(meaning, SessionPaid)
    return meaning


def test_a_matching_session_has_no_problem() -> None:
    assert session_mismatch(STARTER, paid()) is None


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"amount_total": 1}, "amount_mismatch"),
        ({"amount_total": None}, "amount_mismatch"),
        ({"currency": "eur"}, "currency_mismatch"),
        ({"metadata": {"user_id": "someone-else"}}, "user_mismatch"),
    ],
)
def test_mismatched_sessions_are_named(overrides: dict[str, Any], problem: str) -> None:
    assert session_mismatch(STARTER, paid(**overrides)) == problem


def test_admin_fulfilment_needs_stripe_to_say_paid_in_full() -> None:
    assert paid_session_problem({"payment_status": "paid", "amount_total": 999}, STARTER) is None
    unpaid = {"payment_status": "unpaid", "amount_total": 999}
    assert paid_session_problem(unpaid, STARTER) == "purchase_not_paid"
    short = {"payment_status": "paid", "amount_total": 100}
    assert paid_session_problem(short, STARTER) == "amount_mismatch"


def test_cursor_round_trips_and_rejects_garbage() -> None:
    assert decode_cursor(encode_cursor(42)) == 42
    assert decode_cursor(None) is None
    with pytest.raises(ApiError) as err:
        decode_cursor("bm9wZQ")
    assert err.value.code == "invalid_cursor"
