"""The outbox relay's pace, on the real PostgreSQL and broker: at most one publishing cycle
per linger, so rows written during a cycle's linger share the next produce request, and a
row written after a quiet spell is not held back.

Rows published by one cycle are moved to ``outbox_published`` by one statement, so they
share its ``published_at``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from billing_events.kafka import KafkaPublisher
from billing_events.outbox import OutboxRelay, write_outbox
from billing_events.topics import Topics
from billing_platform.db import Database


# Ask for ``namespace`` before this: it runs its own event loop to completion.
@pytest.fixture
async def db(migrated_db: Any) -> Database:
    """A scratch schema with metering's migrations: its outbox notifies only when quiet."""
    database: Database = await migrated_db(f"t_{uuid.uuid4().hex[:12]}", "metering")
    return database


@contextlib.asynccontextmanager
async def relaying(
    db: Database,
    publisher: KafkaPublisher,
    linger_s: float,
    idle_poll_s: float = 1.0,
    linger_rows: int = 1,
) -> AsyncIterator[OutboxRelay]:
    relay = OutboxRelay(
        db, publisher, linger_s=linger_s, idle_poll_s=idle_poll_s, linger_rows=linger_rows
    )
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


async def _write(db: Database, relay: OutboxRelay, topic: str, rows: int = 1) -> int:
    """``rows`` rows in one transaction; the id of the last."""
    async with db.pool.acquire() as conn, conn.transaction():
        for _ in range(rows):
            row_id = await write_outbox(conn, topic, "k", uuid.uuid4().bytes)
    relay.poke()
    return row_id


async def _delay(db: Database, row: int) -> timedelta:
    """How long the row waited between its transaction and its publishing."""
    (published_at,) = await _published(db, [row])
    created_at = await db.pool.fetchval(
        "SELECT created_at FROM outbox_published WHERE id = $1", row
    )
    delay: timedelta = published_at - created_at
    return delay


async def _published(db: Database, ids: list[int], within_s: float = 30) -> list[object]:
    deadline = time.monotonic() + within_s
    while True:
        rows = await db.pool.fetch(
            "SELECT published_at FROM outbox_published WHERE id = ANY($1::bigint[]) ORDER BY id",
            ids,
        )
        if len(rows) == len(ids):
            return [r["published_at"] for r in rows]
        assert time.monotonic() < deadline, "the relay never published the rows"
        await asyncio.sleep(0.05)


async def test_rows_written_during_a_linger_share_the_next_cycle(
    namespace: Topics, db: Database, publisher: KafkaPublisher
) -> None:
    async with relaying(db, publisher, linger_s=1.0) as relay:
        first = await _write(db, relay, namespace.usage)
        (first_at,) = await _published(db, [first])
        rest = [await _write(db, relay, namespace.usage) for _ in range(5)]
        rest_at = await _published(db, rest)
    assert len(set(rest_at)) == 1, "the five rows took more than one cycle"
    assert rest_at[0] > first_at  # type: ignore[operator]


async def test_a_row_after_a_quiet_spell_is_not_held_back(
    namespace: Topics, db: Database, publisher: KafkaPublisher
) -> None:
    async with relaying(db, publisher, linger_s=3.0) as relay:
        await asyncio.sleep(3.5)  # longer than a linger since the relay's first cycle
        row = await _write(db, relay, namespace.usage)
        (published_at,) = await _published(db, [row])
        created_at = await db.pool.fetchval(
            "SELECT created_at FROM outbox_published WHERE id = $1", row
        )
    assert published_at - created_at < timedelta(seconds=3)


async def test_a_steady_stream_notifies_about_once_a_cycle_and_is_all_published(
    namespace: Topics, db: Database, publisher: KafkaPublisher
) -> None:
    """Metering's outbox notifies only when no older row waits (``OUTBOX_QUIET_NOTIFY_DDL``).
    With the idle poll out of reach, only the notifications and the relay's own look after
    each linger can publish the rows."""
    heard: list[str] = []
    listener = await asyncpg.connect(db.dsn)
    await listener.add_listener(f"{db.schema}.outbox", lambda *args: heard.append(args[2]))
    try:
        async with relaying(db, publisher, linger_s=0.3, idle_poll_s=60):
            ids = []
            for _ in range(15):
                async with db.pool.acquire() as conn, conn.transaction():
                    ids.append(await write_outbox(conn, namespace.usage, "k", b"x"))
                await asyncio.sleep(0.1)
            published_at = await _published(db, ids, within_s=10)
    finally:
        await listener.close()
    cycles = len(set(published_at))
    assert cycles < len(ids)
    assert 1 <= len(heard) <= cycles


async def test_only_a_busy_cycle_is_followed_by_the_linger(
    namespace: Topics, db: Database, publisher: KafkaPublisher
) -> None:
    """With ``linger_rows`` 3, cycles of one row do not hold the next row back; a cycle of
    three does."""
    async with relaying(db, publisher, linger_s=2.0, linger_rows=3) as relay:
        lone = [await _delay(db, await _write(db, relay, namespace.usage)) for _ in range(3)]
        await _delay(db, await _write(db, relay, namespace.usage, rows=3))
        after_busy = await _delay(db, await _write(db, relay, namespace.usage))
    assert max(lone) < timedelta(seconds=1)
    assert after_busy > timedelta(seconds=1)


async def test_published_rows_leave_the_outbox_and_the_retention_drops_them(
    namespace: Topics, db: Database, publisher: KafkaPublisher
) -> None:
    """A published row leaves the outbox (so its index of waiting rows holds no dead entries
    of it), rows an earlier release marked in place move at the next prune with their mark,
    and published rows past the retention go."""
    async with relaying(db, publisher, linger_s=0.0) as relay:
        relayed = await _write(db, relay, namespace.usage)
        await _published(db, [relayed])
    async with db.pool.acquire() as conn:
        marked = await write_outbox(conn, namespace.usage, "k", b"marked")
        await conn.execute(
            "UPDATE outbox SET published_at = now() - interval '8 days' WHERE id = $1", marked
        )
        recent = await write_outbox(conn, namespace.usage, "k", b"recent")
        await conn.execute("UPDATE outbox SET published_at = now() WHERE id = $1", recent)
        waiting = await write_outbox(conn, namespace.usage, "k", b"waiting")
        await OutboxRelay(db, publisher, retention_days=7).prune(conn)
        left = [r["id"] for r in await conn.fetch("SELECT id FROM outbox ORDER BY id")]
        kept = [r["id"] for r in await conn.fetch("SELECT id FROM outbox_published ORDER BY id")]
    assert relayed not in left
    assert left == [waiting]
    assert kept == [relayed, recent]  # the one marked 8 days ago is past the retention
