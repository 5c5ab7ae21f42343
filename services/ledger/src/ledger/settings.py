"""Settings of the ledger service (env prefix `LEDGER_`; shared infrastructure under `BILLING_`)."""

from pydantic_settings import SettingsConfigDict

from billing_platform.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore")

    service_name: str = "ledger"
    port: int = 8103
    db_schema: str = "ledger"
