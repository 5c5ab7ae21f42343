"""The outbox relay's pace, on the real PostgreSQL and broker: at most one publishing cycle
per linger, so rows written during a cycle's linger share the next produce request, and a
row written after a quiet spell is not held back.

Rows published by one cycle are marked by one statement, so they share its ``published_at``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
from billing_events.kafka import KafkaPublisher
from billing_events.outbox import OutboxRelay, write_outbox
from billing_events.topics import Topics
from billing_platform.db import Database


async def _write(db: Database, relay: OutboxRelay, topic: str) -> int:
    async with db.pool.acquire() as conn, conn.transaction():
        row_id = await write_outbox(conn, topic, "k", uuid.uuid4().bytes)
    relay.poke()
    return row_id


async def _published(db: Database, ids: list[int], within_s: float = 30) -> list[object]:
    deadline = time.monotonic() + within_s
    while True:
        rows = await db.pool.fetch(
            "SELECT published_at FROM outbox WHERE id = ANY($1::bigint[]) ORDER BY id", ids
        )
        if all(r["published_at"] is not None for r in rows):
            return [r["published_at"] for r in rows]
        assert time.monotonic() < deadline, "the relay never published the rows"
        await asyncio.sleep(0.05)


async def test_rows_written_during_a_linger_share_the_next_cycle(
    namespace: Topics, migrated_db: Any, publisher: KafkaPublisher
) -> None:
    db = await migrated_db(f"t_{uuid.uuid4().hex[:12]}", "metering")
    relay = OutboxRelay(db, publisher, linger_s=1.0)
    await relay.start()
    try:
        first = await _write(db, relay, namespace.usage)
        (first_at,) = await _published(db, [first])
        rest = [await _write(db, relay, namespace.usage) for _ in range(5)]
        rest_at = await _published(db, rest)
    finally:
        await relay.stop()
    assert len(set(rest_at)) == 1, "the five rows took more than one cycle"
    assert rest_at[0] > first_at  # type: ignore[operator]


async def test_a_row_after_a_quiet_spell_is_not_held_back(
    namespace: Topics, migrated_db: Any, publisher: KafkaPublisher
) -> None:
    db = await migrated_db(f"t_{uuid.uuid4().hex[:12]}", "metering")
    relay = OutboxRelay(db, publisher, linger_s=3.0)
    await relay.start()
    try:
        await asyncio.sleep(3.5)  # longer than a linger since the relay's first cycle
        row = await _write(db, relay, namespace.usage)
        (published_at,) = await _published(db, [row])
        created_at = await db.pool.fetchval("SELECT created_at FROM outbox WHERE id = $1", row)
    finally:
        await relay.stop()
    assert published_at - created_at < timedelta(seconds=3)  # type: ignore[operator]


async def test_a_steady_stream_notifies_about_once_a_cycle_and_is_all_published(
    namespace: Topics, migrated_db: Any, publisher: KafkaPublisher
) -> None:
    """Metering's outbox notifies only when no older row waits (``OUTBOX_QUIET_NOTIFY_DDL``).
    With the idle poll out of reach, only the notifications and the relay's own look after
    each linger can publish the rows."""
    db = await migrated_db(f"t_{uuid.uuid4().hex[:12]}", "metering")
    heard: list[str] = []
    listener = await asyncpg.connect(db.dsn)
    await listener.add_listener(f"{db.schema}.outbox", lambda *args: heard.append(args[2]))
    relay = OutboxRelay(db, publisher, linger_s=0.3, idle_poll_s=60)
    await relay.start()
    try:
        ids = []
        for _ in range(15):
            async with db.pool.acquire() as conn, conn.transaction():
                ids.append(await write_outbox(conn, namespace.usage, "k", b"x"))
            await asyncio.sleep(0.1)
        published_at = await _published(db, ids, within_s=10)
    finally:
        await relay.stop()
        await listener.close()
    cycles = len(set(published_at))
    assert cycles < len(ids)
    assert 1 <= len(heard) <= cycles
