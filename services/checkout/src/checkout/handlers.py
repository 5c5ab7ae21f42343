"""The purchase status consumer: Stripe events and ledger transactions move purchases.

Each message that concerns a purchase is claimed in ``inbox`` (``stripe:<event id>`` /
``ledger:<transaction id>``) in the same transaction as its effect, so a redelivery changes
nothing; the purchase row is locked meanwhile, so events about one purchase that arrive on
both topics at once are applied one after the other. Messages about nothing of ours
(other event types, other transaction kinds) are skipped without a claim.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from billing_events.kafka import (
    KIND_HEADER,
    BatchHandler,
    Handler,
    InboundMessage,
    PermanentError,
    Wanted,
)
from billing_events.offsets import unit_of_work
from billing_events.stripe import stripe_event
from billing_events.topics import Topics
from billing_events.v1 import ledger_pb2
from billing_platform.db import Database

from checkout import metrics, repository
from checkout.transitions import (
    FULFILLED,
    clawed_back,
    next_status,
    observed_status,
    parse_payload,
    purchase_id_of,
    receipt_url_of,
    refund_status,
)

log = logging.getLogger(__name__)

# A purchase row -> its new (status, refunded_millicredits).
Effect = Callable[[dict[str, Any]], tuple[str, int]]


# The ledger transactions that move a purchase; the rest of that busy topic (usage above
# all) is passed over undecoded. Records from before the kind header are all looked at.
_PURCHASE_KINDS = frozenset({None, "purchase", "refund"})


def wanted_for(topics: Topics) -> dict[str, Wanted]:
    return {topics.ledger: lambda message: message.header(KIND_HEADER) in _PURCHASE_KINDS}


def handlers_for(db: Database, topics: Topics) -> dict[str, Handler]:
    return {
        topics.stripe_events: record_handler(db, stripe_change),
        topics.ledger: record_handler(db, ledger_change),
    }


def batch_handlers_for(db: Database, topics: Topics) -> dict[str, BatchHandler]:
    """A fetched batch in one transaction; most records (usage postings, other event types)
    concern no purchase and cost no database work at all."""
    return {
        topics.stripe_events: batch_handler(db, stripe_change),
        topics.ledger: batch_handler(db, ledger_change),
    }


@dataclass(frozen=True)
class Change:
    """What a message does to a purchase: claimed by ``key``, applied as ``effect``."""

    key: str
    purchase_id: str
    effect: Effect
    why: str
    receipt_url: str | None = None


Parse = Callable[[InboundMessage], Change | None]


def record_handler(db: Database, parse: Parse) -> Handler:
    async def handle(message: InboundMessage) -> None:
        change = parse(message)
        if change is not None:
            async with unit_of_work(db) as conn:
                await apply(conn, change)

    return handle


def batch_handler(db: Database, parse: Parse) -> BatchHandler:
    async def handle(messages: Sequence[InboundMessage]) -> None:
        changes = [c for c in map(parse, messages) if c is not None]
        if not changes:
            return
        # Purchase rows are locked in one order, so the two topics' batches running at once
        # cannot deadlock; the sort is stable, so one purchase's changes keep their order.
        async with unit_of_work(db) as conn:
            for change in sorted(changes, key=lambda c: c.purchase_id):
                await apply(conn, change)

    return handle


def stripe_change(message: InboundMessage) -> Change | None:
    event = stripe_event(message)
    try:
        payload = parse_payload(event.payload)
    except ValueError as exc:
        raise PermanentError(f"stripe event payload is not JSON: {exc}") from exc
    observed = observed_status(event.type, payload)
    receipt = receipt_url_of(event.type, payload)
    purchase_id = purchase_id_of(payload)
    if (observed is None and receipt is None) or purchase_id is None:
        return None

    def effect(row: dict[str, Any]) -> tuple[str, int]:
        status = row["status"] if observed is None else next_status(row["status"], observed)
        return status, row["refunded_millicredits"]

    return Change(f"stripe:{event.stripe_event_id}", purchase_id, effect, event.type, receipt)


def ledger_change(message: InboundMessage) -> Change | None:
    txn = message.decode(ledger_pb2.LedgerTransactionPosted)
    effect = ledger_effect(txn)
    if effect is None or not txn.reference_id:
        return None
    if not txn.transaction_id:
        raise PermanentError("ledger transaction without an id")
    kind = ledger_pb2.TransactionKind.Name(txn.kind)
    return Change(f"ledger:{txn.transaction_id}", txn.reference_id, effect, kind)


def ledger_effect(txn: ledger_pb2.LedgerTransactionPosted) -> Effect | None:
    """How a ledger transaction moves the purchase it references; None: it does not."""
    if txn.kind == ledger_pb2.TRANSACTION_KIND_PURCHASE:
        return lambda row: (next_status(row["status"], FULFILLED), row["refunded_millicredits"])
    if txn.kind == ledger_pb2.TRANSACTION_KIND_REFUND:

        def refund(row: dict[str, Any]) -> tuple[str, int]:
            refunded = row["refunded_millicredits"] + clawed_back(txn.entries, row["user_id"])
            observed = refund_status(refunded, row["grant_millicredits"])
            return next_status(row["status"], observed), refunded

        return refund
    return None


async def apply(conn: Any, change: Change) -> None:
    """Claim the message and apply its effect to the purchase, in the caller's transaction."""
    if not await repository.claim_message(conn, change.key):
        log.info("duplicate message", extra={"message_key": change.key})
        return
    row = await repository.lock_purchase(conn, change.purchase_id)
    if row is None:
        # Not ours (or not a purchase id at all): the ledger alerts on unknown purchases.
        log.info(
            "unknown purchase",
            extra={"purchase_id": change.purchase_id[:64], "cause": change.why},
        )
        return
    status, refunded = change.effect(row)
    receipt = change.receipt_url or row["receipt_url"]
    if (status, refunded, receipt) == (
        row["status"],
        row["refunded_millicredits"],
        row["receipt_url"],
    ):
        return
    await repository.set_status(conn, change.purchase_id, status, refunded, receipt)
    metrics.PURCHASE_STATUS_CHANGES.labels(status).inc()
    log.info(
        "purchase status changed",
        extra={
            "purchase_id": change.purchase_id,
            "from": row["status"],
            "to": status,
            "cause": change.why,
        },
    )
