"""Use cases of webhook-ingest: accept a signed Stripe delivery, replay a stored event.

Functions taking ``conn`` run inside the caller's transaction and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from billing_events.audit import WEBHOOK_REPLAY, AdminAction, AuditTrail
from billing_events.audit import target as audit_target
from billing_events.outbox import OutboxColumns, OutboxRecord, write_outbox, write_outbox_rows
from billing_events.topics import Topics
from billing_events.v1 import stripe_pb2
from billing_platform.errors import ApiError

from webhook_ingest import repository
from webhook_ingest.events import MalformedEvent, envelope_from_body, event_key
from webhook_ingest.signature import SignatureError, verify_signature


def verified_envelope(
    body: bytes, signature: str | None, secrets: Sequence[str], tolerance_s: int, now: float
) -> stripe_pb2.StripeEventReceived:
    """The envelope of a genuine delivery; 400 with a stable code for anything else."""
    try:
        verify_signature(body, signature, secrets, tolerance_s, now)
    except SignatureError as exc:
        raise ApiError(400, exc.code, str(exc)) from exc
    try:
        return envelope_from_body(body)
    except MalformedEvent as exc:
        # The parser's message may quote the body, so it is not passed on.
        raise ApiError(400, "malformed_payload", "body is not a Stripe event") from exc


@dataclass(frozen=True)
class Delivery:
    """A verified event bound for the store. Its outbox row is prepared in the request's
    scope, so it carries that request's correlation id and trace context although the
    group committer's task writes it."""

    envelope: stripe_pb2.StripeEventReceived
    outbox_row: OutboxColumns


def delivery(topics: Topics, envelope: stripe_pb2.StripeEventReceived) -> Delivery:
    key, correlation_id = event_key(envelope), envelope.meta.correlation_id
    record = OutboxRecord(topics.stripe_events, key, envelope, correlation_id)
    return Delivery(envelope, record.columns())


async def store_deliveries(conn: Any, deliveries: Sequence[Delivery]) -> list[bool]:
    """Store each event not stored yet with its outbox record, in the caller's transaction.

    Per delivery: True when its event is new, False for a redelivery (nothing written for
    it). Of several deliveries of one event in ``deliveries``, the first is the new one.
    """
    firsts = _first_of_each_event(deliveries)
    stored = await repository.insert_events(conn, [deliveries[i].envelope for i in firsts])
    new = [i for i in firsts if deliveries[i].envelope.stripe_event_id in stored]
    await write_outbox_rows(conn, [deliveries[i].outbox_row for i in new])
    is_new = set(new)
    return [i in is_new for i in range(len(deliveries))]


def _first_of_each_event(deliveries: Sequence[Delivery]) -> list[int]:
    """Indexes of the first delivery of each event id, ascending."""
    firsts: dict[str, int] = {}
    for index, one in enumerate(deliveries):
        firsts.setdefault(one.envelope.stripe_event_id, index)
    return list(firsts.values())


async def replay_event(conn: Any, topics: Topics, event_id: str) -> stripe_pb2.StripeEventReceived:
    """Queue a stored event for publishing again, as a new envelope of the current request."""
    stored = await repository.stored_event(conn, event_id)
    if stored is None:
        raise ApiError(404, "event_not_found", "no stored Stripe event with this id")
    envelope = envelope_from_body(stored.payload)
    # Consumers see when the delivery really arrived, not when it was replayed.
    envelope.received_at.FromDatetime(stored.received_at)
    await _publish_later(conn, topics, envelope)
    return envelope


@dataclass(frozen=True)
class ReplayedBy:
    actor: str
    reason: str


async def record_replay(
    conn: Any, audit: AuditTrail, envelope: stripe_pb2.StripeEventReceived, by: ReplayedBy
) -> None:
    """The replay's audit record, in the transaction that queues the event again."""
    action = AdminAction(
        actor=by.actor,
        action=WEBHOOK_REPLAY,
        target=audit_target("stripe_event", envelope.stripe_event_id),
        reason=by.reason,
        details={"eventType": envelope.type},
    )
    await audit.record(conn, action)


async def _publish_later(
    conn: Any, topics: Topics, envelope: stripe_pb2.StripeEventReceived
) -> None:
    await write_outbox(
        conn,
        topics.stripe_events,
        event_key(envelope),
        envelope,
        correlation_id=envelope.meta.correlation_id,
    )
