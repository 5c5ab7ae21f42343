"""The chaos harness's pure parts: seeded schedules, the record, answer parsing, book checks."""

from __future__ import annotations

import httpx
from billing_cli.chaos import checks, killer
from billing_cli.chaos.model import Adjustment, Charge, Model, Purchase, seeded
from billing_cli.chaos.workload import billing_body


def test_same_seed_same_kill_schedule_and_infrastructure_killed_first() -> None:
    one = killer.schedule(seeded(7), 120)
    assert one == killer.schedule(seeded(7), 120)
    assert one != killer.schedule(seeded(8), 120)
    assert {"kafka", "postgres"} <= {k.target for k in one[:3]}
    assert len(one) == 12
    assert all(1.0 <= k.wait_s <= 4.0 for k in one)
    # The first Kafka kill outlasts the consumers' sessions; every other stays short.
    long = next(k for k in one if k.target == "kafka")
    assert long.down_s == killer.OUTLASTS_SESSIONS_S > 10.0
    assert all(0.5 <= k.down_s <= 3.0 for k in one if k is not long)


def test_short_run_still_plans_kafka_postgres_and_a_service() -> None:
    plan = killer.schedule(seeded(1), 15)
    assert len(plan) == 3
    assert len({k.target for k in plan} - {"kafka", "postgres"}) == 1


def test_acceptable_clawbacks_cover_unconfirmed_refunds_only_above_the_confirmed() -> None:
    p = Purchase("p1", "u", "growth", "sync", "confirmed", refunded_cents=1000)
    p.refunds_unknown = [500, 2499]
    assert p.acceptable_clawbacks() == {26_240_000 * 1000 // 2499, 26_240_000}


def test_billing_body_reads_a_stream_billing_event_or_json() -> None:
    sse = 'data: {"x": 1}\n\nevent: billing\ndata: {"usage": {"chargedMillicredits": 42}}\n\n'
    stream = httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})
    assert billing_body(stream) == {"usage": {"chargedMillicredits": 42}}
    broken = httpx.Response(
        200,
        text='event: error\ndata: {"error": "model_error"}\n\n',
        headers={"content-type": "text/event-stream"},
    )
    assert billing_body(broken) is None
    assert billing_body(httpx.Response(200, json={"usage": {"chargedMillicredits": 1}}))


def _books(txs: list[checks.Tx], records: dict[tuple[str, str], checks.Tx]) -> checks.Books:
    return checks.Books(txs, records, {}, {})


def test_grant_checks_count_lost_and_doubled() -> None:
    model = Model(users=["u"])
    model.purchases = [
        Purchase("paid", "u", "starter", "sync", "confirmed"),
        Purchase("unpaid", "u", "starter", "unpaid", "none"),
    ]
    tx = {"kind": "purchase", "user_id": "u", "reference_id": "unpaid", "wallet": 9_990_000}
    report = checks.Report()
    checks.check_grants(model, _books([tx], {}), report)
    assert (report.lost, report.doubled) == (1, 1)


def test_usage_checks_match_the_charge_the_client_saw() -> None:
    model = Model(users=["u"])
    seen = Charge("chat", "u", "k1", "confirmed", 300)
    model.charges = [seen]
    record = {"usage_id": "use-1", "charged_millicredits": 300, "user_id": "u"}
    posting = {"kind": "usage", "user_id": "u", "reference_id": "use-1", "wallet": -300}
    report = checks.Report()
    checks.check_usage(model, _books([posting], {("u", "chat:u:k1"): record}), report)
    assert report.failures == []
    report = checks.Report()
    checks.check_usage(model, _books([posting, posting], {("u", "chat:u:k1"): record}), report)
    assert report.doubled == 1
    report = checks.Report()
    checks.check_usage(model, _books([], {("u", "chat:u:k1"): record}), report)
    assert report.lost == 1


def test_adjustment_answered_201_but_missing_is_lost() -> None:
    model = Model(users=["u"], adjustments=[Adjustment("u", "a1", 5000, "confirmed")])
    report = checks.Report()
    checks.check_adjustments(model, _books([], {}), report)
    assert report.lost == 1
