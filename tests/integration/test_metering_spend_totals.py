"""The per-user spend totals the caps read (metering's migration 0007), on the real
PostgreSQL: guard_state's sums from them equal the sums over the usage records they
replaced, at the edges of the UTC day and of the rolling hour's first minute."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from billing_cli.stack import Stack
from billing_platform.db import Database, load_migrations, migrate
from metering import guardrails, repository

# A moment that is not on a minute's edge, so the rolling hour starts inside a minute.
NOW = datetime(2026, 11, 26, 14, 37, 21, 500_000, tzinfo=UTC)
HOUR_START = NOW - guardrails.WINDOW
DAY_START = guardrails.day_start(NOW)
US = timedelta(microseconds=1)
RecordCharge = Callable[..., Awaitable[None]]


@pytest.fixture
async def metering(migrated_db: Any) -> Database:
    db: Database = await migrated_db(f"t_{uuid.uuid4().hex[:12]}", "metering")
    return db


async def sums(db: Database, user: str) -> tuple[int, int]:
    """(charged today, charged in the last hour) as guard_state reads them."""
    async with db.pool.acquire() as conn:
        row = await repository.guard_state(conn, user, DAY_START, HOUR_START, NOW)
    return row["charged_today"], row["charged_last_hour"]


async def summed_over_records(db: Database, user: str) -> tuple[int, int]:
    """The same two sums over the records, as guard_state computed them before 0007."""
    row = await db.pool.fetchrow(
        "SELECT coalesce(sum(charged_millicredits) FILTER (WHERE created_at >= $2), 0) AS day,"
        " coalesce(sum(charged_millicredits) FILTER (WHERE created_at > $3), 0) AS hour"
        " FROM usage_records WHERE user_id = $1 AND mode = 'charged'",
        user,
        DAY_START,
        HOUR_START,
    )
    return row["day"], row["hour"]


async def test_the_sums_match_the_records_at_every_edge(
    metering: Database, record_charge: RecordCharge
) -> None:
    user = "edges"
    minute = HOUR_START.replace(second=0, microsecond=0)
    moments = {
        1: DAY_START - US,  # yesterday's last instant: not today
        2: DAY_START,  # today's first: today
        4: HOUR_START - US,  # before the hour, in its first minute
        8: HOUR_START,  # the hour is after its start: not in it
        16: HOUR_START + US,
        32: minute - US,  # the minute before
        64: minute + timedelta(minutes=1),  # the next minute's first instant
        128: minute + timedelta(minutes=1) - US,  # the first minute's last
        256: NOW - timedelta(minutes=5),
        512: NOW,
    }
    for amount, at in moments.items():
        await record_charge(metering, user, amount, at)
    await record_charge(metering, user, 1024, NOW, mode="shadow")  # only charged records count

    assert await sums(metering, user) == await summed_over_records(metering, user)
    today, hour = await sums(metering, user)
    assert today == 1023 - 1  # all but yesterday's
    assert hour == 16 + 64 + 128 + 256 + 512


async def test_rows_no_check_reads_are_dropped_when_a_new_one_starts(
    metering: Database, record_charge: RecordCharge
) -> None:
    user = "pruned"
    for at in (NOW - timedelta(days=3), NOW - timedelta(days=1), NOW - timedelta(hours=3), NOW):
        await record_charge(metering, user, 10, at)

    days = await metering.pool.fetch(
        "SELECT day FROM spend_days WHERE user_id = $1 ORDER BY day", user
    )
    minutes = await metering.pool.fetchval(
        "SELECT count(*) FROM spend_minutes WHERE user_id = $1", user
    )
    assert [r["day"] for r in days] == [(NOW - timedelta(days=1)).date(), NOW.date()]
    assert minutes == 1  # NOW's: each new minute dropped those over two hours before it
    assert await sums(metering, user) == await summed_over_records(metering, user)


async def test_concurrent_records_of_one_user_all_count(
    metering: Database, record_charge: RecordCharge
) -> None:
    user = "busy"

    async def many(n: int) -> None:
        for _ in range(n):
            await record_charge(metering, user, 3, datetime.now(UTC))

    await asyncio.gather(*(many(25) for _ in range(4)))

    row = await metering.pool.fetchrow(
        "SELECT (SELECT sum(charged_millicredits) FROM spend_days WHERE user_id = $1) AS days,"
        " (SELECT sum(charged_millicredits) FROM spend_minutes WHERE user_id = $1) AS minutes",
        user,
    )
    assert (row["days"], row["minutes"]) == (300, 300)


async def test_the_migration_counts_the_records_made_before_it(
    stack: Stack, schema: str, record_charge: RecordCharge
) -> None:
    conn = await asyncpg.connect(stack.postgres.dsn)
    try:
        before = [m for m in load_migrations("metering") if m.version < 7]
        await migrate(conn, schema, before)
        db = Database(stack.postgres.dsn, schema, 1, 2)
        await db.start()
        try:
            now = datetime.now(UTC)
            for amount, at in [(5, now - timedelta(minutes=10)), (7, now - timedelta(hours=5))]:
                await record_charge(db, "earlier", amount, at)
            await migrate(conn, schema, load_migrations("metering"))
            totals = await db.pool.fetchrow(
                "SELECT (SELECT sum(charged_millicredits) FROM spend_days) AS days,"
                " (SELECT sum(charged_millicredits) FROM spend_minutes) AS minutes"
            )
        finally:
            await db.stop()
    finally:
        await conn.close()
    assert totals["days"] == 12  # today's and yesterday's rows
    assert totals["minutes"] == 5  # the five-hour-old one is past any rolling hour
