"""Every service that owns an outbox creates it with the relay's DDL, word for word.

Each service owns its schema and migrations, so the DDL is copied into them; this keeps
the copies from drifting away from what ``OutboxRelay`` reads and writes.
"""

from __future__ import annotations

import re
from pathlib import Path

from billing_events.outbox import OUTBOX_DDL, OUTBOX_PUBLISHED_DDL, OUTBOX_QUIET_NOTIFY_DDL

ROOT = Path(__file__).resolve().parents[4]


def squeeze(sql: str) -> str:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


def migrations_creating(table: str) -> list[Path]:
    found = ROOT.glob("services/*/src/*/migrations/*.sql")
    return [p for p in found if f"CREATE TABLE {table} (" in p.read_text()]


def outbox_migrations() -> list[Path]:
    return migrations_creating("outbox")


def published_migrations() -> list[Path]:
    return migrations_creating("outbox_published")


def test_the_services_that_publish_through_an_outbox_have_one() -> None:
    owners = {p.parts[p.parts.index("services") + 1] for p in outbox_migrations()}
    assert {"webhook-ingest", "ledger", "metering", "reconciler", "checkout"} <= owners


def test_each_copy_matches_the_relay_ddl() -> None:
    for migration in outbox_migrations():
        assert squeeze(OUTBOX_DDL) in squeeze(migration.read_text()), migration


def test_each_outbox_moves_what_it_published_to_a_table_of_the_relay_ddl() -> None:
    owners = {p.parts[p.parts.index("services") + 1] for p in outbox_migrations()}
    moved = {p.parts[p.parts.index("services") + 1]: p for p in published_migrations()}
    assert set(moved) == owners
    for migration in moved.values():
        assert squeeze(OUTBOX_PUBLISHED_DDL) in squeeze(migration.read_text()), migration


def test_the_outboxes_of_the_hot_paths_notify_only_when_quiet() -> None:
    migrations = {
        "metering": ROOT
        / "services/metering/src/metering/migrations/0013_outbox_notify_by_index.sql",
        "ledger": ROOT / "services/ledger/src/ledger/migrations/0018_outbox_notify_by_index.sql",
    }
    for migration in migrations.values():
        sql = (ROOT / migration).read_text()
        assert squeeze(OUTBOX_QUIET_NOTIFY_DDL) in squeeze(sql), migration
