"""Spend guardrails per user: caps, the pause that the session cap trips, the anomaly rule.

They apply only to calls that will really be charged, and are checked before the hold
against the call's worst case (the hold amount, ``estimate``):
- per request: ``estimate > cap`` -> 429 ``request_cap_exceeded``;
- per UTC day: charged today + in flight + estimate > cap -> 429 ``daily_cap_exceeded``,
  ``resetsAt`` the next UTC midnight;
- per rolling 60 minutes (the session cap): charged in the last 60 minutes + in flight +
  estimate > cap -> 429 ``hourly_cap_exceeded``, ``resetsAt`` when enough of the window's
  charges age out (now + 60 minutes when calls in flight alone block it). Tripping it
  also pauses the user: every charged call then gets 423 ``user_paused`` until an admin
  resumes them.
"In flight" is the worst case of the user's calls that passed this check and are not
settled yet; "charged" counts only usage records of mode ``charged``.

Anomaly breaker: a charged call whose charge is over 5x the mean of the user's last 20
charged calls (at least 5 of them) recorded before it was admitted is flagged for review; it
is still served and charged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from billing_events.kafka import timestamp_now
from billing_events.v1 import alert_pb2, common_pb2
from billing_platform import context
from billing_platform.errors import ApiError
from billing_platform.money import credits_text

REQUEST, DAILY, HOURLY, PAUSED = "request", "daily", "hourly", "paused"
WINDOW = timedelta(minutes=60)

ANOMALY_FACTOR = 5
ANOMALY_HISTORY = 20
ANOMALY_MIN_HISTORY = 5
ANOMALY_KIND = "usage_anomaly"


@dataclass(frozen=True)
class Caps:
    per_request: int
    per_day: int
    per_hour: int


@dataclass(frozen=True)
class CapOverride:
    """An admin's caps for one user; None keeps the default."""

    per_request: int | None
    per_day: int | None
    per_hour: int | None
    updated_by: str
    reason: str
    updated_at: datetime


