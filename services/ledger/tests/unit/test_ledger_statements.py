"""Monthly statements (figures, CSV, PDF) and the daily accounting journal export.

The builders are fed rows shaped as the repository returns them; the routes are driven
through the real app with a connection that answers the repository's queries from memory.
"""

from __future__ import annotations

import csv
import io
import re
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import jwt
import pytest
from billing_events.topics import Topics
from billing_platform.app import create_app as build_app
from billing_platform.db import Database
from billing_platform.money import credits_text
from billing_platform.settings import InfraSettings
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from ledger import api, holds, journal, service, statement_pdf, statements
from ledger.settings import Settings
from pypdf import PdfReader

MAY = statements.parse_month("2024-05")
PRO_PRICE, PRO_GRANT = 4999, 54_990_000


def wallet_row(kind: str, amount: int, balance_after: int, n: int, **extra: Any) -> dict[str, Any]:
    """A wallet entry as ``repository.wallet_entries_between`` returns it."""
    row = {
        "transaction_id": uuid.UUID(int=n + 1),
        "kind": kind,
        "amount_millicredits": amount,
        "balance_after_millicredits": balance_after,
        "reference_id": f"ref-{n}",
        "created_at": MAY.start + timedelta(hours=n),
        "model": None,
        "input_tokens": None,
        "output_tokens": None,
        "price_cents": None,
        "refund_cents": None,
    }
    return {**row, **extra}


def month_rows(opening: int, moves: Sequence[tuple[str, int, dict[str, Any]]]) -> list[Any]:
    rows, balance = [], opening
    for n, (kind, amount, extra) in enumerate(moves):
        balance += amount
        rows.append(wallet_row(kind, amount, balance, n, **extra))
    return rows


def usage(model: str | None, amount: int, tokens: tuple[int, int]) -> tuple[str, int, Any]:
    return (
        "usage",
        -amount,
        {"model": model, "input_tokens": tokens[0], "output_tokens": tokens[1]},
    )


MOVES = [
    ("purchase", PRO_GRANT, {"price_cents": PRO_PRICE}),
    usage("gpt-4o", 50_000, (1000, 500)),
    usage("gpt-4o-mini", 1_234, (300, 20)),
    usage("gpt-4o", 50_000, (1000, 500)),
    ("refund", -11_000_200, {"refund_cents": 1000}),
    ("adjustment", 5_000, {}),
    ("reversal", -2_000, {}),
    ("purchase", 9_990_000, {"price_cents": 999}),
]
OPENING = 7_500


def may_statement() -> statements.Statement:
    return statements.build_statement("u1", MAY, OPENING, month_rows(OPENING, MOVES))


# --- periods -----------------------------------------------------------------------------


def test_month_is_the_utc_calendar_month() -> None:
    assert (MAY.label, MAY.start, MAY.end) == (
        "2024-05",
        datetime(2024, 5, 1, tzinfo=UTC),
        datetime(2024, 6, 1, tzinfo=UTC),
    )
    december = statements.parse_month("2023-12")
    assert december.end == datetime(2024, 1, 1, tzinfo=UTC)
    assert statements.parse_month("2024-02").end == datetime(2024, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "text", ["2024-13", "2024-00", "2024-1", "24-05", "2024-05-01", "2024/05", "", "x", "9999-12"]
)
def test_malformed_months_are_refused(text: str) -> None:
    with pytest.raises(statements.InvalidPeriod):
        statements.parse_month(text)


def test_day_is_the_utc_day() -> None:
    day = statements.parse_day("2024-02-29")
    assert (day.start, day.end) == (
        datetime(2024, 2, 29, tzinfo=UTC),
        datetime(2024, 3, 1, tzinfo=UTC),
    )


@pytest.mark.parametrize("text", ["2023-02-29", "2024-2-01", "20240201", "2024-02-01T00:00", ""])
def test_malformed_days_are_refused(text: str) -> None:
    with pytest.raises(statements.InvalidPeriod):
        statements.parse_day(text)


# --- statement figures -------------------------------------------------------------------


def test_statement_totals_lead_from_opening_to_closing() -> None:
    st = may_statement()

    assert st.opening == OPENING
    assert st.purchases == statements.Total(2, PRO_GRANT + 9_990_000, PRO_PRICE + 999)
    assert st.usage_total.millicredits == 101_234
    assert st.refunds == statements.Total(1, 11_000_200, 1000)
    assert st.adjustments == statements.Total(1, 5_000)
    assert st.reversals == statements.Total(1, -2_000)
    expected = OPENING + PRO_GRANT + 9_990_000 - 101_234 - 11_000_200 + 5_000 - 2_000
    assert st.closing == st.expected_closing == expected
    assert len(st.lines) == len(MOVES)


