"""Monthly user statements and the daily accounting journal, built from ledger rows.

Everything here is pure: the routes read the rows (``repository``) and hand them over, and
a statement is computed once into a :class:`Statement` that every rendering (this CSV,
``statement_pdf``) only formats, so two renderings of one statement cannot disagree.

Statement CSV (``GET /api/statements/{YYYY-MM}.csv``): two blocks, one empty line between.

1. Summary, header ``section,key,value``, rows in this order::

     statement,user_id | period (YYYY-MM) | period_start | period_end  (ISO 8601 UTC, end excl.)
     opening,balance_millicredits | balance_credits
     purchases,count | millicredits | credits | price_cents
     usage,calls | input_tokens | output_tokens | millicredits | credits          (all models)
     usage:<model>,calls | input_tokens | output_tokens | millicredits | credits  (by model name)
     refunds,count | millicredits | credits | refund_cents
     adjustments,count | millicredits | credits
     reversals,count | millicredits | credits
     closing,balance_millicredits | balance_credits

   Purchases, usage and refunds are magnitudes (usage and refunds reduce the balance);
   adjustments and reversals are signed. Always
   ``closing = opening + purchases - usage - refunds + adjustments + reversals``.
   ``price_cents`` is what the purchases cost, ``refund_cents`` the money returned.

2. Line items, one per wallet entry of the month in posting order, header
   ``date,transaction_id,kind,model,amount_millicredits,amount_credits,``
   ``balance_after_millicredits,balance_after_credits,reference_id`` (``date`` is the
   entry's ISO 8601 UTC timestamp, ``amount`` signed, ``model`` only for usage).

The month is cut on the wallet entries' own timestamps, which follow the order the balance
moved in; the transactions' timestamps may not, as a transaction is stamped before it
waits for the user's balance lock.

Accounting journal CSV (``GET /api/admin/accounting/journal.csv?date=YYYY-MM-DD``), one
day (UTC, by the transactions' posting time, the ``posted_at`` the ledger publishes), header
``date,transaction_id,kind,user_id,reference_id,debit_account,credit_account,``
``amount_millicredits,amount_usd,memo``: the user's wallet is the customer credit
liability, *Deferred revenue*, and every other entry of a posting becomes one line against
it (amounts positive; ``amount_usd`` exact to 6 places, US$1 = 1,000,000 millicredits):

- purchase: Dr Cash (Stripe clearing) / Cr Deferred revenue for the price paid, and
  Dr Promotional expense / Cr Deferred revenue for the bonus credits;
- usage: Dr Deferred revenue / Cr Revenue;
- refund: Dr Deferred revenue / Cr Cash (Stripe clearing) for the money returned, and
  Dr Deferred revenue / Cr Promotional expense for the clawed-back credits beyond it;
- adjustment, reversal: between Deferred revenue and Adjustments, by the sign.

Each line balances by itself, and a posting's lines net to exactly its entries. Cost of
goods sold (what the model provider charges) is not in the ledger: metering keeps it, and
the reconciler adds it to the finance exports.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from billing_platform.money import credits_text

from ledger.holds import REVENUE
from ledger.journal import ADJUSTMENTS, PROMOTIONAL, STRIPE_CLEARING

Row = Mapping[str, Any]
MILLICREDITS_PER_USD = 1_000_000
UNKNOWN_MODEL = "(unknown)"
ALL_MODELS = "*"  # the model name given to the usage total over all models


class InvalidPeriod(ValueError):
    """The month or day asked for is not one."""


class StatementInconsistent(RuntimeError):
    """The month's entries do not add up to their own closing balance: the journal is broken."""


class UnmappedAccount(RuntimeError):
    """A posting touches an account the accounting export has no name for."""


# --- periods ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    label: str
    start: datetime
    end: datetime  # exclusive


_MONTH = re.compile(r"(\d{4})-(\d{2})")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_month(text: str) -> Period:
    """``"2024-05"`` -> that calendar month in UTC."""
    match = _MONTH.fullmatch(text)
    if not match or not (1970 <= int(match[1]) <= 9998 and 1 <= int(match[2]) <= 12):
        raise InvalidPeriod(f"not a month (YYYY-MM): {text!r}")
    start = datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    return Period(text, start, end)


def parse_day(text: str) -> Period:
    """``"2024-05-31"`` -> that UTC day."""
    try:
        if not _DAY.fullmatch(text):
            raise ValueError(text)
        day = date.fromisoformat(text)
    except ValueError as exc:
        raise InvalidPeriod(f"not a date (YYYY-MM-DD): {text!r}") from exc
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return Period(text, start, start + timedelta(days=1))


# --- statement --------------------------------------------------------------------------


@dataclass(frozen=True)
class Total:
    count: int = 0
    millicredits: int = 0
    cents: int = 0  # money paid or returned, for the kinds that move money


@dataclass(frozen=True)
class ModelUsage:
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    millicredits: int


@dataclass(frozen=True)
class LineItem:
    created_at: datetime
    transaction_id: str
    kind: str
    model: str | None
    amount: int
    balance_after: int
    reference_id: str


