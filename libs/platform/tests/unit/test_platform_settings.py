"""Shared infrastructure settings and per-service settings from the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from billing_platform.settings import InfraSettings, ServiceSettings
from ledger.settings import Settings as LedgerSettings
from pydantic import SecretStr


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from an environment without any of our prefixes."""
    for name in list(os.environ):
        if name.startswith(("BILLING_", "LEDGER_", "CHECKOUT_")):
            monkeypatch.delenv(name)


def test_infra_defaults_without_env() -> None:
    infra = InfraSettings()

    assert infra.jwt_public_keys == []
    assert infra.stripe_webhook_secrets == []
    assert infra.topic_namespace == ""
    assert infra.stripe_api_key.get_secret_value() == ""


def test_infra_reads_billing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_DATABASE_URL", "postgresql://u@db:5432/x")
    monkeypatch.setenv("BILLING_KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("BILLING_TOPIC_NAMESPACE", "run42")
    monkeypatch.setenv("BILLING_JWT_ISSUER", "iss-x")
    monkeypatch.setenv("BILLING_LOG_LEVEL", "DEBUG")

    infra = InfraSettings()

    assert infra.database_url == "postgresql://u@db:5432/x"
    assert infra.kafka_bootstrap == "kafka:9092"
    assert infra.topic_namespace == "run42"
    assert infra.jwt_issuer == "iss-x"
    assert infra.log_level == "DEBUG"


def test_unprefixed_env_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://wrong@elsewhere/db")

    assert InfraSettings().database_url != "postgresql://wrong@elsewhere/db"


def test_comma_separated_jwt_keys_become_a_list_of_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_JWT_PUBLIC_KEYS", "/keys/a.pem, /keys/b.pem,")

    assert InfraSettings().jwt_public_keys == [Path("/keys/a.pem"), Path("/keys/b.pem")]


def test_comma_separated_webhook_secrets_become_secret_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BILLING_STRIPE_WEBHOOK_SECRETS", "whsec_old123,whsec_new456")

    secrets = InfraSettings().stripe_webhook_secrets

    assert all(isinstance(s, SecretStr) for s in secrets)
    assert [s.get_secret_value() for s in secrets] == ["whsec_old123", "whsec_new456"]


def test_secrets_are_secretstr_and_hidden_from_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_STRIPE_API_KEY", "sk_test_topsecret1")
    monkeypatch.setenv("BILLING_OPENAI_API_KEY", "sk-openai-topsecret2")
    monkeypatch.setenv("BILLING_STRIPE_WEBHOOK_SECRETS", "whsec_topsecret3")

    infra = InfraSettings()

    assert isinstance(infra.stripe_api_key, SecretStr)
    assert isinstance(infra.openai_api_key, SecretStr)
    assert infra.stripe_api_key.get_secret_value() == "sk_test_topsecret1"
    for text in (repr(infra), str(infra), repr(ServiceSettings(infra=infra))):
        assert "topsecret" not in text


def test_service_settings_read_their_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_PORT", "9103")
    monkeypatch.setenv("LEDGER_DB_POOL_MAX", "3")

    settings = LedgerSettings()

    assert settings.port == 9103
    assert settings.db_pool_max == 3
    assert settings.service_name == "ledger"
    assert settings.db_schema == "ledger"


def test_service_settings_ignore_another_services_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHECKOUT_PORT", "9999")
    monkeypatch.setenv("PORT", "9998")

    assert LedgerSettings().port == 8103


def test_service_settings_carry_infra_from_billing_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_KAFKA_BOOTSTRAP", "broker:1")

    assert LedgerSettings().infra.kafka_bootstrap == "broker:1"


def test_service_dsns_fall_back_to_the_shared_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILLING_DATABASE_URL", "postgresql://billing:pw@db:5432/billing")

    settings = LedgerSettings()

    assert settings.runtime_dsn == "postgresql://billing:pw@db:5432/billing"
    assert settings.migrate_dsn == "postgresql://billing:pw@db:5432/billing"
    assert settings.runtime_role == "billing"


def test_runtime_and_owner_dsns_are_read_under_the_service_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BILLING_DATABASE_URL", "postgresql://billing:pw@db:5432/billing")
    monkeypatch.setenv("LEDGER_DATABASE_URL", "postgresql://ledger%5Frt:a@db:5432/billing")
    monkeypatch.setenv("LEDGER_MIGRATE_DATABASE_URL", "postgresql://ledger_owner:b@db/billing")
    monkeypatch.setenv("CHECKOUT_DATABASE_URL", "postgresql://checkout_runtime:c@db/billing")

    settings = LedgerSettings()

    assert settings.runtime_dsn == "postgresql://ledger%5Frt:a@db:5432/billing"
    assert settings.migrate_dsn == "postgresql://ledger_owner:b@db/billing"
    assert settings.runtime_role == "ledger_rt"  # the DSN's user, percent-decoded


def test_an_explicit_runtime_role_wins_over_the_dsn_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_DATABASE_URL", "postgresql://pooler_user:a@pgbouncer/billing")
    monkeypatch.setenv("LEDGER_DB_RUNTIME_ROLE", "ledger_runtime")

    assert LedgerSettings().runtime_role == "ledger_runtime"
