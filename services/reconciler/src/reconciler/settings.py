"""Settings of the reconciler service (env prefix `RECONCILER_`).

Shared infrastructure settings are read under `BILLING_` (see billing_platform.settings).
"""

from billing_platform.settings import ServiceSettings
from pydantic_settings import SettingsConfigDict


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RECONCILER_", extra="ignore")

    service_name: str = "reconciler"
    port: int = 8105
    db_schema: str = "reconciler"
