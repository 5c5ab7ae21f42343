"""Guardrails: the caps (with a fake clock), the pause the session cap trips, the anomaly
breaker, calls in flight, the admin routes, and the PostgreSQL store's single transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from billing_events.audit import AuditTrail
from billing_events.topics import Topics
from billing_events.v1 import alert_pb2
from billing_platform.errors import ApiError
from billing_platform.ratelimit import Limit, Limited
from metering import guardrails, pricing, service
from metering.guard_store import PgGuardStore, ReviewFlag
from metering.guardrails import (
    DAILY,
    HOURLY,
    REQUEST,
    CapOverride,
    Caps,
    CapTrip,
    History,
    Pause,
    Spending,
)
from metering.model_client import ChatMessage, ModelError, TokenUsage
from metering.rate_card import load_rate_cards
from prometheus_client import REGISTRY

NOON = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # the fake clock's start (conftest)
DEFAULT_CAPS = Caps(per_request=50_000, per_day=500_000, per_hour=100_000)
GPT_4O = load_rate_cards()[-1].rate_for("gpt-4o")
PROMPT = "Say hello"
SMALL = pricing.hold_amount(GPT_4O, [PROMPT], 100)  # the worst case of max_tokens=100
DEFAULT_WORST_CASE = pricing.hold_amount(GPT_4O, [PROMPT], 1024)


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 11, 21, hour, minute, second, tzinfo=UTC)


def chat(**overrides: Any) -> service.ChatCall:
    fields: dict[str, Any] = {
        "user_id": "alice",
        "model": "gpt-4o",
        "messages": [ChatMessage("user", PROMPT)],
        "max_tokens": 100,
    }
    fields.update(overrides)
    return service.ChatCall(**fields)


def reconcile(
    key: str, input_tokens: int = 1000, output_tokens: int = 500
) -> service.ReconcileCall:
    return service.ReconcileCall("alice", "gpt-4o", input_tokens, output_tokens, key)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def capped(make_parts: Callable[..., Any]) -> Any:
    return make_parts(caps=DEFAULT_CAPS)


async def refused(parts: Any, call: service.ChatCall) -> ApiError:
    with pytest.raises(ApiError) as raised:
        await parts.gateway.chat(call)
    return raised.value


async def charge_at(parts: Any, when: datetime, key: str, **tokens: int) -> None:
    """A charged usage of 50 credits (by default) at ``when``; reconcile is never capped."""
    parts.clock.now = when
    await parts.gateway.reconcile(reconcile(key, **tokens))


# --- the rules -----------------------------------------------------------------------------


def test_the_per_request_cap_is_inclusive() -> None:
    nothing = Spending(0, 0, 0)

    assert guardrails.check(DEFAULT_CAPS, nothing, 50_000, NOON) is None
    assert guardrails.check(DEFAULT_CAPS, nothing, 50_001, NOON) == CapTrip(
        REQUEST, 50_000, 0, 50_001, None
    )


def test_the_daily_cap_counts_charges_today_and_calls_in_flight() -> None:
    spent = Spending(charged_today=410_000, charged_last_hour=0, in_flight=50_000)

    assert guardrails.check(DEFAULT_CAPS, spent, 40_000, NOON) is None
    assert guardrails.check(DEFAULT_CAPS, spent, 40_001, NOON) == CapTrip(
        DAILY, 500_000, 460_000, 40_001, at(0) + timedelta(days=1)
    )


def test_the_hourly_cap_counts_the_last_hour_and_calls_in_flight() -> None:
    spent = Spending(charged_today=60_000, charged_last_hour=60_000, in_flight=20_000)

    assert guardrails.check(DEFAULT_CAPS, spent, 20_000, NOON) is None
    assert guardrails.check(DEFAULT_CAPS, spent, 20_001, NOON) == CapTrip(
        HOURLY, 100_000, 80_000, 20_001
    )


def test_caps_are_checked_request_then_day_then_hour() -> None:
    over_everything = Spending(10**9, 10**9, 0)

    trips = [guardrails.check(DEFAULT_CAPS, over_everything, e, NOON) for e in (60_000, 1)]

    assert [t.cap if t else None for t in trips] == [REQUEST, DAILY]


@pytest.mark.parametrize(
    ("now", "midnight"),
    [
        (at(0), datetime(2026, 11, 22, tzinfo=UTC)),
        (at(23, 59, 59), datetime(2026, 11, 22, tzinfo=UTC)),
        (
            datetime(2026, 11, 21, 23, 30, tzinfo=UTC).astimezone(),
            datetime(2026, 11, 22, tzinfo=UTC),
        ),
    ],
)
def test_the_day_resets_at_the_next_utc_midnight(now: datetime, midnight: datetime) -> None:
    assert guardrails.next_midnight(now) == midnight


def test_the_hour_resets_when_enough_of_the_window_has_aged_out() -> None:
    charges = [(at(11, 10), 30_000), (at(11, 30), 40_000), (at(11, 50), 30_000)]
    trip = CapTrip(HOURLY, 100_000, 100_000, 50_000)  # 50,000 too much

    assert guardrails.hourly_resets_at(trip, charges, NOON) == at(12, 30)


def test_the_hour_resets_in_a_whole_window_when_calls_in_flight_block_it() -> None:
    charges = [(at(11, 10), 10_000)]
    trip = CapTrip(HOURLY, 100_000, 10_000 + 90_000, 20_000)  # 90,000 of it in flight

    assert guardrails.hourly_resets_at(trip, charges, NOON) == at(13)


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    assert guardrails.retry_after_s(at(12, 10), NOON) == 600
    assert guardrails.retry_after_s(NOON + timedelta(milliseconds=1), NOON) == 1
    assert guardrails.retry_after_s(NOON - timedelta(seconds=5), NOON) == 1


def test_overrides_replace_only_the_caps_they_set() -> None:
    override = CapOverride(None, 1_000_000, None, "ops", "vip", NOON)

    assert guardrails.effective(DEFAULT_CAPS, override) == Caps(50_000, 1_000_000, 100_000)
    assert guardrails.effective(DEFAULT_CAPS, None) == DEFAULT_CAPS


def test_the_429_body_and_retry_after() -> None:
    trip = CapTrip(DAILY, 500_000, 450_000, 60_000, at(0) + timedelta(days=1))

    error = guardrails.cap_refusal(trip, NOON)

    assert error.status == 429
    assert error.headers == {"Retry-After": "43200"}
    assert error.body() == {
        "error": "daily_cap_exceeded",
        "message": "charges per UTC day are capped at 500.000 credits; this request needs up"
        " to 60.000",
        "capMillicredits": 500_000,
        "usedMillicredits": 450_000,
        "requestedMillicredits": 60_000,
        "resetsAt": "2026-11-22T00:00:00Z",
    }


def test_the_request_cap_has_no_reset_and_no_retry_after() -> None:
    error = guardrails.cap_refusal(CapTrip(REQUEST, 50_000, 0, 61_000), NOON)

    assert error.headers is None
    assert error.body()["resetsAt"] is None
    assert error.code == "request_cap_exceeded"


def test_the_423_body() -> None:
    error = guardrails.paused_refusal(Pause("alice", "hourly_cap_exceeded: ...", NOON))

    assert error.status == 423
    body = error.body()
    assert (body["error"], body["pausedAt"]) == ("user_paused", "2026-11-21T12:00:00Z")
    assert "an admin must resume" in body["message"]


@pytest.mark.parametrize(
    ("charge", "history", "flagged"),
    [
        (50_000, History(5, 50_000), False),  # exactly 5x the mean of 10,000
        (50_001, History(5, 50_000), True),
        (10**9, History(4, 4), False),  # fewer than 5 charged calls: no baseline yet
        (21, History(20, 80), True),  # mean 4: 21 > 20
        (20, History(20, 80), False),
        (1, History(5, 0), True),
    ],
)
def test_the_anomaly_rule(charge: int, history: History, flagged: bool) -> None:
    assert guardrails.is_anomalous(charge, history) is flagged


def test_the_anomaly_alert() -> None:
    alert = guardrails.anomaly_alert("alice", "u-1", "gpt-4o", 50_001, History(5, 50_000))

    assert (alert.kind, alert.severity, alert.source) == (
        "usage_anomaly",
        alert_pb2.SEVERITY_WARNING,
        "metering",
    )
    assert (alert.user_id, list(alert.reference_ids), alert.amount_millicredits) == (
        "alice",
        ["u-1"],
        50_001,
    )
    assert dict(alert.details) == {
        "usageId": "u-1",
        "model": "gpt-4o",
        "chargedMillicredits": "50001",
        "averageMillicredits": "10000",
        "recentCalls": "5",
        "factor": "5",
    }


# --- caps on the gateway -------------------------------------------------------------------


async def test_a_call_whose_worst_case_is_over_the_request_cap_is_refused_before_the_hold(
    capped: Any,
) -> None:
    before = counter("billing_cap_trips_total", cap="request")

    error = await refused(capped, chat(max_tokens=None, idempotency_key="k1"))

    assert (error.status, error.code) == (429, "request_cap_exceeded")
    assert error.extra["requestedMillicredits"] == DEFAULT_WORST_CASE > 50_000
    assert capped.ledger.calls == []
    assert capped.model.requests == []
    assert capped.store.claims[("alice", "chat:alice:k1")].state == "released"
    assert capped.store.inflight == {}
    assert counter("billing_cap_trips_total", cap="request") == before + 1


async def test_an_admin_override_lifts_the_request_cap(capped: Any) -> None:
    await capped.guard.set_caps("alice", (100_000, None, None), "ops", "long answers")

    answer = await capped.gateway.chat(chat(max_tokens=None))

    assert isinstance(answer, service.Answer)
    assert answer.status == 200


async def test_the_daily_cap_counts_todays_charges_and_resets_at_midnight(capped: Any) -> None:
    for i in range(10):  # 500 credits today
        await charge_at(capped, at(0, 30 + i), f"r-{i}")
    capped.clock.now = NOON
    before = counter("billing_cap_trips_total", cap="daily")

    error = await refused(capped, chat())

    assert (error.status, error.code) == (429, "daily_cap_exceeded")
    assert error.extra == {
        "capMillicredits": 500_000,
        "usedMillicredits": 500_000,
        "requestedMillicredits": SMALL,
        "resetsAt": "2026-11-22T00:00:00Z",
    }
    assert error.headers == {"Retry-After": str(12 * 3600)}
    assert capped.ledger.kinds().count("hold") == 10  # the reconciles only
    assert "alice" not in capped.guard.pauses
    assert counter("billing_cap_trips_total", cap="daily") == before + 1


async def test_yesterdays_charges_do_not_count_today(capped: Any) -> None:
    for i in range(10):
        await charge_at(capped, at(0, 30 + i) - timedelta(days=1), f"r-{i}")
    capped.clock.now = NOON

    answer = await capped.gateway.chat(chat())

    assert isinstance(answer, service.Answer)
    assert answer.status == 200


async def test_the_hourly_cap_refuses_and_pauses_the_user(capped: Any) -> None:
    await charge_at(capped, at(11, 10), "r-1")
    await charge_at(capped, at(11, 40), "r-2")
    capped.clock.now = NOON
    before = counter("billing_cap_trips_total", cap="hourly")

    error = await refused(capped, chat())

    assert (error.status, error.code) == (429, "hourly_cap_exceeded")
    assert error.extra == {
        "capMillicredits": 100_000,
        "usedMillicredits": 100_000,
        "requestedMillicredits": SMALL,
        "resetsAt": "2026-11-21T12:10:00Z",  # once the 11:10 charge ages out
    }
    assert error.headers == {"Retry-After": "600"}
    pause = capped.guard.pauses["alice"]
    assert (pause.active, pause.paused_at) == (True, NOON)
    assert counter("billing_cap_trips_total", cap="hourly") == before + 1


async def test_charges_older_than_60_minutes_leave_the_window(capped: Any) -> None:
    await charge_at(capped, at(10, 59, 59), "r-1")
    await charge_at(capped, at(11, 40), "r-2")
    capped.clock.now = NOON

    answer = await capped.gateway.chat(chat())

    assert isinstance(answer, service.Answer)


async def test_a_paused_user_gets_423_on_every_charged_call_until_resumed(capped: Any) -> None:
    await charge_at(capped, at(11, 10), "r-1")
    await charge_at(capped, at(11, 40), "r-2")
    capped.clock.now = NOON
    await refused(capped, chat())
    capped.clock.advance(hours=3)  # the window is long clear: the pause still holds
    before = counter("billing_cap_trips_total", cap="paused")

    error = await refused(capped, chat(idempotency_key="k2"))

    assert (error.status, error.code) == (423, "user_paused")
    assert error.extra["pausedAt"] == "2026-11-21T12:00:00Z"
    assert "an admin must resume" in error.message
    assert capped.store.claims[("alice", "chat:alice:k2")].state == "released"
    assert counter("billing_cap_trips_total", cap="paused") == before + 1

    await service.resume(capped.guard, "alice", "ops", "talked to the user", capped.clock())
    answer = await capped.gateway.chat(chat(idempotency_key="k2"))
    assert isinstance(answer, service.Answer)
    assert answer.status == 200


async def test_calls_in_flight_alone_block_the_hour_for_a_whole_window(capped: Any) -> None:
    await capped.guard.set_caps("alice", (None, None, SMALL * 2 - 1), "ops", "tight")
    stream = await capped.gateway.chat(chat(stream=True))
    assert isinstance(stream, service.StreamAnswer)

    error = await refused(capped, chat())
    await stream.close()

    assert error.code == "hourly_cap_exceeded"
    assert error.extra["usedMillicredits"] == SMALL  # the stream's worst case
    assert error.extra["resetsAt"] == "2026-11-21T13:00:00Z"
    assert error.headers == {"Retry-After": "3600"}


async def test_calls_in_flight_count_until_they_are_settled(capped: Any) -> None:
    await capped.guard.set_caps("alice", (None, SMALL * 2, None), "ops", "two at a time")
    first = await capped.gateway.chat(chat(stream=True))
    second = await capped.gateway.chat(chat(stream=True))
    assert isinstance(first, service.StreamAnswer)
    assert isinstance(second, service.StreamAnswer)
    assert sum(f.estimate for f in capped.store.inflight.values()) == 2 * SMALL

    error = await refused(capped, chat())
    assert (error.code, error.extra["usedMillicredits"]) == ("daily_cap_exceeded", 2 * SMALL)

    await first.close()
    await second.close()
    assert capped.store.inflight == {}
    assert len(capped.store.records) == 2


async def test_a_failed_model_call_stops_counting_in_flight(capped: Any) -> None:
    capped.model.failure = ModelError("boom")

    with pytest.raises(ApiError):
        await capped.gateway.chat(chat())

    assert len(capped.guard.released) == 1
    assert capped.store.inflight == {}
    assert capped.ledger.kinds() == ["hold", "release"]


async def test_a_refused_hold_stops_counting_in_flight(make_parts: Callable[..., Any]) -> None:
    parts = make_parts({"alice": 10}, caps=DEFAULT_CAPS)

    error = await refused(parts, chat())

    assert error.status == 402
    assert parts.store.inflight == {}
    assert parts.guard.spending("alice", NOON).in_flight == 0


async def test_unbilled_and_shadow_calls_skip_the_pause_and_the_caps(capped: Any) -> None:
    capped.guard.pauses["alice"] = Pause("alice", "test", NOON)
    capped.flags.rows["chargingEnabled"] = False

    unbilled = await capped.gateway.chat(chat(max_tokens=None))
    capped.flags.rows.update(chargingEnabled=True, shadowBilling=True)
    shadow = await capped.gateway.chat(chat(max_tokens=None))

    assert isinstance(unbilled, service.Answer)
    assert isinstance(shadow, service.Answer)
    assert (unbilled.body["billingMode"], shadow.body["billingMode"]) == ("unbilled", "shadow")
    assert capped.ledger.calls == []
    assert capped.store.inflight == {}


async def test_an_allowlisted_shadow_user_is_capped(capped: Any) -> None:
    capped.flags.rows.update(shadowBilling=True, shadowAllowlist=["alice"])

    error = await refused(capped, chat(max_tokens=None))

    assert error.code == "request_cap_exceeded"


async def test_reconcile_is_neither_capped_nor_paused(capped: Any) -> None:
    capped.guard.pauses["alice"] = Pause("alice", "test", NOON)
    await capped.guard.set_caps("alice", (1, 1, 1), "ops", "tiny")

    answer = await capped.gateway.reconcile(reconcile("r-1"))

    assert answer.body["usage"]["chargedMillicredits"] == 50_000
    assert capped.ledger.kinds() == ["hold", "capture"]


# --- the anomaly breaker on the gateway ------------------------------------------------------


async def history_of_five(parts: Any) -> None:
    for i in range(5):  # 500 input tokens on gpt-4o: 10,000 millicredits each
        await charge_at(parts, at(1, i), f"h-{i}", input_tokens=500, output_tokens=0)


async def test_a_call_over_5x_the_recent_average_is_served_charged_and_flagged(
    parts: Any,
) -> None:
    await history_of_five(parts)
    parts.model.usage = TokenUsage(1000, 501)  # 50,060: just over 5 x 10,000

    answer = await parts.gateway.chat(chat())

    assert isinstance(answer, service.Answer)
    assert answer.body["usage"]["chargedMillicredits"] == 50_060
    [flag] = parts.store.flags
    assert (flag.user_id, flag.charge_millicredits, flag.average_millicredits) == (
        "alice",
        50_060,
        10_000,
    )
    [alert] = parts.store.alerts
    assert (alert.kind, alert.severity) == ("usage_anomaly", alert_pb2.SEVERITY_WARNING)
    assert alert.reference_ids == [flag.usage_id]


async def test_a_call_of_exactly_5x_is_not_flagged(parts: Any) -> None:
    await history_of_five(parts)

    await parts.gateway.reconcile(reconcile("big", input_tokens=2500, output_tokens=0))

    assert parts.store.flags == []


async def test_fewer_than_five_charged_calls_are_no_baseline(parts: Any) -> None:
    for i in range(4):
        await charge_at(parts, at(1, i), f"h-{i}", input_tokens=500, output_tokens=0)

    await parts.gateway.reconcile(reconcile("huge", input_tokens=100_000))

    assert parts.store.flags == []


async def test_the_average_is_over_the_last_20_charged_calls(parts: Any) -> None:
    for i in range(5):  # old and expensive: out of the window by the end
        await charge_at(parts, at(0, i), f"old-{i}", input_tokens=50_000, output_tokens=0)
    for i in range(20):
        await charge_at(parts, at(1, i), f"h-{i}", input_tokens=500, output_tokens=0)

    await parts.gateway.reconcile(reconcile("big", input_tokens=2501, output_tokens=0))

    [flag] = [f for f in parts.store.flags if f.charge_millicredits == 50_020]
    assert (flag.average_millicredits, flag.recent_calls) == (10_000, 20)


async def test_unbilled_calls_are_neither_flagged_nor_part_of_the_average(parts: Any) -> None:
    await history_of_five(parts)
    parts.flags.rows["chargingEnabled"] = False
    for i in range(5):
        await parts.gateway.reconcile(reconcile(f"u-{i}", input_tokens=1_000_000))
    parts.flags.rows["chargingEnabled"] = True

    await parts.gateway.reconcile(reconcile("big", input_tokens=2500, output_tokens=0))

    assert parts.store.flags == []


# --- the HTTP side ---------------------------------------------------------------------------

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 100}


def over_the_hour(app: Any) -> None:
    app.parts.guard.defaults = DEFAULT_CAPS
    for key, when in (("r-1", at(11, 10)), ("r-2", at(11, 40))):
        app.parts.clock.now = when
        response = app.client.post(
            "/api/usage/reconcile",
            json={
                "userId": "alice",
                "model": "gpt-4o",
                "inputTokens": 1000,
                "outputTokens": 500,
                "idempotencyKey": key,
            },
            headers=app.keys.headers("ops", "admin"),
        )
        assert response.status_code == 200, response.text
    app.parts.clock.now = NOON


def test_the_429_over_http_carries_retry_after(app: Any) -> None:
    over_the_hour(app)

    response = app.client.post("/api/ai/chat", json=CHAT, headers=app.keys.headers())

    assert response.status_code == 429
    assert response.headers["retry-after"] == "600"
    assert list(response.json()) == [
        "error",
        "message",
        "capMillicredits",
        "usedMillicredits",
        "requestedMillicredits",
        "resetsAt",
    ]
    assert "x-billing-overhead-ms" in response.headers


def test_pause_and_resume_over_http(app: Any) -> None:
    admin = app.keys.headers("ops", "admin")
    over_the_hour(app)
    app.client.post("/api/ai/chat", json=CHAT, headers=app.keys.headers())

    paused = app.client.post("/api/ai/chat", json=CHAT, headers=app.keys.headers())
    state = app.client.get("/api/admin/users/alice/pause", headers=admin)
    resumed = app.client.post(
        "/api/admin/users/alice/resume", json={"reason": "checked with alice"}, headers=admin
    )
    again = app.client.post(
        "/api/admin/users/alice/resume", json={"reason": "twice"}, headers=admin
    )

    assert paused.status_code == 423
    assert paused.json()["error"] == "user_paused"
    assert state.status_code == 200
    assert state.json() == {
        "userId": "alice",
        "paused": True,
        "pausedAt": "2026-11-21T12:00:00Z",
        "reason": (
            f"hourly_cap_exceeded: 100000 used + {SMALL} requested > 100000 millicredits"
            " in 60 minutes"
        ),
        "resumedAt": None,
        "resumedBy": None,
        "resumeReason": None,
    }
    assert resumed.status_code == 200
    assert resumed.json()["paused"] is False
    assert (resumed.json()["resumedBy"], resumed.json()["resumeReason"]) == (
        "ops",
        "checked with alice",
    )
    assert again.status_code == 409
    assert again.json()["error"] == "not_paused"


def test_a_user_never_paused(app: Any) -> None:
    response = app.client.get(
        "/api/admin/users/bob/pause", headers=app.keys.headers("ops", "admin")
    )

    assert response.json() == {
        "userId": "bob",
        "paused": False,
        "pausedAt": None,
        "reason": None,
        "resumedAt": None,
        "resumedBy": None,
        "resumeReason": None,
    }


def test_caps_default_then_overridden(app: Any) -> None:
    app.parts.guard.defaults = DEFAULT_CAPS
    admin = app.keys.headers("ops", "admin")
    defaults = {
        "perRequestMillicredits": 50_000,
        "perDayMillicredits": 500_000,
        "perHourMillicredits": 100_000,
    }

    before = app.client.get("/api/admin/caps/alice", headers=admin)
    put = app.client.put(
        "/api/admin/caps/alice",
        json={"perDayMillicredits": 2_000_000, "reason": "enterprise trial"},
        headers=admin,
    )

    assert before.json() == {
        "userId": "alice",
        **defaults,
        "overridden": {
            "perRequestMillicredits": False,
            "perDayMillicredits": False,
            "perHourMillicredits": False,
        },
        "defaults": defaults,
        "updatedBy": None,
        "reason": None,
        "updatedAt": None,
    }
    assert put.status_code == 200
    assert put.json() == {
        "userId": "alice",
        **defaults,
        "perDayMillicredits": 2_000_000,
        "overridden": {
            "perRequestMillicredits": False,
            "perDayMillicredits": True,
            "perHourMillicredits": False,
        },
        "defaults": defaults,
        "updatedBy": "ops",
        "reason": "enterprise trial",
        "updatedAt": "2026-11-21T12:00:00Z",
    }
    assert app.client.get("/api/admin/caps/alice", headers=admin).json() == put.json()


@pytest.mark.parametrize(
    "body",
    [
        {"perDayMillicredits": 1000},  # no reason
        {"perDayMillicredits": -1, "reason": "x"},
        {"perDayMillicredits": 1.5, "reason": "x"},
        {"perWeekMillicredits": 1, "reason": "x"},
    ],
)
def test_bad_cap_changes_are_422(app: Any, body: dict[str, Any]) -> None:
    response = app.client.put(
        "/api/admin/caps/alice", json=body, headers=app.keys.headers("ops", "admin")
    )

    assert response.status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/admin/caps/alice", None),
        ("PUT", "/api/admin/caps/alice", {"reason": "mine"}),
        ("GET", "/api/admin/users/alice/pause", None),
        ("POST", "/api/admin/users/alice/resume", {"reason": "let me in"}),
        ("GET", "/api/admin/review-flags", None),
    ],
)
def test_guardrail_routes_are_for_admins(
    app: Any, method: str, path: str, body: dict[str, Any] | None
) -> None:
    as_user = app.client.request(method, path, json=body, headers=app.keys.headers())
    anonymous = app.client.request(method, path, json=body)

    assert (as_user.status_code, anonymous.status_code) == (403, 401)


def test_review_flags_are_listed_newest_first_per_user(app: Any) -> None:
    store = app.parts.store
    for i, user in enumerate(["alice", "bob", "alice"]):
        store.flags.append(review_flag(i + 1, user, created=NOON + timedelta(minutes=i)))
    admin = app.keys.headers("ops", "admin")

    everyone = app.client.get("/api/admin/review-flags", headers=admin).json()
    alice = app.client.get(
        "/api/admin/review-flags", params={"userId": "alice"}, headers=admin
    ).json()

    assert [f["id"] for f in everyone["flags"]] == [3, 2, 1]
    assert [f["id"] for f in alice["flags"]] == [3, 1]
    assert alice["flags"][0] == {
        "id": 3,
        "userId": "alice",
        "usageId": "u-3",
        "model": "gpt-4o",
        "chargeMillicredits": 60_000,
        "averageMillicredits": 10_000,
        "recentCalls": 5,
        "createdAt": "2026-11-21T12:02:00Z",
    }


def review_flag(i: int, user: str, created: datetime) -> ReviewFlag:
    return ReviewFlag(i, user, f"u-{i}", "gpt-4o", 60_000, 10_000, 5, created)


# --- the PostgreSQL store: one transaction under the user's lock ------------------------------


class GuardConn:
    """Answers PgGuardStore's statements from fixed rows and logs them in order."""

    def __init__(self, pause: dict[str, Any] | None = None, **spent: int) -> None:
        self.pause = pause
        self.spent = {"charged_today": 0, "charged_last_hour": 0, "in_flight": 0, **spent}
        self.charges: list[tuple[datetime, int]] = []
        self.rate: dict[str, int | None] = {
            "counted": 1,
            "previous": 0,
            "budget": 100,
            "current": 0,
        }
        self.log: list[str] = []
        self.transactions = 0
        self.in_transaction = False

    def _seen(self, sql: str) -> None:
        assert self.in_transaction, sql
        self.log.append(" ".join(sql.split()[:3]))

    async def execute(self, sql: str, *args: Any) -> None:
        self._seen(sql)

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        self._seen(sql)
        if "rate_limit_hits" in sql:
            return self.rate
        if "guard_state(" in sql:
            return {**self._pause_columns(), "cap_user_id": None, **self.spent}
        if "FROM user_pauses" in sql:
            return self.pause
        if "FROM user_caps" in sql:
            return None
        return self.spent

    def _pause_columns(self) -> dict[str, Any]:
        pause = self.pause or dict.fromkeys(("user_id", "reason", "paused_at"))
        return {
            "pause_user_id": pause["user_id"],
            "pause_reason": pause["reason"],
            "paused_at": pause["paused_at"],
            "resumed_at": pause.get("resumed_at"),
            "resumed_by": pause.get("resumed_by"),
            "resume_reason": pause.get("resume_reason"),
        }

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        self._seen(sql)
        return [{"created_at": c, "charged_millicredits": a} for c, a in self.charges]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.transactions += 1
        self.in_transaction = True
        try:
            yield
        finally:
            self.in_transaction = False


