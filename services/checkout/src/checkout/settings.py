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
