"""HTTP routes of the ledger: balance, entries, exports, statements, admin corrections.

Each route owns its DB transaction. The admin fulfil route asks Stripe first, with no
transaction open, and only then grants, in a short transaction guarded by the same unique
rule as the webhook path, so the two can race and still grant once.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

import stripe
from billing_events import audit
from billing_platform import cursors
from billing_platform.auth import AdminUser, CurrentUser, SteppedUpAdmin
from billing_platform.db import Database
from billing_platform.errors import ApiError
from billing_platform.logging import mask_user_id
from billing_platform.money import credits_text
from billing_platform.schemas import Text
from fastapi import APIRouter, Header, Query
from fastapi.responses import Response, StreamingResponse

from ledger import repository, service, statement_pdf, statements
from ledger.schemas import (
    AdjustmentIn,
    AdjustmentOut,
    BalanceOut,
    FulfillPurchaseIn,
    FulfillPurchaseOut,
    LedgerEntryOut,
    LedgerPage,
)

UserIdQuery = Annotated[Text | None, Query(alias="userId", max_length=200)]
EXPORT_BATCH = 1000
NIL_UUID = "00000000-0000-0000-0000-000000000000"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiDeps:
    db: Database
    ctx: service.LedgerContext
    stripe: stripe.StripeClient


def router(deps: ApiDeps) -> APIRouter:
    api = APIRouter()
    _account_routes(api, deps)
    _statement_routes(api, deps)
    _admin_routes(api, deps)
    _accounting_routes(api, deps)
    return api


def _target_user(principal: Any, user_id: str | None) -> str:
    target = user_id or principal.user_id
    principal.ensure_can_access(target)
    return str(target)


def _account_routes(api: APIRouter, deps: ApiDeps) -> None:
    @api.get("/api/balance", response_model=BalanceOut, response_model_by_alias=True)
    async def get_balance(user: CurrentUser, user_id: UserIdQuery = None) -> BalanceOut:
        target = _target_user(user, user_id)
        async with deps.db.pool.acquire() as conn:
            balance, held = await repository.balance(conn, target)
        return balance_body(target, balance, held)

    @api.get("/api/ledger", response_model=LedgerPage, response_model_by_alias=True)
    async def get_ledger(
        user: CurrentUser,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: str | None = None,
        user_id: UserIdQuery = None,
    ) -> LedgerPage:
        target = _target_user(user, user_id)
        async with deps.db.pool.acquire() as conn:
            rows = await repository.wallet_entries_newest_first(
                conn, target, decode_cursor(cursor), limit + 1
            )
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["entry_id"]) if more else None
        return LedgerPage(entries=[entry_body(r) for r in rows], next_cursor=next_cursor)

    @api.get("/api/ledger/export.csv", response_class=StreamingResponse, responses=_CSV)
    async def export_csv(user: CurrentUser, user_id: UserIdQuery = None) -> StreamingResponse:
        target = _target_user(user, user_id)
        headers = {"Content-Disposition": attachment(f"ledger-{target}.csv")}
        return StreamingResponse(_csv_rows(deps.db, target), media_type="text/csv", headers=headers)


def balance_body(user_id: str, balance: int, held: int) -> BalanceOut:
    available = balance - held
    return BalanceOut(
        user_id=user_id,
        balance_millicredits=balance,
        held_millicredits=held,
        available_millicredits=available,
        balance_credits=credits_text(balance),
        available_credits=credits_text(available),
    )


def entry_body(row: Any) -> LedgerEntryOut:
    return LedgerEntryOut(
        id=str(row["transaction_id"]),
        kind=row["kind"],
        amount_millicredits=row["amount_millicredits"],
        balance_after_millicredits=row["balance_after_millicredits"],
        reference_id=row["reference_id"],
        correlation_id=row["correlation_id"],
        created_at=row["created_at"],
        model=row["model"],
    )


def encode_cursor(entry_id: int) -> str:
    return cursors.encode("e", entry_id)


def decode_cursor(cursor: str | None) -> int | None:
    return cursors.decode("e", cursor)


CSV_COLUMNS = [
    "created_at",
    "transaction_id",
    "kind",
    "amount_millicredits",
    "balance_after_millicredits",
    "reference_id",
    "correlation_id",
    "model",
]


async def _csv_rows(db: Database, user_id: str) -> AsyncIterator[str]:
    # Keyset batches, each its own short query: no transaction stays open while a slow
    # client reads the download.
    yield _csv_line(CSV_COLUMNS)
    after = 0
    while True:
        async with db.pool.acquire() as conn:
            rows = await repository.wallet_entries_oldest_first(conn, user_id, after, EXPORT_BATCH)
        for row in rows:
            yield _csv_line([_csv_value(row, c) for c in CSV_COLUMNS])
        if len(rows) < EXPORT_BATCH:
            return
        after = rows[-1]["entry_id"]


def _csv_value(row: Any, column: str) -> Any:
    value = row[column]
    return value.isoformat() if hasattr(value, "isoformat") else value


def _csv_line(values: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return out.getvalue()


def _statement_routes(api: APIRouter, deps: ApiDeps) -> None:
    @api.get("/api/statements/{month}.csv", response_class=Response, responses=_CSV)
    async def statement_csv(month: str, user: CurrentUser, user_id: UserIdQuery = None) -> Response:
        statement = await _statement(deps.db, _target_user(user, user_id), month)
        body = statements.statement_csv(statement)
        return _download(body.encode(), "text/csv", _statement_name(statement, "csv"))

    @api.get("/api/statements/{month}.pdf", response_class=Response, responses=_PDF)
    async def statement_pdf_file(
        month: str, user: CurrentUser, user_id: UserIdQuery = None
    ) -> Response:
        statement = await _statement(deps.db, _target_user(user, user_id), month)
        # Laying out hundreds of lines is CPU work: keep it off the event loop.
        body = await asyncio.to_thread(statement_pdf.render, statement)
        return _download(body, "application/pdf", _statement_name(statement, "pdf"))


_CSV: dict[int | str, dict[str, Any]] = {200: {"content": {"text/csv": {}}}}
_PDF: dict[int | str, dict[str, Any]] = {200: {"content": {"application/pdf": {}}}}


async def _statement(db: Database, user_id: str, month: str) -> statements.Statement:
    period = _parse(statements.parse_month, month, "invalid_month")
    # One snapshot for the opening balance and the month, so a posting landing in between
    # cannot make a sound journal look broken.
    async with (
        db.pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        opening = await repository.balance_before(conn, user_id, period.start)
        rows = await repository.wallet_entries_between(conn, user_id, period.start, period.end)
    try:
        return statements.build_statement(user_id, period, opening, rows)
    except statements.StatementInconsistent as exc:
        log.error(
            "statement inconsistent",
            extra={"user": mask_user_id(user_id), "period": period.label, "detail": str(exc)},
        )
        raise ApiError(
            500, "statement_inconsistent", "the journal does not add up for this month"
        ) from exc


def _parse(parse: Callable[[str], statements.Period], text: str, code: str) -> statements.Period:
    try:
        return parse(text)
    except statements.InvalidPeriod as exc:
        raise ApiError(422, code, str(exc)) from exc


def _statement_name(statement: statements.Statement, extension: str) -> str:
    return f"statement-{statement.user_id}-{statement.period.label}.{extension}"


def _download(body: bytes, media_type: str, filename: str) -> Response:
    return Response(
        body, media_type=media_type, headers={"Content-Disposition": attachment(filename)}
    )


def attachment(filename: str) -> str:
    """``Content-Disposition`` for a file name holding free text (a user id), per RFC 6266:
    a plain ASCII fallback, and the exact name percent-encoded as UTF-8 (RFC 5987)."""
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in filename)
    return f"attachment; filename=\"{safe}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _accounting_routes(api: APIRouter, deps: ApiDeps) -> None:
    @api.get("/api/admin/accounting/journal.csv", response_class=StreamingResponse, responses=_CSV)
    async def accounting_journal(
        _: AdminUser, day: Annotated[str, Query(alias="date")]
    ) -> StreamingResponse:
        period = _parse(statements.parse_day, day, "invalid_date")
        headers = {"Content-Disposition": f'attachment; filename="journal-{period.label}.csv"'}
        rows = _journal_rows(deps.db, period)
        return StreamingResponse(rows, media_type="text/csv", headers=headers)


async def _journal_rows(db: Database, period: statements.Period) -> AsyncIterator[str]:
    # Keyset batches of transactions, each its own short query, as for the ledger export.
    yield statements.journal_csv_header()
    after = (period.start, NIL_UUID)
    while True:
        async with db.pool.acquire() as conn:
            rows = await repository.journal_day_rows(conn, period.end, after, EXPORT_BATCH)
        yield statements.journal_csv_lines(rows)
        if len(rows) < EXPORT_BATCH:
            return
        after = (rows[-1]["created_at"], str(rows[-1]["transaction_id"]))


def _admin_routes(api: APIRouter, deps: ApiDeps) -> None:
    @api.post(
        "/api/admin/fulfill-purchase",
        response_model=FulfillPurchaseOut,
        response_model_by_alias=True,
    )
    async def fulfill_purchase(
        body: FulfillPurchaseIn, admin: SteppedUpAdmin
    ) -> FulfillPurchaseOut:
        return await _fulfill(deps, body.purchase_id, admin.user_id, body.reason)

    @api.post(
        "/api/admin/adjustments",
        status_code=201,
        response_model=AdjustmentOut,
        response_model_by_alias=True,
    )
    async def adjustments(
        body: AdjustmentIn,
        admin: SteppedUpAdmin,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> dict[str, Any]:
        if body.amount_millicredits == 0:
            raise ApiError(422, "zero_amount", "an adjustment must move some credits")
        adj = service.Adjustment(
            body.user_id,
            body.amount_millicredits,
            body.reason,
            body.reference_id,
            admin.user_id,
            f"adjustment:{idempotency_key}" if idempotency_key else None,
        )
        async with deps.db.pool.acquire() as conn, conn.transaction():
            return await service.adjust(conn, deps.ctx.topics, adj)


async def _fulfill(deps: ApiDeps, purchase_id: str, actor: str, reason: str) -> FulfillPurchaseOut:
    async with deps.db.pool.acquire() as conn:
        terms = await repository.purchase_terms(conn, deps.ctx.checkout_schema, purchase_id)
        existing = await repository.grant_of(conn, purchase_id)
    if terms is None:
        raise ApiError(404, "purchase_not_found", "no such purchase")
    if existing is None:
        await _ensure_paid(deps.stripe, terms)
    async with deps.db.pool.acquire() as conn, conn.transaction():
        posted = (
            None
            if existing
            else await service.grant(
                conn, deps.ctx.topics, terms, f"admin:{actor}", terms["stripe_session_id"], None
            )
        )
        details = {"granted": posted is not None}
        await service.audit(
            conn,
            actor,
            audit.FULFILL_PURCHASE,
            terms["user_id"],
            purchase_id,
            reason,
            details,
            target=audit.target("purchase", purchase_id),
        )
    if posted is None:
        async with deps.db.pool.acquire() as conn:
            existing = await repository.grant_of(conn, purchase_id)
        return FulfillPurchaseOut(
            purchase_id=purchase_id, granted=False, transaction_id=str(existing["transaction_id"])
        )
    return FulfillPurchaseOut(
        purchase_id=purchase_id,
        granted=True,
        transaction_id=posted.transaction_id,
        balance_after_millicredits=posted.balance_after,
    )


async def _ensure_paid(client: stripe.StripeClient, terms: Any) -> None:
    """Grant only what Stripe itself reports as paid, for the price the purchase was made at."""
    session_id = terms["stripe_session_id"]
    if not session_id:
        raise ApiError(409, "no_checkout_session", "the purchase never reached Stripe Checkout")
    try:
        session = await client.checkout.sessions.retrieve_async(session_id)
    except stripe.StripeError as exc:
        raise ApiError(
            502, "stripe_unavailable", f"Stripe did not answer: {type(exc).__name__}"
        ) from exc
    problem = service.paid_session_problem(session, terms)
    if problem is not None:
        raise ApiError(
            409,
            problem,
            f"Stripe does not report this purchase as paid in full ({problem})",
            purchaseId=terms["purchase_id"],
        )
