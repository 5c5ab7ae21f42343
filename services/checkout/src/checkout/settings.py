"""Settings of the checkout service (env prefix `CHECKOUT_`).

Shared infrastructure settings are read under `BILLING_` (see billing_platform.settings).
"""

from billing_platform.settings import ServiceSettings
from pydantic_settings import SettingsConfigDict


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CHECKOUT_", extra="ignore")

    service_name: str = "checkout"
    port: int = 8101
    db_schema: str = "checkout"
    # Off: POST /api/purchases answers 503 purchases_disabled (read on every request).
    purchases_enabled: bool = True
    # The web app that Stripe sends the buyer back to (success and cancel URLs).
    public_base_url: str = "http://localhost:5173"
    purchase_rate_limit_per_minute: int = 10
    stripe_timeout_s: float = 10.0
