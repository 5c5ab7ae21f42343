"""Use cases of the ledger. Each takes the caller's connection; the caller owns the transaction.

Posting a journal transaction writes its entries, moves the user's balance and queues the
``LedgerTransactionPosted`` record in the outbox, all in that one transaction.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from billing_events.audit import ADJUSTMENT, AdminAction, admin_action_message
from billing_events.audit import target as audit_target
from billing_events.outbox import OutboxRecord, write_outbox, write_outbox_many
from billing_events.topics import Topics
from billing_events.v1 import alert_pb2, common_pb2, ledger_pb2
from billing_platform import context
from billing_platform.ids import time_ordered_uuid
from google.protobuf.timestamp_pb2 import Timestamp

from ledger import journal, repository
from ledger.stripe_events import ChargeRefunded, LedgerEvent, SessionPaid

log = logging.getLogger(__name__)

SOURCE = "ledger"

_KINDS = {
    "purchase": ledger_pb2.TRANSACTION_KIND_PURCHASE,
    "usage": ledger_pb2.TRANSACTION_KIND_USAGE,
    "refund": ledger_pb2.TRANSACTION_KIND_REFUND,
    "adjustment": ledger_pb2.TRANSACTION_KIND_ADJUSTMENT,
    "reversal": ledger_pb2.TRANSACTION_KIND_REVERSAL,
}


class NotVisibleYet(Exception):
    """What the event refers to is not in the database yet; the consumer retries it."""


@dataclass(frozen=True)
class LedgerContext:
    topics: Topics
    checkout_schema: str
    grace_s: float
    clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class Posted:
    transaction_id: str
    balance_after: int
    created_at: datetime


@dataclass(frozen=True)
class Outcome:
    """What handling one event did; ``granted`` carries the grant for metrics."""

    name: str
    detail: str | None = None
    granted: dict[str, Any] = field(default_factory=dict)


async def post(conn: Any, topics: Topics, posting: journal.Posting) -> Posted | None:
    """Write a posting; None when a unique rule says it was already written."""
    transaction_id = str(time_ordered_uuid())
    correlation_id = context.current_correlation_id()
    created = await repository.insert_transaction(conn, transaction_id, posting, correlation_id)
    if created is None:
        return None
    account = journal.wallet(posting.user_id)
    balance = await repository.apply_wallet_delta(conn, posting.user_id, posting.wallet_delta)
    await repository.insert_entries(conn, transaction_id, posting, account, balance)
    posted = Posted(transaction_id, balance, created)
    record = _posted_record(posting, posted, correlation_id)
    await write_outbox(
        conn,
        topics.ledger,
        posting.user_id,
        record,
        correlation_id=correlation_id,
        kind=posting.kind,
    )
    return posted


@dataclass(frozen=True)
class Batched:
    """A posting of a batch, with the correlation id of the record it comes from."""

    posting: journal.Posting
    correlation_id: str


async def post_many(
    conn: Any, topics: Topics, items: Sequence[Batched], balances: dict[str, int]
) -> list[Posted]:
    """Write a batch of postings in a few statements, in order.

    ``balances`` holds each user's balance before the batch, read under the row lock the
    caller took; each wallet entry carries the running balance after it. Raises when a
    unique rule refuses any of them: the batch is then handled record by record.
    """
    if not items:
        return []
    rows = [
        repository.NewTransaction(str(time_ordered_uuid()), i.posting, i.correlation_id)
        for i in items
    ]
    created = await repository.insert_transactions(conn, rows)
    if len(created) != len(rows):
        raise RuntimeError("a posting of this batch was already written")
    running = dict(balances)
    entries, posted, outbox = [], [], []
    for row in rows:
        user = row.posting.user_id
        running[user] = running.get(user, 0) + row.posting.wallet_delta
        done = Posted(row.transaction_id, running[user], created[row.transaction_id])
        entries.extend(_entries(row, done.balance_after))
        posted.append(done)
        record = _posted_record(row.posting, done, row.correlation_id)
        outbox.append(
            OutboxRecord(topics.ledger, user, record, row.correlation_id, row.posting.kind)
        )
    await repository.insert_entries_many(conn, entries)
    await repository.apply_wallet_deltas(conn, _deltas(rows))
    await write_outbox_many(conn, outbox)
    return posted


def _entries(row: repository.NewTransaction, balance_after: int) -> list[repository.NewEntry]:
    wallet = journal.wallet(row.posting.user_id)
    return [
        repository.NewEntry(
            row.transaction_id,
            e.account,
            row.posting.user_id if e.account == wallet else None,
            e.amount_millicredits,
            balance_after if e.account == wallet else None,
        )
        for e in row.posting.entries
    ]


def _deltas(rows: Sequence[repository.NewTransaction]) -> dict[str, int]:
    deltas: dict[str, int] = {}
    for row in rows:
        user = row.posting.user_id
        deltas[user] = deltas.get(user, 0) + row.posting.wallet_delta
    return deltas


def _posted_record(
    posting: journal.Posting, posted: Posted, correlation_id: str
) -> ledger_pb2.LedgerTransactionPosted:
    at = Timestamp()
    at.FromDatetime(posted.created_at)
    return ledger_pb2.LedgerTransactionPosted(
        meta=common_pb2.EventMeta(
            event_id=context.new_id(),
            occurred_at=at,
            correlation_id=correlation_id,
            producer="ledger",
        ),
        transaction_id=posted.transaction_id,
        kind=_KINDS[posting.kind],
        user_id=posting.user_id,
        reference_id=posting.reference_id,
        entries=[
            ledger_pb2.LedgerEntry(account=e.account, amount_millicredits=e.amount_millicredits)
            for e in posting.entries
        ],
        balance_after_millicredits=posted.balance_after,
        posted_at=at,
        reverses_transaction_id=posting.reverses_id or "",
    )


async def raise_alert(
    conn: Any, topics: Topics, kind: str, message: str, *, user_id: str = "", **refs: Any
) -> None:
    """Queue a ``BillingAlert`` in the outbox, in the transaction that found the problem."""
    alert = alert_pb2.BillingAlert(
        meta=common_pb2.EventMeta(
            event_id=context.new_id(),
            correlation_id=context.current_correlation_id(),
            producer="ledger",
        ),
        alert_id=context.new_id(),
        kind=kind,
        severity=alert_pb2.SEVERITY_CRITICAL,
        user_id=user_id,
        message=message,
        reference_ids=[str(v) for v in refs.values() if v],
        details={k: str(v) for k, v in refs.items() if v is not None},
        source="ledger",
    )
    await write_outbox(conn, topics.alerts, user_id or kind, alert)
    log.warning("alert raised", extra={"alert_kind": kind, **{k: str(v) for k, v in refs.items()}})


async def apply_stripe_event(conn: Any, ctx: LedgerContext, event: LedgerEvent) -> Outcome:
    if isinstance(event, SessionPaid):
        return await grant_from_session(conn, ctx, event)
    return await refund_from_charge(conn, ctx, event)


async def grant_from_session(conn: Any, ctx: LedgerContext, event: SessionPaid) -> Outcome:
    if event.purchase_id is None:
        await raise_alert(
            conn,
            ctx.topics,
            "unidentified_purchase",
            "paid session names no purchase",
            session_id=event.session_id,
        )
        return Outcome("rejected", "unidentified_purchase")
    terms = await repository.purchase_terms(conn, ctx.checkout_schema, event.purchase_id)
    if terms is None:
        return await _unknown(conn, ctx, event.created, "unknown_purchase", event.purchase_id)
    problem = session_mismatch(terms, event)
    if problem:
        await raise_alert(
            conn,
            ctx.topics,
            problem,
            f"paid session does not match: {problem}",
            user_id=terms["user_id"],
            purchase_id=event.purchase_id,
            session_id=event.session_id,
            amount_total=event.amount_total,
            price_cents=terms["price_cents"],
        )
        return Outcome("rejected", problem)
    posted = await grant(
        conn, ctx.topics, terms, f"stripe:{event.event_id}", event.session_id, event.payment_intent
    )
    return _grant_outcome(terms, posted)


def session_mismatch(terms: Any, event: SessionPaid) -> str | None:
    """Why a paid session must not be granted, or None when it matches its purchase."""
    if event.amount_total != terms["price_cents"]:
        return "amount_mismatch"
    if event.currency != str(terms["currency"]).lower():
        return "currency_mismatch"
    if event.user_id is not None and event.user_id != terms["user_id"]:
        return "user_mismatch"
    return None


async def _unknown(conn: Any, ctx: LedgerContext, created: int, kind: str, ref: str) -> Outcome:
    # A fresh event may just be ahead of the row it names: retry it; an old one is a fault.
    if ctx.clock() - created < ctx.grace_s:
        raise NotVisibleYet(f"{kind}: {ref} not visible yet")
    await raise_alert(conn, ctx.topics, kind, f"{kind.replace('_', ' ')}: {ref}", purchase_id=ref)
    return Outcome("rejected", kind)


def _grant_outcome(terms: Any, posted: Posted | None) -> Outcome:
    if posted is None:
        return Outcome("already_granted")
    grant = {"package_code": terms["package_code"], "millicredits": terms["grant_millicredits"]}
    return Outcome("granted", posted.transaction_id, grant)


async def grant(
    conn: Any,
    topics: Topics,
    terms: Any,
    source: str,
    session_id: str | None,
    payment_intent: str | None,
) -> Posted | None:
    """Grant a purchase's credits; None if it was already granted (by any path)."""
    posting = journal.Posting(
        kind="purchase",
        user_id=terms["user_id"],
        reference_id=terms["purchase_id"],
        source=source,
        entries=journal.purchase_entries(
            terms["user_id"], terms["price_cents"], terms["grant_millicredits"]
        ),
        details={"package_code": terms["package_code"], "price_cents": terms["price_cents"]},
    )
    posted = await post(conn, topics, posting)
    if posted is not None:
        await repository.insert_grant(
            conn, terms, posted.transaction_id, session_id, payment_intent
        )
    return posted


