"""Settings of the webhook-ingest service (env prefix `WEBHOOK_INGEST_`).

Shared infrastructure settings are read under `BILLING_` (see billing_platform.settings);
the webhook signing secrets are among them (`BILLING_STRIPE_WEBHOOK_SECRETS`).
"""

from billing_platform.settings import ServiceSettings
from pydantic import Field
from pydantic_settings import SettingsConfigDict


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="WEBHOOK_INGEST_", extra="ignore")

    service_name: str = "webhook-ingest"
    port: int = 8102
    db_schema: str = "webhook_ingest"
    # The reconciler's runtime role: `migrate` lets it SELECT what reconciliation checks here.
    db_reconciler_role: str = ""
    # Stripe's own default: a signed delivery older (or newer) than this is refused.
    signature_tolerance_s: int = 300
    rate_limit_per_minute: int = 6000
    # Stripe event bodies are a few KiB; a megabyte leaves room without inviting abuse.
    max_body_bytes: int = 1_048_576
    # Group commit (billing_platform.group_commit): verified deliveries are stored in shared
    # transactions of at most this many events, written as soon as the previous one commits.
    group_commit_max_batch: int = Field(default=256, ge=1)
    # Deliveries waiting for a transaction; beyond this a delivery is answered 503
    # `overloaded` with Retry-After (Stripe retries) instead of queueing without end.
    group_commit_queue_bound: int = Field(default=1024, ge=1)
    # How long the writer waits for more deliveries when fewer than a batch are queued;
    # 0: none (the previous commit is wait enough).
    group_commit_max_wait_s: float = Field(default=0.0, ge=0.0, le=1.0)
    # Stored events are relayed at once unless the relay is busy (a cycle of 8 rows or more,
    # some 400 deliveries a second): then at most every 100 ms, so a burst's events share
    # produce requests, and the consumers downstream fetch them in fewer, larger batches. A
    # delivery's answer never waits for the relay; a grant does, by up to the linger, and
    # only in a busy spell.
    outbox_linger_ms: int = Field(default=100, ge=0, le=5000)
    outbox_linger_rows: int = Field(default=8, ge=1)
    # The consumer of its own topic only heals the store after a restore (handlers.py):
    # it answers no one, so it waits for large batches.
    consumer_linger_ms: int = Field(default=500, ge=0, le=5000)
