"""A finding as the BillingAlert ops receive on billing.alerts.v1."""

from __future__ import annotations

from datetime import UTC, date, datetime

from billing_events.v1 import alert_pb2
from reconciler import service
from reconciler.findings import Finding, alert_for, alert_key, difference
from reconciler.period import Period
from reconciler.runs import build_record

PERIOD = Period(date(2025, 2, 28))
MISMATCH = Finding(
    check="usage_totals",
    kind="usage_mismatch",
    user_id="u1",
    references=("usage-1", "txn-1"),
    expected_millicredits=77_000,
    actual_millicredits=70_000,
    detail="model gpt-4o: metering charged 77000, the ledger posted 70000",
)


def test_a_money_mismatch_is_a_critical_alert_naming_user_kind_and_references() -> None:
    alert = alert_for(MISMATCH, "run-1", PERIOD)

    assert alert.kind == "usage_mismatch"
    assert alert.severity == alert_pb2.SEVERITY_CRITICAL
    assert alert.user_id == "u1"
    assert list(alert.reference_ids) == ["usage-1", "txn-1"]
    assert alert.source == "reconciler"
    assert alert.meta.producer == "reconciler"
    assert alert.alert_id
    assert alert.meta.event_id
    assert alert.message == "usage_mismatch: " + MISMATCH.detail


def test_the_alert_amount_is_actual_minus_expected() -> None:
    assert alert_for(MISMATCH, "run-1", PERIOD).amount_millicredits == -7_000
    assert difference(MISMATCH) == -7_000


def test_details_carry_the_check_run_period_and_both_amounts() -> None:
    details = dict(alert_for(MISMATCH, "run-1", PERIOD).details)

    assert details == {
        "check": "usage_totals",
        "run_id": "run-1",
        "period_from": "2025-02-28T00:00:00+00:00",
        "period_to": "2025-03-01T00:00:00+00:00",
        "expected_millicredits": "77000",
        "actual_millicredits": "70000",
    }


def test_lag_is_a_warning_and_a_finding_without_amounts_alerts_zero() -> None:
    lag = Finding(check="stream_lag", kind="stream_lag", detail="usage u-9 has no posting")

    alert = alert_for(lag, "run-1", PERIOD)

    assert alert.severity == alert_pb2.SEVERITY_WARNING
    assert alert.amount_millicredits == 0
    assert alert.user_id == ""
    assert "expected_millicredits" not in alert.details


def test_alerts_are_keyed_by_user_or_by_kind_when_there_is_none() -> None:
    edited = Finding(check="journal_chain", kind="journal_edited", detail="segment 0")

    assert alert_key(MISMATCH) == "u1"
    assert alert_key(edited) == "journal_edited"


def test_a_run_queues_one_alert_per_finding_in_order() -> None:
    edited = Finding(check="journal_chain", kind="journal_edited", detail="segment 0")
    at = datetime(2025, 3, 1, tzinfo=UTC)
    record = build_record("run-9", PERIOD, at, at, [("a", [MISMATCH]), ("b", [edited])], None, None)

    queued = service.alerts(record)

    assert [key for key, _ in queued] == ["u1", "journal_edited"]
    decoded = [alert_pb2.BillingAlert.FromString(payload) for _, payload in queued]
    assert [a.kind for a in decoded] == ["usage_mismatch", "journal_edited"]
    assert {a.details["run_id"] for a in decoded} == {"run-9"}