async def refund_from_charge(conn: Any, ctx: LedgerContext, event: ChargeRefunded) -> Outcome:
    grant_row = await repository.grant_for_refund(conn, event.purchase_id, event.payment_intent)
    if grant_row is None:
        ref = event.purchase_id or event.payment_intent or event.charge_id
        return await _unknown(conn, ctx, event.created, "refund_without_grant", ref)
    clawback = journal.refund_clawback(
        price_cents=grant_row["price_cents"],
        grant_millicredits=grant_row["grant_millicredits"],
        refunded_cents_before=grant_row["refunded_cents"],
        clawed_back_before=grant_row["clawed_back_millicredits"],
        refunded_total_cents=event.amount_refunded,
    )
    if clawback is None:
        return Outcome("already_applied")
    posted = await _post_refund(conn, ctx.topics, grant_row, event, clawback)
    return Outcome("refunded", posted.transaction_id)


async def _post_refund(
    conn: Any, topics: Topics, grant_row: Any, event: ChargeRefunded, claw: journal.Clawback
) -> Posted:
    user_id, purchase_id = grant_row["user_id"], grant_row["purchase_id"]
    posting = journal.Posting(
        kind="refund",
        user_id=user_id,
        reference_id=purchase_id,
        source=f"stripe:{event.event_id}",
        entries=journal.refund_entries(user_id, claw),
        details={
            "charge_id": event.charge_id,
            "refund_cents": claw.refund_cents,
            "refunded_total_cents": event.amount_refunded,
        },
    )
    posted = await post(conn, topics, posting)
    if posted is None:  # a fresh uuid and no idempotency key: nothing can conflict
        raise RuntimeError("refund posting was refused")
    await repository.record_refund(
        conn,
        purchase_id,
        grant_row["refunded_cents"] + claw.refund_cents,
        grant_row["clawed_back_millicredits"] + claw.clawback_millicredits,
    )
    if posted.balance_after < 0:
        # Credits were spent before the refund: the debt stays on the books, and ops hear of it.
        await raise_alert(
            conn,
            topics,
            "negative_balance_after_refund",
            "refund left a negative balance",
            user_id=user_id,
            purchase_id=purchase_id,
            balance_after=posted.balance_after,
        )
    return posted


