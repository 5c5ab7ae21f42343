"""Settings of the reconciler service (env prefix `RECONCILER_`).

Shared infrastructure settings are read under `BILLING_` (see billing_platform.settings).
The reconciler reads the other services' schemas read-only; their names are settings so a
deployment that renamed a schema only says so here.
"""

from typing import Literal

from billing_platform.db import check_schema_name
from billing_platform.settings import ServiceSettings
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RECONCILER_", extra="ignore")

    service_name: str = "reconciler"
    port: int = 8105
    db_schema: str = "reconciler"
    # Its read model is for reports, not for answers: half a second of delay buys batches
    # twenty times larger at 40 records a second (broker and database work per batch).
    consumer_linger_ms: int = Field(default=500, ge=0, le=5000)
    ledger_schema: str = "ledger"
    metering_schema: str = "metering"
    webhook_schema: str = "webhook_ingest"
    checkout_schema: str = "checkout"
    # One scheduled run (for yesterday, UTC) per interval, across all replicas; 0 disables.
    schedule_interval_s: float = 86_400.0
    # How long a paid session or a charged usage record seen on its topic may wait for the
    # ledger before it counts as stream lag (the ledger retries unknown purchases for 30 s).
    lag_grace_s: float = 300.0
    # Journal entries younger than this are left out of the hash chain's checkpoints: an
    # entry id is taken at INSERT, so a transaction still open could commit an older id.
    chain_settle_s: float = 300.0
    # The liability and daily gauges are re-read on this period between runs.
    gauge_interval_s: float = 60.0
    # Checkout Sessions read through the Stripe API per run, at most (auto-paging stops here).
    stripe_sessions_max: int = 1000
    stripe_timeout_s: float = 10.0
    # Where alerts go (reconciler.alerts): a Slack incoming webhook, or PagerDuty's Events v2
    # endpoint with its routing key. Empty: alerts are published, and nobody is told.
    alerts_webhook_url: str = ""
    alerts_webhook_format: Literal["slack", "pagerduty"] = "slack"
    alerts_pagerduty_routing_key: SecretStr = SecretStr("")
    alerts_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator(
        "db_schema", "ledger_schema", "metering_schema", "webhook_schema", "checkout_schema"
    )
    @classmethod
    def _valid_schema(cls, value: str) -> str:
        return check_schema_name(value)
