"""Timers of the reconciler: the scheduled run for yesterday, and the gauges between runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime

from billing_platform import context
from billing_platform.tasks import Periodic

from reconciler import metrics, repository
from reconciler.findings import Schemas
from reconciler.period import yesterday
from reconciler.runs import RunRequest
from reconciler.service import Answer, HasPool

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def scheduled_request(now: datetime, interval_s: float) -> RunRequest:
    """The run of the schedule slot ``now`` falls in, for yesterday.

    Slots are aligned to the epoch (a daily interval starts at UTC midnight) and the key
    names the slot, so each slot runs once whichever replica gets there first; the others
    find the key used and leave it.
    """
    period = yesterday(now)
    slot = int(now.timestamp() // interval_s)
    return RunRequest(
        period=period,
        date_text=period.day.isoformat(),
        trigger="schedule",
        idempotency_key=f"schedule:{period.day.isoformat()}:{slot}",
    )


def seconds_to_next_slot(now: datetime, interval_s: float) -> float:
    elapsed = now.timestamp() % interval_s
    return interval_s - elapsed


def scheduled_runs(
    run: Callable[[RunRequest], Awaitable[Answer]],
    interval_s: float,
    delay_s: float,
    clock: Clock = _utc_now,
) -> Periodic:
    """One reconciliation of yesterday per ``interval_s``, ``delay_s`` into each slot.

    The delay lets the day's last calls and payments reach the ledger before the day is
    judged, and after a start lets the consumers catch up (before, a backlog looks like lag).
    """

    async def tick() -> Answer:
        # Each run's log lines and alerts share one correlation id of their own.
        context.correlation_id_var.set(context.new_id())
        return await run(scheduled_request(clock(), interval_s))

    def pause() -> float:
        return seconds_to_next_slot(clock(), interval_s) + delay_s

    return Periodic("scheduled-reconciliation", tick, pause, delay_s)


class Gauges:
    """The liability and daily gauges, for the day of the latest run (yesterday before any)."""

    def __init__(self, db: HasPool, schemas: Schemas, clock: Clock = _utc_now) -> None:
        self._db = db
        self._schemas = schemas
        self._clock = clock
        self._day: date | None = None

    async def refresh(self, day: date | None = None) -> None:
        if day is not None:
            self._day = day
        shown = self._day or yesterday(self._clock()).day
        async with self._db.pool.acquire() as conn:
            figures = await repository.day_figures(conn, self._schemas, shown)
        metrics.show(figures)

    def timer(self, interval_s: float) -> Periodic:
        return Periodic("reconciler-gauges", self.refresh, interval_s)
