"""Settings shared by every service.

Infrastructure every service talks to (database, broker, JWT keys) is read once under the
``BILLING_`` prefix so one ``billing env`` output configures the whole platform; what is
particular to a service (its port, its schema) lives under that service's own prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class InfraSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    database_url: str = "postgresql://billing@127.0.0.1:15432/billing"
    kafka_bootstrap: str = "127.0.0.1:19092"
    # Prefix for every topic name, so several environments or test runs can share a broker.
    topic_namespace: str = ""
    jwt_public_keys: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    jwt_issuer: str = "billing-dev"
    jwt_audience: str = "billing-platform"
    # How recent the second factor must be for money-moving admin actions (step-up MFA).
    mfa_max_age_s: int = Field(default=900, ge=0)
    log_level: str = "INFO"
    # Web origins allowed to call the browser-facing services (checkout, ledger, metering);
    # comma-separated. Empty: no cross-origin grants at all.
    cors_allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    environment: str = "dev"
    # OTLP/HTTP base URL (``/v1/traces`` is appended); empty: no spans leave the process.
    otel_exporter_otlp_endpoint: str = ""
    # Share of new traces kept when exporting (OTEL_TRACES_SAMPLER_ARG's meaning); a trace
    # continued from a caller or a Kafka record follows the caller's decision.
    otel_traces_sampler_arg: float = Field(default=1.0, ge=0.0, le=1.0)
    # External APIs. Base URLs point at stripe-mock and the dev model server locally.
    stripe_api_key: SecretStr = SecretStr("")
    stripe_api_base: str = "https://api.stripe.com"
    # Several secrets are accepted at once so a signing secret can be rotated without loss.
    stripe_webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: SecretStr = SecretStr("")

    @field_validator(
        "jwt_public_keys", "stripe_webhook_secrets", "cors_allowed_origins", mode="before"
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        # Plain comma-separated env values, rather than JSON arrays, for list settings.
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value


class ServiceSettings(BaseSettings):
    """Base for each service's ``Settings``; subclasses set their own ``env_prefix``."""

    model_config = SettingsConfigDict(extra="ignore")

    service_name: str = "service"
    host: str = "127.0.0.1"
    port: int = 8100
    db_schema: str = "public"
    # Least privilege: `serve` connects as a runtime role that may only read and write rows,
    # `migrate` as the role that owns the schema. Either falls back to BILLING_DATABASE_URL,
    # so a single-role setup still needs only that one.
    database_url: str = ""
    migrate_database_url: str = ""
    # The role `migrate` gives the runtime rights to; unset, the user in `database_url`.
    db_runtime_role: str = ""
    db_pool_min: int = 2
    db_pool_max: int = 10
    readiness_timeout_s: float = 2.0
    # How long the broker may hold a fetch to fill it (Kafka's fetch.wait.max.ms): records
    # reach the consumer up to this much later, in fewer, larger batches. 0: at once.
    consumer_linger_ms: int = Field(default=0, ge=0, le=5000)
    # The outbox relay publishes at most once per this interval: under load, the rows written
    # meanwhile share the next cycle's statements and produce requests (one per partition;
    # the broker's work is per request); a row after a quiet spell goes at once. 0: no pause.
    outbox_linger_ms: int = Field(default=0, ge=0, le=5000)
    # Only a cycle that published at least this many rows is followed by the linger: below,
    # the relay is not busy, and the next row goes as soon as it is written.
    outbox_linger_rows: int = Field(default=1, ge=1)
    infra: InfraSettings = Field(default_factory=InfraSettings)

    @property
    def runtime_dsn(self) -> str:
        return self.database_url or self.infra.database_url

    @property
    def migrate_dsn(self) -> str:
        return self.migrate_database_url or self.infra.database_url

    @property
    def runtime_role(self) -> str:
        return self.db_runtime_role or unquote(urlsplit(self.runtime_dsn).username or "")
