"""Where usage records and idempotency claims are kept: a port, and its PostgreSQL version.

Each method is one short transaction of its own, so the gateway never holds a transaction
(or a pooled connection) while it waits on the ledger or the model. Recording a usage
writes together: for a charged call, the capture of its hold in the ledger; the row, its
``UsageRecorded`` outbox record, the claim's end, the end of the call's in-flight
reservation (these and the read of the user's recent charges in one statement,
``settle_charged_call`` or ``record_usage``, migration 0005); its shadow charge (under
shadow billing) and, for a charged call over 5x the user's recent average, a review flag
and its ``BillingAlert``. A charged call's recent average comes from its admission
(``admission``), so the usual record, with neither a shadow row nor a flag, is that one
statement alone: its own transaction, one round trip. The capture and the record being one
transaction, a crash can no more leave a posting without its record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import asyncpg
from billing_events.outbox import OutboxColumns, OutboxRecord, outbox_headers, write_outbox
from billing_events.topics import Topics
from billing_platform import context
from billing_platform.db import HasPool

from metering import bodies, guardrails, metrics, repository
from metering.ledger_client import Balance, Hold
from metering.model_client import TokenUsage
from metering.records import CHARGED, ModelTotals, ShadowCharge, UsageRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    """This request holds the key now; ``attempt`` counts the requests that held it, and
    ``usage_id`` is the call's usage id: the first attempt's, kept by the claim."""

    attempt: int
    usage_id: str


@dataclass(frozen=True)
class Taken:
    """Another request holds the key (``in_progress``) or answered it (``done``)."""

    state: str
    request_hash: str
    response_body: dict[str, Any] | None


@dataclass(frozen=True)
class Recorded:
    """A served call's answer; ``record`` as stored, or None when its key was answered
    before (``body`` is then that earlier answer)."""

    body: dict[str, Any]
    record: UsageRecord | None


class UsageStore(Protocol):
    async def claim(
        self, user_id: str, key: str, request_hash: str, usage_ids: tuple[str, str | None]
    ) -> Claimed | Taken:
        """Claim the key for a request whose usage id is ``usage_ids[0]`` (the second: the id
        a claim made before the claims kept one stands for)."""
        ...

    async def release(self, user_id: str, key: str) -> None: ...

    async def record(
        self,
        record: UsageRecord,
        shadow: ShadowCharge | None = None,
        history: guardrails.History | None = None,
        hold: Hold | None = None,
    ) -> Recorded:
        """Store and publish; the answer ends with the usage and the balance after it.

        ``record.response_body``: the answer's head (``bodies.settled``). ``hold``: a
        charged call's, captured for ``record.charged_millicredits`` with the record (the
        ledger may charge less: ``uncollected``); when the ledger cannot capture it, the
        record goes out for that amount, left to the ledger's usage consumer. ``history``:
        the user's recent charges a charged call is weighed against, as its admission read
        them; None: read them with the record."""
        ...

    async def totals(self, user_id: str, start: datetime, end: datetime) -> list[ModelTotals]: ...


class Pokeable(Protocol):
    def poke(self) -> None: ...


@dataclass(frozen=True)
class _Write:
    """A usage record to store, with what goes with it. ``hold``: to capture with it;
    ``balance``: the one to answer with when nothing is captured (the hold's, or None)."""

    record: UsageRecord
    shadow: ShadowCharge | None
    history: guardrails.History | None
    hold: Hold | None
    balance: Balance | None
    correlation_id: str

    @property
    def history_to_read(self) -> bool:
        return self.record.mode == CHARGED and self.history is None

    @property
    def alone(self) -> bool:
        """Nothing is written with the record (no shadow row, no flag): its one statement
        is its own transaction, without a BEGIN and a COMMIT around it. A capture charges
        at most the amount asked, so an amount not anomalous cannot become so."""
        if self.shadow is not None or self.history_to_read:
            return False
        charged = self.record.charged_millicredits
        return self.history is None or not guardrails.is_anomalous(charged, self.history)

    def uncaptured(self) -> _Write:
        """The record without its capture, for the amount asked: the ledger's usage
        consumer charges it from the topic."""
        assert self.hold is not None
        return replace(self, hold=None, balance=self.hold.balance)

    def outbox_row(self, topic: str) -> OutboxColumns:
        """Its ``UsageRecorded``; under a capture without the charge, which the settlement
        appends once the ledger has said what it charged."""
        record = self.record
        if self.hold is not None:
            record = replace(record, charged_millicredits=0)
        event = record.event(self.correlation_id)
        return OutboxRecord(topic, record.user_id, event, self.correlation_id).columns()


@dataclass(frozen=True)
class _Stored:
    """What a write found: the record as stored and whether it was flagged, or the body
    its key was answered with before."""

    record: UsageRecord | None
    flagged: bool = False
    earlier: dict[str, Any] | None = None


class PgUsageStore:
    def __init__(
        self,
        db: HasPool,
        topics: Topics,
        relay: Pokeable,
        *,
        takeover_after_s: float,
    ) -> None:
        self._db = db
        self._topics = topics
        self._relay = relay
        self._takeover_after_s = takeover_after_s

    async def claim(
        self, user_id: str, key: str, request_hash: str, usage_ids: tuple[str, str | None]
    ) -> Claimed | Taken:
        for _ in range(3):  # a claim can be released between the INSERT and the SELECT
            # No transaction: the claim is one atomic statement (one round trip, the usual
            # case), and the SELECT of someone else's claim needs no snapshot shared with it.
            async with self._db.pool.acquire() as conn:
                claimed = await repository.claim_key(
                    conn, user_id, key, request_hash, self._takeover_after_s, usage_ids
                )
                row = None if claimed else await repository.claimed_key(conn, user_id, key)
            if claimed:
                return Claimed(*claimed)
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
        hold: Hold | None = None,
    ) -> Recorded:
        correlation_id = context.current_correlation_id()
        write = _Write(record, shadow, history, hold, None, correlation_id)
        try:
            stored = await self._write(write)
        except asyncpg.RaiseError:
            if hold is None:
                raise
            # The ledger refused the capture itself (a usage id charged to another user):
            # the record still goes out, and the ledger's consumer settles or dead-letters it.
            _deferred(hold, "refused", exc_info=True)
            stored = await self._write(write.uncaptured())
        if stored.record is None:
            # Stored before under this key (a usage id derives from the user and the key, so
            # there is no other way to collide): the earlier answer is the answer.
            return Recorded(stored.earlier or {}, None)
        self._relay.poke()
        if stored.flagged:
            metrics.ANOMALY_FLAGS.inc()
        return Recorded(stored.record.response_body, stored.record)

    async def _write(self, write: _Write) -> _Stored:
        async with self._db.pool.acquire() as conn:
            if write.alone:
                return await self._store(conn, write)
            async with conn.transaction():
                return await self._store(conn, write)

    async def _store(self, conn: Any, write: _Write) -> _Stored:
        read = guardrails.ANOMALY_HISTORY if write.history_to_read else 0
        if write.hold is None:
            record = _answered(write.record, write.record.charged_millicredits, write.balance)
            row = write.outbox_row(self._topics.usage)
            stored = await repository.store_usage(conn, record, write.correlation_id, row, read)
        else:
            record, stored = await self._settle(conn, write, write.hold, read)
        if not stored.new:
            key = record.idempotency_key
            return _Stored(None, earlier=await repository.stored_body(conn, record.user_id, key))
        if write.shadow is not None:
            await repository.insert_shadow_charge(conn, record, write.shadow)
        history = write.history or guardrails.History(stored.recent_calls, stored.recent_total)
        flagged = record.mode == CHARGED and await self._flag_anomaly(
            conn, record, history, write.correlation_id
        )
        return _Stored(record, flagged)

    async def _settle(
        self, conn: Any, write: _Write, hold: Hold, read: int
    ) -> tuple[UsageRecord, repository.Stored]:
        """Capture and store in one statement; the record as stored."""
        target = repository.HoldToCapture(
            self._topics.ledger,
            outbox_headers(write.correlation_id),
            hold.hold_id,
            hold.balance.balance_millicredits,
            hold.balance.held_millicredits,
        )
        asked = write.record
        row = await repository.settle_charged_call(
            conn, target, asked, write.correlation_id, write.outbox_row(self._topics.usage), read
        )
        if row["r_outcome"] != "captured":
            _deferred(hold, row["r_outcome"])
        charged, held = row["r_charged"], row["r_held"]
        after = Balance(row["r_balance"], held, row["r_balance"] - held)
        txn = row["r_transaction_id"]
        record = replace(
            _answered(asked, charged, after),
            charged_millicredits=charged,
            uncollected_millicredits=max(0, asked.charged_millicredits - charged),
            transaction_id=str(txn) if txn else None,
        )
        stored = repository.Stored(row["r_new"], row["r_recent_calls"], row["r_recent_total"])
        return record, stored

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


def _answered(record: UsageRecord, charged: int, after: Balance | None) -> UsageRecord:
    """The record with its whole answer: the head it came with, its usage and balance."""
    tokens = TokenUsage(record.input_tokens, record.output_tokens)
    body = bodies.settled(record.response_body, tokens, charged, after)
    return replace(record, response_body=body)


def _deferred(hold: Hold, why: str, *, exc_info: bool = False) -> None:
    metrics.DEFERRED_CAPTURES.inc()
    log.warning(
        "capture not made (%s); usage left to the ledger's consumer",
        why,
        extra={"hold_id": hold.hold_id},
        exc_info=exc_info,
    )
