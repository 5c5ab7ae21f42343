"""Stripe Checkout Sessions through the official SDK.

The session names its purchase three ways (``client_reference_id``, session metadata and
the PaymentIntent's metadata) so the ledger can tie a payment, and later its refunds, back
to the purchase. The Stripe idempotency key ``purchase-<id>`` makes the SDK's own retries
(and any repeat for the same purchase) return the one session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import stripe

from checkout.repository import NewPurchase

# APIConnectionError -> api_connection_error
_SNAKE_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@dataclass(frozen=True)
class CheckoutSession:
    id: str
    url: str


class CheckoutSessions(Protocol):
    async def create(
        self, purchase: NewPurchase, success_url: str, cancel_url: str
    ) -> CheckoutSession: ...


def session_params(
    purchase: NewPurchase, success_url: str, cancel_url: str
) -> stripe.checkout.SessionService.CreateParams:
    pkg = purchase.package
    return {
        "mode": "payment",
        "line_items": [
            {
                "price_data": {
                    "currency": pkg.currency,
                    "unit_amount": pkg.price_cents,
                    "product_data": {"name": f"{pkg.name} credits"},
                },
                "quantity": 1,
            }
        ],
        "client_reference_id": purchase.id,
        "metadata": {
            "purchase_id": purchase.id,
            "user_id": purchase.user_id,
            "package_code": pkg.code,
        },
        "payment_intent_data": {
            "metadata": {"purchase_id": purchase.id, "user_id": purchase.user_id}
        },
        "success_url": success_url,
        "cancel_url": cancel_url,
    }


class StripeCheckout:
    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client

    async def create(
        self, purchase: NewPurchase, success_url: str, cancel_url: str
    ) -> CheckoutSession:
        session = await self._client.v1.checkout.sessions.create_async(
            session_params(purchase, success_url, cancel_url),
            {"idempotency_key": f"purchase-{purchase.id}"},
        )
        if not session.url:
            raise stripe.APIError("checkout session created without a url")
        return CheckoutSession(session.id, session.url)


def is_unavailable(exc: stripe.StripeError) -> bool:
    """Stripe could not be reached or did not answer in time (the SDK maps both)."""
    return isinstance(exc, stripe.APIConnectionError)


def failure_code(exc: stripe.StripeError) -> str:
    """What is stored on the failed purchase: Stripe's error code, else the error kind."""
    if exc.code:
        return f"stripe:{exc.code}"
    return "stripe:" + _SNAKE_BOUNDARY.sub("_", type(exc).__name__).lower()
