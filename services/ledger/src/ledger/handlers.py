"""Kafka handlers of the ledger; each is idempotent by the message's natural key.

The inbox claim and the effect (grant, refund, alert) share one transaction: a redelivery
finds the claim and changes nothing, and a failed attempt leaves no claim behind, so the
retry starts clean.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from billing_events.inbox import first_claimed
from billing_events.kafka import BatchHandler, Handler, InboundMessage, PermanentError
from billing_events.offsets import unit_of_work
from billing_events.stripe import stripe_event
from billing_events.topics import Topics
from billing_events.v1 import audit_pb2, stripe_pb2, usage_pb2
from billing_platform import context, tracing
from billing_platform.db import Database
from billing_platform.errors import ApiError
from prometheus_client import Counter

from ledger import holds, repository, service, usage
from ledger.stripe_events import LedgerEvent, UnreadableEvent, interpret

log = logging.getLogger(__name__)

STRIPE_EVENTS_RECEIVED = Counter(
    "ledger_stripe_events_received_total",
    "Verified Stripe events consumed by the ledger",
    ["event_type", "outcome"],
)
CREDITS_PURCHASED = Counter(
    "billing_credits_purchased_total",
    "Credits granted for paid purchases (credits, including bonus)",
    ["package_code"],
)
ALERTS = Counter("billing_ledger_rejections_total", "Stripe events refused a grant", ["reason"])
USAGE_RECEIVED = Counter(
    "ledger_usage_records_received_total", "Usage records consumed by the ledger", ["outcome"]
)
AUDIT_RECEIVED = Counter(
    "ledger_audit_records_received_total",
    "Admin action records consumed into the audit trail",
    ["outcome"],
)


def stripe_event_handler(db: Database, ctx: service.LedgerContext) -> Handler:
    async def handle(message: InboundMessage) -> None:
        event = stripe_event(message)
        outcome = await _apply(db, ctx, message, event)
        _count(event.type, outcome)
        log.info(
            "stripe event",
            extra={
                "event_type": event.type,
                "stripe_event_id": event.stripe_event_id,
                "outcome": outcome.name,
            },
        )

    return handle


async def _apply(
    db: Database,
    ctx: service.LedgerContext,
    message: InboundMessage,
    event: stripe_pb2.StripeEventReceived,
) -> service.Outcome:
    key = f"stripe:{event.stripe_event_id}"
    async with unit_of_work(db) as conn:
        trace_id = tracing.current_trace_id()
        if not await repository.claim_message(conn, key, event.type, message, trace_id):
            return service.Outcome("duplicate")
        outcome = await _outcome(conn, ctx, _meaning(event))
        await repository.set_outcome(conn, key, outcome.name, outcome.detail)
        return outcome


def stripe_events_batch_handler(db: Database, ctx: service.LedgerContext) -> BatchHandler:
    """A fetched batch of Stripe events (one or more partitions) in one transaction.

    One bulk claim covers the batch; most events are of types the ledger ignores, claimed
    with that outcome, and cost nothing more. The paid and refunded ones are applied in order
    inside it, each under its own correlation id. Any failure (an undecodable event, a
    purchase not visible yet) undoes the batch, and the consumer hands its records to
    ``stripe_event_handler``.
    """

    async def handle(messages: Sequence[InboundMessage]) -> None:
        events = [stripe_event(m) for m in messages]
        meanings = [_meaning(e) for e in events]
        outcomes: dict[str, service.Outcome] = {}
        applied: dict[str, tuple[str, str | None]] = {}
        async with unit_of_work(db) as conn:
            claims = [
                repository.Claim(f"stripe:{e.stripe_event_id}", e.type, m, _ignored(meaning))
                for e, m, meaning in zip(events, messages, meanings, strict=True)
            ]
            new = await repository.claim_messages(conn, claims, tracing.current_trace_id())
            pairs = list(zip(claims, meanings, strict=True))
            for claim, meaning in first_claimed(pairs, lambda c: c[0].message_key, new):
                context.correlation_id_var.set(claim.message.correlation_id or context.new_id())
                came_to = outcomes[claim.message_key] = await _outcome(conn, ctx, meaning)
                if claim.outcome is None:  # not written with the claim
                    applied[claim.message_key] = (came_to.name, came_to.detail)
            await repository.set_outcomes(conn, applied)
        for event in events:
            outcome = outcomes.pop(f"stripe:{event.stripe_event_id}", None)
            _count(event.type, outcome or service.Outcome("duplicate"))

    return handle


async def _outcome(
    conn: object, ctx: service.LedgerContext, meaning: LedgerEvent | None
) -> service.Outcome:
    if meaning is None:
        return service.Outcome("ignored")
    return await service.apply_stripe_event(conn, ctx, meaning)


def _meaning(event: stripe_pb2.StripeEventReceived) -> LedgerEvent | None:
    try:
        return interpret(event.payload)
    except UnreadableEvent as exc:
        raise PermanentError(str(exc)) from exc


def _ignored(meaning: LedgerEvent | None) -> str | None:
    return "ignored" if meaning is None else None


def _count(event_type: str, outcome: service.Outcome) -> None:
    STRIPE_EVENTS_RECEIVED.labels(event_type, outcome.name).inc()
    if outcome.granted:
        credits = outcome.granted["millicredits"] // 1000
        CREDITS_PURCHASED.labels(outcome.granted["package_code"]).inc(credits)
    if outcome.name == "rejected":
        ALERTS.labels(outcome.detail or "unknown").inc()


def usage_handler(db: Database, topics: Topics) -> Handler:
    """Posts each charged usage record once (by usage id), capturing its hold if it has one.

    Metering usually captured the hold over HTTP already; then this finds the posting and
    changes nothing. It matters when metering published but its capture call never landed.
    """

    async def handle(message: InboundMessage) -> None:
        record = message.decode(usage_pb2.UsageRecorded)
        if not record.usage_id or not record.user_id:
            raise PermanentError("usage record without usage id or user id")
        key = f"usage:{record.usage_id}"
        async with unit_of_work(db) as conn:
            trace_id = tracing.current_trace_id()
            if not await repository.claim_message(conn, key, "usage", message, trace_id):
                outcome = "duplicate"
            else:
                outcome = await _post_usage(conn, topics, record)
                await repository.set_outcome(conn, key, outcome, None)
        USAGE_RECEIVED.labels(outcome).inc()

    return handle


def usage_batch_handler(db: Database, topics: Topics) -> BatchHandler:
    """A fetched batch of usage records (one or more partitions) in one transaction
    (``usage.post_usage_batch``).

    Records with nothing to do (not billed, or posted already) are answered from one look-up
    and not claimed; the rest are claimed in the inbox and posted. Any failure (a record
    that does not decode, a hold still to capture, a conflict) undoes the whole batch, and
    the consumer hands its records to ``usage_handler`` one by one.
    """

    async def handle(messages: Sequence[InboundMessage]) -> None:
        records = [_usage_record(m) for m in messages]
        async with unit_of_work(db) as conn:
            settled = await usage.settled_already(conn, records)
            todo = [(r, m) for r, m in zip(records, messages, strict=True) if r.key not in settled]
            outcomes = await _claim_and_post(conn, topics, todo)
        USAGE_RECEIVED.labels("duplicate").inc(len(todo) - len(outcomes))
        for outcome in [*outcomes.values(), *_each(records, settled)]:
            USAGE_RECEIVED.labels(outcome).inc()

    return handle


async def _claim_and_post(
    conn: object, topics: Topics, todo: Sequence[tuple[usage.UsageRecord, InboundMessage]]
) -> dict[str, str]:
    if not todo:
        return {}
    claims = [repository.Claim(r.key, "usage", m) for r, m in todo]
    new = await repository.claim_messages(conn, claims, tracing.current_trace_id())
    fresh = first_claimed([r for r, _ in todo], lambda r: r.key, new)
    if not fresh:
        return {}
    outcomes = await usage.post_usage_batch(conn, topics, fresh)
    await repository.set_outcomes(conn, outcomes)
    return outcomes


def _each(records: Sequence[usage.UsageRecord], settled: dict[str, str]) -> list[str]:
    """The settled outcome of each record (a record twice in the batch counts twice)."""
    return [settled[r.key] for r in records if r.key in settled]


def _usage_record(message: InboundMessage) -> usage.UsageRecord:
    record = message.decode(usage_pb2.UsageRecorded)
    if not record.usage_id or not record.user_id:
        raise PermanentError("usage record without usage id or user id")
    return usage.UsageRecord(
        key=f"usage:{record.usage_id}",
        user_id=record.user_id,
        usage=_usage_of(record),
        hold_id=record.hold_id,
        charged=record.mode == usage_pb2.BILLING_MODE_CHARGED,
        correlation_id=message.correlation_id or context.new_id(),
    )


def _usage_of(record: usage_pb2.UsageRecorded) -> holds.Usage:
    return holds.Usage(
        record.usage_id,
        record.charged_millicredits,
        record.model,
        record.input_tokens,
        record.output_tokens,
        record.rate_card_version,
    )


async def _post_usage(conn: object, topics: Topics, record: usage_pb2.UsageRecorded) -> str:
    if record.mode != usage_pb2.BILLING_MODE_CHARGED:
        return "not_billed"
    charge = _usage_of(record)
    if record.hold_id:
        try:
            await holds.capture(conn, topics, record.hold_id, charge)
            return "posted"
        except ApiError as exc:
            if exc.code != "hold_not_found":
                raise PermanentError(f"usage {record.usage_id}: {exc.code}") from exc
    await repository.lock_balance(conn, record.user_id)
    posted = await holds.charge_usage(conn, topics, record.user_id, charge, None)
    return "posted" if posted else "uncollected"


def audit_handler(db: Database) -> Handler:
    """Keeps each admin action record of ``billing.audit.v1`` once, by its event id."""

    async def handle(message: InboundMessage) -> None:
        record = message.decode(audit_pb2.AdminActionRecorded)
        if not (record.meta.event_id and record.actor and record.action and record.target):
            raise PermanentError("audit record without event id, actor, action or target")
        async with unit_of_work(db) as conn:
            kept = await repository.insert_audit(conn, record)
        AUDIT_RECEIVED.labels("kept" if kept else "duplicate").inc()

    return handle
