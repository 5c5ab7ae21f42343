"""Purchase to credits on the running platform: checkout, signed webhooks, the ledger.

Everything here goes through the services as `billing up` runs them (real broker, real
Postgres, stripe-mock behind checkout), with webhooks signed exactly as Stripe signs them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer
from billing_cli import stripe_sim
from billing_cli.stack import Stack
from billing_events.kafka import KafkaPublisher
from billing_events.topics import Topics
from billing_events.v1 import alert_pb2
from webhook_ingest.events import envelope_from_body, publish_stripe_event

PROFESSIONAL_GRANT = (49_990 + 5_000) * 1000
STARTER_GRANT = 9_990 * 1000


async def grants_of(platform: Any, purchase_id: str) -> int:
    count: int = await platform.sql(
        "SELECT count(*) FROM ledger.journal_transactions"
        " WHERE kind = 'purchase' AND reference_id = $1",
        purchase_id,
    )
    return count


async def find_alert(stack: Stack, kind: str, reference: str, timeout: float = 20) -> Any:
    """The first alert of ``kind`` naming ``reference`` on the alerts topic."""
    consumer = AIOKafkaConsumer(
        Topics("").alerts, bootstrap_servers=stack.kafka.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    alert = alert_pb2.BillingAlert.FromString(record.value or b"")
                    if alert.kind == kind and reference in alert.reference_ids:
                        return alert
        raise AssertionError(f"no {kind} alert for {reference}")
    finally:
        await consumer.stop()


async def test_paid_checkout_grants_credits_plus_bonus(platform: Any, user: str) -> None:
    purchase = await platform.buy(user, "professional")
    assert (await platform.purchase(purchase.purchase_id))["status"] == "pending"

    response = await platform.deliver(stripe_sim.session_completed(purchase))
    assert response.status_code == 200, response.text

    await platform.wait_balance(user, PROFESSIONAL_GRANT)
    balance = await platform.balance(user)
    assert balance["balanceCredits"] == "54990.000"
    assert balance["availableMillicredits"] == PROFESSIONAL_GRANT
    ledger = await platform.http.get(f"{platform.ledger}/api/ledger", headers=platform.auth(user))
    [entry] = ledger.json()["entries"]
    assert entry["kind"] == "purchase"
    assert entry["referenceId"] == purchase.purchase_id
    assert entry["amountMillicredits"] == PROFESSIONAL_GRANT
    assert entry["balanceAfterMillicredits"] == PROFESSIONAL_GRANT
    await platform.wait_status(purchase.purchase_id, "fulfilled")


async def test_redeliveries_and_both_paid_events_grant_once(
    platform: Any, user: str, publisher: KafkaPublisher
) -> None:
    purchase = await platform.buy(user, "starter")
    completed = stripe_sim.session_completed(purchase)
    async_paid = stripe_sim.async_payment_succeeded(purchase)
    body = json.dumps(completed).encode()

    deliveries = [platform.deliver(completed) for _ in range(5)]
    deliveries.insert(2, platform.deliver(async_paid))
    # Past webhook-ingest's own dedup: the same event straight onto the topic, five times.
    direct = [
        publish_stripe_event(publisher, Topics(""), envelope_from_body(body)) for _ in range(5)
    ]
    fulfil = platform.http.post(
        f"{platform.ledger}/api/admin/fulfill-purchase",
        json={"purchaseId": purchase.purchase_id},
        headers=platform.auth("ops", admin=True),
    )
    results = await asyncio.gather(*deliveries, *direct, fulfil)
    assert all(r.status_code == 200 for r in results[:6]), [r.text for r in results[:6]]
    assert sum(r.json()["duplicate"] for r in results[:6]) == 4

    await platform.wait_balance(user, STARTER_GRANT)
    await platform.wait_status(purchase.purchase_id, "fulfilled")

    async def both_events_seen() -> bool:
        handled = await platform.sql(
            "SELECT count(*) FROM ledger.inbox WHERE message_key = ANY($1::text[])",
            [f"stripe:{completed['id']}", f"stripe:{async_paid['id']}"],
        )
        return bool(handled == 2)

    await platform.eventually(both_events_seen, "the ledger did not see both events")
    assert await grants_of(platform, purchase.purchase_id) == 1
    assert (await platform.balance(user))["balanceMillicredits"] == STARTER_GRANT


async def test_event_ahead_of_its_purchase_row_is_retried_then_granted(
    platform: Any, user: str
) -> None:
    purchase = stripe_sim.SimPurchase(
        str(uuid.uuid4()), user, "starter", 999, "usd", f"cs_test_{uuid.uuid4().hex[:12]}"
    )
    response = await platform.deliver(stripe_sim.session_completed(purchase))
    assert response.status_code == 200
    await asyncio.sleep(1.0)  # the ledger is retrying: the purchase is not there yet
    await platform.insert_starter_row(purchase)
    await platform.wait_balance(user, STARTER_GRANT)
    assert await grants_of(platform, purchase.purchase_id) == 1


async def test_unknown_purchase_is_refused_with_an_alert(
    platform: Any, user: str, stack: Stack
) -> None:
    ghost = stripe_sim.SimPurchase(str(uuid.uuid4()), user, "starter", 999, "usd", None)
    old = int(time.time()) - 600  # a Stripe retry of an old event: past the grace period
    event = stripe_sim.session_completed(ghost, created=old)
    assert (await platform.deliver(event)).status_code == 200

    alert = await find_alert(stack, "unknown_purchase", ghost.purchase_id)
    assert alert.source == "ledger"
    outcome = await platform.sql(
        "SELECT outcome FROM ledger.inbox WHERE message_key = $1", f"stripe:{event['id']}"
    )
    assert outcome == "rejected"
    assert (await platform.balance(user))["balanceMillicredits"] == 0


async def test_amount_mismatch_is_not_granted_and_raises_an_alert(
    platform: Any, user: str, stack: Stack
) -> None:
    purchase = await platform.buy(user, "professional")
    event = stripe_sim.session_completed(purchase, amount_total=999)
    assert (await platform.deliver(event)).status_code == 200

    alert = await find_alert(stack, "amount_mismatch", purchase.purchase_id)
    assert alert.user_id == user
    assert alert.details["amount_total"] == "999"
    assert await grants_of(platform, purchase.purchase_id) == 0
    assert (await platform.balance(user))["balanceMillicredits"] == 0


@pytest.mark.parametrize(
    ("case", "expected_error"),
    [
        ("bad_signature", "invalid_signature"),
        ("wrong_secret", "invalid_signature"),
        ("stale_timestamp", "stale_signature"),
        ("missing_signature", "missing_signature"),
        ("malformed_json", "malformed_payload"),
        ("empty_body", "empty_body"),
    ],
)
async def test_rejected_webhooks_store_and_publish_nothing(
    platform: Any, user: str, case: str, expected_error: str
) -> None:
    purchase = stripe_sim.SimPurchase(str(uuid.uuid4()), user, "starter", 999, "usd", None)
    event = stripe_sim.session_completed(purchase)
    body = json.dumps(event).encode()
    secret = platform.webhook_secret
    now = int(time.time())
    headers = {"Stripe-Signature": stripe_sim.sign(body, secret, now)}
    if case == "bad_signature":
        headers["Stripe-Signature"] = stripe_sim.sign(body + b" ", secret, now)
    elif case == "wrong_secret":
        headers["Stripe-Signature"] = stripe_sim.sign(body, "whsec_not_ours", now)
    elif case == "stale_timestamp":
        headers["Stripe-Signature"] = stripe_sim.sign(body, secret, now - 301)
    elif case == "missing_signature":
        headers = {}
    elif case == "malformed_json":
        body = b'{"id": "evt_x", "type": '
        headers["Stripe-Signature"] = stripe_sim.sign(body, secret, now)
    elif case == "empty_body":
        body = b""
    outbox_before = await platform.sql("SELECT max(id) FROM webhook_ingest.outbox")

    response = await platform.http.post(
        f"{platform.webhooks}/webhooks/stripe", content=body, headers=headers
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] == expected_error
    stored = await platform.sql(
        "SELECT count(*) FROM webhook_ingest.stripe_events WHERE event_id = $1", event["id"]
    )
    assert stored == 0
    assert await platform.sql("SELECT max(id) FROM webhook_ingest.outbox") == outbox_before


async def test_full_and_partial_refunds_claw_back_proportionally(platform: Any, user: str) -> None:
    first = await platform.buy(user, "professional")
    second = await platform.buy(user, "starter")
    for purchase in (first, second):
        await platform.deliver(stripe_sim.session_completed(purchase))
    await platform.wait_balance(user, PROFESSIONAL_GRANT + STARTER_GRANT)

    # Two partial refunds of the professional purchase (Stripe reports cumulative totals),
    # the second delivered twice and then an older total arriving late.
    await platform.deliver(
        stripe_sim.charge_refunded(first, refunded_total_cents=1000, refund_cents=1000)
    )
    await platform.wait_status(first.purchase_id, "partially_refunded")
    later = stripe_sim.charge_refunded(first, refunded_total_cents=2500, refund_cents=1500)
    await platform.deliver(later)
    await platform.deliver(later)
    stale = stripe_sim.charge_refunded(first, refunded_total_cents=1000, refund_cents=1000)
    await platform.deliver(stale)
    clawed = PROFESSIONAL_GRANT * 2500 // 4999
    await platform.wait_balance(user, PROFESSIONAL_GRANT - clawed + STARTER_GRANT)

    await platform.deliver(
        stripe_sim.charge_refunded(second, refunded_total_cents=999, refund_cents=999)
    )
    await platform.wait_balance(user, PROFESSIONAL_GRANT - clawed)
    await platform.wait_status(second.purchase_id, "refunded")

    refunds = await platform.sql(
        "SELECT count(*) FROM ledger.journal_transactions WHERE kind = 'refund' AND user_id = $1",
        user,
    )
    assert refunds == 3


async def test_refund_after_credits_were_spent_leaves_a_recorded_negative_balance(
    platform: Any, user: str, stack: Stack
) -> None:
    purchase = await platform.buy(user, "starter")
    await platform.deliver(stripe_sim.session_completed(purchase))
    await platform.wait_balance(user, STARTER_GRANT)
    spent = 6_000_000
    # Spending arrives with metering; an admin debit stands in for it here.
    debit = await platform.http.post(
        f"{platform.ledger}/api/admin/adjustments",
        json={
            "userId": user,
            "amountMillicredits": -spent,
            "reason": "usage stand-in",
            "referenceId": "spend-1",
        },
        headers=platform.auth("ops", admin=True),
    )
    assert debit.status_code == 201, debit.text

    await platform.deliver(
        stripe_sim.charge_refunded(purchase, refunded_total_cents=999, refund_cents=999)
    )
    await platform.wait_balance(user, -spent)
    await platform.wait_status(purchase.purchase_id, "refunded")
    alert = await find_alert(stack, "negative_balance_after_refund", purchase.purchase_id)
    assert alert.user_id == user


async def test_journal_rejects_update_and_delete_from_the_service_role(
    platform: Any, user: str
) -> None:
    purchase = await platform.buy(user, "starter")
    await platform.deliver(stripe_sim.session_completed(purchase))
    await platform.wait_balance(user, STARTER_GRANT)
    conn = await asyncpg.connect(platform.stack.postgres.dsn)
    try:
        for statement in (
            "UPDATE ledger.journal_entries SET amount_millicredits = 1 WHERE user_id = $1",
            "DELETE FROM ledger.journal_entries WHERE user_id = $1",
            "UPDATE ledger.journal_transactions SET reference_id = 'x' WHERE user_id = $1",
            "DELETE FROM ledger.journal_transactions WHERE user_id = $1",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(statement, user)
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("TRUNCATE ledger.journal_entries CASCADE")
        sums = await conn.fetchval(
            "SELECT sum(amount_millicredits) FROM ledger.journal_entries WHERE user_id = $1", user
        )
        assert sums == STARTER_GRANT
    finally:
        await conn.close()


async def test_admin_fulfilment_asks_stripe_and_never_grants_twice(
    platform: Any, user: str
) -> None:
    admin = platform.auth("ops-lead", admin=True)
    url = f"{platform.ledger}/api/admin/fulfill-purchase"
    purchase = await platform.buy(user, "starter")

    # stripe-mock reports every session as unpaid: no grant on the admin's word alone.
    refused = await platform.http.post(
        url, json={"purchaseId": purchase.purchase_id}, headers=admin
    )
    assert refused.status_code == 409
    assert refused.json()["error"] == "purchase_not_paid"
    assert await grants_of(platform, purchase.purchase_id) == 0

    await platform.deliver(stripe_sim.session_completed(purchase))
    await platform.wait_balance(user, STARTER_GRANT)
    again = await platform.http.post(url, json={"purchaseId": purchase.purchase_id}, headers=admin)
    assert again.status_code == 200, again.text
    assert again.json()["granted"] is False
    assert await grants_of(platform, purchase.purchase_id) == 1
    audited = await platform.sql(
        "SELECT count(*) FROM ledger.audit_log WHERE actor = 'ops-lead' AND reference_id = $1",
        purchase.purchase_id,
    )
    assert audited == 1
    missing = await platform.http.post(url, json={"purchaseId": "nope"}, headers=admin)
    assert missing.status_code == 404
    forbidden = await platform.http.post(
        url, json={"purchaseId": purchase.purchase_id}, headers=platform.auth(user)
    )
    assert forbidden.status_code == 403


async def test_money_moving_admin_actions_need_step_up_mfa(platform: Any, user: str) -> None:
    without_mfa = platform.auth("ops-lead", admin=True, mfa=False)
    adjustment = {"userId": user, "amountMillicredits": 5_000, "reason": "goodwill"}
    attempts = [
        ("adjustments", {**adjustment, "referenceId": f"mfa-{user}"}),
        ("fulfill-purchase", {"purchaseId": (await platform.buy(user, "starter")).purchase_id}),
    ]
    for path, body in attempts:
        refused = await platform.http.post(
            f"{platform.ledger}/api/admin/{path}", json=body, headers=without_mfa
        )
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "mfa_required"
    assert (await platform.balance(user))["balanceMillicredits"] == 0
    audited = await platform.sql(
        "SELECT count(*) FROM ledger.audit_log WHERE target_user_id = $1", user
    )
    assert audited == 0
    stepped_up = await platform.http.post(
        f"{platform.ledger}/api/admin/adjustments",
        json=attempts[0][1],
        headers=platform.auth("ops-lead", admin=True),
    )
    assert stepped_up.status_code == 201, stepped_up.text
    await platform.wait_balance(user, 5_000)


async def test_adjustments_are_reversal_entries_with_an_audit_trail(
    platform: Any, user: str
) -> None:
    admin = {**platform.auth("ops-lead", admin=True), "Idempotency-Key": f"k-{user}"}
    url = f"{platform.ledger}/api/admin/adjustments"
    goodwill = {
        "userId": user,
        "amountMillicredits": 2500,
        "reason": "outage credit",
        "referenceId": "INC-42",
    }
    first = await platform.http.post(url, json=goodwill, headers=admin)
    repeat = await platform.http.post(url, json=goodwill, headers=admin)
    assert first.status_code == repeat.status_code == 201
    assert first.json() == repeat.json()
    assert first.json()["kind"] == "adjustment"

    reversal = {
        "userId": user,
        "amountMillicredits": -2500,
        "reason": "credited twice",
        "referenceId": first.json()["transactionId"],
    }
    undo = await platform.http.post(
        url, json=reversal, headers=platform.auth("ops-lead", admin=True)
    )
    assert undo.status_code == 201
    assert undo.json()["kind"] == "reversal"
    assert undo.json()["balanceAfterMillicredits"] == 0
    reverses = await platform.sql(
        "SELECT reverses_id::text FROM ledger.journal_transactions WHERE id = $1::uuid",
        undo.json()["transactionId"],
    )
    assert reverses == first.json()["transactionId"]
    reasons = await platform.sql(
        "SELECT string_agg(reason, '|' ORDER BY id) FROM ledger.audit_log"
        " WHERE target_user_id = $1 AND action = 'adjustment'",
        user,
    )
    assert reasons == "outage credit|credited twice"


async def test_ledger_pages_newest_first_and_exports_csv(platform: Any, user: str) -> None:
    admin = platform.auth("ops", admin=True)
    for i in range(5):
        body = {
            "userId": user,
            "amountMillicredits": 1000 * (i + 1),
            "reason": "paging test",
            "referenceId": f"ref-{i}",
        }
        assert (
            await platform.http.post(
                f"{platform.ledger}/api/admin/adjustments", json=body, headers=admin
            )
        ).status_code == 201
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (
            await platform.http.get(
                f"{platform.ledger}/api/ledger", params=params, headers=platform.auth(user)
            )
        ).json()
        seen += [e["referenceId"] for e in page["entries"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == [f"ref-{i}" for i in reversed(range(5))]

    export = await platform.http.get(
        f"{platform.ledger}/api/ledger/export.csv", headers=platform.auth(user)
    )
    lines = export.text.strip().splitlines()
    assert lines[0].startswith("created_at,transaction_id,kind,amount_millicredits")
    assert [line.split(",")[5] for line in lines[1:]] == [f"ref-{i}" for i in range(5)]
    other = await platform.http.get(
        f"{platform.ledger}/api/balance",
        params={"userId": user},
        headers=platform.auth("someone-else"),
    )
    assert other.status_code == 403
