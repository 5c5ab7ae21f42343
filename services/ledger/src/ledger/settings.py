"""Settings of the ledger service (env prefix `LEDGER_`).

Shared infrastructure settings are read under `BILLING_` (see billing_platform.settings).
"""

from billing_platform.settings import ServiceSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore")

    service_name: str = "ledger"
    port: int = 8103
    db_schema: str = "ledger"
    # Postings are durable and spendable before they are published: batch their publishing.
    # A cycle's records go out as one produce request per partition (six on the contract's
    # topics): a quarter of a second keeps that near 24 a second at any rate. A purchase's
    # status on checkout may lag its spendable balance by as much, under load.
    outbox_linger_ms: int = Field(default=250, ge=0, le=5000)
    # The consumer of usage and audit records (Stripe events have one of their own, at once):
    # most usage records were captured by the gateway already; the rest are charged late.
    usage_consumer_linger_ms: int = Field(default=250, ge=0, le=5000)
    # The reconciler's runtime role: `migrate` lets it SELECT what reconciliation checks here.
    db_reconciler_role: str = ""
    # Metering's runtime role: `migrate` lets it EXECUTE the hold and capture functions only.
    db_metering_role: str = ""
    # Checkout's schema, whose read-only `purchase_terms` view sizes every grant.
    checkout_schema: str = "checkout"
    # How long an event may name a purchase (or grant) the ledger cannot see yet and still be
    # retried; past it the event is refused with an alert. Counted from the event's creation.
    unknown_purchase_grace_s: float = 30.0
    stripe_timeout_s: float = 10.0
    # Depth of the dead-letter topics, refreshed on this period for the DLQ gauge.
    dlq_depth_interval_s: float = 15.0
    # How often overdue holds are looked for and expired (holds also expire lazily when
    # their user asks for a new one).
    hold_sweep_interval_s: float = 5.0
