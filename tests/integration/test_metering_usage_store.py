"""Metering's usage store on the real PostgreSQL, with the ledger's and metering's migrations
in scratch schemas: records of every mode, the anomaly flag, claims, and a charged call's
settlement (``settle_charged_call``: the ledger's capture and the usage record in one
statement, one transaction).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from billing_events.topics import Topics
from billing_events.v1 import alert_pb2, ledger_pb2, usage_pb2
from billing_platform.db import Database
from billing_platform.ids import time_ordered_uuid
from billing_platform.money import credits_text
from metering import bodies, guardrails, repository
from metering.ledger_client import Balance, Hold
from metering.model_client import TokenUsage
from metering.records import CHARGED, SHADOW, UNBILLED, ShadowCharge, UsageRecord
from metering.usage_store import Claimed, PgUsageStore, Recorded, Taken
from prometheus_client import REGISTRY

HEAD = {"id": "chatcmpl-1", "message": {"role": "assistant", "content": "hi"}}


class Relay:
    def __init__(self) -> None:
        self.pokes = 0

    def poke(self) -> None:
        self.pokes += 1


class Dbs:
    def __init__(
        self, ledger: Database, metering: Database, ledger_schema: str, record_charge: Any
    ) -> None:
        self.ledger, self.metering, self.ledger_schema = ledger, metering, ledger_schema
        self.record_charge = record_charge
        self.relay = Relay()
        self.store = PgUsageStore(metering, Topics(), self.relay, takeover_after_s=180)

    async def fund(self, user: str, amount: int) -> None:
        await self.ledger.pool.execute(
            "INSERT INTO balances (user_id, balance_millicredits) VALUES ($1, $2)", user, amount
        )

    async def hold(self, user: str, amount: int) -> Hold:
        async with self.metering.pool.acquire() as conn:
            row = await repository.create_ledger_hold(
                conn, self.ledger_schema, user, amount, f"k-{uuid.uuid4().hex}", 120
            )
        assert row["r_outcome"] == "created"
        balance, held = row["r_balance"], row["r_held"]
        return Hold(str(row["r_hold_id"]), row["r_amount"], Balance(balance, held, balance - held))

    async def ledger_state(self, user: str) -> tuple[int, int, int]:
        """Balance, held, and the number of usage postings of the user."""
        row = await self.ledger.pool.fetchrow(
            "SELECT balance_millicredits, held_millicredits,"
            " (SELECT count(*) FROM journal_transactions WHERE kind = 'usage' AND user_id = $1)"
            " AS postings FROM balances WHERE user_id = $1",
            user,
        )
        return row["balance_millicredits"], row["held_millicredits"], row["postings"]

    async def hold_status(self, hold: Hold) -> str:
        status: str = await self.ledger.pool.fetchval(
            "SELECT status FROM holds WHERE id = $1::uuid", hold.hold_id
        )
        return status

    async def stored(self, record: UsageRecord) -> Any:
        return await self.metering.pool.fetchrow(
            "SELECT * FROM usage_records WHERE usage_id = $1::uuid", record.usage_id
        )

    async def outbox(self, db: Database | None = None) -> list[Any]:
        rows: list[Any] = await (db or self.metering).pool.fetch(
            "SELECT topic, message_key, payload, headers FROM outbox ORDER BY id"
        )
        return rows

    async def past_charges(self, user: str, amounts: list[int]) -> None:
        now = datetime.now(UTC)
        for i, amount in enumerate(amounts):
            await self.record_charge(self.metering, user, amount, now - timedelta(minutes=10 + i))


@pytest.fixture
def dbs(metering_dbs: Any, record_charge: Any) -> Dbs:
    return Dbs(
        metering_dbs.ledger, metering_dbs.metering, metering_dbs.ledger_schema, record_charge
    )


def new_user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


def record(user: str, **changes: Any) -> UsageRecord:
    """A call's record as the gateway hands it over: priced, its answer's head as body."""
    base = UsageRecord(
        usage_id=str(uuid.uuid4()),
        user_id=user,
        model="gpt-4o",
        input_tokens=1000,
        output_tokens=500,
        charged_millicredits=0,
        uncollected_millicredits=0,
        priced_millicredits=12_500,
        cost_millicredits=5_000,
        rate_card_version="2026-11-01",
        hold_id="",
        idempotency_key=f"chat:{user}:{uuid.uuid4().hex}",
        provider_request_id="chatcmpl-1",
        transaction_id=None,
        response_body={**HEAD, "billingMode": UNBILLED},
        mode=UNBILLED,
    )
    return replace(base, **changes)


def charged(user: str, hold: Hold, amount: int = 12_500, **changes: Any) -> UsageRecord:
    return record(
        user,
        charged_millicredits=amount,
        priced_millicredits=amount,
        hold_id=hold.hold_id,
        response_body={**HEAD, "billingMode": CHARGED},
        mode=CHARGED,
        **changes,
    )


def new_record(recorded: Recorded) -> UsageRecord:
    assert recorded.record is not None, "the record was stored before"
    return recorded.record


def deferred_captures() -> float:
    return REGISTRY.get_sample_value("metering_deferred_captures_total") or 0.0


# --- records without a capture --------------------------------------------------------------


async def test_an_unbilled_record_is_stored_with_its_event_and_ends_its_claim(dbs: Dbs) -> None:
    user = new_user()
    call = record(user)
    ids = (call.usage_id, None)
    assert await dbs.store.claim(user, call.idempotency_key, "h", ids) == Claimed(1, call.usage_id)

    recorded = await dbs.store.record(call)

    tokens = TokenUsage(1000, 500)
    assert recorded.body == bodies.settled(call.response_body, tokens, 0, None)
    assert new_record(recorded).response_body == recorded.body
    row = await dbs.stored(call)
    assert json.loads(row["response_body"]) == recorded.body
    assert (row["mode"], row["charged_millicredits"], row["priced_millicredits"]) == (
        UNBILLED,
        0,
        12_500,
    )
    [(topic, key, payload, headers)] = await dbs.outbox()
    assert (topic, key) == ("billing.usage.v1", user.encode())
    event = usage_pb2.UsageRecorded.FromString(payload)
    assert (event.usage_id, event.mode) == (call.usage_id, usage_pb2.BILLING_MODE_UNBILLED)
    assert json.loads(headers)["correlation-id"] == event.meta.correlation_id
    assert await dbs.store.claim(user, call.idempotency_key, "h", ids) == Taken(
        "done", "h", recorded.body
    )
    assert dbs.relay.pokes == 1


async def test_a_shadowed_call_logs_and_publishes_its_computed_charge(dbs: Dbs) -> None:
    user = new_user()
    call = record(user, mode=SHADOW, response_body={**HEAD, "billingMode": SHADOW})

    await dbs.store.record(call, ShadowCharge(would_be_mode=CHARGED))

    shadow = await dbs.metering.pool.fetchrow(
        "SELECT charged_millicredits, would_be_mode FROM shadow_charges WHERE usage_id = $1",
        uuid.UUID(call.usage_id),
    )
    assert tuple(shadow) == (12_500, CHARGED)
    [(_, _, payload, _)] = await dbs.outbox()
    event = usage_pb2.UsageRecorded.FromString(payload)
    assert (event.mode, event.charged_millicredits) == (usage_pb2.BILLING_MODE_SHADOW, 12_500)


async def test_a_record_for_an_answered_key_returns_the_earlier_body_and_publishes_nothing(
    dbs: Dbs,
) -> None:
    user = new_user()
    first = await dbs.store.record(record(user, idempotency_key="chat:k"))
    again = record(user, idempotency_key="chat:k", response_body={"other": True})

    assert await dbs.store.record(again) == Recorded(first.body, None)

    assert len(await dbs.outbox()) == 1
    assert dbs.relay.pokes == 1


# --- a charged call's settlement ------------------------------------------------------------


async def test_a_charged_call_is_captured_and_recorded_in_one_statement(dbs: Dbs) -> None:
    user = new_user()
    await dbs.fund(user, 100_000)
    hold = await dbs.hold(user, 40_000)
    call = charged(user, hold)

    recorded = await dbs.store.record(call, history=guardrails.History(0, 0), hold=hold)

    after = Balance(87_500, 0, 87_500)
    assert recorded.body == bodies.settled(call.response_body, TokenUsage(1000, 500), 12_500, after)
    assert new_record(recorded).transaction_id is not None
    assert await dbs.ledger_state(user) == (87_500, 0, 1)
    assert await dbs.hold_status(hold) == "captured"
    row = await dbs.stored(call)
    # The stored body, built in SQL, is the answer built here: a replay answers the same.
    assert json.loads(row["response_body"]) == recorded.body
    assert list(json.loads(row["response_body"])) == list(recorded.body)
    assert (row["charged_millicredits"], row["uncollected_millicredits"]) == (12_500, 0)
    assert row["transaction_id"] == new_record(recorded).transaction_id
    [(_, _, payload, _)] = await dbs.outbox()
    event = usage_pb2.UsageRecorded.FromString(payload)
    assert (event.charged_millicredits, event.hold_id) == (12_500, hold.hold_id)
    assert (event.input_tokens, event.cost_millicredits) == (1000, 5_000)
    [posting] = await dbs.outbox(dbs.ledger)
    posted = ledger_pb2.LedgerTransactionPosted.FromString(posting["payload"])
    assert (posted.transaction_id, posted.reference_id) == (row["transaction_id"], call.usage_id)


async def test_a_charge_beyond_what_is_available_is_recorded_as_uncollected(dbs: Dbs) -> None:
    user = new_user()
    await dbs.fund(user, 10_000)
    hold = await dbs.hold(user, 8_000)  # the actual call beat its hold; 10,000 is all there is

    recorded = await dbs.store.record(charged(user, hold, 12_500), hold=hold)

    assert new_record(recorded).charged_millicredits == 10_000
    assert new_record(recorded).uncollected_millicredits == 2_500
    assert recorded.body["usage"]["chargedMillicredits"] == 10_000
    assert recorded.body["balance"]["availableCredits"] == "0.000"
    [(_, _, payload, _)] = await dbs.outbox()
    assert usage_pb2.UsageRecorded.FromString(payload).charged_millicredits == 10_000
    assert await dbs.ledger_state(user) == (0, 0, 1)


async def test_a_record_that_cannot_be_stored_leaves_the_hold_uncaptured(dbs: Dbs) -> None:
    """One transaction: no posting without its record (a crash between them is the same)."""
    user = new_user()
    await dbs.fund(user, 100_000)
    hold = await dbs.hold(user, 40_000)

    with pytest.raises(Exception, match="check constraint"):
        await dbs.store.record(charged(user, hold, output_tokens=-1), hold=hold)

    assert await dbs.ledger_state(user) == (100_000, 40_000, 0)
    assert await dbs.hold_status(hold) == "active"
    assert await dbs.outbox() == []
    assert await dbs.outbox(dbs.ledger) == []


async def test_a_hold_gone_leaves_the_charge_to_the_ledgers_consumer(dbs: Dbs) -> None:
    user = new_user()
    await dbs.fund(user, 100_000)
    hold = await dbs.hold(user, 40_000)
    await dbs.ledger.pool.execute("DELETE FROM holds WHERE id = $1::uuid", hold.hold_id)
    before = deferred_captures()

    recorded = await dbs.store.record(charged(user, hold), hold=hold)

    assert deferred_captures() == before + 1
    assert new_record(recorded).transaction_id is None
    assert new_record(recorded).charged_millicredits == 12_500
    assert recorded.body["balance"] == bodies.balance(hold.balance)  # the last one seen
    [(_, _, payload, _)] = await dbs.outbox()
    assert usage_pb2.UsageRecorded.FromString(payload).charged_millicredits == 12_500
    assert (await dbs.ledger_state(user))[2] == 0


async def test_a_capture_the_ledger_refuses_is_recorded_without_it(dbs: Dbs) -> None:
    """The ledger posted the usage id for another user: its capture raises, the statement
    fails as a whole, and the record goes out alone for the ledger's consumer to settle or
    dead-letter."""
    other, user = new_user(), new_user()
    for who in (other, user):
        await dbs.fund(who, 100_000)
    usage_id = str(uuid.uuid4())
    await dbs.ledger.pool.execute(
        "SELECT capture_hold($1::uuid, $2, 5000, 'gpt-4o', 1, 1, 'v', 'c', '{}'::jsonb, 't')",
        (await dbs.hold(other, 20_000)).hold_id,
        usage_id,
    )
    hold = await dbs.hold(user, 20_000)
    before = deferred_captures()

    recorded = await dbs.store.record(charged(user, hold, usage_id=usage_id), hold=hold)

    assert deferred_captures() == before + 1
    assert new_record(recorded).transaction_id is None
    assert (await dbs.stored(new_record(recorded)))["charged_millicredits"] == 12_500
    assert await dbs.ledger_state(user) == (100_000, 20_000, 0)


async def test_a_retried_capture_under_a_new_hold_charges_once(dbs: Dbs) -> None:
    """Attempt 2 of a key whose first attempt was captured: the ledger answers the first
    posting, and the record's key answers the first body."""
    user = new_user()
    await dbs.fund(user, 100_000)
    first_hold = await dbs.hold(user, 20_000)
    first = charged(user, first_hold)
    answered = await dbs.store.record(first, hold=first_hold)
    second_hold = await dbs.hold(user, 20_000)

    again = await dbs.store.record(replace(first, hold_id=second_hold.hold_id), hold=second_hold)

    assert again == Recorded(answered.body, None)
    assert await dbs.ledger_state(user) == (87_500, 0, 1)


