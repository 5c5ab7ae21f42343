"""Group commit of verified webhooks, on the real database, broker and service process.

Concurrent deliveries share transactions; each is still answered only after its commit,
every event is stored once with one outbox record and published once, and a redelivery in
flight at the same time as the first delivery is answered ``{"duplicate": true}``. When
the queue is full a delivery is shed with 503 ``overloaded`` and nothing of it is written.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from typing import Any

import asyncpg
import httpx
from billing_cli import stripe_sim
from billing_cli.stack import Stack
from billing_events.topics import Topics
from billing_events.v1 import stripe_pb2
from billing_platform.db import migrate_package

DISTINCT = 250
REDELIVERED = 50


def customer_event(run: str, n: int) -> dict[str, Any]:
    customer = {"id": f"cus_{run}_{n:04d}", "object": "customer", "email": None}
    return stripe_sim.event("customer.created", customer, event_id=f"evt_{run}_{n:04d}")


async def deliver_all(url: str, secret: str, events: list[dict[str, Any]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(events))
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        sends = (stripe_sim.send(http, url, event, secret) for event in events)
        return list(await asyncio.gather(*sends))


async def stored(dsn: str, schema: str) -> tuple[list[str], list[str], int]:
    """Stored event ids, the event id of each outbox row (waiting or published), and the
    rows still waiting."""
    conn = await asyncpg.connect(dsn)
    try:
        events = await conn.fetch(f"SELECT event_id FROM {schema}.stripe_events")
        outbox = await conn.fetch(
            f"SELECT payload, true AS waiting FROM {schema}.outbox"
            f" UNION ALL SELECT payload, false FROM {schema}.outbox_published"
        )
    finally:
        await conn.close()
    in_outbox = [stripe_pb2.StripeEventReceived.FromString(r["payload"]) for r in outbox]
    pending = sum(1 for r in outbox if r["waiting"])
    return [r["event_id"] for r in events], [e.stripe_event_id for e in in_outbox], pending


async def all_published(dsn: str, schema: str) -> tuple[list[str], list[str]]:
    deadline = time.monotonic() + 30
    while True:
        events, outbox, pending = await stored(dsn, schema)
        if not pending:
            return events, outbox
        assert time.monotonic() < deadline, f"{pending} outbox rows never published"
        await asyncio.sleep(0.2)


def service_env(namespace: Topics, schema: str, **extra: str) -> dict[str, str]:
    return {
        "BILLING_TOPIC_NAMESPACE": namespace.namespace,
        "WEBHOOK_INGEST_DB_SCHEMA": schema,
        "WEBHOOK_INGEST_RATE_LIMIT_PER_MINUTE": "1000000",
        **extra,
    }


async def test_concurrent_deliveries_with_duplicates_in_flight_are_stored_and_published_once(
    stack: Stack, namespace: Topics, schema: str, run_service: Any, stripe_event_ids: Any
) -> None:
    await migrate_package(stack.postgres.dsn, schema, "webhook_ingest")
    run = uuid.uuid4().hex[:8]
    events = [customer_event(run, n) for n in range(DISTINCT)]
    rng = random.Random(7)  # noqa: S311 (reproducible, not secret)
    # Every redelivery is sent at the same time as its first delivery.
    sent = events + rng.sample(events, REDELIVERED)
    rng.shuffle(sent)
    secret = stack.secrets["stripe_webhook_secret"]

    with run_service("webhook_ingest", service_env(namespace, schema)) as ingest:
        answers = await deliver_all(f"{ingest.url}/webhooks/stripe", secret, sent)
        events_stored, outbox = await all_published(stack.postgres.dsn, schema)
        transactions = ingest.metric("group_commit_batch_size_count", committer="stripe_events")
        written = ingest.metric("group_commit_batch_size_sum", committer="stripe_events")

    assert [a.status_code for a in answers] == [200] * len(sent), answers[0].text
    new = Counter(e["id"] for e, a in zip(sent, answers, strict=True) if not a.json()["duplicate"])
    expected = {e["id"] for e in events}
    assert set(new) == expected
    assert set(new.values()) == {1}  # each event answered new exactly once
    assert sum(a.json()["duplicate"] for a in answers) == REDELIVERED
    assert sorted(events_stored) == sorted(expected)
    assert sorted(outbox) == sorted(expected)
    on_topic = await stripe_event_ids(stack.kafka.bootstrap, namespace.stripe_events)
    assert sorted(on_topic) == sorted(expected)
    # Deliveries did share transactions.
    assert written == len(sent)
    assert transactions < written


async def test_a_full_queue_sheds_deliveries_without_writing_them(
    stack: Stack, namespace: Topics, schema: str, run_service: Any
) -> None:
    await migrate_package(stack.postgres.dsn, schema, "webhook_ingest")
    run = uuid.uuid4().hex[:8]
    events = [customer_event(run, n) for n in range(60)]
    secret = stack.secrets["stripe_webhook_secret"]
    # The writer waits up to 1 s for a batch that cannot fill: 5 deliveries wait, the rest
    # find the queue full.
    small = service_env(
        namespace,
        schema,
        WEBHOOK_INGEST_GROUP_COMMIT_QUEUE_BOUND="5",
        WEBHOOK_INGEST_GROUP_COMMIT_MAX_WAIT_S="1",
    )
    with run_service("webhook_ingest", small) as ingest:
        url = f"{ingest.url}/webhooks/stripe"
        answers = await deliver_all(url, secret, events)
        shed = [e for e, a in zip(events, answers, strict=True) if a.status_code == 503]
        events_stored, outbox = await all_published(stack.postgres.dsn, schema)
        retried = await deliver_all(url, secret, shed[:5])

    accepted = {e["id"] for e, a in zip(events, answers, strict=True) if a.status_code == 200}
    assert {a.status_code for a in answers} == {200, 503}
    refusals = [a for a in answers if a.status_code == 503]
    assert {(a.json()["error"], a.headers["retry-after"]) for a in refusals} == {
        ("overloaded", "1")
    }
    assert sorted(events_stored) == sorted(accepted)
    assert sorted(outbox) == sorted(accepted)
    # A shed delivery sent again is taken as new.
    assert [a.json() for a in retried] == [{"received": True, "duplicate": False}] * len(retried)
