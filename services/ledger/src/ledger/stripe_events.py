"""What a verified Stripe event means to the ledger: a paid purchase, a refund, or nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PAID_SESSION_TYPES = {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
REFUND_TYPES = {"charge.refunded"}


class UnreadableEvent(ValueError):
    """The payload is not the Stripe object its type promises; retrying cannot help."""


@dataclass(frozen=True)
class SessionPaid:
    event_id: str
    event_type: str
    created: int
    purchase_id: str | None
    session_id: str
    amount_total: int | None
    currency: str
    user_id: str | None
    payment_intent: str | None


@dataclass(frozen=True)
class ChargeRefunded:
    event_id: str
    created: int
    charge_id: str
    purchase_id: str | None
    payment_intent: str | None
    amount_refunded: int
    currency: str


LedgerEvent = SessionPaid | ChargeRefunded


def interpret(payload: bytes) -> LedgerEvent | None:
    """None for events that move no credits (an unpaid session, an unrelated type)."""
    try:
        event = json.loads(payload)
        kind, obj = str(event["type"]), event["data"]["object"]
        if kind in PAID_SESSION_TYPES:
            return _session(event, obj) if obj.get("payment_status") == "paid" else None
        if kind in REFUND_TYPES:
            return _refund(event, obj)
        return None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnreadableEvent(f"unreadable Stripe event: {exc}") from exc


def _metadata(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _session(event: dict[str, Any], obj: dict[str, Any]) -> SessionPaid:
    # client_reference_id is what checkout sets; metadata is the contract's fallback.
    purchase_id = obj.get("client_reference_id") or _metadata(obj).get("purchase_id")
    amount = obj.get("amount_total")
    return SessionPaid(
        event_id=str(event["id"]),
        event_type=str(event["type"]),
        created=int(event["created"]),
        purchase_id=str(purchase_id) if purchase_id else None,
        session_id=str(obj["id"]),
        amount_total=int(amount) if amount is not None else None,
        currency=str(obj.get("currency") or "").lower(),
        user_id=_metadata(obj).get("user_id"),
        payment_intent=_id_of(obj.get("payment_intent")),
    )


def _refund(event: dict[str, Any], obj: dict[str, Any]) -> ChargeRefunded:
    purchase_id = _metadata(obj).get("purchase_id")
    return ChargeRefunded(
        event_id=str(event["id"]),
        created=int(event["created"]),
        charge_id=str(obj["id"]),
        purchase_id=str(purchase_id) if purchase_id else None,
        payment_intent=_id_of(obj.get("payment_intent")),
        amount_refunded=int(obj["amount_refunded"]),
        currency=str(obj.get("currency") or "").lower(),
    )


def _id_of(value: Any) -> str | None:
    """Stripe sends either an id or, when expanded, the object carrying it."""
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if value else None
