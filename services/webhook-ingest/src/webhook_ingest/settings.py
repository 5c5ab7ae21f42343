"""Settings of the webhook-ingest service (env prefix `WEBHOOK_INGEST_`).

Shared infrastructure settings are read under `BILLING_` (see billing_platform.settings);
the webhook signing secrets are among them (`BILLING_STRIPE_WEBHOOK_SECRETS`).
"""

from billing_platform.settings import ServiceSettings
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
