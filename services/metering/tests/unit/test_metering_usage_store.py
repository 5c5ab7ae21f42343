"""The PostgreSQL store's transactions, against a connection that answers from memory."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from billing_events.topics import Topics
from billing_events.v1 import alert_pb2, usage_pb2
from metering import guardrails
from metering.records import SHADOW, UNBILLED, ShadowCharge, UsageRecord
from metering.usage_store import Claimed, PgUsageStore, Taken
from prometheus_client import REGISTRY

RECORD = UsageRecord(
    usage_id="9c672c04-dd5d-5953-a903-2bf809f3ca4b",
    user_id="alice",
    model="gpt-4o",
    input_tokens=1000,
    output_tokens=500,
    charged_millicredits=50_000,
    uncollected_millicredits=0,
    priced_millicredits=50_000,
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
        self.inflight: set[str] = {RECORD.usage_id}
        self.shadow: list[tuple[Any, ...]] = []
        self.flags: list[tuple[Any, ...]] = []
        # (calls, total) of the user's earlier charged records, as store_usage reads them.
        self.history = (0, 0)
        self.history_reads = 0
        self.transactions = 0

    async def fetchval(self, sql: str, *args: Any) -> Any:
        if sql.startswith("SELECT claim_request("):
            return self._claim(*args)
        if sql.startswith("INSERT INTO outbox"):
            self.outbox.append(args)
            return len(self.outbox)
        if sql.startswith("INSERT INTO review_flags"):
            self.flags.append(args)
            return True
        assert sql.startswith("SELECT response_body FROM usage_records"), sql
        return self.usage[(args[0], args[1])][15]

    def _store_usage(self, args: tuple[Any, ...]) -> dict[str, Any]:
        """The record and its outbox row (if new), its in-flight row freed, its claim done,
        and the user's earlier charges when asked for (args[21] > 0): one statement."""
        key = (args[1], args[10])
        self.inflight.discard(args[0])
        if key in self.claims:
            self.claims[key]["state"] = "done"
        self.history_reads += args[21] > 0
        calls, total = self.history if args[21] > 0 else (0, 0)
        if key in self.usage:
            return {"new": False, "calls": calls, "total": total}
        self.usage[key] = args[:17]
        self.outbox.append(args[17:21])
        return {"new": True, "calls": calls, "total": total}

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
        if sql.startswith("WITH stored AS (INSERT INTO usage_records"):
            return self._store_usage(args)
        assert sql.startswith("SELECT c.state, c.request_hash, u.response_body"), sql
        claim = self.claims.get((args[0], args[1]))
        if claim is None:
            return None
        stored = self.usage.get((args[0], args[1]))
        body = stored[15] if stored else None
        return {"state": claim["state"], "request_hash": claim["hash"], "response_body": body}

    async def execute(self, sql: str, *args: Any) -> None:
        if sql.startswith("DELETE FROM inflight_charges"):
            self.inflight.discard(args[0])
            return
        if sql.startswith("INSERT INTO shadow_charges"):
            self.shadow.append(args)
            return
        claim = self.claims.get((args[0], args[1]))
        if claim is None:
            return
        if "release_claim(" in sql and claim["state"] == "in_progress":
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


async def test_recording_a_call_ends_its_in_flight_count_in_the_same_transaction() -> None:
    usage_store, conn, _ = store()

    await usage_store.record(RECORD)

    assert conn.transactions == 1
    assert conn.inflight == set()


async def test_a_shadowed_call_logs_its_computed_charge() -> None:
    usage_store, conn, _ = store()
    shadowed = replace(RECORD, mode=SHADOW, charged_millicredits=0)

    await usage_store.record(shadowed, ShadowCharge(would_be_mode="charged"))

    [row] = conn.shadow
    assert row == (
        RECORD.usage_id,
        "alice",
        "gpt-4o",
        1000,
        500,
        50_000,
        "shadow",
        "charged",
        "2026-11-01",
    )
    [(_, _, payload, _)] = conn.outbox
    event = usage_pb2.UsageRecorded.FromString(payload)
    assert (event.mode, event.charged_millicredits) == (usage_pb2.BILLING_MODE_SHADOW, 50_000)


async def test_an_anomalous_charge_is_flagged_and_alerted_with_its_record() -> None:
    usage_store, conn, _ = store()
    conn.history = (5, 50_000)  # an average of 10,000; 50,000 is exactly 5x
    before = REGISTRY.get_sample_value("billing_anomaly_flags_total") or 0.0

    await usage_store.record(replace(RECORD, charged_millicredits=50_001))

    assert conn.transactions == 1
    [flag] = conn.flags
    assert flag[3:] == (50_001, 10_000, 5)
    usage_row, alert_row = conn.outbox
    assert alert_row[0] == "billing.alerts.v1"
    alert = alert_pb2.BillingAlert.FromString(alert_row[2])
    assert (alert.kind, alert.severity) == ("usage_anomaly", alert_pb2.SEVERITY_WARNING)
    assert alert.details["averageMillicredits"] == "10000"
    assert REGISTRY.get_sample_value("billing_anomaly_flags_total") == before + 1


async def test_a_charge_of_exactly_five_times_the_average_is_not_flagged() -> None:
    usage_store, conn, _ = store()
    conn.history = (5, 50_000)

    await usage_store.record(RECORD)

    assert conn.flags == []
    assert len(conn.outbox) == 1


async def test_with_the_admissions_history_a_usual_record_is_one_statement_alone() -> None:
    usage_store, conn, relay = store()
    conn.history = (5, 5)  # what the store would read: it must not be asked

    await usage_store.record(RECORD, history=guardrails.History(5, 50_000))

    assert conn.transactions == 0
    assert conn.history_reads == 0
    assert conn.flags == []
    assert len(conn.outbox) == 1
    assert conn.inflight == set()
    assert relay.pokes == 1


async def test_with_the_admissions_history_an_anomaly_is_flagged_in_one_transaction() -> None:
    usage_store, conn, _ = store()

    await usage_store.record(
        replace(RECORD, charged_millicredits=50_001), history=guardrails.History(5, 50_000)
    )

    assert conn.transactions == 1
    assert conn.history_reads == 0
    [flag] = conn.flags
    assert flag[3:] == (50_001, 10_000, 5)
    assert [row[0] for row in conn.outbox] == ["billing.usage.v1", "billing.alerts.v1"]


async def test_shadow_and_unbilled_calls_are_never_flagged() -> None:
    usage_store, conn, _ = store()
    conn.history = (5, 5)

    await usage_store.record(replace(RECORD, mode=UNBILLED, charged_millicredits=0))

    assert conn.flags == []


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
