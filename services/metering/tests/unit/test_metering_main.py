"""Wiring, settings and migrations: built without touching the network or a database."""

from __future__ import annotations

from typing import Any

import pytest
from billing_events import wiring
from billing_events.outbox import OUTBOX_DDL
from billing_platform.db import load_migrations
from billing_platform.settings import InfraSettings
from metering.guardrails import Caps
from metering.main import create_app, default_caps
from metering.records import UsageRecord
from metering.settings import Settings


def test_the_app_serves_the_metering_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real producer needs a running loop and warns when collected unclosed.
    monkeypatch.setattr(wiring, "publisher_for", lambda _settings: object())
    app = create_app(Settings(infra=InfraSettings()))

    paths = {getattr(route, "path", "") for route in app.routes}
    assert {
        "/api/rate-card",
        "/api/ai/chat",
        "/api/usage/reconcile",
        "/api/usage",
        "/api/admin/caps/{userId}",
        "/api/admin/users/{userId}/pause",
        "/api/admin/users/{userId}/resume",
        "/api/admin/review-flags",
        "/readyz",
    } <= paths


def test_a_pin_to_an_unknown_rate_card_fails_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wiring, "publisher_for", lambda _settings: object())

    with pytest.raises(LookupError):
        create_app(Settings(infra=InfraSettings(), rate_card_version="1999-01-01"))


@pytest.mark.parametrize(
    ("name", "default"),
    [
        ("ledger_url", "http://127.0.0.1:8103"),
        ("hold_ttl_s", 120),
        ("default_max_output_tokens", 512),
        ("max_output_tokens", 4096),
        ("model_timeout_s", 60.0),
        ("rate_card_version", None),
        ("port", 8104),
        ("db_schema", "metering"),
        ("checkout_schema", "checkout"),
        ("switch_cache_s", 1.0),
        ("cap_per_request_millicredits", 50_000),
        ("cap_per_day_millicredits", 500_000),
        ("cap_per_hour_millicredits", 100_000),
    ],
)
def test_settings_defaults(name: str, default: Any) -> None:
    assert Settings.model_fields[name].default == default


def test_settings_are_read_under_the_metering_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERING_LEDGER_TOKEN", "jwt-abc")
    monkeypatch.setenv("METERING_HOLD_TTL_S", "30")
    monkeypatch.setenv("METERING_RATE_CARD_VERSION", "2026-11-01")

    settings = Settings()

    assert settings.ledger_token.get_secret_value() == "jwt-abc"
    assert "jwt-abc" not in repr(settings)
    assert (settings.hold_ttl_s, settings.rate_card_version) == (30, "2026-11-01")


def test_caps_and_switches_are_read_under_the_metering_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("METERING_CAP_PER_DAY_MILLICREDITS", "1000")
    monkeypatch.setenv("METERING_CHECKOUT_SCHEMA", "checkout_blue")
    monkeypatch.setenv("METERING_SWITCH_CACHE_S", "0.25")

    settings = Settings()

    assert default_caps(settings) == Caps(per_request=50_000, per_day=1000, per_hour=100_000)
    assert (settings.checkout_schema, settings.switch_cache_s) == ("checkout_blue", 0.25)


def test_a_checkout_schema_that_is_not_a_plain_name_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("METERING_CHECKOUT_SCHEMA", 'checkout"; DROP TABLE x; --')

    with pytest.raises(ValueError, match="invalid schema name"):
        Settings()


def _normalised(sql: str) -> str:
    return " ".join(sql.split())


def _all_migrations() -> str:
    return _normalised(" ".join(m.sql for m in load_migrations("metering")))


def test_the_migrations_are_in_order() -> None:
    assert [m.name for m in load_migrations("metering")] == [
        "0001_usage.sql",
        "0002_guardrails.sql",
        "0003_rate_limits.sql",
        "0004_admission.sql",
        "0005_settlement.sql",
        "0006_admission_static_hold.sql",
        "0007_spend_totals.sql",
        "0008_outbox_quiet_notify.sql",
        "0009_generic_plans.sql",
        "0010_outbox_published.sql",
        "0011_inlined_guard_reads.sql",
        "0012_usage_ids_in_claims.sql",
        "0013_outbox_notify_by_index.sql",
    ]


def test_the_outbox_ddl_is_copied_verbatim() -> None:
    first = load_migrations("metering")[0]

    assert _normalised(OUTBOX_DDL) in _normalised(first.sql)


def test_usage_records_keep_every_field_of_a_record() -> None:
    sql = _all_migrations()

    assert "CREATE TABLE usage_records (" in sql
    assert "usage_id uuid PRIMARY KEY" in sql
    assert "UNIQUE (user_id, idempotency_key)" in sql
    for column in UsageRecord.__dataclass_fields__:
        assert f" {column} " in sql, column


def test_the_guardrail_tables_exist() -> None:
    sql = _all_migrations()

    for table in (
        "user_caps",
        "inflight_charges",
        "user_pauses",
        "review_flags",
        "shadow_charges",
        "guardrail_changes",
    ):
        assert f"CREATE TABLE {table} (" in sql, table
    shadow = sql.split("CREATE TABLE shadow_charges (")[1].split(");")[0]
    assert " charged_millicredits bigint NOT NULL" in shadow  # read by the shadow totals


def test_tables_are_not_schema_qualified() -> None:
    assert "metering." not in _all_migrations()
