"""A service's pool on the real PostgreSQL: its connections are open from the start."""

from __future__ import annotations

import uuid

import asyncpg
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


async def test_the_pool_opens_its_minimum_at_start(stack: Stack) -> None:
    schema = f"pool_{uuid.uuid4().hex[:8]}"  # only names the connections here
    db = Database(stack.postgres.dsn, schema, 3, 5)
    await db.start()
    try:
        assert await _backends(stack.postgres.dsn, schema) == 3
    finally:
        await db.stop()
    assert await _backends(stack.postgres.dsn, schema) == 0


async def test_a_minimum_above_the_maximum_opens_the_maximum(stack: Stack) -> None:
    schema = f"pool_{uuid.uuid4().hex[:8]}"
    db = Database(stack.postgres.dsn, schema, 10, 4)
    await db.start()
    try:
        assert await _backends(stack.postgres.dsn, schema) == 4
    finally:
        await db.stop()