def test_usage_is_grouped_per_model_by_name() -> None:
    rows = month_rows(0, [("purchase", 10**6, {}), *MOVES[1:4], usage(None, 10, (1, 1))])
    st = statements.build_statement("u1", MAY, 0, rows)

    assert st.usage == (
        statements.ModelUsage("(unknown)", 1, 1, 1, 10),
        statements.ModelUsage("gpt-4o", 2, 2000, 1000, 100_000),
        statements.ModelUsage("gpt-4o-mini", 1, 300, 20, 1_234),
    )
    assert st.usage_total == statements.ModelUsage(statements.ALL_MODELS, 4, 2301, 1021, 101_244)


def test_a_month_without_entries_closes_at_its_opening() -> None:
    st = statements.build_statement("u1", MAY, -4_000, [])

    assert (st.closing, st.usage, st.lines) == (-4_000, (), ())
    assert st.purchases == statements.Total()


def test_entries_that_do_not_reach_the_recorded_balance_are_refused() -> None:
    rows = month_rows(OPENING, MOVES)
    rows[-1] = {
        **rows[-1],
        "balance_after_millicredits": rows[-1]["balance_after_millicredits"] + 1,
    }

    with pytest.raises(statements.StatementInconsistent, match="the journal says"):
        statements.build_statement("u1", MAY, OPENING, rows)


def test_an_opening_that_does_not_lead_to_the_entries_is_refused() -> None:
    with pytest.raises(statements.StatementInconsistent):
        statements.build_statement("u1", MAY, OPENING + 1, month_rows(OPENING, MOVES))


# --- statement CSV -----------------------------------------------------------------------


def csv_blocks(text: str) -> tuple[list[list[str]], list[list[str]]]:
    summary_text, lines_text = text.split("\n\n")
    return list(csv.reader(io.StringIO(summary_text))), list(csv.reader(io.StringIO(lines_text)))


def summary_of(text: str) -> dict[tuple[str, str], str]:
    summary, _ = csv_blocks(text)
    return {(section, key): value for section, key, value in summary[1:]}


def test_csv_summary_block_lists_every_figure_in_both_units() -> None:
    summary, _ = csv_blocks(statements.statement_csv(may_statement()))

    assert summary[0] == ["section", "key", "value"]
    sections = list(dict.fromkeys(row[0] for row in summary[1:]))
    assert sections == [
        "statement",
        "opening",
        "purchases",
        "usage",
        "usage:gpt-4o",
        "usage:gpt-4o-mini",
        "refunds",
        "adjustments",
        "reversals",
        "closing",
    ]
    figures = summary_of(statements.statement_csv(may_statement()))
    assert figures["statement", "period"] == "2024-05"
    assert figures["statement", "period_start"] == "2024-05-01T00:00:00+00:00"
    assert figures["usage:gpt-4o", "millicredits"] == "100000"
    assert figures["usage:gpt-4o", "credits"] == "100.000"
    assert figures["refunds", "credits"] == "11000.200"
    assert figures["reversals", "millicredits"] == "-2000"
    assert figures["closing", "balance_credits"] == credits_text(may_statement().closing)


def test_csv_line_items_block_has_one_row_per_wallet_entry() -> None:
    _, lines = csv_blocks(statements.statement_csv(may_statement()))

    assert lines[0] == statements.LINE_COLUMNS
    assert len(lines) == 1 + len(MOVES)
    first_usage = dict(zip(lines[0], lines[2], strict=True))
    assert first_usage == {
        "date": "2024-05-01T01:00:00+00:00",
        "transaction_id": str(uuid.UUID(int=2)),
        "kind": "usage",
        "model": "gpt-4o",
        "amount_millicredits": "-50000",
        "amount_credits": "-50.000",
        "balance_after_millicredits": str(OPENING + PRO_GRANT - 50_000),
        "balance_after_credits": credits_text(OPENING + PRO_GRANT - 50_000),
        "reference_id": "ref-1",
    }
    assert lines[1][3] == ""  # only usage names a model


# --- statement PDF -----------------------------------------------------------------------


def pdf_text(body: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(body)).pages)


def pdf_summary(text: str) -> dict[str, tuple[str, str]]:
    """Label -> (credits, millicredits) of the PDF's summary table."""
    found = re.findall(r"^([A-Z][a-z]+(?: balance)?)(?: \d+)? (-?\d+\.\d{3}) (-?\d+)$", text, re.M)
    return {label: (credits, milli) for label, credits, milli in found}


