"""Settings of the metering service (env prefix `METERING_`).

Shared infrastructure settings are read under `BILLING_` (see billing_platform.settings);
the model provider's base URL and key are among them (`BILLING_OPENAI_BASE_URL`,
`BILLING_OPENAI_API_KEY`).
"""

from billing_platform.db import check_schema_name
from billing_platform.settings import ServiceSettings
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METERING_", extra="ignore")

    service_name: str = "metering"
    port: int = 8104
    db_schema: str = "metering"
    # Usage records wait for no one downstream (the capture is done): batch their publishing.
    # One produce request per partition and cycle (six on the contract's topics).
    outbox_linger_ms: int = Field(default=250, ge=0, le=5000)
    # Every connection opened at start (capped by db_pool_max), not when a burst of calls
    # needs it: opening one takes 14 ms on an idle machine (more under load), and its first
    # admission and settlement plan all their statements (8 ms more, measured idle).
    db_pool_min: int = 10
    # The reconciler's runtime role: `migrate` lets it SELECT what reconciliation checks here.
    db_reconciler_role: str = ""
    # The ledger's schema: metering holds credits through its `create_hold` function there
    # (the only right it has in it), in one round trip per call.
    ledger_schema: str = "ledger"
    # The ledger's capture and release API, called with a token carrying the `service` role.
    ledger_url: str = "http://127.0.0.1:8103"
    ledger_token: SecretStr = SecretStr("")
    ledger_timeout_s: float = Field(default=5.0, gt=0)
    # A hold outlives any model call; if metering dies mid-call the ledger frees it by itself.
    hold_ttl_s: int = Field(default=120, gt=0)
    # Sized so a call without max_tokens fits the default 50-credit request cap on every
    # model of the shipped rate card (gpt-4o: 512 x 15 USD/1M x 4 = 30.7 credits + prompt).
    default_max_output_tokens: int = Field(default=512, gt=0)
    max_output_tokens: int = Field(default=4096, gt=0)
    model_timeout_s: float = Field(default=60.0, gt=0)
    # Pins one rate card version; unset, the newest card already in effect is used.
    rate_card_version: str | None = None
    # Checkout owns the run-time switches and publishes them as `<schema>.feature_flags`.
    checkout_schema: str = "checkout"
    # A switch changed in checkout is applied here within this many seconds, without restart.
    switch_cache_s: float = Field(default=1.0, ge=0)
    # Default spend caps per user (admins override them per user): a call's worst case, what
    # one UTC day may charge, and what any rolling 60 minutes may charge (the session cap).
    # The per-request cap weighs the worst case, so on gpt-4o (4 x $15 per 1M output tokens)
    # a call may allow under 833 output tokens (fewer with a long prompt): a gpt-4o call
    # left at the 1024 default above is refused with request_cap_exceeded.
    cap_per_request_millicredits: int = Field(default=50_000, ge=0)
    cap_per_day_millicredits: int = Field(default=500_000, ge=0)
    cap_per_hour_millicredits: int = Field(default=100_000, ge=0)
    # Charge requests (chat and reconcile) per user in any 60 s, counted in the database so
    # that every replica shares one count.
    rate_limit_per_minute: int = Field(default=100, gt=0)

    @field_validator("checkout_schema", "ledger_schema")
    @classmethod
    def _schema_name(cls, value: str) -> str:
        return check_schema_name(value)
