"""Admin actions as audit records: ``AdminActionRecorded`` on ``billing.audit.v1``.

Every admin action ends up exactly once in the ledger's append-only ``audit_log``. A service
records its action through its outbox, in the transaction of the action itself (``record``),
so the action and its record commit together or not at all. The ops CLI, which has no
database, publishes straight to Kafka once it has acted (``publish``). The ledger keeps each
record once by its event id (``details_of`` reads the details back).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from billing_platform import context

from billing_events.kafka import KafkaPublisher
from billing_events.outbox import write_outbox
from billing_events.topics import Topics
from billing_events.v1 import audit_pb2, common_pb2

# Actions, as stored and filtered on (``GET /api/admin/audit?action=``).
ADJUSTMENT = "adjustment"
FULFILL_PURCHASE = "fulfill_purchase"
WEBHOOK_REPLAY = "webhook_replay"
DLQ_REPLAY = "dlq_replay"
SWITCH_CHANGE = "switch_change"
CAPS_SET = "caps_set"
USER_RESUME = "user_resume"
RECONCILIATION_RUN = "reconciliation_run"


def target(kind: str, ident: str) -> str:
    """The ``<kind>:<id>`` name of what an action was done to, e.g. ``user:alice``."""
    return f"{kind}:{ident}"


@dataclass(frozen=True)
class AdminAction:
    actor: str
    action: str
    target: str
    reason: str = ""
    target_user_id: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


def admin_action_message(
    action: AdminAction,
    producer: str,
    *,
    correlation_id: str | None = None,
    occurred_at: datetime | None = None,
) -> audit_pb2.AdminActionRecorded:
    """The record of ``action``, with a new event id and the current correlation id."""
    message = audit_pb2.AdminActionRecorded(
        meta=common_pb2.EventMeta(
            event_id=str(uuid.uuid4()),
            correlation_id=correlation_id or context.current_correlation_id(),
            producer=producer,
        ),
        actor=action.actor,
        action=action.action,
        target=action.target,
        reason=action.reason,
        target_user_id=action.target_user_id,
        details={k: json.dumps(v, default=str) for k, v in action.details.items()},
    )
    message.meta.occurred_at.FromDatetime(occurred_at or datetime.now(UTC))
    return message


def details_of(message: audit_pb2.AdminActionRecorded) -> dict[str, Any]:
    """The details with their JSON types back (a value that is not JSON stays text)."""
    return {k: _json_or_text(v) for k, v in message.details.items()}


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


@dataclass(frozen=True)
class AuditTrail:
    """Where a service's admin actions go: its outbox, to ``topics.audit``."""

    topics: Topics
    producer: str

    async def record(self, conn: Any, action: AdminAction) -> audit_pb2.AdminActionRecorded:
        """Write the action's record to the outbox, in the caller's transaction."""
        message = admin_action_message(action, self.producer)
        await write_outbox(
            conn,
            self.topics.audit,
            action.target,
            message,
            correlation_id=message.meta.correlation_id,
        )
        return message

    async def publish(
        self, publisher: KafkaPublisher, action: AdminAction, correlation_id: str | None = None
    ) -> audit_pb2.AdminActionRecorded:
        """Publish the action's record now (for callers without a database)."""
        message = admin_action_message(action, self.producer, correlation_id=correlation_id)
        await publisher.publish(
            self.topics.audit, action.target, message, correlation_id=message.meta.correlation_id
        )
        return message