@dataclass(frozen=True)
class Statement:
    user_id: str
    period: Period
    opening: int
    purchases: Total
    usage: tuple[ModelUsage, ...]
    refunds: Total
    adjustments: Total
    reversals: Total
    closing: int
    lines: tuple[LineItem, ...]

    @property
    def usage_total(self) -> ModelUsage:
        return _sum_usage(ALL_MODELS, self.usage)

    @property
    def expected_closing(self) -> int:
        moved = self.purchases.millicredits - self.usage_total.millicredits
        moved += -self.refunds.millicredits + self.adjustments.millicredits
        return self.opening + moved + self.reversals.millicredits


def build_statement(user_id: str, period: Period, opening: int, rows: Sequence[Row]) -> Statement:
    """The statement of the month's wallet entries (posting order) after ``opening``.

    Raises :class:`StatementInconsistent` when the categories do not lead from the opening
    to the balance the journal itself recorded after the month's last entry.
    """
    statement = Statement(
        user_id=user_id,
        period=period,
        opening=opening,
        purchases=_total(rows, "purchase", 1, "price_cents"),
        usage=usage_by_model(rows),
        refunds=_total(rows, "refund", -1, "refund_cents"),
        adjustments=_total(rows, "adjustment", 1),
        reversals=_total(rows, "reversal", 1),
        closing=rows[-1]["balance_after_millicredits"] if rows else opening,
        lines=tuple(_line_item(r) for r in rows),
    )
    check_consistent(statement)
    return statement


def check_consistent(statement: Statement) -> None:
    if statement.expected_closing != statement.closing:
        raise StatementInconsistent(
            f"opening {statement.opening} and the month's entries give"
            f" {statement.expected_closing}, the journal says {statement.closing}"
        )


def _total(rows: Sequence[Row], kind: str, sign: int, cents_column: str | None = None) -> Total:
    picked = [r for r in rows if r["kind"] == kind]
    cents = sum(r[cents_column] or 0 for r in picked) if cents_column else 0
    return Total(len(picked), sign * sum(r["amount_millicredits"] for r in picked), cents)


def usage_by_model(rows: Sequence[Row]) -> tuple[ModelUsage, ...]:
    """Usage per model, by model name; charged credits as a positive figure."""
    calls: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if row["kind"] == "usage":
            calls[row["model"] or UNKNOWN_MODEL].append(row)
    return tuple(_model_usage(model, calls[model]) for model in sorted(calls))


def _model_usage(model: str, rows: list[Row]) -> ModelUsage:
    return ModelUsage(
        model=model,
        calls=len(rows),
        input_tokens=sum(r["input_tokens"] or 0 for r in rows),
        output_tokens=sum(r["output_tokens"] or 0 for r in rows),
        millicredits=-sum(r["amount_millicredits"] for r in rows),
    )


def _sum_usage(name: str, usage: Iterable[ModelUsage]) -> ModelUsage:
    items = list(usage)
    return ModelUsage(
        model=name,
        calls=sum(u.calls for u in items),
        input_tokens=sum(u.input_tokens for u in items),
        output_tokens=sum(u.output_tokens for u in items),
        millicredits=sum(u.millicredits for u in items),
    )


def _line_item(row: Row) -> LineItem:
    return LineItem(
        created_at=row["created_at"],
        transaction_id=str(row["transaction_id"]),
        kind=row["kind"],
        model=row["model"] if row["kind"] == "usage" else None,
        amount=row["amount_millicredits"],
        balance_after=row["balance_after_millicredits"],
        reference_id=row["reference_id"],
    )


# --- statement CSV ----------------------------------------------------------------------

SUMMARY_COLUMNS = ["section", "key", "value"]
LINE_COLUMNS = [
    "date",
    "transaction_id",
    "kind",
    "model",
    "amount_millicredits",
    "amount_credits",
    "balance_after_millicredits",
    "balance_after_credits",
    "reference_id",
]


def statement_csv(statement: Statement) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    writer.writerows(summary_rows(statement))
    writer.writerow([])
    writer.writerow(LINE_COLUMNS)
    writer.writerows(_line_values(line) for line in statement.lines)
    return out.getvalue()


def summary_rows(statement: Statement) -> list[tuple[str, str, str | int]]:
    return [
        *_header_rows(statement),
        *_balance_rows("opening", statement.opening),
        *_total_rows("purchases", statement.purchases, "price_cents"),
        *_usage_rows("usage", statement.usage_total),
        *(row for u in statement.usage for row in _usage_rows(f"usage:{u.model}", u)),
        *_total_rows("refunds", statement.refunds, "refund_cents"),
        *_total_rows("adjustments", statement.adjustments),
        *_total_rows("reversals", statement.reversals),
        *_balance_rows("closing", statement.closing),
    ]


def _header_rows(statement: Statement) -> list[tuple[str, str, str | int]]:
    period = statement.period
    return [
        ("statement", "user_id", statement.user_id),
        ("statement", "period", period.label),
        ("statement", "period_start", period.start.isoformat()),
        ("statement", "period_end", period.end.isoformat()),
    ]


