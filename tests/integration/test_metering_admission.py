"""A charged call's admission in one statement (``admit_charged_call``), on the real
PostgreSQL with the ledger's and metering's migrations in scratch schemas.

Each test checks an outcome against what the step-by-step path means: the caps of
``guardrails.check`` (compared at their edges), the rate limit, the ledger's hold rule,
the key's claim, and what is left written after each refusal.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from billing_platform.db import Database
from billing_platform.ids import time_ordered_uuid
from billing_platform.ratelimit import Limit, Limited, retry_after_s, window_at
from metering import guardrails, repository
from metering.admission import AdmissionRules, Admitted, PgAdmissions, Referred, Ticket
from metering.guardrails import Caps, Spending
from metering.ledger_client import InsufficientCredits
from metering.usage_store import Taken

CAPS = Caps(per_request=5_000, per_day=20_000, per_hour=12_000)
ESTIMATE = 4_000


def rules(**changes: Any) -> AdmissionRules:
    base = AdmissionRules(
        defaults=CAPS,
        rate=Limit("charges-per-user", 100),
        takeover_after_s=300,
        inflight_ttl_s=300,
        hold_ttl_s=120,
    )
    return replace(base, **changes)


class Dbs:
    def __init__(self, ledger: Database, metering: Database, record_charge: Any) -> None:
        self.ledger, self.metering, self.record_charge = ledger, metering, record_charge

    def admissions(self, **changes: Any) -> PgAdmissions:
        return PgAdmissions(self.metering, rules(**changes))

    async def fund(self, user: str, amount: int) -> None:
        await self.ledger.pool.execute(
            "INSERT INTO balances (user_id, balance_millicredits) VALUES ($1, $2)", user, amount
        )

    async def held(self, user: str) -> int:
        held: int = await self.ledger.pool.fetchval(
            "SELECT held_millicredits FROM balances WHERE user_id = $1", user
        )
        return held

    async def claim(self, user: str, key: str) -> tuple[str, int] | None:
        row = await self.metering.pool.fetchrow(
            "SELECT state, attempt FROM request_claims WHERE user_id = $1 AND idempotency_key = $2",
            user,
            key,
        )
        return None if row is None else (row["state"], row["attempt"])

    async def in_flight(self, user: str) -> int:
        total: int = await self.metering.pool.fetchval(
            "SELECT coalesce(sum(estimate_millicredits), 0)::bigint FROM inflight_charges"
            " WHERE user_id = $1",
            user,
        )
        return total

    async def rate_hits(self, user: str) -> int:
        hits: int = await self.metering.pool.fetchval(
            "SELECT coalesce(sum(hits), 0)::bigint FROM rate_limit_hits WHERE key = $1",
            f"charges-per-user:{user}",
        )
        return hits

    async def charge(self, user: str, amount: int, at: datetime) -> None:
        """A charged usage record made at ``at`` (what the caps count)."""
        await self.record_charge(self.metering, user, amount, at)


@pytest.fixture
def dbs(metering_dbs: Any, record_charge: Any) -> Dbs:
    return Dbs(metering_dbs.ledger, metering_dbs.metering, record_charge)


def ticket(user: str, key: str | None = None, estimate: int = ESTIMATE) -> Ticket:
    return Ticket(
        user_id=user,
        usage_id=str(time_ordered_uuid()),
        key=f"chat:{user}:{key or uuid.uuid4().hex}",
        keyed=key is not None,
        request_hash="h1",
        estimate=estimate,
    )


def new_user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


def now() -> datetime:
    return datetime.now(UTC)


async def test_an_admitted_call_is_claimed_held_and_counted_in_flight(dbs: Dbs) -> None:
    user = new_user()
    await dbs.fund(user, 100_000)
    for amount in (300, 500):
        await dbs.charge(user, amount, now() - timedelta(minutes=1))

    admitted = await dbs.admissions().admit(ticket(user, "k1"), now())

    assert isinstance(admitted, Admitted)
    assert admitted.attempt == 1
    assert admitted.history == guardrails.History(2, 800)  # what the anomaly check weighs
    assert admitted.hold.amount_millicredits == ESTIMATE
    assert admitted.hold.balance.available_millicredits == 100_000 - ESTIMATE
    assert await dbs.held(user) == ESTIMATE
    assert await dbs.claim(user, f"chat:{user}:k1") == ("in_progress", 1)
    assert await dbs.in_flight(user) == ESTIMATE
    assert await dbs.rate_hits(user) == 1


async def test_the_admission_commits_without_waiting_and_the_session_keeps_waiting(
    dbs: Dbs,
) -> None:
    """Only the admission's own transaction skips the wait for the WAL flush: the pooled
    session, which the settlement may get next, commits durably again."""
    user = new_user()
    await dbs.fund(user, 100_000)
    one = Database(dbs.metering.dsn, dbs.metering.schema, 1, 1)
    await one.start()
    try:
        async with one.pool.acquire() as conn:
            await conn.execute("SET synchronous_commit = on")  # the test cluster's is off
            async with conn.transaction():
                args = dbs.admissions()._args(ticket(user), now())
                row = await repository.admit_charged_call(conn, args)
                assert row["r_outcome"] == "admitted"
                assert await conn.fetchval("SHOW synchronous_commit") == "off"
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await one.stop()
    assert await dbs.held(user) == ESTIMATE


async def test_the_history_is_the_last_twenty_charged_calls(dbs: Dbs) -> None:
    user = new_user()
    await dbs.fund(user, 100_000)
    for i in range(25):
        await dbs.charge(user, 100 + i, now() - timedelta(minutes=30 - i))

    admitted = await dbs.admissions().admit(ticket(user), now())

    assert isinstance(admitted, Admitted)
    assert admitted.history == guardrails.History(20, sum(100 + i for i in range(5, 25)))


async def test_a_key_in_progress_is_taken_and_nothing_more_is_written(dbs: Dbs) -> None:
    user = new_user()
    await dbs.fund(user, 100_000)
    admissions = dbs.admissions()
    await admissions.admit(ticket(user, "k1"), now())

    again = await admissions.admit(ticket(user, "k1"), now())

    assert again == Taken("in_progress", "h1", None)
    assert await dbs.held(user) == ESTIMATE
    assert await dbs.rate_hits(user) == 1


async def test_a_released_key_is_taken_over_with_a_hold_of_its_own(dbs: Dbs) -> None:
    user = new_user()
    await dbs.fund(user, 100_000)
    admissions = dbs.admissions()
    first = await admissions.admit(ticket(user, "k1"), now())
    await dbs.metering.pool.execute("SELECT release_claim($1, $2, true)", user, f"chat:{user}:k1")

    second = await admissions.admit(ticket(user, "k1"), now())

    assert isinstance(first, Admitted)
    assert isinstance(second, Admitted)
    assert second.attempt == 2
    assert second.hold.hold_id != first.hold.hold_id
    assert second.usage_id == first.usage_id  # the claim's, not the second request's own
    keys = await dbs.ledger.pool.fetch(
        "SELECT idempotency_key FROM holds WHERE user_id = $1 ORDER BY created_at", user
    )
    assert [r[0] for r in keys] == [f"chat:{user}:k1", f"chat:{user}:k1:2"]


async def test_a_crashed_attempt_taken_over_keeps_its_usage_id_and_one_in_flight_row(
    dbs: Dbs,
) -> None:
    user = new_user()
    await dbs.fund(user, 100_000)
    crashed, retry = ticket(user, "k1"), ticket(user, "k1")
    first = await dbs.admissions().admit(crashed, now())

    second = await dbs.admissions(takeover_after_s=0).admit(retry, now())

    assert isinstance(first, Admitted)
    assert isinstance(second, Admitted)
    assert (first.usage_id, second.usage_id) == (crashed.usage_id, crashed.usage_id)
    assert second.attempt == 2
    assert await dbs.in_flight(user) == ESTIMATE  # the crashed attempt's row, replaced


async def test_a_call_without_a_key_is_admitted_under_its_own_usage_id(dbs: Dbs) -> None:
    user = new_user()
    await dbs.fund(user, 100_000)
    call = ticket(user)

    admitted = await dbs.admissions().admit(call, now())

    assert isinstance(admitted, Admitted)
    assert admitted.usage_id == call.usage_id
    assert uuid.UUID(admitted.usage_id).version == 7


@pytest.mark.parametrize(
    ("estimate", "today", "last_hour", "in_flight"),
    [
        (5_000, 0, 0, 0),  # the request cap exactly
        (5_001, 0, 0, 0),  # one over it
        (4_000, 16_000, 0, 0),  # the day cap exactly
        (4_000, 12_000, 0, 4_001),  # one over the day, counting what is in flight
        (4_000, 8_000, 8_000, 0),  # the hour cap exactly
        (4_000, 8_001, 8_001, 0),  # one over the hour
        (4_000, 4_000, 4_000, 4_001),  # one over the hour, counting what is in flight
    ],
)
async def test_the_caps_refer_exactly_when_the_guardrails_would_trip(
    dbs: Dbs, estimate: int, today: int, last_hour: int, in_flight: int
) -> None:
    user, at = new_user(), now()
    await dbs.fund(user, 1_000_000)
    day_start = guardrails.day_start(at)
    if today - last_hour:
        # Before the rolling hour: today, unless the day is younger than that.
        await dbs.charge(user, today - last_hour, at - guardrails.WINDOW - timedelta(minutes=1))
    if last_hour:
        await dbs.charge(user, last_hour, at)
    if in_flight:
        await dbs.metering.pool.execute(
            "SELECT reserve_inflight($1, $2, $3, $4, $5)",
            str(uuid.uuid4()),
            user,
            in_flight,
            at,
            at + timedelta(minutes=5),
        )
    state = await dbs.metering.pool.fetchrow(
        "SELECT * FROM guard_state($1, $2, $3, $4)", user, day_start, at - guardrails.WINDOW, at
    )
    spent = Spending(state["charged_today"], state["charged_last_hour"], state["in_flight"])
    trips = guardrails.check(CAPS, spent, estimate, at) is not None

    outcome = await dbs.admissions().admit(ticket(user, "k", estimate), at)

    assert isinstance(outcome, Referred if trips else Admitted), (spent, outcome)
    if trips:
        assert await dbs.held(user) == 0
        assert await dbs.in_flight(user) == in_flight
        assert await dbs.rate_hits(user) == 0
        assert await dbs.claim(user, f"chat:{user}:k") == ("in_progress", 1)


async def test_a_cap_override_is_what_counts(dbs: Dbs) -> None:
    user = new_user()
    await dbs.fund(user, 1_000_000)
    await dbs.metering.pool.execute(
        "INSERT INTO user_caps (user_id, per_request_millicredits, updated_by, reason)"
        " VALUES ($1, 3999, 'ops', 'test')",
        user,
    )

    assert isinstance(await dbs.admissions().admit(ticket(user), now()), Referred)


async def test_an_active_pause_refers_and_a_resumed_one_does_not(dbs: Dbs) -> None:
    user = new_user()
    await dbs.fund(user, 1_000_000)
    await dbs.metering.pool.execute(
        "INSERT INTO user_pauses (user_id, reason, paused_at) VALUES ($1, 'r', now())", user
    )

    assert isinstance(await dbs.admissions().admit(ticket(user), now()), Referred)
    await dbs.metering.pool.execute("UPDATE user_pauses SET resumed_at = now()")
    assert isinstance(await dbs.admissions().admit(ticket(user), now()), Admitted)


async def test_over_the_rate_limit_the_key_is_freed_and_nothing_is_held(dbs: Dbs) -> None:
    user = new_user()
    await dbs.fund(user, 1_000_000)
    admissions = dbs.admissions(rate=Limit("charges-per-user", 2))
    at = datetime(2026, 11, 26, 12, 0, 10, tzinfo=UTC)
    for key in ("a", "b"):
        assert isinstance(await admissions.admit(ticket(user, key), at), Admitted)

    refused = await admissions.admit(ticket(user, "c"), at)

    assert refused == Limited(retry_after_s(2, window_at(at, 60), 0, 2))
    assert await dbs.claim(user, f"chat:{user}:c") == ("released", 1)
    assert await dbs.held(user) == 2 * ESTIMATE
    assert await dbs.in_flight(user) == 2 * ESTIMATE


async def test_a_refused_hold_frees_the_key_and_counts_nothing_in_flight(dbs: Dbs) -> None:
    user = new_user()
    await dbs.fund(user, ESTIMATE + 500)
    admissions = dbs.admissions()
    assert isinstance(await admissions.admit(ticket(user, "a"), now()), Admitted)

    with pytest.raises(InsufficientCredits) as refused:
        await admissions.admit(ticket(user, "b"), now())

    assert (refused.value.required_millicredits, refused.value.current_millicredits) == (
        ESTIMATE,
        500,
    )
    assert await dbs.claim(user, f"chat:{user}:b") == ("released", 1)
    assert await dbs.held(user) == ESTIMATE
    assert await dbs.in_flight(user) == ESTIMATE


async def test_concurrent_admissions_never_pass_on_the_same_credit_or_headroom(
    dbs: Dbs,
) -> None:
    broke, capped = new_user(), new_user()
    await dbs.fund(broke, 5 * ESTIMATE)
    await dbs.fund(capped, 1_000_000)
    uncapped = dbs.admissions(defaults=Caps(10**9, 10**9, 10**9))

    async def admit(user: str, admissions: PgAdmissions) -> str:
        try:
            return type(await admissions.admit(ticket(user), now())).__name__
        except InsufficientCredits:
            return "insufficient"

    on_credit = await asyncio.gather(*(admit(broke, uncapped) for _ in range(20)))
    on_caps = await asyncio.gather(*(admit(capped, dbs.admissions()) for _ in range(20)))

    assert sorted(on_credit) == ["Admitted"] * 5 + ["insufficient"] * 15
    # The hour cap (12,000) fits three worst cases of 4,000 in flight.
    assert sorted(on_caps) == ["Admitted"] * 3 + ["Referred"] * 17
    assert await dbs.in_flight(capped) == 3 * ESTIMATE
