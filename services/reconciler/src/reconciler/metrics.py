"""Prometheus metrics of the reconciler: runs, findings, and the finance gauges."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from reconciler.repository import DayFigures
from reconciler.runs import RunRecord

MILLICREDITS_PER_USD = 1_000_000

FINDINGS = Counter(
    "reconciliation_findings_total", "Mismatches found by reconciliation runs", ["check", "kind"]
)
RUNS = Counter("reconciliation_runs_total", "Reconciliation runs by outcome", ["status"])
DURATION = Histogram(
    "reconciliation_duration_seconds",
    "Time the checks of a finished reconciliation run took",
    buckets=(0.1, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0),
)
STREAM_MESSAGES = Counter(
    "reconciler_stream_messages_total",
    "Messages taken into the read model (new) or already there (duplicate)",
    ["topic", "outcome"],
)
LIABILITY = Gauge(
    "liability_outstanding_credits_usd", "Credits owed to users (all wallet balances), in USD"
)
MARGIN = Gauge(
    "margin_gross_daily_usd",
    "Charged usage minus model cost for the reconciled UTC day, in USD",
)
PURCHASED = Gauge(
    "billing_credits_purchased_day_millicredits",
    "Credits granted for purchases during the reconciled UTC day",
)
CONSUMED = Gauge(
    "billing_credits_consumed_day_millicredits",
    "Credits deducted for usage during the reconciled UTC day",
)


def usd(millicredits: int) -> float:
    # A gauge is a float by nature; the sum it shows was added up in integers.
    return millicredits / MILLICREDITS_PER_USD


def count_run(record: RunRecord) -> None:
    RUNS.labels(record.status).inc()
    DURATION.observe(record.duration_ms / 1000)
    for finding in record.findings:
        FINDINGS.labels(finding.check, finding.kind).inc()


def show(figures: DayFigures) -> None:
    LIABILITY.set(usd(figures.outstanding_millicredits))
    MARGIN.set(usd(figures.charged_millicredits - figures.cost_millicredits))
    PURCHASED.set(figures.purchased_millicredits)
    CONSUMED.set(figures.consumed_millicredits)


ALERTS_FORWARDED = Counter(
    "billing_alerts_forwarded_total",
    "Alerts of billing.alerts.v1 posted to the alert webhook (or found posted already)",
    ["kind", "outcome"],
)