def test_pdf_shows_the_same_totals_as_the_csv() -> None:
    st = may_statement()
    figures = summary_of(statements.statement_csv(st))
    text = pdf_text(statement_pdf.render(st))

    signed = {
        "Opening balance": int(figures["opening", "balance_millicredits"]),
        "Purchases": int(figures["purchases", "millicredits"]),
        "Usage": -int(figures["usage", "millicredits"]),
        "Refunds": -int(figures["refunds", "millicredits"]),
        "Adjustments": int(figures["adjustments", "millicredits"]),
        "Reversals": int(figures["reversals", "millicredits"]),
        "Closing balance": int(figures["closing", "balance_millicredits"]),
    }
    assert pdf_summary(text) == {k: (credits_text(v), str(v)) for k, v in signed.items()}
    assert "Credit statement 2024-05" in text
    assert "User: u1" in text


def test_pdf_usage_table_matches_the_csv_per_model() -> None:
    st = may_statement()
    figures = summary_of(statements.statement_csv(st))
    text = pdf_text(statement_pdf.render(st))

    for model in ("gpt-4o", "gpt-4o-mini"):
        keys = ("calls", "input_tokens", "output_tokens", "credits")
        row = " ".join([model, *(figures[f"usage:{model}", k] for k in keys)])
        assert re.search(rf"^{re.escape(row)}$", text, re.M), row
    assert f"Entries ({len(MOVES)})" in text


def test_pdf_lists_at_most_500_entries_and_says_so() -> None:
    moves = [("purchase", 10**9, {}), *[usage("gpt-4o", 10, (1, 1))] * 600]
    st = statements.build_statement("u1", MAY, 0, month_rows(0, moves))

    text = pdf_text(statement_pdf.render(st))

    assert "First 500 of 601 entries shown; the CSV lists all." in text
    assert len(re.findall(r"^2024-05-\d\d \d\d:\d\d:\d\d", text, re.M)) == 500


def test_pdf_survives_text_outside_latin_1() -> None:
    rows = month_rows(0, [("purchase", 1000, {}), usage("模型", 10, (1, 1))])
    st = statements.build_statement("użytkownik", MAY, 0, rows)

    assert "User: u?ytkownik" in pdf_text(statement_pdf.render(st))


# --- accounting journal ------------------------------------------------------------------


def journal_rows(kind: str, entries: Sequence[journal.Entry], **details: Any) -> list[Any]:
    """The non-wallet entries of one posting, as ``repository.journal_day_rows`` returns them."""
    base = {
        "transaction_id": uuid.UUID(int=7),
        "kind": kind,
        "user_id": "u1",
        "reference_id": "ref",
        "created_at": datetime(2024, 5, 31, 23, 59, tzinfo=UTC),
        "package_code": None,
        "model": None,
        "input_tokens": None,
        "output_tokens": None,
        "refund_cents": None,
        "reason": None,
    }
    others = [e for e in entries if not e.account.startswith("wallet:")]
    return [
        {**base, **details, "account": e.account, "amount_millicredits": e.amount_millicredits}
        for e in others
        if e.amount_millicredits
    ]


def nets(lines: Sequence[statements.JournalLine]) -> dict[str, int]:
    """Credit minus debit per account: the journal's own sign convention."""
    net: dict[str, int] = defaultdict(int)
    for line in lines:
        net[line.credit_account] += line.amount_millicredits
        net[line.debit_account] -= line.amount_millicredits
    return {account: amount for account, amount in net.items() if amount}


ACCOUNTS = {**statements.ACCOUNTING_NAMES, "wallet:u1": statements.DEFERRED_REVENUE}


def book(kind: str, entries: Sequence[journal.Entry], **details: Any) -> list[Any]:
    """The posting's journal lines, checked to balance and to net to exactly its entries."""
    lines = [statements.journal_line(r) for r in journal_rows(kind, entries, **details)]
    net = nets(lines)
    assert sum(net.values()) == 0  # debits equal credits
    assert net == {
        ACCOUNTS[e.account]: e.amount_millicredits for e in entries if e.amount_millicredits
    }
    return [(line.debit_account, line.credit_account, line.amount_millicredits) for line in lines]


def test_purchase_is_cash_and_bonus_into_deferred_revenue() -> None:
    entries = journal.purchase_entries("u1", PRO_PRICE, PRO_GRANT)

    assert book("purchase", entries, package_code="professional") == [
        ("Cash (Stripe clearing)", "Deferred revenue", 49_990_000),
        ("Promotional expense", "Deferred revenue", 5_000_000),
    ]