class GuardDb:
    def __init__(self, conn: GuardConn) -> None:
        self.conn = conn

    @property
    def pool(self) -> GuardDb:
        return self

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[GuardConn]:
        yield self.conn


def pg_store(conn: GuardConn) -> PgGuardStore:
    audit = AuditTrail(Topics(), "metering")
    return PgGuardStore(
        GuardDb(conn), DEFAULT_CAPS, inflight_ttl_s=180, audit=audit, rate=Limit("charges", 100)
    )


async def test_a_reservation_is_checked_and_counted_in_one_locked_transaction() -> None:
    conn = GuardConn(charged_today=10_000)

    assert await pg_store(conn).reserve("alice", "u-1", SMALL, NOON) is None

    assert conn.transactions == 1
    assert conn.log == [
        "SELECT pg_advisory_xact_lock($1, hashtext($2))",
        "WITH previous AS",
        "SELECT * FROM",
        "SELECT reserve_inflight($1, $2,",
    ]


async def test_a_paused_user_is_refused_without_a_reservation() -> None:
    pause = {
        "user_id": "alice",
        "reason": "r",
        "paused_at": NOON,
        "resumed_at": None,
        "resumed_by": None,
        "resume_reason": None,
    }
    conn = GuardConn(pause)

    refusal = await pg_store(conn).reserve("alice", "u-1", SMALL, NOON)

    assert isinstance(refusal, Pause)
    assert not any(line.startswith(("INSERT", "SELECT reserve_inflight")) for line in conn.log)


