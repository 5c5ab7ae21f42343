"""The least PostgreSQL and Kafka must spend per ledger posting, against the plain anchor.

The pipeline benchmark (``bench/pipeline.py``) compares the ledger's postings from Kafka with
a plain per-posting transaction run by pgbench on the same PostgreSQL (the anchor). This
benchmark asks how far that ratio can go on this machine at all: it measures the least
PostgreSQL and Kafka can spend on the work every posting needs, done in the most favourable
form there is, and sets it against the CPU that a posting may cost at 5x the anchor.

Brings the dev stack up (as ``bench/pipeline.py`` does; ``--keep`` leaves it running) and
measures, in one run:

1. the anchor: ``bench/plain_posting.sql`` with pgbench, 16 clients, durable commits
   (``pipeline.anchor``, the same code): plain postings/s and the CPU of each (PostgreSQL,
   pgbench);
2. three floors, each ``--batch`` rows in ONE statement and one durable commit, on scratch
   tables created ``LIKE`` the live ones (``INCLUDING ALL``: their columns, defaults, checks
   and every index; without their triggers and foreign keys, which only add to the cost):
   - posting: the usage postings' journal transactions, their two entries each (the
     wallet's ``balance_after`` by a window sum), one balance update per user and one
     outbox row per posting (``ledger.*``);
   - relay: those outbox rows moved to ``outbox_published``, as the relay moves them;
   - read model: the reconciler's rows for the usage record and for the posting
     (``reconciler.seen_usage_records``, ``seen_ledger_transactions``).
   The values come from ``generate_series`` inside the statement: no client arrays to
   decode, no round trip per row, no Kafka. CPU is PostgreSQL's whole process tree, from
   ``/proc``, around each statement;
3. Kafka's floor: ``--records`` records of a posting event's size produced to a scratch topic
   (six partitions) by one idempotent producer (``acks=all``, as the services' publisher)
   in batches of up to 1 MB, then read by one consumer that decodes nothing: the broker's
   CPU (its compiler threads left out) and this process's, per record. A posting needs two
   produces (its usage record, its posting event) and four reads (the ledger and the
   reconciler read the usage record; the reconciler and checkout the posting event).

A floor is a lower bound of the real work, not a design. Not counted: the ledger's
positions, and the CPU of the ledger, the reconciler and checkout themselves, which decode
every record they read and build the rows and events they write.

Run: ``./scripts/run python bench/posting_floor.py [--batch 10000] [--rounds 3]
[--records 100000] [--seconds 20] [--keep]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import confluent_kafka
from billing_cli.layout import Layout
from billing_cli.stack import Stack
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from pipeline import GENERATOR, KAFKA_JIT, Meter, Phase, anchor, progress

SCHEMA = "bench_floor"
USERS = 500
RATIO_GOAL = 5  # the pipeline issue's goal: postings/s at least 5x the anchor
SETUP = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.journal_transactions (LIKE ledger.journal_transactions INCLUDING ALL);
CREATE TABLE {SCHEMA}.journal_entries (LIKE ledger.journal_entries INCLUDING ALL);
CREATE TABLE {SCHEMA}.balances (LIKE ledger.balances INCLUDING ALL);
CREATE TABLE {SCHEMA}.outbox (LIKE ledger.outbox INCLUDING ALL);
CREATE TABLE {SCHEMA}.outbox_published (LIKE ledger.outbox_published INCLUDING ALL);
CREATE TABLE {SCHEMA}.seen_usage_records (LIKE reconciler.seen_usage_records INCLUDING ALL);
CREATE TABLE {SCHEMA}.seen_ledger_transactions
    (LIKE reconciler.seen_ledger_transactions INCLUDING ALL);
INSERT INTO {SCHEMA}.balances (user_id, balance_millicredits)
SELECT 'u' || n, 1000000000000 FROM generate_series(1, {USERS}) n;
"""
# $1 rows: one usage posting each, spread over the users; a payload the size of a
# LedgerTransactionPosted (about 160 bytes).
POSTING = f"""
WITH src AS (
    SELECT ledger.time_ordered_uuid() AS id, 'u' || (1 + n % {USERS}) AS user_id,
           gen_random_uuid()::text AS usage_id, 10 + n % 90 AS amount, n
    FROM generate_series(1, $1) n
), posted AS (
    INSERT INTO {SCHEMA}.journal_transactions
        (id, kind, user_id, reference_id, idempotency_key, source, details)
    SELECT id, 'usage', user_id, usage_id, 'usage:' || usage_id, 'kafka:billing.usage.v1',
           '{{"model": "gpt-4o-mini", "input_tokens": 120, "output_tokens": 20}}'::jsonb
    FROM src
), debited AS (
    UPDATE {SCHEMA}.balances b
    SET balance_millicredits = b.balance_millicredits - s.total, updated_at = now()
    FROM (SELECT user_id, sum(amount) AS total FROM src GROUP BY user_id) s
    WHERE b.user_id = s.user_id
    RETURNING b.user_id, b.balance_millicredits + s.total AS before
), entries AS (
    INSERT INTO {SCHEMA}.journal_entries
        (transaction_id, account, user_id, amount_millicredits, balance_after_millicredits)
    SELECT s.id, 'wallet:' || s.user_id, s.user_id, -s.amount,
           d.before - sum(s.amount) OVER (PARTITION BY s.user_id ORDER BY s.n)
    FROM src s JOIN debited d USING (user_id)
    UNION ALL
    SELECT id, 'revenue', NULL, amount, NULL FROM src
)
INSERT INTO {SCHEMA}.outbox (topic, message_key, payload, headers)
SELECT 'billing.ledger.v1', convert_to(user_id, 'UTF8'), decode(repeat('5a', 160), 'hex'),
       '{{"kind": "usage", "x-correlation-id": "0192f0c8-7d0b-7b3e-9c55-3f1d2a4b5c6d"}}'::jsonb
FROM src
"""
RELAY = f"""
WITH moved AS (
    DELETE FROM {SCHEMA}.outbox WHERE published_at IS NULL
    RETURNING id, topic, message_key, payload, headers, created_at
)
INSERT INTO {SCHEMA}.outbox_published
    (id, topic, message_key, payload, headers, created_at, published_at)
SELECT id, topic, message_key, payload, headers, created_at, now() FROM moved
"""
# The postings just made, as the reconciler's two read models receive them.
READ_MODEL = f"""
WITH recent AS (
    SELECT id, user_id, reference_id, created_at FROM {SCHEMA}.journal_transactions
    ORDER BY id DESC LIMIT $1
), usage AS (
    INSERT INTO {SCHEMA}.seen_usage_records
        (usage_id, user_id, model, mode, charged_millicredits, cost_millicredits, created)
    SELECT reference_id, user_id, 'gpt-4o-mini', 'charged', 42, 10, created_at FROM recent
    ON CONFLICT (usage_id) DO NOTHING
)
INSERT INTO {SCHEMA}.seen_ledger_transactions
    (transaction_id, kind, user_id, reference_id, wallet_delta_millicredits, posted_at)
SELECT id::text, 'usage', user_id, reference_id, -42, created_at FROM recent
ON CONFLICT (transaction_id) DO NOTHING
"""
FLOORS = (("posting", POSTING), ("relay", RELAY), ("read model", READ_MODEL))
TOPIC = "bench.floor.v1"
PAYLOAD = bytes(160)
PRODUCES, READS = 2, 4  # per posting (see the module's docstring)