def test_purchase_without_bonus_is_one_line() -> None:
    entries = journal.purchase_entries("u1", 999, 9_990_000)

    assert book("purchase", entries) == [("Cash (Stripe clearing)", "Deferred revenue", 9_990_000)]


def test_usage_recognises_revenue() -> None:
    entries = (journal.Entry("wallet:u1", -50_000), journal.Entry(holds.REVENUE, 50_000))

    assert book("usage", entries) == [("Deferred revenue", "Revenue", 50_000)]


def test_refund_returns_cash_and_the_bonus_share_to_promotions() -> None:
    claw = journal.refund_clawback(
        price_cents=PRO_PRICE,
        grant_millicredits=PRO_GRANT,
        refunded_cents_before=0,
        clawed_back_before=0,
        refunded_total_cents=1000,
    )
    assert claw is not None

    assert book("refund", journal.refund_entries("u1", claw), refund_cents=1000) == [
        ("Deferred revenue", "Cash (Stripe clearing)", 10_000_000),
        ("Deferred revenue", "Promotional expense", 1_000_200),
    ]


@pytest.mark.parametrize("kind", ["adjustment", "reversal"])
def test_adjustments_move_deferred_revenue_against_adjustments(kind: str) -> None:
    credit = journal.adjustment_entries("u1", 5_000)
    debit = journal.adjustment_entries("u1", -7_000)

    assert book(kind, credit) == [("Adjustments", "Deferred revenue", 5_000)]
    assert book(kind, debit) == [("Deferred revenue", "Adjustments", 7_000)]


def test_journal_csv_rows_carry_usd_and_a_memo() -> None:
    rows = journal_rows(
        "usage",
        (journal.Entry("wallet:u1", -9_990_000), journal.Entry(holds.REVENUE, 9_990_000)),
        model="gpt-4o",
        input_tokens="1000",
        output_tokens="500",
    )

    text = statements.journal_csv_header() + statements.journal_csv_lines(rows)

    assert list(csv.reader(io.StringIO(text))) == [
        statements.JOURNAL_COLUMNS,
        [
            "2024-05-31",
            str(uuid.UUID(int=7)),
            "usage",
            "u1",
            "ref",
            "Deferred revenue",
            "Revenue",
            "9990000",
            "9.990000",
            "usage gpt-4o: 1000 in / 500 out tokens",
        ],
    ]


def test_rows_without_an_entry_give_no_line() -> None:
    row = {**journal_rows("usage", (journal.Entry(holds.REVENUE, 1),))[0], "account": None}

    assert statements.journal_csv_lines([row]) == ""


def test_an_unknown_account_stops_the_export() -> None:
    rows = journal_rows("usage", (journal.Entry("mystery", 5),))

    with pytest.raises(statements.UnmappedAccount):
        statements.journal_line(rows[0])


@pytest.mark.parametrize(
    ("millicredits", "usd"),
    [
        (9_990_000, "9.990000"),
        (49_990_000, "49.990000"),
        (1, "0.000001"),
        (0, "0.000000"),
        (-1_500_000, "-1.500000"),
        (123_456_789_012_345, "123456789.012345"),
    ],
)
def test_usd_is_exact_to_six_places(millicredits: int, usd: str) -> None:
    assert statements.usd_text(millicredits) == usd


# --- routes ------------------------------------------------------------------------------

ISSUER, AUDIENCE = "ledger-test", "billing-test"


class FakeConn:
    """Answers the statement and journal queries from fixed rows, recording the arguments."""

    def __init__(self, opening: int, rows: list[Any], journal: list[Any]) -> None:
        self.opening, self.rows, self.journal = opening, rows, journal
        self.calls: list[tuple[Any, ...]] = []

    @asynccontextmanager
    async def transaction(self, **options: Any) -> AsyncIterator[None]:
        self.calls.append(("transaction", options))
        yield

    async def fetchval(self, sql: str, *args: Any) -> int:
        self.calls.append(("opening", *args))
        return self.opening

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.calls.append(("journal" if "WITH batch" in sql else "month", *args))
        return self.journal if "WITH batch" in sql else self.rows


class FakePool:
    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeConn]:
        yield self.conn


class FakeDb:
    def __init__(self, conn: FakeConn) -> None:
        self.pool = FakePool(conn)


class Tokens:
    def __init__(self, folder: Path) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_path = folder / "public.pem"
        self.public_path.write_bytes(
            self._key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def headers(self, user: str = "u1", *roles: str) -> dict[str, str]:
        now = int(time.time())
        claims = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 300, "roles": roles}
        return {"Authorization": "Bearer " + jwt.encode(claims, self._key, algorithm="RS256")}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    return Tokens(tmp_path_factory.mktemp("jwt"))


