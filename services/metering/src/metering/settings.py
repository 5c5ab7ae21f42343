"""Settings of the metering service (env prefix `METERING_`).

Shared infrastructure settings are read under `BILLING_` (see billing_platform.settings);
the model provider's base URL and key are among them (`BILLING_OPENAI_BASE_URL`,
`BILLING_OPENAI_API_KEY`).
"""

from billing_platform.settings import ServiceSettings
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="METERING_", extra="ignore")

    service_name: str = "metering"
    port: int = 8104
    db_schema: str = "metering"
    # The ledger's hold API, called with a token carrying the `service` role.
    ledger_url: str = "http://127.0.0.1:8103"
    ledger_token: SecretStr = SecretStr("")
    ledger_timeout_s: float = Field(default=5.0, gt=0)
    # A hold outlives any model call; if metering dies mid-call the ledger frees it by itself.
    hold_ttl_s: int = Field(default=120, gt=0)
    default_max_output_tokens: int = Field(default=1024, gt=0)
    max_output_tokens: int = Field(default=4096, gt=0)
    model_timeout_s: float = Field(default=60.0, gt=0)
    # Pins one rate card version; unset, the newest card already in effect is used.
    rate_card_version: str | None = None