@dataclass(frozen=True)
class Floor:
    name: str
    us_per_posting: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.us_per_posting)


async def floors(stack: Stack, db: asyncpg.Connection, batch: int, rounds: int) -> list[Floor]:
    await db.execute(SETUP)
    found = {name: Floor(name, []) for name, _ in FLOORS}
    try:
        for n in range(rounds):
            progress(f"floors: round {n + 1} of {rounds}, {batch} postings")
            for name, sql in FLOORS:
                found[name].us_per_posting.append(await _postgres_us(stack, db, sql, batch))
    finally:
        await db.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    return list(found.values())


async def _postgres_us(stack: Stack, db: asyncpg.Connection, sql: str, batch: int) -> float:
    """PostgreSQL's CPU for one statement over ``batch`` postings and its durable commit."""
    meter = Meter(stack)
    meter.start()
    args = (batch,) if "$1" in sql else ()
    async with db.transaction():
        await db.execute(sql, *args)
    return meter.stop()["postgres"] * 1e6 / batch


def kafka_floor(stack: Stack, records: int) -> Floor:
    """Per posting: two produces and four reads, each at its floor per record."""
    admin = AdminClient({"bootstrap.servers": stack.kafka.bootstrap})
    admin.create_topics([NewTopic(TOPIC, num_partitions=6, replication_factor=1)])[TOPIC].result()
    try:
        produce = _kafka_us(stack, lambda: _produce(stack.kafka.bootstrap, records), records)
        read = _kafka_us(stack, lambda: _read(stack.kafka.bootstrap, records), records)
    finally:
        admin.delete_topics([TOPIC])[TOPIC].result()
    progress(f"kafka: {produce:.1f} us per record produced, {read:.1f} us per record read")
    return Floor("kafka", [PRODUCES * produce + READS * read])


