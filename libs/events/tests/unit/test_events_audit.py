"""The one builder of admin action records, and the two ways they leave a process."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from billing_events import audit
from billing_events.audit import AdminAction, AuditTrail, admin_action_message, details_of
from billing_events.topics import Topics
from billing_events.v1 import audit_pb2
from billing_platform.context import correlation_id_var

AT = datetime(2026, 11, 21, 12, 30, tzinfo=UTC)
SWITCH_OFF = AdminAction(
    actor="ops-7",
    action=audit.SWITCH_CHANGE,
    target=audit.target("switch", "purchasesEnabled"),
    reason="incident 7",
    details={"old": True, "new": False, "allowlist": ["a", "b"], "note": "text"},
)


class OutboxConn:
    """Keeps the rows ``write_outbox`` inserts, as the outbox table would."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    async def fetchval(self, sql: str, *args: Any) -> int:
        assert sql.startswith("INSERT INTO outbox"), sql
        self.rows.append(args)
        return len(self.rows)


class Broker:
    """Takes what a publisher publishes."""

    def __init__(self) -> None:
        self.records: list[tuple[str, Any, bytes, str | None]] = []

    async def publish(
        self, topic: str, key: Any, message: Any, *, correlation_id: str | None = None
    ) -> None:
        self.records.append((topic, key, message.SerializeToString(), correlation_id))


def test_the_record_carries_who_what_to_what_why_and_when() -> None:
    message = admin_action_message(SWITCH_OFF, "checkout", correlation_id="corr-9", occurred_at=AT)

    assert (message.actor, message.action, message.reason) == (
        "ops-7",
        "switch_change",
        "incident 7",
    )
    assert message.target == "switch:purchasesEnabled"
    assert message.meta.producer == "checkout"
    assert message.meta.correlation_id == "corr-9"
    assert message.meta.occurred_at.ToDatetime(tzinfo=UTC) == AT
    assert len(message.meta.event_id) == 36


def test_each_record_has_its_own_event_id() -> None:
    first = admin_action_message(SWITCH_OFF, "checkout", correlation_id="c")
    second = admin_action_message(SWITCH_OFF, "checkout", correlation_id="c")

    assert first.meta.event_id != second.meta.event_id


def test_details_keep_their_json_types_through_the_wire() -> None:
    message = admin_action_message(SWITCH_OFF, "checkout", correlation_id="c")
    wire = audit_pb2.AdminActionRecorded.FromString(message.SerializeToString())

    assert wire.details["new"] == "false"
    assert details_of(wire) == {"old": True, "new": False, "allowlist": ["a", "b"], "note": "text"}


def test_a_detail_that_is_not_json_is_read_as_text() -> None:
    message = audit_pb2.AdminActionRecorded(details={"raw": "not json {"})

    assert details_of(message) == {"raw": "not json {"}


def test_without_a_correlation_id_the_scope_one_is_used() -> None:
    token = correlation_id_var.set("corr-of-the-request")
    try:
        message = admin_action_message(SWITCH_OFF, "metering")
    finally:
        correlation_id_var.reset(token)

    assert message.meta.correlation_id == "corr-of-the-request"


async def test_record_writes_to_the_outbox_keyed_by_target() -> None:
    conn = OutboxConn()
    trail = AuditTrail(Topics("ns"), "checkout")

    written = await trail.record(conn, SWITCH_OFF)

    [(topic, key, payload, headers)] = conn.rows
    assert topic == "ns.billing.audit.v1"
    assert key == b"switch:purchasesEnabled"
    assert audit_pb2.AdminActionRecorded.FromString(payload) == written
    assert json.loads(headers)["correlation-id"] == written.meta.correlation_id


async def test_publish_sends_the_record_now_with_its_correlation_id() -> None:
    broker = Broker()
    trail = AuditTrail(Topics(), "billing-cli")

    sent = await trail.publish(broker, SWITCH_OFF, "corr-cli")  # type: ignore[arg-type]

    [(topic, key, payload, correlation_id)] = broker.records
    assert (topic, key, correlation_id) == ("billing.audit.v1", SWITCH_OFF.target, "corr-cli")
    assert audit_pb2.AdminActionRecorded.FromString(payload) == sent
    assert sent.meta.producer == "billing-cli"
