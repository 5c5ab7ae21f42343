"""What the reconciler keeps of each consumed message (its read model), as plain data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from billing_events.kafka import PermanentError
from billing_events.v1 import ledger_pb2, stripe_pb2, usage_pb2
from google.protobuf.timestamp_pb2 import Timestamp

SESSION_TYPES = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)


@dataclass(frozen=True)
class SeenStripeEvent:
    event_id: str
    type: str
    object_id: str | None
    purchase_id: str | None
    amount: int | None
    amount_refunded: int | None
    created: datetime
    payload: str


@dataclass(frozen=True)
class SeenUsage:
    usage_id: str
    user_id: str
    model: str
    mode: str
    charged_millicredits: int
    cost_millicredits: int
    created: datetime


@dataclass(frozen=True)
class SeenLedgerTransaction:
    transaction_id: str
    kind: str
    user_id: str
    reference_id: str
    wallet_delta_millicredits: int
    posted_at: datetime


def _time(ts: Timestamp, fallback: datetime) -> datetime:
    return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else fallback


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:  # a value newer than these generated classes
        return f"unknown_{value}"


def seen_stripe_event(event: stripe_pb2.StripeEventReceived) -> SeenStripeEvent:
    """The stored shape of a verified event; an unreadable payload cannot improve on retry."""
    if not event.stripe_event_id:
        raise PermanentError("stripe event without an id")
    try:
        body = json.loads(event.payload)
        obj = body["data"]["object"]
        created = datetime.fromtimestamp(int(body["created"]), UTC)
        return _stripe_event(event, obj, _time(event.stripe_created, created), body)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise PermanentError(f"unreadable Stripe event {event.stripe_event_id}: {exc}") from exc


def _stripe_event(
    event: stripe_pb2.StripeEventReceived, obj: dict[str, Any], created: datetime, body: Any
) -> SeenStripeEvent:
    session = event.type in SESSION_TYPES
    return SeenStripeEvent(
        event_id=event.stripe_event_id,
        type=event.type,
        object_id=event.object_id or obj.get("id"),
        purchase_id=_purchase_id(obj, session),
        amount=_int(obj.get("amount_total" if session else "amount")),
        amount_refunded=None if session else _int(obj.get("amount_refunded")),
        created=created,
        payload=json.dumps(body),
    )


def _purchase_id(obj: dict[str, Any], session: bool) -> str | None:
    # The ledger's reading: client_reference_id for sessions, metadata.purchase_id otherwise.
    metadata = obj.get("metadata") or {}
    named = (obj.get("client_reference_id") if session else None) or metadata.get("purchase_id")
    return str(named) if named else None


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


def seen_usage(record: usage_pb2.UsageRecorded, received: datetime) -> SeenUsage:
    if not record.usage_id or not record.user_id:
        raise PermanentError("usage record without usage id or user id")
    return SeenUsage(
        usage_id=record.usage_id,
        user_id=record.user_id,
        model=record.model,
        mode=_enum_name(usage_pb2.BillingMode, record.mode, "BILLING_MODE_"),
        charged_millicredits=record.charged_millicredits,
        cost_millicredits=record.cost_millicredits,
        created=_time(record.meta.occurred_at, received),
    )


def seen_ledger_transaction(
    posted: ledger_pb2.LedgerTransactionPosted, received: datetime
) -> SeenLedgerTransaction:
    if not posted.transaction_id or not posted.user_id:
        raise PermanentError("ledger transaction without transaction id or user id")
    wallet = f"wallet:{posted.user_id}"
    return SeenLedgerTransaction(
        transaction_id=posted.transaction_id,
        kind=_enum_name(ledger_pb2.TransactionKind, posted.kind, "TRANSACTION_KIND_"),
        user_id=posted.user_id,
        reference_id=posted.reference_id,
        wallet_delta_millicredits=sum(
            e.amount_millicredits for e in posted.entries if e.account == wallet
        ),
        posted_at=_time(posted.posted_at, received),
    )