# --- the anomaly check ----------------------------------------------------------------------


async def test_an_anomalous_charge_is_flagged_and_alerted_with_its_record(dbs: Dbs) -> None:
    user = new_user()
    await dbs.past_charges(user, [10_000] * 5)  # an average of 10,000
    await dbs.fund(user, 100_000)
    hold = await dbs.hold(user, 60_000)
    before = REGISTRY.get_sample_value("billing_anomaly_flags_total") or 0.0

    await dbs.store.record(charged(user, hold, 50_001), hold=hold)

    flag = await dbs.metering.pool.fetchrow(
        "SELECT charge_millicredits, average_millicredits, recent_calls FROM review_flags"
        " WHERE user_id = $1",
        user,
    )
    assert tuple(flag) == (50_001, 10_000, 5)
    usage_row, alert_row = await dbs.outbox()
    assert alert_row["topic"] == "billing.alerts.v1"
    alert = alert_pb2.BillingAlert.FromString(alert_row["payload"])
    assert (alert.kind, alert.details["averageMillicredits"]) == ("usage_anomaly", "10000")
    assert REGISTRY.get_sample_value("billing_anomaly_flags_total") == before + 1


@pytest.mark.parametrize("history", [None, guardrails.History(5, 50_000)])
async def test_a_charge_of_exactly_five_times_the_average_is_not_flagged(
    dbs: Dbs, history: guardrails.History | None
) -> None:
    user = new_user()
    await dbs.past_charges(user, [10_000] * 5)
    await dbs.fund(user, 100_000)
    hold = await dbs.hold(user, 60_000)

    await dbs.store.record(charged(user, hold, 50_000), history=history, hold=hold)

    assert await dbs.metering.pool.fetchval("SELECT count(*) FROM review_flags") == 0
    assert len(await dbs.outbox()) == 1


