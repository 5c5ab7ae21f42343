"""Purchase status rules, as pure functions of the current state and what was observed.

Statuses only move forward: pending < paid < fulfilled < partially_refunded < refunded.
``failed`` is reachable only from pending (an expired or failed session), and a failed
purchase can still move forward when payment turns out to have succeeded after all.
Webhooks and ledger events arrive in any order and more than once, so a late or repeated
observation never moves a purchase back (a late "paid" after "fulfilled" changes nothing).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

PENDING = "pending"
PAID = "paid"
FULFILLED = "fulfilled"
PARTIALLY_REFUNDED = "partially_refunded"
REFUNDED = "refunded"
FAILED = "failed"

STATUSES = (PENDING, PAID, FULFILLED, PARTIALLY_REFUNDED, REFUNDED, FAILED)
_RANK = {PENDING: 0, FAILED: 0, PAID: 1, FULFILLED: 2, PARTIALLY_REFUNDED: 3, REFUNDED: 4}

PAID_EVENTS = frozenset({"checkout.session.async_payment_succeeded"})
FAILED_EVENTS = frozenset({"checkout.session.expired", "checkout.session.async_payment_failed"})


def next_status(current: str, observed: str) -> str:
    """The status after observing ``observed``; ``current`` when it would not move forward."""
    if observed == FAILED:
        return FAILED if current == PENDING else current
    return observed if _RANK[observed] > _RANK[current] else current


def refund_status(refunded_millicredits: int, grant_millicredits: int) -> str:
    return REFUNDED if refunded_millicredits >= grant_millicredits else PARTIALLY_REFUNDED


class _Entry(Protocol):
    account: str
    amount_millicredits: int


def clawed_back(entries: Iterable[_Entry], user_id: str) -> int:
    """Credits a refund transaction took from the user's wallet (its negative amount)."""
    wallet = f"wallet:{user_id}"
    return sum(
        -e.amount_millicredits for e in entries if e.account == wallet and e.amount_millicredits < 0
    )


def parse_payload(payload: bytes) -> dict[str, Any]:
    """The raw Stripe event JSON; ValueError when it is not a JSON object."""
    event = json.loads(payload)
    if not isinstance(event, dict):
        raise ValueError("stripe event payload is not a JSON object")
    return event


def event_object(event: dict[str, Any]) -> dict[str, Any]:
    data = event.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    return obj if isinstance(obj, dict) else {}


def purchase_id_of(event: dict[str, Any]) -> str | None:
    """``client_reference_id`` of the event's object, else its ``metadata.purchase_id``."""
    obj = event_object(event)
    reference = obj.get("client_reference_id")
    if isinstance(reference, str) and reference:
        return reference
    metadata = obj.get("metadata")
    fallback = metadata.get("purchase_id") if isinstance(metadata, dict) else None
    return fallback if isinstance(fallback, str) and fallback else None


def observed_status(event_type: str, event: dict[str, Any]) -> str | None:
    """The status a Stripe event tells about, or None when it tells nothing about one."""
    if event_type == "checkout.session.completed":
        return PAID if event_object(event).get("payment_status") == "paid" else None
    if event_type in PAID_EVENTS:
        return PAID
    if event_type in FAILED_EVENTS:
        return FAILED
    return None


def receipt_url_of(event_type: str, event: dict[str, Any]) -> str | None:
    """The receipt link a charge event carries (Stripe's ``charge.receipt_url``), if any.

    Only an https URL of sane length is kept: the Credits page renders it as a link."""
    obj = event_object(event)
    if not event_type.startswith("charge.") or obj.get("object") != "charge":
        return None
    url = obj.get("receipt_url")
    if isinstance(url, str) and url.startswith("https://") and len(url) <= 2048:
        return url
    return None
