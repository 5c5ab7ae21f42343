"""Settings of the checkout service (env prefix `CHECKOUT_`).

Shared infrastructure settings are read under `BILLING_` (see billing_platform.settings).

The billing switches (`billing_enabled`, `purchases_enabled`, `charging_enabled`,
`shadow_billing`, `shadow_allowlist`, `rollout_percentage`) are initial values only: at
startup checkout writes each one to its `feature_switches` row where that row does not
exist yet, and never overwrites an existing row. From then on the row is the truth, changed
at run time with `PATCH /api/admin/features`; such a change survives restarts, and a new
env value does not undo it. To reset a switch, change it through the admin API.

The deployment may force switches instead, with the runbooks' variable names (no prefix):
`BILLING_PURCHASE_ENABLED`, `BILLING_CHARGING_ENABLED`, `SHADOW_BILLING_ENABLED`,
`BILLING_ALLOWLIST`, `BILLING_ROLLOUT_PERCENTAGE`. A forced value is written over the row at
every start (logged and audited when it changes something), shows as forced in the switch
views, and the admin API refuses to change it until the deployment drops the variable.
"""

from typing import Annotated

from billing_platform.settings import ServiceSettings
from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CHECKOUT_", extra="ignore")

    service_name: str = "checkout"
    port: int = 8101
    db_schema: str = "checkout"
    # Purchase status follows the ledger a tenth of a second later, in larger batches.
    consumer_linger_ms: int = Field(default=100, ge=0, le=5000)
    # Other services' runtime roles that `migrate` lets SELECT checkout's published views:
    # the ledger and the reconciler `purchase_terms`, metering `feature_flags`.
    db_ledger_role: str = ""
    db_metering_role: str = ""
    db_reconciler_role: str = ""
    # Master switch: off turns purchases and charging off, whatever their own switches say.
    billing_enabled: bool = True
    # Off: POST /api/purchases answers 503 purchases_disabled.
    purchases_enabled: bool = True
    # Off: AI stays available and nothing is charged (metering records usage as unbilled).
    charging_enabled: bool = True
    # On: metering computes and records every charge but deducts only for the allowlist.
    shadow_billing: bool = False
    shadow_allowlist: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Share of users billed, chosen by metering from a stable hash of the user id.
    rollout_percentage: int = Field(default=100, ge=0, le=100)
    # Forced by the deployment (see above); None: not forced.
    forced_purchases_enabled: bool | None = Field(
        default=None, validation_alias="BILLING_PURCHASE_ENABLED"
    )
    forced_charging_enabled: bool | None = Field(
        default=None, validation_alias="BILLING_CHARGING_ENABLED"
    )
    forced_shadow_billing: bool | None = Field(
        default=None, validation_alias="SHADOW_BILLING_ENABLED"
    )
    forced_shadow_allowlist: Annotated[list[str] | None, NoDecode] = Field(
        default=None, validation_alias="BILLING_ALLOWLIST"
    )
    forced_rollout_percentage: int | None = Field(
        default=None, ge=0, le=100, validation_alias="BILLING_ROLLOUT_PERCENTAGE"
    )
    # How stale this process's view of the switches may be; other replicas see an admin
    # change within this time.
    switch_cache_s: float = Field(default=1.0, ge=0)
    # The web app that Stripe sends the buyer back to (success and cancel URLs).
    public_base_url: str = "http://localhost:5173"
    # Purchases per source IP in any 60 s, counted in the database across every replica.
    purchase_rate_limit_per_minute: int = Field(default=10, gt=0)
    stripe_timeout_s: float = 10.0

    @field_validator("shadow_allowlist", "forced_shadow_allowlist", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        # Plain comma-separated env values, like the infra list settings.
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value
