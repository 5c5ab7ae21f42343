"""Where usage records and idempotency claims are kept: a port, and its PostgreSQL version.

Each method is one short transaction of its own, so the gateway never holds a transaction
(or a pooled connection) while it waits on the ledger or the model. Recording a usage
writes together: the row, its ``UsageRecorded`` outbox record, the claim's end, the end of
the call's in-flight reservation (these four and the read of the user's recent charges in
one statement), its shadow charge (under shadow billing) and, for a charged call over 5x the
user's recent average, a review flag and its ``BillingAlert``. A charged call's recent
average comes from its admission (``admission``), so the usual record, with neither a shadow
row nor a flag, is that one statement alone: its own transaction, one round trip.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from billing_events.outbox import OutboxColumns, OutboxRecord, write_outbox
from billing_events.topics import Topics
from billing_platform import context
from billing_platform.db import HasPool

from metering import guardrails, metrics, repository
from metering.records import CHARGED, ModelTotals, ShadowCharge, UsageRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    """This request holds the key now; ``attempt`` counts the requests that held it."""

    attempt: int


@dataclass(frozen=True)
class Taken:
    """Another request holds the key (``in_progress``) or answered it (``done``)."""

    state: str
    request_hash: str
    response_body: dict[str, Any] | None


class UsageStore(Protocol):
    async def claim(self, user_id: str, key: str, request_hash: str) -> Claimed | Taken: ...

    async def release(self, user_id: str, key: str) -> None: ...

    async def record(
        self,
        record: UsageRecord,
        shadow: ShadowCharge | None = None,
        history: guardrails.History | None = None,
    ) -> dict[str, Any] | None:
        """Store and publish; None, or the body stored earlier when the key was answered.

        ``history``: the user's recent charges a charged call is weighed against, as its
        admission read them; None: read them with the record."""
        ...

    async def totals(self, user_id: str, start: datetime, end: datetime) -> list[ModelTotals]: ...


class Pokeable(Protocol):
    def poke(self) -> None: ...


@dataclass(frozen=True)
class _Write:
    """A usage record to store, with what goes with it."""

    record: UsageRecord
    shadow: ShadowCharge | None
    history: guardrails.History | None
    outbox_row: OutboxColumns
    correlation_id: str

    @property
    def history_to_read(self) -> bool:
        return self.record.mode == CHARGED and self.history is None

    @property
    def alone(self) -> bool:
        """Nothing is written with the record (no shadow row, no flag): its one statement
        is its own transaction, without a BEGIN and a COMMIT around it."""
        if self.shadow is not None or self.history_to_read:
            return False
        charged = self.record.charged_millicredits
        return self.history is None or not guardrails.is_anomalous(charged, self.history)


class PgUsageStore:
    def __init__(
        self, db: HasPool, topics: Topics, relay: Pokeable, *, takeover_after_s: float
    ) -> None:
        self._db = db
        self._topics = topics
        self._relay = relay
        self._takeover_after_s = takeover_after_s

    async def claim(self, user_id: str, key: str, request_hash: str) -> Claimed | Taken:
        for _ in range(3):  # a claim can be released between the INSERT and the SELECT
            # No transaction: the claim is one atomic statement (one round trip, the usual
            # case), and the SELECT of someone else's claim needs no snapshot shared with it.
            async with self._db.pool.acquire() as conn:
                attempt = await repository.claim_key(
                    conn, user_id, key, request_hash, self._takeover_after_s
                )
                row = None if attempt else await repository.claimed_key(conn, user_id, key)
            if attempt:
                return Claimed(attempt)
            if row is not None and row["state"] != "released":
                body = repository.decode_body(row["response_body"])
                return Taken(row["state"], row["request_hash"], body)
        return Taken("in_progress", request_hash, None)

    async def release(self, user_id: str, key: str) -> None:
        async with self._db.pool.acquire() as conn:
            await repository.release_claim(conn, user_id, key)

    async def record(
        self,
        record: UsageRecord,
        shadow: ShadowCharge | None = None,
        history: guardrails.History | None = None,
    ) -> dict[str, Any] | None:
        correlation_id = context.current_correlation_id()
        event = OutboxRecord(
            self._topics.usage, record.user_id, record.event(correlation_id), correlation_id
        )
        write = _Write(record, shadow, history, event.columns(), correlation_id)
        async with self._db.pool.acquire() as conn:
            if write.alone:
                earlier, flagged = await self._store(conn, write)
            else:
                async with conn.transaction():
                    earlier, flagged = await self._store(conn, write)
        if earlier is not None:
            return earlier
        self._relay.poke()
        if flagged:
            metrics.ANOMALY_FLAGS.inc()
        return None

    async def _store(self, conn: Any, write: _Write) -> tuple[dict[str, Any] | None, bool]:
        """The body stored earlier (or None), and whether the new record was flagged."""
        record = write.record
        read = guardrails.ANOMALY_HISTORY if write.history_to_read else 0
        stored = await repository.store_usage(
            conn, record, write.correlation_id, write.outbox_row, read
        )
        if not stored.new:
            return await repository.stored_body(conn, record.user_id, record.idempotency_key), False
        if write.shadow is not None:
            await repository.insert_shadow_charge(conn, record, write.shadow)
        history = write.history or guardrails.History(stored.recent_calls, stored.recent_total)
        flagged = record.mode == CHARGED and await self._flag_anomaly(
            conn, record, history, write.correlation_id
        )
        return None, flagged

    async def _flag_anomaly(
        self, conn: Any, record: UsageRecord, history: guardrails.History, correlation_id: str
    ) -> bool:
        if not guardrails.is_anomalous(record.charged_millicredits, history):
            return False
        if not await repository.insert_review_flag(
            conn, record, history.average_millicredits, history.calls
        ):
            return False
        alert = guardrails.anomaly_alert(
            record.user_id, record.usage_id, record.model, record.charged_millicredits, history
        )
        await write_outbox(
            conn, self._topics.alerts, record.user_id, alert, correlation_id=correlation_id
        )
        log.warning(
            "usage flagged for review",
            extra={
                "usage_id": record.usage_id,
                "charged_millicredits": record.charged_millicredits,
                "average_millicredits": history.average_millicredits,
            },
        )
        return True

    async def totals(self, user_id: str, start: datetime, end: datetime) -> list[ModelTotals]:
        async with self._db.pool.acquire() as conn:
            return await repository.totals_by_model(conn, user_id, start, end)
