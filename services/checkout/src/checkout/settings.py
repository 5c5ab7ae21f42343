"""Settings of the checkout service (env prefix `CHECKOUT_`; shared infrastructure under `BILLING_`)."""

from pydantic_settings import SettingsConfigDict

from billing_platform.settings import ServiceSettings


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CHECKOUT_", extra="ignore")

    service_name: str = "checkout"
    port: int = 8101
    db_schema: str = "checkout"