def _balance_rows(section: str, amount: int) -> list[tuple[str, str, str | int]]:
    return [
        (section, "balance_millicredits", amount),
        (section, "balance_credits", credits_text(amount)),
    ]


def _total_rows(
    section: str, total: Total, cents_key: str | None = None
) -> list[tuple[str, str, str | int]]:
    rows: list[tuple[str, str, str | int]] = [
        (section, "count", total.count),
        (section, "millicredits", total.millicredits),
        (section, "credits", credits_text(total.millicredits)),
    ]
    return [*rows, (section, cents_key, total.cents)] if cents_key else rows


def _usage_rows(section: str, usage: ModelUsage) -> list[tuple[str, str, str | int]]:
    return [
        (section, "calls", usage.calls),
        (section, "input_tokens", usage.input_tokens),
        (section, "output_tokens", usage.output_tokens),
        (section, "millicredits", usage.millicredits),
        (section, "credits", credits_text(usage.millicredits)),
    ]


def _line_values(line: LineItem) -> list[str | int]:
    return [
        line.created_at.astimezone(UTC).isoformat(),
        line.transaction_id,
        line.kind,
        line.model or "",
        line.amount,
        credits_text(line.amount),
        line.balance_after,
        credits_text(line.balance_after),
        line.reference_id,
    ]


# --- accounting journal -----------------------------------------------------------------

DEFERRED_REVENUE = "Deferred revenue"
ACCOUNTING_NAMES = {
    STRIPE_CLEARING: "Cash (Stripe clearing)",
    PROMOTIONAL: "Promotional expense",
    REVENUE: "Revenue",
    ADJUSTMENTS: "Adjustments",
}
JOURNAL_COLUMNS = [
    "date",
    "transaction_id",
    "kind",
    "user_id",
    "reference_id",
    "debit_account",
    "credit_account",
    "amount_millicredits",
    "amount_usd",
    "memo",
]


@dataclass(frozen=True)
class JournalLine:
    day: date
    transaction_id: str
    kind: str
    user_id: str
    reference_id: str
    debit_account: str
    credit_account: str
    amount_millicredits: int
    memo: str

    def csv_values(self) -> list[str | int]:
        return [
            self.day.isoformat(),
            self.transaction_id,
            self.kind,
            self.user_id,
            self.reference_id,
            self.debit_account,
            self.credit_account,
            self.amount_millicredits,
            usd_text(self.amount_millicredits),
            self.memo,
        ]


def journal_line(row: Row) -> JournalLine:
    """One non-wallet entry of a posting, booked against the wallet's Deferred revenue.

    The journal's signs already read as an accountant's: a negative amount is a debit
    (money in through Stripe, bonus credits given), a positive one a credit.
    """
    account = accounting_account(row["account"])
    amount = row["amount_millicredits"]
    debit, credit = (account, DEFERRED_REVENUE) if amount < 0 else (DEFERRED_REVENUE, account)
    return JournalLine(
        day=row["created_at"].astimezone(UTC).date(),
        transaction_id=str(row["transaction_id"]),
        kind=row["kind"],
        user_id=row["user_id"],
        reference_id=row["reference_id"],
        debit_account=debit,
        credit_account=credit,
        amount_millicredits=abs(amount),
        memo=journal_memo(row),
    )


def accounting_account(ledger_account: str) -> str:
    name = ACCOUNTING_NAMES.get(ledger_account)
    if name is None:
        # Booking an unknown account anywhere would make the export quietly wrong.
        raise UnmappedAccount(f"no accounting account for ledger account {ledger_account!r}")
    return name


def journal_memo(row: Row) -> str:
    kind, account = row["kind"], row["account"]
    if kind == "purchase":
        part = "bonus credits" if account == PROMOTIONAL else "paid"
        return f"purchase {row['package_code']}: {part}"
    if kind == "usage":
        tokens = f"{row['input_tokens'] or 0} in / {row['output_tokens'] or 0} out tokens"
        return f"usage {row['model'] or UNKNOWN_MODEL}: {tokens}"
    if kind == "refund":
        returned = f"{row['refund_cents'] or 0} cents returned"
        return f"refund: {'bonus credits clawed back' if account == PROMOTIONAL else returned}"
    return f"{kind}: {row['reason'] or ''}".rstrip()


def journal_csv_header() -> str:
    return csv_line(JOURNAL_COLUMNS)


def journal_csv_lines(rows: Iterable[Row]) -> str:
    """CSV lines of the rows that carry an entry (a posting's rows may carry none)."""
    lines = (journal_line(r).csv_values() for r in rows if r["account"] is not None)
    return "".join(csv_line(values) for values in lines)


def usd_text(millicredits: int) -> str:
    """``9_990_000`` -> ``"9.990000"``: exact, six places, no float on the way."""
    sign = "-" if millicredits < 0 else ""
    whole, frac = divmod(abs(millicredits), MILLICREDITS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def csv_line(values: Sequence[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return out.getvalue()
