"""Settings of the webhook-ingest service (env prefix `WEBHOOK_INGEST_`; shared infrastructure under `BILLING_`)."""

from pydantic_settings import SettingsConfigDict

from billing_platform.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="WEBHOOK_INGEST_", extra="ignore")

    service_name: str = "webhook-ingest"
    port: int = 8102
    db_schema: str = "webhook_ingest"