def client_for(tokens: Tokens, conn: FakeConn) -> TestClient:
    infra = InfraSettings(
        jwt_public_keys=[tokens.public_path], jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    )
    settings = Settings(infra=infra)
    ctx = service.LedgerContext(Topics(), "checkout", 30.0)
    deps = api.ApiDeps(cast(Database, FakeDb(conn)), ctx, cast(Any, None))
    return TestClient(
        build_app(settings, routers=[api.router(deps)]), raise_server_exceptions=False
    )


@pytest.fixture
def conn() -> FakeConn:
    return FakeConn(OPENING, month_rows(OPENING, MOVES), [])


def test_a_user_downloads_their_statement_csv(tokens: Tokens, conn: FakeConn) -> None:
    response = client_for(tokens, conn).get("/api/statements/2024-05.csv", headers=tokens.headers())

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="statement-u1-2024-05.csv"' in response.headers["content-disposition"]
    assert response.text == statements.statement_csv(may_statement())
    assert conn.calls == [
        ("transaction", {"isolation": "repeatable_read", "readonly": True}),
        ("opening", "u1", MAY.start),
        ("month", "u1", MAY.start, MAY.end),
    ]


def test_the_pdf_statement_is_a_pdf_of_the_same_month(tokens: Tokens, conn: FakeConn) -> None:
    response = client_for(tokens, conn).get("/api/statements/2024-05.pdf", headers=tokens.headers())

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.content.startswith(b"%PDF-")
    assert "Closing balance" in pdf_text(response.content)


def test_a_user_cannot_read_another_users_statement(tokens: Tokens, conn: FakeConn) -> None:
    client = client_for(tokens, conn)

    response = client.get("/api/statements/2024-05.csv?userId=u2", headers=tokens.headers())

    assert response.status_code == 403
    assert conn.calls == []


def test_an_admin_reads_any_users_statement(tokens: Tokens, conn: FakeConn) -> None:
    client = client_for(tokens, conn)
    headers = tokens.headers("ops", "admin")

    response = client.get("/api/statements/2024-05.csv?userId=u1", headers=headers)

    assert response.status_code == 200
    assert ("opening", "u1", MAY.start) in conn.calls


@pytest.mark.parametrize("month", ["2024-13", "May-2024", "2024-5"])
def test_a_bad_month_is_422(tokens: Tokens, conn: FakeConn, month: str) -> None:
    response = client_for(tokens, conn).get(
        f"/api/statements/{month}.pdf", headers=tokens.headers()
    )

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_month"


def test_statements_need_a_token(tokens: Tokens, conn: FakeConn) -> None:
    assert client_for(tokens, conn).get("/api/statements/2024-05.csv").status_code == 401


def test_a_broken_journal_answers_500_statement_inconsistent(tokens: Tokens) -> None:
    conn = FakeConn(OPENING + 1, month_rows(OPENING, MOVES), [])

    response = client_for(tokens, conn).get("/api/statements/2024-05.csv", headers=tokens.headers())

    assert response.status_code == 500
    assert response.json()["error"] == "statement_inconsistent"


def test_the_accounting_journal_streams_the_days_lines(tokens: Tokens) -> None:
    rows = journal_rows("purchase", journal.purchase_entries("u1", PRO_PRICE, PRO_GRANT))
    conn = FakeConn(0, [], rows)
    url = "/api/admin/accounting/journal.csv?date=2024-05-31"

    response = client_for(tokens, conn).get(url, headers=tokens.headers("ops", "admin"))

    assert response.status_code == 200
    lines = list(csv.DictReader(io.StringIO(response.text)))
    assert [(r["debit_account"], r["amount_usd"]) for r in lines] == [
        ("Cash (Stripe clearing)", "49.990000"),
        ("Promotional expense", "5.000000"),
    ]
    day = statements.parse_day("2024-05-31")
    assert conn.calls == [("journal", day.end, day.start, api.NIL_UUID, api.EXPORT_BATCH)]


def test_the_accounting_journal_is_for_admins(tokens: Tokens, conn: FakeConn) -> None:
    url = "/api/admin/accounting/journal.csv?date=2024-05-31"

    assert client_for(tokens, conn).get(url, headers=tokens.headers()).status_code == 403


def test_the_accounting_journal_needs_a_real_date(tokens: Tokens, conn: FakeConn) -> None:
    url = "/api/admin/accounting/journal.csv?date=2024-02-30"

    response = client_for(tokens, conn).get(url, headers=tokens.headers("ops", "admin"))

    assert response.status_code == 422
    assert response.json()["error"] == "invalid_date"
