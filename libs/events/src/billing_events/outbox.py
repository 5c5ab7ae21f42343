"""Transactional outbox: write a record in the caller's DB transaction, publish it later.

A service that must both change its tables and publish (webhook-ingest storing a verified
event, the ledger posting a transaction) writes the record to its ``outbox`` table in the
same transaction as the change. The relay publishes unpublished rows in id order and moves
them to ``outbox_published``, so a crash between commit and publish loses nothing (the row
is published on restart) and a broker outage only delays. Delivery is at least once: a
crash after the broker's ack and before the move publishes a row again, which consumers
absorb by key.

Every service using it creates the tables with the DDL in ``OUTBOX_DDL`` and
``OUTBOX_PUBLISHED_DDL`` (copied into its own migrations, since each service owns its
schema).

The relay never holds a row lock across the publish: one replica at a time relays, chosen
by a session advisory lock, and rows are read, published, then moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from billing_platform import context, tracing
from billing_platform.db import Database
from google.protobuf.message import Message
from prometheus_client import Counter, Gauge

from billing_events.kafka import CORRELATION_HEADER, KIND_HEADER, KafkaPublisher

log = logging.getLogger(__name__)

OUTBOX_DDL = """
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    topic        text NOT NULL,
    message_key  bytea,
    payload      bytea NOT NULL,
    headers      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
"""

# Published rows leave the outbox for this table, where the relay keeps them for its
# retention period. Marked and left in the outbox, each one kept a dead entry in the index
# of unpublished rows until the table was vacuumed, and the relay's read and every writer's
# quiet check walk that index from its start: 14 ms and 0.9-1.3 ms after 500,000 rows
# published since the last vacuum, against 0.13 and 0.11 ms (bench/outbox_dead_entries.py),
# and autovacuum waits until a fifth of a table is dead, on seven days of rows. An outbox
# that holds only what waits stays small, and autovacuum keeps up with it. No primary key:
# the rows come from the outbox's own, once each, and only the retention reads them by time.
OUTBOX_PUBLISHED_DDL = """
CREATE TABLE outbox_published (
    id           bigint NOT NULL,
    topic        text NOT NULL,
    message_key  bytea,
    payload      bytea NOT NULL,
    headers      jsonb NOT NULL,
    created_at   timestamptz NOT NULL,
    published_at timestamptz NOT NULL
);
CREATE INDEX outbox_published_at ON outbox_published (published_at);
"""


def _move_published(rows: str, published_at: str) -> str:
    """Move the outbox rows ``rows`` selects to outbox_published, published at ``published_at``
    (an expression over the moved row)."""
    return (
        f"WITH moved AS (DELETE FROM outbox WHERE {rows}"
        " RETURNING id, topic, message_key, payload, headers, created_at, published_at)"
        " INSERT INTO outbox_published"
        " (id, topic, message_key, payload, headers, created_at, published_at)"
        f" SELECT id, topic, message_key, payload, headers, created_at, {published_at}"
        " FROM moved"
    )


# The rows a cycle published ($1: their ids), and the rows a relay of an earlier release
# marked in place instead of moving them.
_MOVE_RELAYED = _move_published("id = ANY($1::bigint[])", "now()")
_MOVE_MARKED = _move_published("published_at IS NOT NULL", "published_at")

# For an outbox written on a hot path and relayed with a linger (metering's, the ledger's):
# the writer notifies only when no older row is waiting. While one waits the relay is busy,
# and a relay that published looks again after its linger without being told; so under load
# no notification is sent, and none is delivered, per row. (A writer that saw a row waiting
# and commits after the relay found the outbox empty is picked up by the idle poll.)
#
# The check reads the oldest waiting row: the new rows wait too, so it is one of them
# unless an older row waits. min() reads it as the first entry of the index of waiting
# rows. The first version asked whether any waiting row was older than the new ones
# (NOT EXISTS), and its reusable plan was a sequential scan of the outbox: a table whose
# rows are all deleted within a linger keeps some 80 pages between vacuums, and the scan
# read all of them on every charged call (0.13 ms of the ledger's, by pg_stat_statements).
OUTBOX_QUIET_NOTIFY_DDL = """
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    IF coalesce((SELECT min(id) FROM outbox WHERE published_at IS NULL)
                >= (SELECT min(id) FROM new_rows), true) THEN
        PERFORM pg_notify(TG_TABLE_SCHEMA || '.outbox', '');
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
"""

OUTBOX_PUBLISHED = Counter(
    "outbox_published_total", "Outbox rows published to Kafka", ["schema", "topic"]
)
OUTBOX_PENDING = Gauge("outbox_pending", "Outbox rows not yet published", ["schema"])


async def write_outbox(
    conn: Any,
    topic: str,
    key: str | bytes | None,
    message: Message | bytes,
    *,
    correlation_id: str | None = None,
    kind: str | None = None,
) -> int:
    """Add a record to the outbox inside the caller's transaction; returns its row id."""
    row = OutboxRecord(topic, key, message, correlation_id, kind)
    row_id: int = await conn.fetchval(
        "INSERT INTO outbox (topic, message_key, payload, headers)"
        " VALUES ($1, $2, $3, $4::jsonb) RETURNING id",
        *row.columns(),
    )
    return row_id


