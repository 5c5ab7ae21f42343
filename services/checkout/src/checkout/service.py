"""Creating purchases and reading them back.

A purchase row is committed (pending) before Stripe is called, so every Checkout Session
names a purchase that exists; no transaction or pooled connection is held during the
Stripe call; the session id and URL are stored afterwards in a second transaction.
Nothing here grants credits: the ledger grants only on a paid webhook.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import stripe
from billing_platform.db import Database
from billing_platform.errors import ApiError

from checkout import metrics, repository
from checkout.catalog import Package
from checkout.redirects import redirect_urls
from checkout.repository import NewPurchase
from checkout.schemas import PurchaseCreated, PurchaseOut
from checkout.stripe_checkout import CheckoutSession, CheckoutSessions, failure_code, is_unavailable

log = logging.getLogger(__name__)


class PurchaseService:
    def __init__(self, db: Database, sessions: CheckoutSessions, public_base_url: str) -> None:
        self._db = db
        self._sessions = sessions
        self._public_base_url = public_base_url

    async def create(self, user_id: str, package: Package, return_to: str) -> dict[str, Any]:
        """Purchase + Checkout Session; the 201 body. 502 when Stripe fails."""
        purchase = NewPurchase(str(uuid.uuid4()), user_id, package, return_to)
        async with self._db.pool.acquire() as conn:
            await repository.insert_purchase(conn, purchase)
        metrics.PURCHASES.labels(package.code).inc()
        session = await self._open_session(purchase)
        async with self._db.pool.acquire() as conn:
            await repository.attach_session(conn, purchase.id, session.id, session.url)
        log.info(
            "purchase created",
            extra={
                "purchase_id": purchase.id,
                "package_code": package.code,
                "stripe_session_id": session.id,
            },
        )
        return PurchaseCreated(
            purchase_id=purchase.id, checkout_url=session.url, status="pending"
        ).to_json()

    async def _open_session(self, purchase: NewPurchase) -> CheckoutSession:
        success_url, cancel_url = redirect_urls(
            self._public_base_url, purchase.return_to, purchase.id
        )
        try:
            session = await self._sessions.create(purchase, success_url, cancel_url)
        except stripe.StripeError as exc:
            metrics.STRIPE_CHECKOUT_SESSIONS.labels("failed").inc()
            raise await self._failed(purchase, exc) from exc
        metrics.STRIPE_CHECKOUT_SESSIONS.labels("created").inc()
        return session

    async def _failed(self, purchase: NewPurchase, exc: stripe.StripeError) -> ApiError:
        code = failure_code(exc)
        async with self._db.pool.acquire() as conn:
            await repository.mark_failed(conn, purchase.id, code)
        log.warning(
            "checkout session failed",
            extra={
                "purchase_id": purchase.id,
                "package_code": purchase.package.code,
                "failure_code": code,
            },
        )
        if is_unavailable(exc):
            return ApiError(
                502,
                "stripe_unavailable",
                "payment provider unreachable; try again",
                purchaseId=purchase.id,
            )
        return ApiError(
            502,
            "stripe_error",
            "payment provider refused the checkout session",
            purchaseId=purchase.id,
        )

    async def get(self, purchase_id: str) -> PurchaseOut | None:
        async with self._db.pool.acquire() as conn:
            row = await repository.purchase(conn, purchase_id)
        return PurchaseOut.of(row) if row else None
