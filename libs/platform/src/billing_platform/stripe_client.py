"""The official Stripe SDK client, pointed at the configured API base (stripe-mock locally)."""

from __future__ import annotations

import stripe

from billing_platform.settings import InfraSettings


def stripe_client(infra: InfraSettings, *, timeout_s: float = 10.0) -> stripe.StripeClient:
    """An async-capable client; retries are the SDK's own (idempotency keys on POSTs)."""
    return stripe.StripeClient(
        infra.stripe_api_key.get_secret_value(),
        base_addresses={"api": infra.stripe_api_base},
        http_client=stripe.HTTPXClient(timeout=timeout_s),
        max_network_retries=2,
    )