def effective(defaults: Caps, override: CapOverride | None) -> Caps:
    if override is None:
        return defaults
    return Caps(
        _or(override.per_request, defaults.per_request),
        _or(override.per_day, defaults.per_day),
        _or(override.per_hour, defaults.per_hour),
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


@dataclass(frozen=True)
class Spending:
    """What the caps count for one user at one instant, in millicredits."""

    charged_today: int
    charged_last_hour: int
    in_flight: int


@dataclass(frozen=True)
class CapTrip:
    cap: str
    cap_millicredits: int
    used_millicredits: int
    requested_millicredits: int
    resets_at: datetime | None = None

    @property
    def excess_millicredits(self) -> int:
        return self.used_millicredits + self.requested_millicredits - self.cap_millicredits


@dataclass(frozen=True)
class Pause:
    user_id: str
    reason: str
    paused_at: datetime
    resumed_at: datetime | None = None
    resumed_by: str | None = None
    resume_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.resumed_at is None


def check(caps: Caps, spending: Spending, estimate: int, now: datetime) -> CapTrip | None:
    """The first cap the call would break (request, day, hour), or None."""
    if estimate > caps.per_request:
        return CapTrip(REQUEST, caps.per_request, 0, estimate)
    day_used = spending.charged_today + spending.in_flight
    if day_used + estimate > caps.per_day:
        return CapTrip(DAILY, caps.per_day, day_used, estimate, next_midnight(now))
    hour_used = spending.charged_last_hour + spending.in_flight
    if hour_used + estimate > caps.per_hour:
        return CapTrip(HOURLY, caps.per_hour, hour_used, estimate)
    return None


def day_start(now: datetime) -> datetime:
    return datetime.combine(now.astimezone(UTC).date(), time.min, UTC)


def next_midnight(now: datetime) -> datetime:
    return day_start(now) + timedelta(days=1)


def hourly_resets_at(
    trip: CapTrip, charges: Sequence[tuple[datetime, int]], now: datetime
) -> datetime:
    """When enough of the window's charges (oldest first) have aged out for the call to fit.

    A charge leaves the window 60 minutes after it was made; if all of them leaving is not
    enough, calls in flight are what blocks, and the answer is a whole window from now.
    """
    freed = 0
    for charged_at, amount in charges:
        freed += amount
        if freed >= trip.excess_millicredits:
            return charged_at + WINDOW
    return now + WINDOW


def iso(moment: datetime) -> str:
    """UTC with a ``Z``, as the admin routes' bodies write their times."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def retry_after_s(resets_at: datetime, now: datetime) -> int:
    return max(1, math.ceil((resets_at - now).total_seconds()))


_CAP_TEXT = {
    REQUEST: "a single request may cost at most",
    DAILY: "charges per UTC day are capped at",
    HOURLY: "charges per rolling 60 minutes are capped at",
}


def cap_refusal(trip: CapTrip, now: datetime) -> ApiError:
    """429 with the cap, what counts against it, this call's worst case and when it resets."""
    resets_at = trip.resets_at
    headers = None if resets_at is None else {"Retry-After": str(retry_after_s(resets_at, now))}
    message = (
        f"{_CAP_TEXT[trip.cap]} {credits_text(trip.cap_millicredits)} credits; this request"
        f" needs up to {credits_text(trip.requested_millicredits)}"
    )
    if trip.cap == HOURLY:
        message += "; your usage is paused until an admin resumes it"
    return ApiError(
        429,
        f"{trip.cap}_cap_exceeded",
        message,
        headers=headers,
        capMillicredits=trip.cap_millicredits,
        usedMillicredits=trip.used_millicredits,
        requestedMillicredits=trip.requested_millicredits,
        resetsAt=None if resets_at is None else iso(resets_at),
    )


def paused_refusal(pause: Pause) -> ApiError:
    return ApiError(
        423,
        "user_paused",
        "charged AI usage is paused for this account after it reached its 60-minute spend"
        " cap; an admin must resume it",
        pausedAt=iso(pause.paused_at),
        reason=pause.reason,
    )


def pause_reason(trip: CapTrip) -> str:
    return (
        f"hourly_cap_exceeded: {trip.used_millicredits} used + {trip.requested_millicredits}"
        f" requested > {trip.cap_millicredits} millicredits in 60 minutes"
    )


@dataclass(frozen=True)
class History:
    """The user's last charged calls before this one (at most ``ANOMALY_HISTORY``)."""

    calls: int
    total_millicredits: int

    @property
    def average_millicredits(self) -> int:
        return self.total_millicredits // self.calls if self.calls else 0


def is_anomalous(charge: int, history: History) -> bool:
    """Over 5x the recent mean, compared exactly in integers (charge * n > 5 * total)."""
    if history.calls < ANOMALY_MIN_HISTORY:
        return False
    return charge * history.calls > ANOMALY_FACTOR * history.total_millicredits


def anomaly_alert(
    user_id: str, usage_id: str, model: str, charge: int, history: History
) -> alert_pb2.BillingAlert:
    details: dict[str, Any] = {
        "usageId": usage_id,
        "model": model,
        "chargedMillicredits": charge,
        "averageMillicredits": history.average_millicredits,
        "recentCalls": history.calls,
        "factor": ANOMALY_FACTOR,
    }
    return alert_pb2.BillingAlert(
        meta=common_pb2.EventMeta(
            event_id=context.new_id(),
            occurred_at=timestamp_now(),
            correlation_id=context.current_correlation_id(),
            producer="metering",
        ),
        alert_id=context.new_id(),
        kind=ANOMALY_KIND,
        severity=alert_pb2.SEVERITY_WARNING,
        user_id=user_id,
        message=f"usage over {ANOMALY_FACTOR}x the user's recent average; flagged for review",
        reference_ids=[usage_id],
        amount_millicredits=charge,
        details={k: str(v) for k, v in details.items()},
        source="metering",
    )
