"""The migration runner against the real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from billing_cli.stack import Stack
from billing_platform.db import MigrationError, load_migrations, migrate, migrate_package


async def test_applies_once_then_nothing(stack: Stack, schema: str) -> None:
    first = await migrate_package(stack.postgres.dsn, schema, "ledger")
    assert first == [m.name for m in load_migrations("ledger")]
    assert await migrate_package(stack.postgres.dsn, schema, "ledger") == []
    conn = await asyncpg.connect(stack.postgres.dsn)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
    finally:
        await conn.close()
    assert {"schema_migrations", "inbox"} <= {r["table_name"] for r in tables}


async def test_concurrent_runs_apply_each_migration_once(stack: Stack, schema: str) -> None:
    runs = await asyncio.gather(
        *(migrate_package(stack.postgres.dsn, schema, "ledger") for _ in range(4))
    )
    assert sorted(len(r) for r in runs) == [0, 0, 0, len(load_migrations("ledger"))]


async def test_an_applied_migration_that_changed_is_refused(stack: Stack, schema: str) -> None:
    await migrate_package(stack.postgres.dsn, schema, "ledger")
    conn = await asyncpg.connect(stack.postgres.dsn)
    try:
        await conn.execute(f'UPDATE "{schema}".schema_migrations SET checksum = $1', "edited")
        with pytest.raises(MigrationError, match="was modified"):
            await migrate(conn, schema, load_migrations("ledger"))
    finally:
        await conn.close()
