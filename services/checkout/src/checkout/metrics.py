"""Prometheus metrics of the checkout service."""

from __future__ import annotations

from prometheus_client import Counter

STRIPE_CHECKOUT_SESSIONS = Counter(
    "stripe_checkout_sessions_total",
    "Stripe Checkout Session creations, by outcome (created|failed)",
    ["status"],
)
PURCHASES = Counter(
    "checkout_purchases_total", "Purchases created (pending), by package", ["package_code"]
)
PURCHASE_STATUS_CHANGES = Counter(
    "checkout_purchase_status_changes_total",
    "Purchase status transitions applied by the status consumer",
    ["status"],
)
FEATURE_SWITCH_CHANGES = Counter(
    "feature_switch_changes_total",
    "Billing switch values changed through the admin API, by switch",
    ["name"],
)
