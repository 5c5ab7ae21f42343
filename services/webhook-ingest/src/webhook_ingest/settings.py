"""Settings of the webhook-ingest service (env prefix `WEBHOOK_INGEST_`).

Shared infrastructure settings are read under `BILLING_` (see billing_platform.settings).
"""

from billing_platform.settings import ServiceSettings
from pydantic_settings import SettingsConfigDict


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="WEBHOOK_INGEST_", extra="ignore")

    service_name: str = "webhook-ingest"
    port: int = 8102
    db_schema: str = "webhook_ingest"
