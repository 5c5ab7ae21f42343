"""A finding (one named mismatch), the schemas the checks read, and a finding as an alert."""

from __future__ import annotations

from dataclasses import dataclass, field

from billing_events.kafka import timestamp_now
from billing_events.v1 import alert_pb2, common_pb2
from billing_platform import context
from billing_platform.db import check_schema_name

from reconciler.period import Period

# Lag heals by itself once the consumer catches up; every other kind is money out of step.
_WARNING_KINDS = frozenset({"stream_lag"})


@dataclass(frozen=True)
class Finding:
    check: str
    kind: str
    detail: str
    user_id: str | None = None
    references: tuple[str, ...] = ()
    expected_millicredits: int | None = None
    actual_millicredits: int | None = None


@dataclass(frozen=True)
class Schemas:
    """Schema names the checks read (others') and write (``reconciler``), validated."""

    reconciler: str = "reconciler"
    ledger: str = "ledger"
    metering: str = "metering"
    webhook: str = "webhook_ingest"
    checkout: str = "checkout"
    _quoted: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = (self.reconciler, self.ledger, self.metering, self.webhook, self.checkout)
        quoted = [f'"{check_schema_name(n)}"' for n in names]
        object.__setattr__(self, "_quoted", dict(zip("RLMWC", quoted, strict=True)))

    def qualify(self, sql: str, **fragments: str) -> str:
        """Fill ``{R}``, ``{L}``, ``{M}``, ``{W}``, ``{C}`` (and fragments) into a statement."""
        return sql.format(**self._quoted, **fragments)


def difference(finding: Finding) -> int:
    """actual - expected, when both are amounts; 0 otherwise."""
    if finding.expected_millicredits is None or finding.actual_millicredits is None:
        return 0
    return finding.actual_millicredits - finding.expected_millicredits


def alert_for(finding: Finding, run_id: str, period: Period) -> alert_pb2.BillingAlert:
    """The ``BillingAlert`` ops receive on ``billing.alerts.v1`` for one finding."""
    severity = (
        alert_pb2.SEVERITY_WARNING
        if finding.kind in _WARNING_KINDS
        else alert_pb2.SEVERITY_CRITICAL
    )
    return alert_pb2.BillingAlert(
        meta=common_pb2.EventMeta(
            event_id=context.new_id(),
            occurred_at=timestamp_now(),
            correlation_id=context.current_correlation_id(),
            producer="reconciler",
        ),
        alert_id=context.new_id(),
        kind=finding.kind,
        severity=severity,
        user_id=finding.user_id or "",
        message=f"{finding.kind}: {finding.detail}",
        reference_ids=list(finding.references),
        amount_millicredits=difference(finding),
        details=_alert_details(finding, run_id, period),
        source="reconciler",
    )


def _alert_details(finding: Finding, run_id: str, period: Period) -> dict[str, str]:
    details = {
        "check": finding.check,
        "run_id": run_id,
        "period_from": period.start.isoformat(),
        "period_to": period.end.isoformat(),
    }
    if finding.expected_millicredits is not None:
        details["expected_millicredits"] = str(finding.expected_millicredits)
    if finding.actual_millicredits is not None:
        details["actual_millicredits"] = str(finding.actual_millicredits)
    return details


def alert_key(finding: Finding) -> str:
    """Kafka key: the user, so one user's alerts stay in order; the kind when no user."""
    return finding.user_id or finding.kind
