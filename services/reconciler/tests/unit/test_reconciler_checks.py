"""The checks' Python side: what each sends to the database and how rows become findings.

The SQL itself runs against PostgreSQL in the integration tests; here a fake connection
records the statement and answers canned rows.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

import pytest
from reconciler import checks
from reconciler.findings import Finding, Schemas
from reconciler.period import Period

PERIOD = Period(date(2025, 2, 28))
OTHER = Schemas(
    reconciler="rec_x", ledger="led_x", metering="met_x", webhook="wh_x", checkout="co_x"
)


class FakeConn:
    def __init__(self, rows: list[dict[str, Any]] | None = None) -> None:
        self.rows = rows or []
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any, timeout: float | None = None) -> list[Any]:
        self.calls.append((sql, args))
        return self.rows


async def run(check: checks.Check, rows: list[dict[str, Any]]) -> tuple[FakeConn, list[Finding]]:
    conn = FakeConn(rows)
    return conn, await check.run(conn, OTHER, PERIOD)


def check(name: str) -> checks.Check:
    return next(c for c in checks.all_checks(120.0) if c.name == name)


@pytest.mark.parametrize("item", checks.all_checks(120.0), ids=lambda c: c.name)
async def test_every_statement_names_the_configured_schemas(item: checks.Check) -> None:
    conn, _ = await run(item, [])

    [(sql, _args)] = conn.calls
    code = re.sub(r"'[^']*'", "''", sql)  # 'checkout.session.completed' is data, not a schema
    assert "{" not in code
    assert not re.search(r'(?<![\w."])(ledger|metering|checkout|webhook_ingest|reconciler)\.', code)
    assert re.search(r'"(led_x|met_x|wh_x|co_x|rec_x)"\.', code)


@pytest.mark.parametrize(
    "name",
    [
        "usage_totals",
        "usage_postings",
        "postings_have_usage",
        "payments_granted",
        "grants_paid",
        "refunds",
    ],
)
async def test_period_checks_get_the_utc_day_bounds(name: str) -> None:
    conn, _ = await run(check(name), [])

    assert conn.calls[0][1] == (
        datetime(2025, 2, 28, tzinfo=UTC),
        datetime(2025, 3, 1, tzinfo=UTC),
    )


async def test_stream_lag_counts_from_the_period_start_with_the_grace() -> None:
    conn, _ = await run(check("stream_lag"), [])

    assert conn.calls[0][1] == (datetime(2025, 2, 28, tzinfo=UTC), 120.0)


def test_the_checks_run_in_a_fixed_order() -> None:
    assert [c.name for c in checks.all_checks(1.0)] == [
        "transactions_balanced",
        "balances_match_journal",
        "running_balances",
        "journal_chain",
        "usage_totals",
        "usage_postings",
        "postings_have_usage",
        "payments_granted",
        "grants_paid",
        "refunds",
        "stream_lag",
    ]


async def test_an_unbalanced_transaction_expects_zero() -> None:
    row = {
        "transaction_id": "t1",
        "kind": "usage",
        "user_id": "u1",
        "reference_id": "r1",
        "entries": 2,
        "total": 1000,
    }

    _, [found] = await run(check("transactions_balanced"), [row])

    assert (found.kind, found.expected_millicredits, found.actual_millicredits) == (
        "unbalanced_transaction",
        0,
        1000,
    )
    assert found.references == ("t1", "r1")


async def test_a_user_without_a_balance_row_drifts_from_zero() -> None:
    row = {"user_id": "u1", "expected": 5000, "actual": None, "entries": 1}

    _, [found] = await run(check("balances_match_journal"), [row])

    assert (found.expected_millicredits, found.actual_millicredits) == (5000, 0)
    assert "no balance row" in found.detail


@pytest.mark.parametrize(("postings", "kind"), [(0, "usage_not_posted"), (2, "usage_posted_twice")])
async def test_usage_postings_name_the_record_and_its_transactions(
    postings: int, kind: str
) -> None:
    row = {
        "usage_id": "use-1",
        "user_id": "u1",
        "model": "gpt-4o",
        "expected": 50_000,
        "postings": postings,
        "actual": 50_000 * postings,
        "transaction_ids": [f"t{i}" for i in range(postings)],
    }

    _, [found] = await run(check("usage_postings"), [row])

    assert found.kind == kind
    assert found.references == ("use-1", *[f"t{i}" for i in range(postings)])


def payment_row(**changes: Any) -> dict[str, Any]:
    row = {
        "purchase_id": "p1",
        "session_ids": ["cs_1"],
        "event_ids": ["evt_1"],
        "amount_total": 999,
        "currency": "usd",
        "sessions": 1,
        "known": True,
        "user_id": "u1",
        "price_cents": 999,
        "terms_currency": "usd",
        "terms_grant": 10_000_000,
        "granted": False,
        "transaction_id": None,
        "grant_user": None,
        "grant_price": None,
        "grant_recorded": None,
        "grant_posted": None,
    }
    return row | changes


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({}, "was paid (999 cents) but has no grant"),
        ({"purchase_id": None, "known": False, "user_id": None}, "names no purchase"),
        ({"known": False, "user_id": None}, "unknown purchase p1"),
        ({"amount_total": 100}, "paid 100 cents but is priced 999 cents"),
    ],
)
async def test_a_payment_without_grant_says_why(changes: dict[str, Any], needle: str) -> None:
    _, [found] = await run(check("payments_granted"), [payment_row(**changes)])

    assert found.kind == "payment_without_grant"
    assert needle in found.detail
    assert found.actual_millicredits == 0


async def test_a_grant_that_differs_from_its_terms_shows_both() -> None:
    row = payment_row(
        granted=True,
        transaction_id="t1",
        grant_user="u1",
        grant_price=999,
        grant_recorded=10_000_000,
        grant_posted=9_000_000,
    )

    _, [found] = await run(check("payments_granted"), [row])

    assert found.kind == "grant_amount_mismatch"
    assert (found.expected_millicredits, found.actual_millicredits) == (10_000_000, 9_000_000)
    assert found.references == ("p1", "cs_1", "evt_1", "t1")


async def test_a_refund_mismatch_compares_clawbacks() -> None:
    row = {
        "purchase_key": "p1",
        "granted": True,
        "user_id": "u1",
        "price_cents": 999,
        "grant_millicredits": 10_000_000,
        "recorded_cents": 0,
        "recorded_claw": 0,
        "stripe_cents": 500,
        "owed_cents": 500,
        "posted_claw": 0,
        "expected_claw": 5_005_005,
        "charge_ids": ["ch_1"],
        "transaction_ids": [],
    }

    _, [found] = await run(check("refunds"), [row])

    assert (found.kind, found.expected_millicredits, found.actual_millicredits) == (
        "refund_mismatch",
        5_005_005,
        0,
    )
    assert found.references == ("p1", "ch_1")


async def test_a_purchase_paid_twice_has_a_payment_without_grant() -> None:
    row = payment_row(
        session_ids=["cs_1", "cs_2"],
        sessions=2,
        granted=True,
        transaction_id="t1",
        grant_user="u1",
        grant_price=999,
        grant_recorded=10_000_000,
        grant_posted=10_000_000,
    )

    _, [found] = await run(check("payments_granted"), [row])

    assert found.kind == "payment_without_grant"
    assert (found.expected_millicredits, found.actual_millicredits) == (20_000_000, 10_000_000)
    assert "paid by 2 sessions (cs_1, cs_2)" in found.detail


def lag_row(source: str, **changes: Any) -> dict[str, Any]:
    row = {
        "source": source,
        "subject": "s1",
        "user_id": "u1",
        "reference": "r1",
        "detail_ref": "d1",
        "since": datetime(2025, 2, 28, 10, tzinfo=UTC),
        "amount": None,
        "outcome": None,
        "ledger_detail": None,
    }
    return row | changes


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        (lag_row("payment"), "has no grant since 2025-02-28T10:00:00+00:00; the ledger has not"),
        (
            lag_row("usage", amount=5000, outcome="uncollected"),
            "has no ledger posting since 2025-02-28T10:00:00+00:00; the ledger consumed it: "
            "uncollected",
        ),
        (lag_row("ledger"), "never seen on billing.ledger.v1"),
    ],
)
async def test_stream_lag_says_what_waits_and_what_the_ledger_did(
    row: dict[str, Any], needle: str
) -> None:
    _, [found] = await run(check("stream_lag"), [row])

    assert found.kind == "stream_lag"
    assert needle in found.detail


async def test_an_edited_journal_names_the_first_differing_entry() -> None:
    row = {
        "problem": "segment",
        "segment_no": 1,
        "stored_count": 10_000,
        "current_count": 9_999,
        "entry_id": 10_007,
        "transaction_id": "t1",
        "user_id": "u1",
        "change": "deleted",
        "differing": 1,
    }

    _, [found] = await run(check("journal_chain"), [row])

    assert found.kind == "journal_edited"
    assert found.references == ("entry:10007", "t1", "segment:1")
    assert "entry 10007 was deleted" in found.detail
    assert "entry ids 10001-20000" in found.detail
