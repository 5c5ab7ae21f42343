"""Settings of the metering service (env prefix `METERING_`).

Shared infrastructure settings are read under `BILLING_` (see billing_platform.settings).
"""

from billing_platform.settings import ServiceSettings
from pydantic_settings import SettingsConfigDict


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METERING_", extra="ignore")

    service_name: str = "metering"
    port: int = 8104
    db_schema: str = "metering"
