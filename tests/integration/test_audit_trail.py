"""One audit trail: every admin action, whichever service or the CLI took it, is kept exactly
once in the ledger's append-only ``audit_log`` and read back with ``GET /api/admin/audit``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from billing_cli import dlq, keys, stripe_sim
from billing_cli.stack import Stack
from billing_events.audit import AdminAction, admin_action_message
from billing_events.dlq_depth import replay_group
from billing_events.kafka import KafkaPublisher, ensure_topics
from billing_events.topics import Topics
from billing_events.v1 import dlq_pb2

DLQ = Topics("").stripe_events_dlq


class Admin:
    """One operator with a step-up token; each call carries its own correlation id."""

    def __init__(self, platform: Any) -> None:
        self.platform = platform
        self.actor = f"ops-{uuid.uuid4().hex[:10]}"
        token = keys.mint_token(platform.stack.layout, self.actor, ["admin"], mfa=True)
        self.token = {"Authorization": f"Bearer {token}"}
        self.sent: list[dict[str, str]] = []  # action, target, reason, correlation id

    def headers(self, action: str, target: str, reason: str) -> dict[str, str]:
        corr = f"corr-{action}-{uuid.uuid4().hex[:8]}"
        self.sent.append({"action": action, "target": target, "reason": reason, "corr": corr})
        return {**self.token, "X-Correlation-Id": corr}

    async def call(
        self, method: str, url: str, body: dict[str, Any], expect: tuple[str, str, str]
    ) -> dict[str, Any]:
        headers = self.headers(*expect)
        answer = await self.platform.http.request(method, url, json=body, headers=headers)
        assert answer.is_success, answer.text
        out: dict[str, Any] = answer.json()
        return out


async def audit_page(platform: Any, token: dict[str, str], **params: Any) -> Any:
    url = f"{platform.ledger}/api/admin/audit"
    return await platform.http.get(url, params=params, headers=token)


async def records_of(admin: Admin, **params: Any) -> list[dict[str, Any]]:
    answer = await audit_page(admin.platform, admin.token, actor=admin.actor, limit=200, **params)
    assert answer.status_code == 200, answer.text
    records: list[dict[str, Any]] = answer.json()["records"]
    return records


async def wait_for_all(admin: Admin, timeout: float = 30) -> list[dict[str, Any]]:
    async def complete() -> bool:
        return len(await records_of(admin)) >= len(admin.sent)

    await admin.platform.eventually(complete, "not every admin action reached the trail", timeout)
    return await records_of(admin)


async def take_admin_actions(
    platform: Any, admin: Admin, user: str, billing: Callable[..., str]
) -> None:
    stack = platform.stack
    await ledger_actions(platform, admin, user)
    await guardrail_actions(platform, admin, user)
    await switch_actions(platform, admin, user)
    day = datetime.now(UTC).date().isoformat()
    await admin.call(
        "POST",
        f"{stack.services['reconciler'].url}/api/admin/reconcile",
        {"date": day},
        ("reconciliation_run", f"reconciliation:{day}", ""),
    )
    await dlq_replay(stack, admin, billing)


async def ledger_actions(platform: Any, admin: Admin, user: str) -> None:
    purchase = await platform.buy(user, "starter")
    event = stripe_sim.session_completed(purchase)
    await platform.deliver(event)
    await platform.wait_balance(user, 9_990_000)
    await admin.call(
        "POST",
        f"{platform.ledger}/api/admin/adjustments",
        {"userId": user, "amountMillicredits": 5000, "reason": "goodwill", "referenceId": "t-1"},
        ("adjustment", f"user:{user}", "goodwill"),
    )
    fulfilled = await admin.call(
        "POST",
        f"{platform.ledger}/api/admin/fulfill-purchase",
        {"purchaseId": purchase.purchase_id, "reason": "customer chased it"},
        ("fulfill_purchase", f"purchase:{purchase.purchase_id}", "customer chased it"),
    )
    assert fulfilled["granted"] is False  # the webhook granted it already
    await admin.call(
        "POST",
        f"{platform.webhooks}/api/admin/webhooks/replay",
        {"eventId": event["id"], "reason": "ledger lagged"},
        ("webhook_replay", f"stripe_event:{event['id']}", "ledger lagged"),
    )


async def guardrail_actions(platform: Any, admin: Admin, user: str) -> None:
    metering = platform.stack.services["metering"].url
    await admin.call(
        "PUT",
        f"{metering}/api/admin/caps/{user}",
        {"perDayMillicredits": 400_000, "reason": "trial account"},
        ("caps_set", f"user:{user}", "trial account"),
    )
    # As if the session cap had tripped: tripping it for real takes a dozen model calls.
    await platform.sql(
        "INSERT INTO metering.user_pauses (user_id, reason, paused_at) VALUES ($1, 'test', now())",
        user,
    )
    await admin.call(
        "POST",
        f"{metering}/api/admin/users/{user}/resume",
        {"reason": "checked with the customer"},
        ("user_resume", f"user:{user}", "checked with the customer"),
    )


async def switch_actions(platform: Any, admin: Admin, user: str) -> None:
    """The allowlist changes nothing while shadow billing is off; put back as it was."""
    url = f"{platform.checkout}/api/admin/features"
    before = (await platform.http.get(url, headers=admin.token)).json()["shadowAllowlist"]
    target = "switch:shadowAllowlist"
    await admin.call(
        "PATCH",
        url,
        {"shadowAllowlist": [*before, user], "reason": "pilot user"},
        ("switch_change", target, "pilot user"),
    )
    await admin.call(
        "PATCH",
        url,
        {"shadowAllowlist": before, "reason": "pilot over"},
        ("switch_change", target, "pilot over"),
    )


async def dlq_replay(stack: Stack, admin: Admin, billing: Callable[..., str]) -> None:
    """A dead letter whose original topic nobody consumes, replayed with the CLI."""
    unconsumed = f"t{uuid.uuid4().hex[:10]}.unconsumed.v1"
    await ensure_topics(stack.kafka.bootstrap, {unconsumed: 1})
    user = admin.actor
    key = f"audit-{user}".encode()
    letter = dlq_pb2.DeadLetter(
        original_topic=unconsumed,
        original_key=key,
        original_value=b"nothing",
        consumer_group="nobody",
        error_type="TestError",
        attempts=5,
    )
    publisher = KafkaPublisher(stack.kafka.bootstrap, client_id="test-audit")
    await publisher.start()
    try:
        await publisher.publish(DLQ, key, letter)
    finally:
        await publisher.stop()
    letters = await dlq.read_letters(stack.kafka.bootstrap, DLQ, replay_group(""))
    [mine] = [x for x in letters if x.key == key.decode()]
    headers = admin.headers("dlq_replay", f"dlq:{DLQ}", "poison fixed")
    corr = headers["X-Correlation-Id"]
    options = ["--actor", admin.actor, "--reason", "poison fixed", "--correlation-id", corr]
    out = billing("dlq", "replay", "--offset", str(mine.offset), *options)
    assert f"{DLQ}:{mine.partition}:{mine.offset}" in out


async def test_every_admin_action_is_in_the_one_audit_trail_once(
    platform: Any, user: str, billing: Callable[..., str]
) -> None:
    admin = Admin(platform)

    await take_admin_actions(platform, admin, user, billing)
    records = await wait_for_all(admin)

    assert len(records) == len(admin.sent), [r["action"] for r in records]
    by_corr = {r["correlationId"]: r for r in records}
    assert len(by_corr) == len(records)
    for sent in admin.sent:
        record = by_corr[sent["corr"]]
        assert record["actor"] == admin.actor
        assert (record["action"], record["target"]) == (sent["action"], sent["target"])
        assert (record["reason"] or "") == sent["reason"]
        assert record["eventId"]
    sources = {r["action"]: r["source"] for r in records}
    assert sources == {
        "adjustment": "ledger",
        "fulfill_purchase": "ledger",
        "webhook_replay": "webhook-ingest",
        "caps_set": "metering",
        "user_resume": "metering",
        "switch_change": "checkout",
        "reconciliation_run": "reconciler",
        "dlq_replay": "billing-cli",
    }
    switch_details = [r["details"] for r in records if r["action"] == "switch_change"]
    assert {"old", "new"} <= switch_details[0].keys()
    assert [r["id"] for r in records] == sorted((r["id"] for r in records), key=int, reverse=True)


async def test_filters_and_cursor_pages_newest_first(
    platform: Any, stack: Stack, user: str
) -> None:
    admin = Admin(platform)
    await guardrail_actions(platform, admin, user)
    everything = await wait_for_all(admin)

    pages: list[str] = []
    cursor: str | None = None
    while True:
        params = {"actor": admin.actor, "limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await audit_page(platform, admin.token, **params)).json()
        pages += [r["id"] for r in page["records"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert pages == [r["id"] for r in everything]
    assert len(pages) == 2
    [resumed] = await records_of(admin, action="user_resume")
    assert resumed["target"] == f"user:{user}"
    assert len(await records_of(admin, target=f"user:{user}")) == 2
    assert await records_of(admin, target="user:somebody-else") == []
    bad = await audit_page(platform, admin.token, cursor="not-a-cursor")
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_cursor"


async def test_only_admins_read_the_trail(platform: Any, user: str) -> None:
    forbidden = await audit_page(platform, platform.auth(user))
    assert forbidden.status_code == 403
    assert forbidden.json()["error"] == "forbidden"
    anonymous = await audit_page(platform, {})
    assert anonymous.status_code == 401


async def test_the_audit_log_refuses_update_and_delete(platform: Any, user: str) -> None:
    admin = Admin(platform)
    await guardrail_actions(platform, admin, user)
    await wait_for_all(admin)
    conn = await asyncpg.connect(platform.stack.postgres.dsn)
    try:
        for statement in (
            "UPDATE ledger.audit_log SET reason = 'edited' WHERE actor = $1",
            "DELETE FROM ledger.audit_log WHERE actor = $1",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement, admin.actor)
        kept = await conn.fetchval(
            "SELECT count(*) FROM ledger.audit_log WHERE actor = $1 AND reason <> 'edited'",
            admin.actor,
        )
        assert kept == 2
    finally:
        await conn.close()


async def test_a_redelivered_record_is_kept_once(platform: Any, stack: Stack) -> None:
    admin = Admin(platform)
    action = AdminAction(admin.actor, "dlq_replay", "dlq:somewhere", "twice on the wire")
    record = admin_action_message(action, "billing-cli", correlation_id="corr-twice")
    publisher = KafkaPublisher(stack.kafka.bootstrap, client_id="test-audit")
    await publisher.start()
    try:
        for _ in range(2):
            await publisher.publish(Topics("").audit, action.target, record)
        later = admin_action_message(action, "billing-cli", correlation_id="corr-after")
        await publisher.publish(Topics("").audit, action.target, later)
    finally:
        await publisher.stop()
    admin.sent += [{"corr": "corr-twice"}, {"corr": "corr-after"}]

    # The later record is on the same partition (same key): once it is in, so is the copy.
    records = await wait_for_all(admin)

    assert [r["correlationId"] for r in records] == ["corr-after", "corr-twice"]
    assert records[1]["eventId"] == record.meta.event_id
