"""A service's pool on the real PostgreSQL: its connections are open from the start."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from billing_cli.stack import Stack
from billing_platform.db import Database


async def _backends(dsn: str, schema: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", schema
        )
        return count
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("min_size", "max_size", "opened"),
    [(3, 5, 3), (10, 4, 4)],  # a minimum above the maximum opens the maximum
)
async def test_the_pool_opens_its_minimum_at_start(
    stack: Stack, min_size: int, max_size: int, opened: int
) -> None:
    schema = f"pool_{uuid.uuid4().hex[:8]}"  # only names the connections here
    db = Database(stack.postgres.dsn, schema, min_size, max_size)
    await db.start()
    try:
        assert await _backends(stack.postgres.dsn, schema) == opened
    finally:
        await db.stop()
    assert await _backends(stack.postgres.dsn, schema) == 0
