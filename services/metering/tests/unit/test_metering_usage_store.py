"""The PostgreSQL store's transactions, against a connection that answers from memory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from billing_events.topics import Topics
from billing_events.v1 import usage_pb2
from metering.records import UsageRecord
from metering.usage_store import Claimed, PgUsageStore, Taken

RECORD = UsageRecord(
    usage_id="9c672c04-dd5d-5953-a903-2bf809f3ca4b",
    user_id="alice",
    model="gpt-4o",
    input_tokens=1000,
    output_tokens=500,
    charged_millicredits=50_000,
    uncollected_millicredits=0,
    cost_millicredits=12_500,
    rate_card_version="2026-11-01",
    hold_id="h-1",
    idempotency_key="chat:alice:k1",
    provider_request_id="chatcmpl-1",
    transaction_id="t-1",
    response_body={"id": "chatcmpl-1", "usage": {"chargedMillicredits": 50_000}},
)


class FakeConn:
    """Answers the store's statements as PostgreSQL would, keeping rows in memory."""

    def __init__(self) -> None:
        self.usage: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.claims: dict[tuple[str, str], dict[str, Any]] = {}
        self.outbox: list[tuple[Any, ...]] = []
        self.transactions = 0

    async def fetchval(self, sql: str, *args: Any) -> Any:
        if sql.startswith("INSERT INTO request_claims"):
            return self._claim(*args)
        if sql.startswith("INSERT INTO usage_records"):
            key = (args[1], args[10])
            if key in self.usage:
                return None
            self.usage[key] = args
            return True
        if sql.startswith("INSERT INTO outbox"):
            self.outbox.append(args)
            return len(self.outbox)
        assert sql.startswith("SELECT response_body FROM usage_records"), sql
        return self.usage[(args[0], args[1])][15]

    def _claim(self, user_id: str, key: str, request_hash: str, _: float) -> int | None:
        claim = self.claims.get((user_id, key))
        if claim is None:
            self.claims[(user_id, key)] = {"state": "in_progress", "hash": request_hash, "n": 1}
            return 1
        if claim["state"] != "released":
            return None
        claim.update(state="in_progress", hash=request_hash, n=claim["n"] + 1)
        return int(claim["n"])

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        assert sql.startswith("SELECT c.state, c.request_hash, u.response_body"), sql
        claim = self.claims.get((args[0], args[1]))
        if claim is None:
            return None
        stored = self.usage.get((args[0], args[1]))
        body = stored[15] if stored else None
        return {"state": claim["state"], "request_hash": claim["hash"], "response_body": body}

    async def execute(self, sql: str, *args: Any) -> None:
        claim = self.claims.get((args[0], args[1]))
        if claim is None:
            return
        if "state = 'released'" in sql and claim["state"] == "in_progress":
            claim["state"] = "released"
        elif "state = 'done'" in sql:
            claim["state"] = "done"

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        assert "GROUP BY model" in sql, sql
        return [
            {
                "model": "gpt-4o",
                "calls": 2,
                "input_tokens": 10,
                "output_tokens": 20,
                "charged_millicredits": 30,
            }
        ]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.transactions += 1
        yield


class FakeDb:
    def __init__(self) -> None:
        self.conn = FakeConn()

    @property
    def pool(self) -> FakeDb:
        return self

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[FakeConn]:
        yield self.conn


class FakeRelay:
    def __init__(self) -> None:
        self.pokes = 0

    def poke(self) -> None:
        self.pokes += 1


def store() -> tuple[PgUsageStore, FakeConn, FakeRelay]:
    db, relay = FakeDb(), FakeRelay()
    return PgUsageStore(db, Topics(), relay, takeover_after_s=180), db.conn, relay


async def test_a_record_is_stored_with_its_event_in_one_transaction() -> None:
    usage_store, conn, relay = store()

    assert await usage_store.record(RECORD) is None

    assert conn.transactions == 1
    assert json.loads(conn.usage[("alice", "chat:alice:k1")][15]) == RECORD.response_body
    [(topic, key, payload, headers)] = conn.outbox
    assert (topic, key) == ("billing.usage.v1", b"alice")
    event = usage_pb2.UsageRecorded.FromString(payload)
    assert (event.usage_id, event.charged_millicredits) == (RECORD.usage_id, 50_000)
    assert json.loads(headers)["correlation-id"] == event.meta.correlation_id
    assert relay.pokes == 1


async def test_a_record_for_an_answered_key_returns_the_earlier_body_and_publishes_nothing() -> (
    None
):
    usage_store, conn, relay = store()
    await usage_store.record(RECORD)
    later = UsageRecord(**{**RECORD.__dict__, "usage_id": "other", "response_body": {"x": 1}})

    earlier = await usage_store.record(later)

    assert earlier == RECORD.response_body
    assert len(conn.outbox) == 1
    assert relay.pokes == 1


async def test_a_claim_is_taken_once_then_answered_from_the_record() -> None:
    usage_store, _, _ = store()

    assert await usage_store.claim("alice", "chat:alice:k1", "h") == Claimed(1)
    assert await usage_store.claim("alice", "chat:alice:k1", "h") == Taken("in_progress", "h", None)
    await usage_store.record(RECORD)
    assert await usage_store.claim("alice", "chat:alice:k1", "h") == Taken(
        "done", "h", RECORD.response_body
    )


async def test_a_released_claim_is_taken_over_with_the_next_attempt() -> None:
    usage_store, _, _ = store()
    await usage_store.claim("alice", "k", "h")

    await usage_store.release("alice", "k")

    assert await usage_store.claim("alice", "k", "h2") == Claimed(2)


async def test_totals_are_read_per_model() -> None:
    usage_store, _, _ = store()
    start, end = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 22, tzinfo=UTC)

    [totals] = await usage_store.totals("alice", start, end)

    assert (totals.model, totals.calls, totals.charged_millicredits) == ("gpt-4o", 2, 30)
