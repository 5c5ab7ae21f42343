"""The switches: reading checkout's flags at run time, the billing mode of each call, and
what each mode does to a call (hold, record, event, metrics)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from billing_events.v1 import usage_pb2
from metering import service
from metering.model_client import ChatMessage, ModelError
from metering.records import CHARGED, SHADOW, UNBILLED
from metering.switches import (
    DEFAULTS,
    Decision,
    PgSwitchSource,
    Switches,
    SwitchValues,
    decide,
    from_rows,
    stable_bucket,
)
from prometheus_client import REGISTRY

PROMPT = "Say hello"


def chat(**overrides: Any) -> service.ChatCall:
    fields: dict[str, Any] = {
        "user_id": "alice",
        "model": "gpt-4o",
        "messages": [ChatMessage("user", PROMPT)],
    }
    fields.update(overrides)
    return service.ChatCall(**fields)


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def answered(gateway: service.Gateway, call: service.ChatCall) -> service.Answer:
    answer = await gateway.chat(call)
    assert isinstance(answer, service.Answer)
    return answer


# --- the stable bucket -------------------------------------------------------------------


def test_the_bucket_is_the_first_8_bytes_of_sha256_mod_100() -> None:
    digest = hashlib.sha256(b"alice").digest()

    assert stable_bucket("alice") == int.from_bytes(digest[:8], "big") % 100 == 7
    assert stable_bucket("bob") == 50


def test_the_bucket_is_stable_and_in_range() -> None:
    users = [f"user-{i}" for i in range(2000)]

    first = [stable_bucket(u) for u in users]

    assert first == [stable_bucket(u) for u in users]
    assert all(0 <= b < 100 for b in first)


def test_buckets_spread_users_evenly() -> None:
    buckets = [stable_bucket(f"user-{i}") for i in range(20_000)]

    per_decile = [sum(1 for b in buckets if b // 10 == d) for d in range(10)]

    assert all(1800 <= n <= 2200 for n in per_decile), per_decile  # 2,000 expected each


def test_raising_the_rollout_only_adds_users() -> None:
    users = [f"user-{i}" for i in range(1000)]

    def billed(pct: int) -> set[str]:
        values = SwitchValues(rollout_percentage=pct)
        return {u for u in users if decide(values, u).charged}

    assert billed(0) == set()
    assert billed(5) <= billed(25) <= billed(100) == set(users)
    assert 150 <= len(billed(25)) <= 350


# --- the mode of a call ------------------------------------------------------------------

ON = SwitchValues()


@pytest.mark.parametrize(
    ("values", "user", "expected"),
    [
        (ON, "alice", Decision(CHARGED)),
        (
            SwitchValues(billing_enabled=False),
            "alice",
            Decision(UNBILLED, "charging_off", False, UNBILLED),
        ),
        (
            SwitchValues(charging_enabled=False),
            "alice",
            Decision(UNBILLED, "charging_off", False, UNBILLED),
        ),
        # alice's bucket is 7: billed from 8% up
        (SwitchValues(rollout_percentage=8), "alice", Decision(CHARGED)),
        (
            SwitchValues(rollout_percentage=7),
            "alice",
            Decision(UNBILLED, "rollout", False, UNBILLED),
        ),
        (
            SwitchValues(rollout_percentage=0),
            "alice",
            Decision(UNBILLED, "rollout", False, UNBILLED),
        ),
        (
            SwitchValues(shadow_billing=True),
            "bob",
            Decision(SHADOW, "shadow", True, CHARGED),
        ),
        (
            SwitchValues(shadow_billing=True, shadow_allowlist=frozenset({"alice"})),
            "alice",
            Decision(CHARGED, None, True, CHARGED),
        ),
        # shadow billing decides alone: the allowlist is charged whatever its bucket
        (
            SwitchValues(
                shadow_billing=True, shadow_allowlist=frozenset({"bob"}), rollout_percentage=0
            ),
            "bob",
            Decision(CHARGED, None, True, UNBILLED),
        ),
        (
            SwitchValues(shadow_billing=True, rollout_percentage=8),
            "bob",
            Decision(SHADOW, "shadow", True, UNBILLED),
        ),
        # the runbooks' phase 0 (shadow on, charging off): the allowlist is charged, the
        # rest is only logged
        (
            SwitchValues(
                charging_enabled=False, shadow_billing=True, shadow_allowlist=frozenset({"alice"})
            ),
            "alice",
            Decision(CHARGED, None, True, UNBILLED),
        ),
        (
            SwitchValues(
                charging_enabled=False, shadow_billing=True, shadow_allowlist=frozenset({"alice"})
            ),
            "bob",
            Decision(SHADOW, "charging_off", True, UNBILLED),
        ),
        # the master switch stops everything, shadow logging too
        (
            SwitchValues(
                billing_enabled=False, shadow_billing=True, shadow_allowlist=frozenset({"alice"})
            ),
            "alice",
            Decision(UNBILLED, "charging_off", False, UNBILLED),
        ),
    ],
)
def test_the_mode_decision_table(values: SwitchValues, user: str, expected: Decision) -> None:
    assert decide(values, user) == expected


# --- reading the flags ----------------------------------------------------------------------


def test_missing_rows_keep_the_defaults() -> None:
    assert from_rows({}) == DEFAULTS == SwitchValues(True, True, False, frozenset(), 100)


def test_rows_are_read_by_name() -> None:
    rows = {
        "billingEnabled": True,
        "purchasesEnabled": False,  # checkout's own; metering ignores it
        "chargingEnabled": False,
        "shadowBilling": True,
        "shadowAllowlist": ["alice", "bob"],
        "rolloutPercentage": 25,
    }

    assert from_rows(rows) == SwitchValues(True, False, True, frozenset({"alice", "bob"}), 25)


def test_a_value_of_the_wrong_type_keeps_its_default() -> None:
    rows = {"chargingEnabled": "no", "shadowAllowlist": "alice", "rolloutPercentage": 101}

    assert from_rows(rows) == SwitchValues(True, True, False, frozenset(), 100)


class Tick:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_flags_are_read_at_most_once_per_ttl(parts: Any) -> None:
    tick = Tick()
    switches = Switches(parts.flags, ttl_s=1.0, clock=tick)
    parts.flags.rows["chargingEnabled"] = False

    assert (await switches.current()).charging_enabled is False
    parts.flags.rows["chargingEnabled"] = True
    tick.now = 0.9
    assert (await switches.current()).charging_enabled is False
    tick.now = 1.0
    assert (await switches.current()).charging_enabled is True
    assert parts.flags.reads == 2


async def test_unreadable_flags_with_nothing_cached_charge_normally(
    parts: Any, caplog: pytest.LogCaptureFixture
) -> None:
    parts.flags.broken = True

    with caplog.at_level(logging.WARNING, logger="metering.switches"):
        values = await Switches(parts.flags, ttl_s=1.0).current()

    assert values == DEFAULTS
    assert "charging normally" in caplog.text


async def test_unreadable_flags_keep_the_last_values_read(parts: Any) -> None:
    tick = Tick()
    switches = Switches(parts.flags, ttl_s=1.0, clock=tick)
    parts.flags.rows["chargingEnabled"] = False
    await switches.current()
    parts.flags.broken = True
    tick.now = 5.0

    assert (await switches.current()).charging_enabled is False
    tick.now = 5.5
    await switches.current()
    assert parts.flags.reads == 2  # the failed read waits a ttl before the next try


class FlagConn:
    def __init__(self) -> None:
        self.sql: list[str] = []

    async def fetch(self, sql: str) -> list[dict[str, Any]]:
        self.sql.append(sql)
        return [
            {"name": "chargingEnabled", "value": "false"},
            {"name": "shadowAllowlist", "value": '["alice"]'},
        ]


class FlagDb:
    def __init__(self) -> None:
        self.conn = FlagConn()

    @property
    def pool(self) -> FlagDb:
        return self

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[FlagConn]:
        yield self.conn


async def test_the_view_is_read_schema_qualified_and_decoded() -> None:
    db = FlagDb()

    rows = await PgSwitchSource(db, "checkout_blue").load()

    assert db.conn.sql == ['SELECT name, value FROM "checkout_blue".feature_flags']
    assert rows == {"chargingEnabled": False, "shadowAllowlist": ["alice"]}


def test_a_schema_that_is_not_a_plain_name_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        PgSwitchSource(FlagDb(), "checkout.x; --")


# --- what each mode does to a call ----------------------------------------------------------


async def test_charging_off_serves_the_call_without_a_hold_and_records_it_unbilled(
    parts: Any,
) -> None:
    parts.flags.rows["chargingEnabled"] = False
    before = counter("metering_unbilled_calls_total", reason="charging_off")

    answer = await answered(parts.gateway, chat())

    assert answer.status == 200
    assert parts.ledger.calls == []
    assert answer.body["usage"] == {
        "inputTokens": 1000,
        "outputTokens": 500,
        "chargedMillicredits": 0,
    }
    assert (answer.body["balance"], answer.body["billingMode"]) == (None, "unbilled")
    [record] = parts.store.records.values()
    assert (record.mode, record.charged_millicredits, record.priced_millicredits) == (
        UNBILLED,
        0,
        50_000,
    )
    assert (record.hold_id, record.transaction_id) == ("", None)
    [event] = parts.store.published
    assert (event.mode, event.charged_millicredits) == (usage_pb2.BILLING_MODE_UNBILLED, 0)
    assert parts.store.shadow == {}
    assert counter("metering_unbilled_calls_total", reason="charging_off") == before + 1


async def test_the_master_switch_off_unbills_every_call(parts: Any) -> None:
    parts.flags.rows.update(billingEnabled=False, shadowBilling=True, shadowAllowlist=["alice"])

    answer = await answered(parts.gateway, chat())

    assert answer.body["billingMode"] == "unbilled"
    assert parts.ledger.calls == []
    assert parts.store.shadow == {}


async def test_a_user_outside_the_rollout_is_not_billed(parts: Any) -> None:
    parts.flags.rows["rolloutPercentage"] = 7  # alice's bucket is 7
    before = counter("metering_unbilled_calls_total", reason="rollout")

    answer = await answered(parts.gateway, chat())

    assert answer.body["billingMode"] == "unbilled"
    assert parts.ledger.calls == []
    assert counter("metering_unbilled_calls_total", reason="rollout") == before + 1


async def test_a_user_inside_the_rollout_is_charged(parts: Any) -> None:
    parts.flags.rows["rolloutPercentage"] = 8

    answer = await answered(parts.gateway, chat())

    assert answer.body["billingMode"] == "charged"
    assert parts.ledger.kinds() == ["hold", "capture"]


async def test_shadow_billing_prices_and_logs_a_call_it_does_not_charge(parts: Any) -> None:
    parts.flags.rows["shadowBilling"] = True
    before = counter("metering_shadow_charges_millicredits_total", model="gpt-4o")
    unbilled = counter("metering_unbilled_calls_total", reason="shadow")

    answer = await answered(parts.gateway, chat())

    assert parts.ledger.calls == []
    assert answer.body["usage"]["chargedMillicredits"] == 0
    assert answer.body["billingMode"] == "shadow"
    [record] = parts.store.records.values()
    assert (record.mode, record.charged_millicredits, record.priced_millicredits) == (
        SHADOW,
        0,
        50_000,
    )
    [event] = parts.store.published
    assert (event.mode, event.charged_millicredits) == (usage_pb2.BILLING_MODE_SHADOW, 50_000)
    shadowed, shadow = parts.store.shadow[record.usage_id]
    assert (shadowed.mode, shadow.would_be_mode) == (SHADOW, CHARGED)
    assert counter("metering_shadow_charges_millicredits_total", model="gpt-4o") == before + 50_000
    assert counter("metering_unbilled_calls_total", reason="shadow") == unbilled + 1


async def test_shadow_billing_charges_the_allowlist_and_logs_it_too(parts: Any) -> None:
    parts.flags.rows.update(shadowBilling=True, shadowAllowlist=["alice"])

    answer = await answered(parts.gateway, chat())

    assert parts.ledger.kinds() == ["hold", "capture"]
    assert answer.body["usage"]["chargedMillicredits"] == 50_000
    [record] = parts.store.records.values()
    assert record.mode == CHARGED
    [event] = parts.store.published
    assert event.mode == usage_pb2.BILLING_MODE_CHARGED
    assert parts.store.shadow[record.usage_id][0].priced_millicredits == 50_000


async def test_shadow_totals_equal_what_billing_everyone_would_charge(
    make_parts: Any,
) -> None:
    parts = make_parts({"alice": 10_000_000, "bob": 10_000_000})
    parts.flags.rows.update(shadowBilling=True, shadowAllowlist=["alice"])

    for user in ("alice", "bob", "bob"):
        await parts.gateway.chat(chat(user_id=user))

    logged = sum(r.priced_millicredits for r, _ in parts.store.shadow.values())
    assert logged == 3 * 50_000
    assert parts.ledger.balance("alice").balance_millicredits == 10_000_000 - 50_000
    assert parts.ledger.balance("bob").balance_millicredits == 10_000_000


async def test_switches_apply_to_the_next_call_without_a_restart(parts: Any) -> None:
    first = await answered(parts.gateway, chat())
    parts.flags.rows["chargingEnabled"] = False
    second = await answered(parts.gateway, chat())
    parts.flags.rows["chargingEnabled"] = True
    third = await answered(parts.gateway, chat())

    modes = [a.body["billingMode"] for a in (first, second, third)]
    assert modes == ["charged", "unbilled", "charged"]
    assert parts.ledger.kinds() == ["hold", "capture", "hold", "capture"]


async def test_unreadable_flags_charge_the_call(parts: Any) -> None:
    parts.flags.broken = True

    answer = await answered(parts.gateway, chat())

    assert answer.body["billingMode"] == "charged"
    assert parts.ledger.kinds() == ["hold", "capture"]


async def test_an_unbilled_call_whose_model_fails_touches_nothing(parts: Any) -> None:
    parts.flags.rows["chargingEnabled"] = False
    parts.model.failure = ModelError("boom")

    with pytest.raises(Exception, match="model call failed"):
        await parts.gateway.chat(chat(idempotency_key="k1"))

    assert parts.ledger.calls == []
    assert parts.guard.released == []
    assert parts.store.records == {}
    assert parts.store.claims[("alice", "chat:alice:k1")].state == "released"


async def test_an_unbilled_stream_makes_no_hold(parts: Any) -> None:
    parts.flags.rows["chargingEnabled"] = False

    answer = await parts.gateway.chat(chat(stream=True))
    assert isinstance(answer, service.StreamAnswer)
    try:
        events = [event async for event in answer.events]
    finally:
        await answer.close()

    assert events[-1].startswith("event: billing\n")
    assert '"billingMode":"unbilled"' in events[-1]
    assert '"balance":null' in events[-1]
    assert parts.ledger.calls == []
    [record] = parts.store.records.values()
    assert record.mode == UNBILLED


async def test_reconcile_obeys_the_switches(parts: Any) -> None:
    parts.flags.rows["chargingEnabled"] = False
    call = service.ReconcileCall("alice", "gpt-4o", 1000, 500, "r-1")

    answer = await parts.gateway.reconcile(call)

    assert parts.ledger.calls == []
    assert answer.body["usage"]["chargedMillicredits"] == 0
    assert answer.body["billingMode"] == "unbilled"
    [record] = parts.store.records.values()
    assert (record.mode, record.priced_millicredits) == (UNBILLED, 50_000)


async def test_a_shadow_reconcile_is_logged_not_charged(parts: Any) -> None:
    parts.flags.rows["shadowBilling"] = True
    call = service.ReconcileCall("alice", "gpt-4o", 1000, 500, "r-1")

    answer = await parts.gateway.reconcile(call)

    assert parts.ledger.calls == []
    assert answer.body["billingMode"] == "shadow"
    assert len(parts.store.shadow) == 1


def test_an_unbilled_chat_over_http_answers_200_without_a_balance(app: Any) -> None:
    app.parts.flags.rows["chargingEnabled"] = False

    response = app.client.post(
        "/api/ai/chat",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]},
        headers=app.keys.headers(),
    )

    assert response.status_code == 200
    body = response.json()
    assert (body["billingMode"], body["balance"]) == ("unbilled", None)
    assert body["usage"]["chargedMillicredits"] == 0
