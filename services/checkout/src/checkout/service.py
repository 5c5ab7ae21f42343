"""Use cases of checkout: creating purchases and reading them back; the billing switches.

A purchase row is committed (pending) before Stripe is called, so every Checkout Session
names a purchase that exists; no transaction or pooled connection is held during the
Stripe call; the session id and URL are stored afterwards in a second transaction.
Nothing here grants credits: the ledger grants only on a paid webhook.

A switch change updates the rows and appends one change-log row per switch whose value
changes, all in one transaction, with the rows locked so concurrent changes queue up.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import stripe
from billing_events.audit import SWITCH_CHANGE, AdminAction, AuditTrail
from billing_events.audit import target as audit_target
from billing_platform import context, cursors
from billing_platform.db import Database
from billing_platform.errors import ApiError

from checkout import metrics, repository
from checkout.catalog import Package
from checkout.redirects import redirect_urls
from checkout.repository import NewPurchase, SwitchChange
from checkout.schemas import AdminFeaturesOut, PurchaseCreated, PurchaseOut, PurchasePage
from checkout.stripe_checkout import CheckoutSession, CheckoutSessions, failure_code, is_unavailable
from checkout.switches import (
    NAMES,
    Switches,
    SwitchValues,
    as_stored,
    from_stored,
    switch_forced,
)

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

    async def history(self, user_id: str, limit: int, cursor: str | None) -> PurchasePage:
        """A user's purchases newest first, ``limit`` at a time (keyset paging)."""
        before = cursors.decode_at(HISTORY_CURSOR, cursor)
        async with self._db.pool.acquire() as conn:
            rows = await repository.user_purchases(conn, user_id, limit + 1, before)
        page = rows[:limit]
        last = page[-1] if len(rows) > limit else None
        next_cursor = (
            cursors.encode_at(HISTORY_CURSOR, last["created_at"], last["id"]) if last else None
        )
        return PurchasePage(purchases=[PurchaseOut.of(r) for r in page], next_cursor=next_cursor)


HISTORY_CURSOR = "p"


SEED_ACTOR = "checkout:settings"
SEED_REASON = "initial value from the CHECKOUT_* settings"
FORCE_ACTOR = "checkout:deployment"
FORCE_REASON = "forced by the deployment's settings"


class StoredSwitches:
    """The switch rows, as the source of the ``Switches`` cache."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def load(self) -> dict[str, Any]:
        async with self._db.pool.acquire() as conn:
            rows = await repository.feature_switches(conn)
        return {r["name"]: r["value"] for r in rows}


class SwitchService:
    def __init__(
        self,
        db: Database,
        switches: Switches,
        defaults: SwitchValues,
        audit: AuditTrail,
        forced: Mapping[str, Any] | None = None,
    ) -> None:
        self._db = db
        self._switches = switches
        self._defaults = defaults
        self._audit = audit
        self._forced = dict(forced or {})

    @property
    def forced(self) -> list[str]:
        return sorted(self._forced)

    async def seed(self) -> None:
        """A row from the settings for each switch that has none (existing rows are kept),
        then the deployment's forced values over whatever the rows say."""
        async with self._db.pool.acquire() as conn, conn.transaction():
            seeded = await repository.seed_feature_switches(
                conn, as_stored(self._defaults), SEED_ACTOR, SEED_REASON
            )
            forced = await _apply(conn, self._audit, FORCE_ACTOR, self._forced, FORCE_REASON)
        self._switches.invalidate()
        if seeded:
            log.info("feature switches seeded from settings", extra={"switches": seeded})
        if forced:
            log.warning("feature switches forced by the deployment", extra={"switches": forced})

    async def view(self) -> AdminFeaturesOut:
        """The stored values, read now (not from the cache): admins see the truth."""
        async with self._db.pool.acquire() as conn:
            rows = await repository.feature_switches(conn)
        return admin_view(rows, self._defaults, self.forced)

    async def change(self, actor: str, changes: dict[str, Any], reason: str) -> AdminFeaturesOut:
        """Apply checked ``changes`` (switch name -> value); the admin view afterwards."""
        if refused := sorted(set(changes) & set(self._forced)):
            raise switch_forced(refused)
        async with self._db.pool.acquire() as conn, conn.transaction():
            changed = await _apply(conn, self._audit, actor, changes, reason)
            rows = await repository.feature_switches(conn)
        self._switches.invalidate()
        for name in changed:
            metrics.FEATURE_SWITCH_CHANGES.labels(name).inc()
        if changed:
            log.info("feature switches changed", extra={"switches": changed})
        return admin_view(rows, self._defaults, self.forced)


async def _apply(
    conn: Any, audit: AuditTrail, actor: str, changes: dict[str, Any], reason: str
) -> list[str]:
    """Write the switches whose value differs, one log row and audit record each; their names."""
    before = await repository.lock_feature_switches(conn)
    corr = context.current_correlation_id()
    changed = [n for n, v in changes.items() if before.get(n) != v]
    for name in changed:
        change = SwitchChange(name, before.get(name), changes[name], actor, reason, corr)
        await repository.set_feature_switch(conn, name, change.new_value, actor)
        await repository.insert_feature_switch_change(conn, change)
        await audit.record(conn, switch_change_action(change))
    return changed


def switch_change_action(change: SwitchChange) -> AdminAction:
    return AdminAction(
        actor=change.actor,
        action=SWITCH_CHANGE,
        target=audit_target("switch", change.name),
        reason=change.reason,
        details={"old": change.old_value, "new": change.new_value},
    )


def admin_view(
    rows: list[dict[str, Any]], defaults: SwitchValues, forced: list[str]
) -> AdminFeaturesOut:
    values = from_stored({r["name"]: r["value"] for r in rows}, defaults)
    updated_at: dict[str, datetime | None] = dict.fromkeys(NAMES)
    updated_at.update({r["name"]: r["updated_at"] for r in rows})
    return AdminFeaturesOut.of_rows(values, updated_at, forced)