def _kafka_us(stack: Stack, work: Callable[[], None], records: int) -> float:
    meter = Meter(stack)
    meter.start()
    work()
    cpu = meter.stop()
    return (cpu["kafka"] - cpu[KAFKA_JIT] + cpu[GENERATOR]) * 1e6 / records


def _produce(bootstrap: str, records: int) -> None:
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "batch.size": 1_000_000,
        }
    )
    for n in range(records):
        key = f"u{n % USERS}".encode()
        while True:
            try:
                producer.produce(TOPIC, PAYLOAD, key=key)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)
    if producer.flush(60) != 0:
        raise RuntimeError("kafka: records still undelivered after 60 s")


def _read(bootstrap: str, records: int) -> None:
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-floor-{os.getpid()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([TOPIC])
    seen, deadline = 0, time.monotonic() + 120
    try:
        while seen < records:
            if time.monotonic() > deadline:
                raise RuntimeError(f"kafka: read {seen} of {records} records in 120 s")
            batch = consumer.consume(num_messages=10_000, timeout=1.0)
            seen += sum(1 for m in batch if m.error() is None)
    finally:
        consumer.close()


async def measure(stack: Stack, opts: argparse.Namespace) -> tuple[Phase, list[Floor]]:
    db = await asyncpg.connect(stack.postgres.dsn)
    try:
        await db.execute("SET synchronous_commit = on")
        progress(f"anchor: pgbench, 16 clients, {opts.seconds} s")
        plain = await anchor(stack, db, USERS, opts.seconds)
        found = await floors(stack, db, opts.batch, opts.rounds)
    finally:
        await db.close()
    progress(f"kafka: {opts.records} records produced, then read")
    return plain, [*found, await asyncio.to_thread(kafka_floor, stack, opts.records)]


def report(plain: Phase, found: list[Floor], cores: int) -> list[str]:
    per = plain.cpu_ms_per_event()
    postgres_us, pgbench_us = per.get("postgres", 0.0) * 1000, per.get(GENERATOR, 0.0) * 1000
    goal = RATIO_GOAL * plain.rate
    budget = cores * 1e6 / goal
    floor_us = sum(f.median for f in found)
    lines = [
        f"anchor: {plain.rate:,.0f} plain postings/s; CPU per plain posting: PostgreSQL"
        f" {postgres_us:.0f} us, pgbench {pgbench_us:.0f} us",
        f"{RATIO_GOAL}x the anchor: {goal:,.0f} postings/s; on {cores} cores that leaves"
        f" {budget:.0f} us of CPU per posting for every process together",
        "",
        "floor of CPU per posting                                   us: median (rounds)",
    ]
    for f in found:
        rounds = ", ".join(f"{u:.1f}" for u in f.us_per_posting)
        lines.append(f"  {f.name:<56} {f.median:6.1f}  ({rounds})")
    lines += [
        f"  {'all':<56} {floor_us:6.1f}",
        "",
        f"the floor is {100 * floor_us / budget:.0f}% of the budget; left for the ledger's,"
        f" the reconciler's and checkout's own CPU: {budget - floor_us:.0f} us per posting",
    ]
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=10_000, help="postings per statement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=100_000, help="through Kafka")
    parser.add_argument("--seconds", type=int, default=20, help="of pgbench for the anchor")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    return parser.parse_args()


def main() -> None:
    opts = parse_args()
    stack = Stack(Layout.dev())
    stack.up()
    try:
        plain, found = asyncio.run(measure(stack, opts))
    finally:
        if not opts.keep:
            stack.down()
    print("\n".join(report(plain, found, os.cpu_count() or 1)))


if __name__ == "__main__":
    main()
