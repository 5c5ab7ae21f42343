"""The service's migrations: its own tables, and the outbox exactly as billing_events wants it."""

from __future__ import annotations

from billing_events.outbox import OUTBOX_DDL
from billing_platform.db import load_migrations


def _normalised(sql: str) -> str:
    return " ".join(sql.split())


def test_migrations_are_found_in_the_package() -> None:
    assert [m.name for m in load_migrations("webhook_ingest")] == [
        "0001_stripe_events.sql",
        "0002_outbox_published.sql",
    ]


def test_the_outbox_ddl_is_copied_verbatim() -> None:
    sql = load_migrations("webhook_ingest")[0].sql

    assert _normalised(OUTBOX_DDL) in _normalised(sql)


def test_the_event_store_is_unique_by_stripe_event_id() -> None:
    sql = _normalised(load_migrations("webhook_ingest")[0].sql)

    assert "CREATE TABLE stripe_events (" in sql
    assert "event_id text PRIMARY KEY" in sql
    assert "payload bytea NOT NULL" in sql


def test_tables_are_not_schema_qualified() -> None:
    # The runner sets search_path to the service's schema; names must follow it.
    assert "webhook_ingest." not in load_migrations("webhook_ingest")[0].sql
