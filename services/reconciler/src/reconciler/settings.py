"""Settings of the reconciler service (env prefix `RECONCILER_`; shared infrastructure under `BILLING_`)."""

from pydantic_settings import SettingsConfigDict

from billing_platform.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RECONCILER_", extra="ignore")

    service_name: str = "reconciler"
    port: int = 8105
    db_schema: str = "reconciler"
