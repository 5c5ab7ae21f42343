"""Stripe webhook deliveries as Stripe sends them: signed, compact JSON, real-shaped objects.

Used by ``billing stripe ...``, the integration tests and the benchmark. Ids of the
PaymentIntent and Charge are derived from the purchase id, so a refund sent later names the
same charge and intent as the payment sent earlier, without keeping any state here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

import httpx

API_VERSION = "2024-06-20"


class EventOptions(TypedDict, total=False):
    event_id: str | None
    created: int | None


@dataclass(frozen=True)
class SimPurchase:
    purchase_id: str
    user_id: str
    package_code: str
    price_cents: int
    currency: str
    stripe_session_id: str | None = None

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> SimPurchase:
        """From the checkout API's ``GET /api/purchases/{id}`` JSON body."""
        return cls(
            purchase_id=str(body["purchaseId"]),
            user_id=str(body["userId"]),
            package_code=str(body["packageCode"]),
            price_cents=int(body["priceCents"]),
            currency=str(body["currency"]),
            stripe_session_id=body.get("stripeSessionId") or None,
        )


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The ``Stripe-Signature`` header: ``t=<unix>,v1=<HMAC-SHA256(secret, "<t>." + body)>``."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def _derived(prefix: str, p: SimPurchase) -> str:
    return prefix + hashlib.sha256(p.purchase_id.encode()).hexdigest()[:24]


def payment_intent_id(p: SimPurchase) -> str:
    return _derived("pi_sim_", p)


def charge_id(p: SimPurchase) -> str:
    return _derived("ch_sim_", p)


def receipt_url(p: SimPurchase) -> str:
    return f"https://pay.stripe.com/receipts/payment/{_derived('rcpt_sim_', p)}"


def session_id(p: SimPurchase) -> str:
    return p.stripe_session_id or _derived("cs_sim_", p)


def _currency(p: SimPurchase) -> str:
    # Stripe always sends ISO codes in lower case, whatever case the merchant used.
    return p.currency.lower()


def event(
    type: str,
    obj: dict[str, Any],
    *,
    event_id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """The Event envelope around ``obj`` (API version pinned to the platform's)."""
    return {
        "id": event_id or "evt_sim_" + uuid.uuid4().hex,
        "object": "event",
        "api_version": API_VERSION,
        "created": created or int(time.time()),
        "livemode": False,
        "type": type,
        "data": {"object": obj},
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
    }


def checkout_session(
    p: SimPurchase,
    *,
    payment_status: str = "paid",
    amount_total: int | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """A completed payment-mode Checkout Session for the purchase."""
    total = p.price_cents if amount_total is None else amount_total
    made = created or int(time.time())
    return {
        "id": session_id(p),
        "object": "checkout.session",
        "mode": "payment",
        "status": "complete",
        "payment_status": payment_status,
        "amount_total": total,
        "amount_subtotal": total,
        "currency": _currency(p),
        "client_reference_id": p.purchase_id,
        "metadata": {
            "purchase_id": p.purchase_id,
            "user_id": p.user_id,
            "package_code": p.package_code,
        },
        "payment_intent": payment_intent_id(p),
        "payment_method_types": ["card"],
        "customer": None,
        "url": None,
        "created": made,
        "expires_at": made + 24 * 3600,
        "livemode": False,
    }


def session_completed(
    p: SimPurchase,
    *,
    paid: bool = True,
    amount_total: int | None = None,
    **kw: Unpack[EventOptions],
) -> dict[str, Any]:
    """``checkout.session.completed``; ``paid=False`` is a delayed method still pending."""
    status = "paid" if paid else "unpaid"
    session = checkout_session(
        p, payment_status=status, amount_total=amount_total, created=kw.get("created")
    )
    return event("checkout.session.completed", session, **kw)


def async_payment_succeeded(
    p: SimPurchase, *, amount_total: int | None = None, **kw: Unpack[EventOptions]
) -> dict[str, Any]:
    """The follow-up of an unpaid completed session once the delayed payment cleared."""
    session = checkout_session(
        p, payment_status="paid", amount_total=amount_total, created=kw.get("created")
    )
    return event("checkout.session.async_payment_succeeded", session, **kw)


def _refund(p: SimPurchase, amount_cents: int, created: int) -> dict[str, Any]:
    return {
        "id": "re_sim_" + uuid.uuid4().hex,
        "object": "refund",
        "amount": amount_cents,
        "charge": charge_id(p),
        "payment_intent": payment_intent_id(p),
        "currency": _currency(p),
        "status": "succeeded",
        "created": created,
    }


def charge(p: SimPurchase, *, refunded_total_cents: int, refund_cents: int) -> dict[str, Any]:
    """The purchase's Charge after a refund; ``amount_refunded`` is cumulative, as on Stripe."""
    now = int(time.time())
    return {
        "id": charge_id(p),
        "object": "charge",
        "amount": p.price_cents,
        "amount_captured": p.price_cents,
        "amount_refunded": refunded_total_cents,
        "refunded": refunded_total_cents >= p.price_cents,
        "captured": True,
        "paid": True,
        "status": "succeeded",
        "currency": _currency(p),
        "payment_intent": payment_intent_id(p),
        "metadata": {"purchase_id": p.purchase_id, "user_id": p.user_id},
        "receipt_url": receipt_url(p),
        "created": now,
        "livemode": False,
        "refunds": {
            "object": "list",
            "data": [_refund(p, refund_cents, now)],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/charges/{charge_id(p)}/refunds",
        },
    }


def charge_succeeded(p: SimPurchase, **kw: Unpack[EventOptions]) -> dict[str, Any]:
    """``charge.succeeded`` for the purchase's payment: its receipt link is on the charge."""
    obj = charge(p, refunded_total_cents=0, refund_cents=0)
    obj["refunds"] = {**obj["refunds"], "data": [], "total_count": 0}
    return event("charge.succeeded", obj, **kw)


def charge_refunded(
    p: SimPurchase, *, refunded_total_cents: int, refund_cents: int, **kw: Unpack[EventOptions]
) -> dict[str, Any]:
    """``charge.refunded`` carrying the refund just made and the running refunded total."""
    obj = charge(p, refunded_total_cents=refunded_total_cents, refund_cents=refund_cents)
    return event("charge.refunded", obj, **kw)


def encode(evt: dict[str, Any]) -> bytes:
    """Compact JSON, as Stripe's body is; the signature covers these exact bytes."""
    return json.dumps(evt, separators=(",", ":")).encode()


def _request(
    evt: dict[str, Any], secret: str, timestamp: int | None
) -> tuple[bytes, dict[str, str]]:
    body = encode(evt)
    headers = {
        "Stripe-Signature": sign(body, secret, timestamp),
        "Content-Type": "application/json",
    }
    return body, headers


async def send(
    client: httpx.AsyncClient,
    webhook_url: str,
    event: dict[str, Any],
    secret: str,
    *,
    timestamp: int | None = None,
) -> httpx.Response:
    """Deliver one signed event to the webhook endpoint."""
    body, headers = _request(event, secret, timestamp)
    return await client.post(webhook_url, content=body, headers=headers)


def send_sync(
    client: httpx.Client,
    webhook_url: str,
    event: dict[str, Any],
    secret: str,
    *,
    timestamp: int | None = None,
) -> httpx.Response:
    """``send`` for synchronous callers (the CLI)."""
    body, headers = _request(event, secret, timestamp)
    return client.post(webhook_url, content=body, headers=headers)