async def test_with_the_admissions_history_an_anomaly_is_flagged(dbs: Dbs) -> None:
    user = new_user()  # no past records: the history given is the one weighed
    await dbs.fund(user, 100_000)
    hold = await dbs.hold(user, 60_000)

    await dbs.store.record(
        charged(user, hold, 50_001), history=guardrails.History(5, 50_000), hold=hold
    )

    assert [row["topic"] for row in await dbs.outbox()] == [
        "billing.usage.v1",
        "billing.alerts.v1",
    ]


async def test_a_charge_the_ledger_cut_below_the_anomaly_is_not_flagged(dbs: Dbs) -> None:
    """Weighed by what was charged, not what was asked."""
    user = new_user()
    await dbs.past_charges(user, [1_000] * 5)
    await dbs.fund(user, 4_000)
    hold = await dbs.hold(user, 4_000)

    recorded = await dbs.store.record(charged(user, hold, 50_001), hold=hold)

    assert new_record(recorded).charged_millicredits == 4_000
    assert await dbs.metering.pool.fetchval("SELECT count(*) FROM review_flags") == 0


async def test_shadow_and_unbilled_calls_are_never_flagged(dbs: Dbs) -> None:
    user = new_user()
    await dbs.past_charges(user, [1] * 5)

    await dbs.store.record(record(user, priced_millicredits=50_000))

    assert await dbs.metering.pool.fetchval("SELECT count(*) FROM review_flags") == 0


