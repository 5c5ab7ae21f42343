"""Wiring, settings and migrations: built without touching the network or a database."""

from __future__ import annotations

import re
from typing import Any

import pytest
from billing_events import wiring
from billing_events.outbox import OUTBOX_DDL
from billing_platform.db import load_migrations
from billing_platform.settings import InfraSettings
from reconciler import checks
from reconciler.main import create_app, run_context, schemas_of
from reconciler.settings import Settings


def test_the_app_serves_the_reconciliation_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    # A real producer needs a running loop and warns when collected unclosed.
    monkeypatch.setattr(wiring, "publisher_for", lambda _settings: object())
    app = create_app(Settings(infra=InfraSettings()))

    paths = {getattr(route, "path", "") for route in app.routes}
    assert {"/api/admin/reconcile", "/api/admin/reconciliation/latest", "/readyz"} <= paths


@pytest.mark.parametrize(
    ("name", "default"),
    [
        ("port", 8105),
        ("db_schema", "reconciler"),
        ("ledger_schema", "ledger"),
        ("metering_schema", "metering"),
        ("webhook_schema", "webhook_ingest"),
        ("checkout_schema", "checkout"),
        ("schedule_interval_s", 86_400.0),
        ("lag_grace_s", 300.0),
        ("chain_settle_s", 300.0),
    ],
)
def test_settings_defaults(name: str, default: Any) -> None:
    assert Settings.model_fields[name].default == default


def test_settings_are_read_under_the_reconciler_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILER_LEDGER_SCHEMA", "ledger_blue")
    monkeypatch.setenv("RECONCILER_SCHEDULE_INTERVAL_S", "0")

    settings = Settings(infra=InfraSettings())

    assert settings.ledger_schema == "ledger_blue"
    assert settings.schedule_interval_s == 0
    assert schemas_of(settings).ledger == "ledger_blue"


def test_a_schema_name_that_is_not_an_identifier_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        Settings(infra=InfraSettings(), metering_schema='metering"; DROP TABLE x; --')


def test_the_run_has_every_check_in_order() -> None:
    ctx = run_context(Settings(infra=InfraSettings()))

    assert [c.name for c in ctx.checks] == [c.name for c in checks.all_checks(300.0)]
    assert ctx.topics.alerts == "billing.alerts.v1"


def test_migrations_are_found_in_the_package() -> None:
    assert [m.name for m in load_migrations("reconciler")] == [
        "0001_read_model.sql",
        "0002_runs.sql",
        "0003_journal_chain.sql",
        "0004_outbox.sql",
        "0005_forwarded_alerts.sql",
        "0006_no_inbox.sql",
        "0007_outbox_published.sql",
    ]


def test_the_outbox_ddl_is_copied_verbatim() -> None:
    sql = load_migrations("reconciler")[3].sql

    assert " ".join(OUTBOX_DDL.split()) in " ".join(sql.split())


def test_tables_are_not_schema_qualified() -> None:
    # The runner sets search_path to the service's schema; names must follow it.
    qualified = re.compile(r"(?<![\w.])(reconciler|ledger|metering|checkout|webhook_ingest)\.")
    for migration in load_migrations("reconciler"):
        code = re.sub(r"--[^\n]*|'[^']*'", "", migration.sql)
        assert not qualified.search(code), migration.name