# An outbox row as inserted: topic, key, value, headers (JSON).
OutboxColumns = tuple[str, bytes | None, bytes, str]


@dataclass(frozen=True)
class OutboxRecord:
    topic: str
    key: str | bytes | None
    message: Message | bytes
    correlation_id: str | None = None
    # Sent as the ``kind`` header, for consumers that filter without decoding.
    kind: str | None = None

    def columns(self) -> OutboxColumns:
        """The row; its headers carry the trace context current when this is called."""
        corr = self.correlation_id or context.current_correlation_id()
        headers = outbox_headers(corr, self.kind)
        message = self.message
        value = message if isinstance(message, bytes) else message.SerializeToString()
        raw_key = self.key.encode() if isinstance(self.key, str) else self.key
        return self.topic, raw_key, value, json.dumps(headers)


def outbox_headers(correlation_id: str, kind: str | None = None) -> dict[str, str]:
    """An outbox row's headers: the current trace context, the correlation id, the kind.

    For rows written by SQL (the ledger's capture function) as much as by ``OutboxRecord``."""
    extra = {CORRELATION_HEADER: correlation_id, **({KIND_HEADER: kind} if kind else {})}
    return {k: v.decode() for k, v in tracing.inject_headers(extra)}


async def write_outbox_many(conn: Any, records: Sequence[OutboxRecord]) -> None:
    """Add records to the outbox in one statement, in order, inside the caller's transaction."""
    await write_outbox_rows(conn, [r.columns() for r in records])


async def write_outbox_rows(conn: Any, rows: Sequence[OutboxColumns]) -> None:
    """As ``write_outbox_many``, for rows prepared earlier (e.g. in the scope of the request
    whose trace they continue, when another task writes them)."""
    if not rows:
        return
    topics, keys, values, headers = zip(*rows, strict=True)
    await conn.execute(
        "INSERT INTO outbox (topic, message_key, payload, headers)"
        " SELECT t, k, p, h::jsonb FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::text[])"
        " WITH ORDINALITY AS r(t, k, p, h, n) ORDER BY n",
        list(topics),
        list(keys),
        list(values),
        list(headers),
    )