# --- claims and totals ----------------------------------------------------------------------


async def test_a_released_claim_is_taken_over_with_the_next_attempt_and_its_usage_id(
    dbs: Dbs,
) -> None:
    first, second = str(time_ordered_uuid()), str(time_ordered_uuid())
    assert await dbs.store.claim("alice", "k", "h", (first, None)) == Claimed(1, first)
    assert await dbs.store.claim("alice", "k", "h", (second, None)) == Taken(
        "in_progress", "h", None
    )

    await dbs.store.release("alice", "k")

    assert await dbs.store.claim("alice", "k", "h2", (second, None)) == Claimed(2, first)


async def test_a_claim_made_before_claims_kept_usage_ids_keeps_the_id_it_stood_for(
    dbs: Dbs,
) -> None:
    user, before, new = new_user(), str(uuid.uuid4()), str(time_ordered_uuid())
    await dbs.store.claim(user, "k", "h", (str(uuid.uuid4()), None))
    await dbs.metering.pool.execute(  # as migration 0012 found the claims made before it
        "UPDATE request_claims SET usage_id = NULL, state = 'released' WHERE user_id = $1", user
    )

    assert await dbs.store.claim(user, "k", "h", (new, before)) == Claimed(2, before)
    await dbs.store.release(user, "k")
    assert await dbs.store.claim(user, "k", "h", (new, before)) == Claimed(3, before)


