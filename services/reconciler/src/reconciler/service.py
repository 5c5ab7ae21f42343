"""Use cases of the reconciler: take messages into the read model, run a reconciliation.

A run, whether asked for over HTTP or by the schedule, is one unit of work: the checks,
the run and its findings, their alerts in the outbox and the hash chain's new checkpoints
are written in one REPEATABLE READ transaction, so every check sees the same snapshot and
nothing of a failed run is left behind. Runs are serialised by a lock taken before that
transaction starts, so a run always sees the one before it (and its Idempotency-Key).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol

from billing_events.audit import RECONCILIATION_RUN, AdminAction, AuditTrail
from billing_events.audit import target as audit_target
from billing_events.topics import Topics
from billing_platform import context
from billing_platform.errors import ApiError

from reconciler import metrics, repository, runs
from reconciler.checks import Check
from reconciler.findings import Finding, Schemas, alert_for, alert_key
from reconciler.period import Period
from reconciler.runs import Decision, RunRecord, RunRequest

log = logging.getLogger(__name__)


class HasPool(Protocol):
    @property
    def pool(self) -> Any: ...

    @property
    def schema(self) -> str: ...


class Pokeable(Protocol):
    def poke(self) -> None: ...


class SessionCounter(Protocol):
    async def count(self, period: Period) -> int | None: ...


class GaugeSink(Protocol):
    async def refresh(self, day: date | None = None) -> None: ...


# --- runs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    body: dict[str, Any]
    replayed: bool
    record: RunRecord


@dataclass(frozen=True)
class RunContext:
    schemas: Schemas
    topics: Topics
    checks: tuple[Check, ...]
    chain_settle_s: float
    audit: AuditTrail


async def stored_answer(conn: Any, request: RunRequest) -> Answer | None:
    """The stored run of this request's Idempotency-Key, if any; 409 for another body."""
    if request.idempotency_key is None:
        return None
    stored = await repository.run_by_key(conn, request.idempotency_key)
    decision = runs.decide(stored.request_hash if stored else None, request.request_hash)
    if decision is Decision.CONFLICT:
        raise ApiError(409, "idempotency_key_reused", "Idempotency-Key was used with another body")
    if decision is Decision.NEW or stored is None:
        return None
    record = await repository.load_run(conn, stored.run_id)
    return Answer(runs.run_body(record), True, record)


async def run_checks(conn: Any, ctx: RunContext, period: Period) -> list[tuple[str, list[Finding]]]:
    return [(check.name, await check.run(conn, ctx.schemas, period)) for check in ctx.checks]


async def reconcile(
    conn: Any, ctx: RunContext, request: RunRequest, sessions_seen: int | None
) -> RunRecord:
    """Run every check, checkpoint the chain and store the run; in the caller's transaction."""
    run_id, started = str(uuid.uuid4()), datetime.now(UTC)
    results = await run_checks(conn, ctx, request.period)
    head = await repository.extend_journal_chain(conn, ctx.schemas, ctx.chain_settle_s, run_id)
    record = runs.build_record(
        run_id, request.period, started, datetime.now(UTC), results, sessions_seen, head
    )
    await store(conn, ctx.topics, record, request)
    if request.requested_by is not None:  # an admin asked for it, not the schedule
        await ctx.audit.record(conn, run_action(record, request.requested_by))
    return record


def run_action(record: RunRecord, actor: str) -> AdminAction:
    return AdminAction(
        actor=actor,
        action=RECONCILIATION_RUN,
        target=audit_target("reconciliation", record.period.day.isoformat()),
        details={"runId": record.run_id, "status": record.status, "findings": len(record.findings)},
    )


async def store(conn: Any, topics: Topics, record: RunRecord, request: RunRequest) -> None:
    await repository.insert_run(conn, record, request)
    await repository.insert_findings(conn, record.run_id, record.findings)
    await repository.queue_alerts(
        conn, topics.alerts, alerts(record), context.current_correlation_id()
    )


def alerts(record: RunRecord) -> Sequence[tuple[str, bytes]]:
    """(Kafka key, serialized BillingAlert) for each finding of the run."""
    return [
        (alert_key(f), alert_for(f, record.run_id, record.period).SerializeToString())
        for f in record.findings
    ]


class Reconciler:
    """Runs reconciliations: replays a used Idempotency-Key, else one locked run."""

    def __init__(
        self,
        db: HasPool,
        ctx: RunContext,
        sessions: SessionCounter,
        relay: Pokeable,
        gauges: GaugeSink,
    ) -> None:
        self._db = db
        self._ctx = ctx
        self._sessions = sessions
        self._relay = relay
        self._gauges = gauges

    async def run(self, request: RunRequest) -> Answer:
        async with self._db.pool.acquire() as conn:
            replay = await stored_answer(conn, request)
        if replay is not None:
            return replay
        # Outside any transaction: a slow Stripe must not hold a snapshot or the run lock.
        seen = await self._sessions.count(request.period)
        answer = await self._run_or_record_failure(request, seen)
        if not answer.replayed:
            await self._after(answer.record)
        return answer

    async def latest(self) -> dict[str, Any] | None:
        async with self._db.pool.acquire() as conn:
            run_id = await repository.latest_run_id(conn)
            return runs.run_body(await repository.load_run(conn, run_id)) if run_id else None

    async def _run_or_record_failure(self, request: RunRequest, seen: int | None) -> Answer:
        started = datetime.now(UTC)
        try:
            return await self._locked_run(request, seen)
        except ApiError:
            raise
        except Exception as exc:
            await self._record_failure(request, started, exc)
            raise

    async def _locked_run(self, request: RunRequest, seen: int | None) -> Answer:
        async with (
            self._db.pool.acquire() as conn,
            repository.run_lock(conn, self._db.schema),
            conn.transaction(isolation="repeatable_read"),
        ):
            replay = await stored_answer(conn, request)
            if replay is not None:
                return replay
            record = await reconcile(conn, self._ctx, request, seen)
        return Answer(runs.run_body(record), False, record)

    async def _after(self, record: RunRecord) -> None:
        metrics.count_run(record)
        self._relay.poke()
        log.info(
            "reconciliation run",
            extra={
                "run_id": record.run_id,
                "period": record.period.day.isoformat(),
                "status": record.status,
                "findings": len(record.findings),
                "duration_ms": record.duration_ms,
            },
        )
        try:
            await self._gauges.refresh(record.period.day)
        except Exception:  # the run is stored; gauges catch up on their timer
            log.warning("gauge refresh after run failed", exc_info=True)

    async def _record_failure(self, request: RunRequest, started: datetime, exc: Exception) -> None:
        metrics.RUNS.labels("failed").inc()
        log.error("reconciliation run failed", exc_info=exc)
        try:
            async with self._db.pool.acquire() as conn:
                error = f"{type(exc).__name__}: {exc}"[:2000]
                await repository.insert_failed_run(conn, str(uuid.uuid4()), request, started, error)
        except Exception:
            log.warning("could not record the failed run", exc_info=True)
