"""What an outbox's published rows cost its relay and its writers until a vacuum.

A relay marks the rows it published (``published_at``); a marked row's entry in the index
of unpublished rows (``outbox_unpublished``) stays, dead, until the table is vacuumed. The
relay's look for the oldest unpublished rows and the quiet-notify check of every writer
walk that index from its start, so over those dead entries. This creates the outbox with
``OUTBOX_DDL`` in a scratch schema of the dev stack's PostgreSQL, autovacuum off for it,
publishes N rows, and times both statements with one row waiting; then again after a
VACUUM.

Run: ``./scripts/run python bench/outbox_dead_entries.py [--counts 0,10000,100000,500000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg
from billing_events.outbox import OUTBOX_DDL
from pipeline import dev_postgres

SCHEMA = "bench_outbox_dead"
# The relay's read and the quiet-notify check, as billing_events.outbox runs them.
RELAY_READ = "SELECT id, topic FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 500"
QUIET_CHECK = (
    "SELECT NOT EXISTS (SELECT 1 FROM outbox WHERE published_at IS NULL AND id < 1000000000000)"
)
REPEATS = 200


async def mean_us(conn: asyncpg.Connection, sql: str) -> float:
    await conn.fetch(sql)  # the first walk marks the dead entries, as a relay's would
    started = time.perf_counter()
    for _ in range(REPEATS):
        await conn.fetch(sql)
    return (time.perf_counter() - started) / REPEATS * 1e6


async def publish_up_to(conn: asyncpg.Connection, total: int) -> None:
    """``total`` published rows since the last vacuum, and one row waiting."""
    have = await conn.fetchval("SELECT count(*) FROM outbox")
    await conn.execute(
        "INSERT INTO outbox (topic, payload) SELECT 't', '\\x00' FROM generate_series(1, $1)",
        max(total - have, 0),
    )
    await conn.execute("UPDATE outbox SET published_at = now() WHERE published_at IS NULL")
    await conn.execute("INSERT INTO outbox (topic, payload) VALUES ('t', '\\x01')")


async def report(conn: asyncpg.Connection, label: str) -> None:
    relay, check = await mean_us(conn, RELAY_READ), await mean_us(conn, QUIET_CHECK)
    print(f"{label:<34} {relay:>12.1f} {check:>12.1f}")


async def run(dsn: str, counts: list[int]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}")
        await conn.execute(f"SET search_path = {SCHEMA}")
        await conn.execute(OUTBOX_DDL)
        await conn.execute("ALTER TABLE outbox SET (autovacuum_enabled = false)")
        print(f"{'published rows since the last vacuum':<34} {'relay us':>12} {'check us':>12}")
        for total in counts:
            await publish_up_to(conn, total)
            await report(conn, f"{total:,}")
        await conn.execute("VACUUM outbox")
        await report(conn, "after VACUUM")
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="0,10000,100000,500000")
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.counts.split(","))
    with dev_postgres() as postgres:
        asyncio.run(run(postgres.dsn, counts))


if __name__ == "__main__":
    main()