async def test_the_session_cap_pauses_the_user_in_the_same_transaction() -> None:
    conn = GuardConn(charged_last_hour=100_000)
    conn.charges = [(at(11, 30), 100_000)]

    refusal = await pg_store(conn).reserve("alice", "u-1", SMALL, NOON)

    assert isinstance(refusal, CapTrip)
    assert (refusal.cap, refusal.resets_at) == (HOURLY, at(12, 30))
    assert conn.transactions == 1
    assert conn.log[-3:] == [
        "SELECT created_at, charged_millicredits",
        "INSERT INTO user_pauses",
        "INSERT INTO guardrail_changes",
    ]
    assert "SELECT reserve_inflight($1, $2," not in conn.log


async def test_a_request_over_the_rate_limit_is_refused_before_anything_else() -> None:
    conn = GuardConn()
    conn.rate = {"counted": None, "previous": 0, "budget": 100, "current": 100}

    refusal = await pg_store(conn).reserve("alice", "u-1", SMALL, NOON)

    # 100 of 100 at the window's very start: one more fits once 1/100 of the next one passed.
    assert refusal == Limited(61)
    assert conn.transactions == 1
    assert conn.log == ["SELECT pg_advisory_xact_lock($1, hashtext($2))", "WITH previous AS"]


# --- admission in one statement, and its referral to the full path ----------------------------


async def test_a_charged_chat_within_its_caps_is_admitted_at_once(capped: Any) -> None:
    await capped.gateway.chat(chat(idempotency_key="k1"))

    assert capped.admissions.referred == []
    assert capped.ledger.kinds() == ["hold", "capture"]
    assert capped.store.claims[("alice", "chat:alice:k1")].state == "done"


async def test_a_paused_user_is_referred_and_the_full_path_answers(capped: Any) -> None:
    capped.guard.pauses["alice"] = Pause("alice", "test", NOON)

    error = await refused(capped, chat(idempotency_key="k1"))

    assert error.status == 423
    assert len(capped.admissions.referred) == 1
    assert capped.ledger.kinds() == []
    assert capped.store.claims[("alice", "chat:alice:k1")].state == "released"


async def test_a_call_over_a_cap_is_referred_and_the_session_cap_pauses(capped: Any) -> None:
    capped.guard.overrides["alice"] = CapOverride(None, None, 1_000, "ops", "test", NOON)

    error = await refused(capped, chat())

    assert error.code == "hourly_cap_exceeded"
    assert len(capped.admissions.referred) == 1
    assert capped.guard.pauses["alice"].active