@dataclass(frozen=True)
class Adjustment:
    user_id: str
    amount_millicredits: int
    reason: str
    reference_id: str
    actor: str
    idempotency_key: str | None


async def adjust(conn: Any, topics: Topics, adj: Adjustment) -> dict[str, Any]:
    """An admin correction, posted as new entries (a reversal when it names a transaction)."""
    done = await _adjusted_already(conn, adj)
    if done is not None:
        return done
    posting = await _adjustment_posting(conn, adj)
    posted = await post(conn, topics, posting)
    if posted is None:  # a concurrent request with the same key won the unique index
        return await _adjusted_already(conn, adj) or {}
    details = {
        "transaction_id": posted.transaction_id,
        "kind": posting.kind,
        "amount_millicredits": adj.amount_millicredits,
    }
    await audit(conn, adj.actor, ADJUSTMENT, adj.user_id, adj.reference_id, adj.reason, details)
    return _adjustment_body(
        posted.transaction_id, posting.kind, adj.amount_millicredits, posted.balance_after
    )


async def _adjusted_already(conn: Any, adj: Adjustment) -> dict[str, Any] | None:
    if not adj.idempotency_key:
        return None
    done = await repository.transaction_by_idempotency_key(conn, adj.idempotency_key)
    if done is None:
        return None
    return _adjustment_body(
        done["id"], done["kind"], done["amount_millicredits"], done["balance_after_millicredits"]
    )


