"""Settings of the metering service (env prefix `METERING_`; shared infrastructure under `BILLING_`)."""

from pydantic_settings import SettingsConfigDict

from billing_platform.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METERING_", extra="ignore")

    service_name: str = "metering"
    port: int = 8104
    db_schema: str = "metering"