class OutboxRelay:
    """Publishes a schema's outbox; a lifecycle part of the service that owns the table."""

    def __init__(
        self,
        db: Database,
        publisher: KafkaPublisher,
        *,
        batch_size: int = 500,
        idle_poll_s: float = 1.0,
        retention_days: int = 7,
        linger_s: float = 0.0,
        linger_rows: int = 1,
    ) -> None:
        self._db = db
        self._linger_s = linger_s
        self._linger_rows = linger_rows
        self._counted_at = 0.0
        self._publisher = publisher
        self._batch_size = batch_size
        self._idle_poll_s = idle_poll_s
        self._retention_days = retention_days
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock_key = zlib.crc32(f"{db.schema}.outbox".encode())

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run_forever(), name=f"outbox:{self._db.schema}")

    async def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def poke(self) -> None:
        """Wake the relay now (the writer of a row calls this after its commit)."""
        self._wakeup.set()

    async def _run_forever(self) -> None:
        pause = 0.5
        while not self._stopping.is_set():
            try:
                await self._lead_and_relay()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying", extra={"schema": self._db.schema})
            await self._sleep(pause)
            pause = min(pause * 2, 5.0)

    async def _lead_and_relay(self) -> None:
        conn = await asyncpg.connect(self._db.dsn, server_settings={"search_path": self._db.schema})
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key):
                await self._sleep(self._idle_poll_s)
                if self._stopping.is_set():
                    return
            await conn.add_listener(f"{self._db.schema}.outbox", self._on_notify)
            await self._relay_until_stopped(conn)
        finally:
            await conn.close()

    def _on_notify(self, *_: object) -> None:
        self._wakeup.set()

    async def _relay_until_stopped(self, conn: Any) -> None:
        loop = asyncio.get_running_loop()
        cycles = 0
        while not self._stopping.is_set():
            self._wakeup.clear()
            started = loop.time()
            published = await self._drain(conn)
            cycles += 1
            if cycles % 600 == 0:
                await self.prune(conn)
            if published < self._linger_rows:
                # Not busy: the next row goes as soon as it is there (a quiet outbox's next
                # writer notifies, or pokes).
                if not published:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), self._idle_poll_s)
                continue
            # Busy: at most one cycle per linger, so the rows written meanwhile share the next
            # cycle's produce requests (one per partition; the broker's work is per request
            # more than per record).
            await self._sleep(started + self._linger_s - loop.time())

    async def _drain(self, conn: Any) -> int:
        published = 0
        while (count := await self.relay_once(conn)) > 0:
            published += count
            if count < self._batch_size:
                break
        return published

    async def relay_once(self, conn: Any) -> int:
        """Publish one batch of unpublished rows in id order; returns how many."""
        rows = await conn.fetch(
            "SELECT id, topic, message_key, payload, headers FROM outbox"
            " WHERE published_at IS NULL ORDER BY id LIMIT $1",
            self._batch_size,
        )
        if not rows:
            OUTBOX_PENDING.labels(self._db.schema).set(0)
            return 0
        await self._publish(rows)
        await conn.execute(_MOVE_RELAYED, [r["id"] for r in rows])
        await self._count_pending(conn)
        return len(rows)

    async def _count_pending(self, conn: Any) -> None:
        """The gauge, at most once a second (not one more statement per relayed batch)."""
        if time.monotonic() - self._counted_at < 1.0:
            return
        self._counted_at = time.monotonic()
        pending = await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        OUTBOX_PENDING.labels(self._db.schema).set(pending)

    async def _publish(self, rows: Sequence[Any]) -> None:
        futures = []
        for row in rows:
            headers = [(k, str(v).encode()) for k, v in json.loads(row["headers"]).items()]
            futures.append(
                await self._publisher.enqueue(
                    row["topic"], row["message_key"], bytes(row["payload"]), headers=headers
                )
            )
        await asyncio.gather(*futures)
        for row in rows:
            OUTBOX_PUBLISHED.labels(self._db.schema, row["topic"]).inc()

    async def prune(self, conn: Any) -> None:
        """Drop published rows past the retention; move rows a relay of an earlier release
        marked in place (during a rolling update) to the published ones first."""
        await conn.execute(_MOVE_MARKED)
        await conn.execute(
            "DELETE FROM outbox_published WHERE published_at < now() - make_interval(days => $1)",
            self._retention_days,
        )

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