async def test_totals_are_read_per_model(dbs: Dbs) -> None:
    user = new_user()
    await dbs.past_charges(user, [100, 200])
    now = datetime.now(UTC)

    [totals] = await dbs.store.totals(user, now - timedelta(days=1), now)

    assert (totals.model, totals.calls, totals.charged_millicredits) == ("gpt-4o", 2, 300)


# --- the pieces the settlement builds in SQL ------------------------------------------------


async def test_credits_text_in_sql_is_the_python_one(dbs: Dbs) -> None:
    values = [0, 1, -1, 999, 1000, 1001, -1000, 12_500, -12_500, 10**15 + 7, -(2**63) + 1]
    texts = await dbs.metering.pool.fetch(
        "SELECT credits_text(v) AS t FROM unnest($1::bigint[]) WITH ORDINALITY AS u(v, i)"
        " ORDER BY i",
        values,
    )
    assert [row["t"] for row in texts] == [credits_text(v) for v in values]


@pytest.mark.parametrize("charge", [1, 127, 128, 16_383, 16_384, 2**31, 2**63 - 1])
async def test_the_charge_appended_in_sql_is_read_as_the_records_charge(
    dbs: Dbs, charge: int
) -> None:
    event = usage_pb2.UsageRecorded(usage_id="u", input_tokens=3, cost_millicredits=9)
    payload = await dbs.metering.pool.fetchval(
        "SELECT $1::bytea || usage_charge_field($2)", event.SerializeToString(), charge
    )
    parsed = usage_pb2.UsageRecorded.FromString(payload)
    assert (parsed.charged_millicredits, parsed.usage_id, parsed.cost_millicredits) == (
        charge,
        "u",
        9,
    )


async def test_an_answer_head_without_keys_still_makes_an_object(dbs: Dbs) -> None:
    body = await dbs.metering.pool.fetchval(
        "SELECT settled_body('{}'::json, 1, 2, 3, 4000, 1000)::text"
    )
    expected = bodies.settled({}, TokenUsage(1, 2), 3, Balance(4000, 1000, 3000))
    assert json.loads(body) == expected