async def _adjustment_posting(conn: Any, adj: Adjustment) -> journal.Posting:
    reverses = (
        await repository.transaction_of_user(conn, adj.reference_id, adj.user_id)
        if is_uuid(adj.reference_id)
        else None
    )
    return journal.Posting(
        kind="reversal" if reverses else "adjustment",
        user_id=adj.user_id,
        reference_id=adj.reference_id,
        source=f"admin:{adj.actor}",
        entries=journal.adjustment_entries(adj.user_id, adj.amount_millicredits),
        reverses_id=str(reverses["id"]) if reverses else None,
        idempotency_key=adj.idempotency_key,
        details={"reason": adj.reason},
    )


def _adjustment_body(transaction_id: Any, kind: str, amount: int, balance: int) -> dict[str, Any]:
    return {
        "transactionId": str(transaction_id),
        "kind": kind,
        "amountMillicredits": amount,
        "balanceAfterMillicredits": balance,
    }


async def audit(
    conn: Any,
    actor: str,
    action: str,
    user_id: str | None,
    reference_id: str | None,
    reason: str | None,
    details: dict[str, Any],
    *,
    target: str | None = None,
) -> None:
    """Keep a ledger admin action in the audit trail, in the caller's transaction.

    The ledger is where the trail is kept, so its own actions go straight into it rather
    than through Kafka; the record is built as every service builds one.
    """
    action_taken = AdminAction(
        actor=actor,
        action=action,
        target=target or audit_target("user", user_id or ""),
        reason=reason or "",
        target_user_id=user_id or "",
        details=details,
    )
    record = admin_action_message(action_taken, SOURCE)
    await repository.insert_audit(conn, record, reference_id)


def paid_session_problem(session: Any, terms: Any) -> str | None:
    """Why Stripe's own view of a Checkout Session does not allow a grant, if it does not."""
    if session.get("payment_status") != "paid":
        return "purchase_not_paid"
    if session.get("amount_total") != terms["price_cents"]:
        return "amount_mismatch"
    return None


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
