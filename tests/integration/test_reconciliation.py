"""Reconciliation on the running platform: a clean workload, then one break of each kind.

The stack is shared with the other tests, whose own deliberate breaks are in the same
journal, so each test looks only at the findings that name its own users and references.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg
from billing_cli import stripe_sim

STARTER_GRANT = 9_990_000


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


async def reconcile(platform: Any, key: str | None = None, day: str | None = None) -> Any:
    headers = platform.auth("finance", admin=True)
    if key:
        headers["Idempotency-Key"] = key
    url = f"{platform.stack.services['reconciler'].url}/api/admin/reconcile"
    answer = await platform.http.post(url, json={"date": day or today()}, headers=headers)
    assert answer.status_code == 200, answer.text
    return answer


def naming(run: dict[str, Any], *refs: str) -> list[dict[str, Any]]:
    """Findings of a run that name any of ``refs`` as user or reference."""
    wanted = set(refs)
    return [
        f for f in run["findings"] if f["userId"] in wanted or wanted.intersection(f["references"])
    ]


async def clean_workload(platform: Any, user: str) -> stripe_sim.SimPurchase:
    purchase: stripe_sim.SimPurchase = await platform.buy(user, "starter")
    await platform.deliver(stripe_sim.session_completed(purchase))
    await platform.wait_balance(user, STARTER_GRANT)
    metering = platform.stack.services["metering"].url
    reconciled = await platform.http.post(
        f"{metering}/api/usage/reconcile",
        json={
            "userId": user,
            "model": "gpt-4o",
            "inputTokens": 1000,
            "outputTokens": 500,
            "idempotencyKey": f"rec-{user}",
        },
        headers=platform.auth("ops", admin=True),
    )
    assert reconciled.status_code == 200, reconciled.text
    await platform.deliver(
        stripe_sim.charge_refunded(purchase, refunded_total_cents=100, refund_cents=100)
    )
    await platform.give(user, 1_234)
    await platform.wait_balance(user, STARTER_GRANT - 50_000 - 1_000_000 + 1_234)
    return purchase


async def test_a_clean_mixed_workload_reconciles_without_findings(platform: Any, user: str) -> None:
    purchase = await clean_workload(platform, user)
    run = (await reconcile(platform)).json()
    ran = {c["name"] for c in run["checks"]}
    assert {"transactions_balanced", "journal_chain", "usage_totals", "payments_granted"} <= ran
    assert naming(run, user, purchase.purchase_id) == []
    latest = await platform.http.get(
        f"{platform.stack.services['reconciler'].url}/api/admin/reconciliation/latest",
        headers=platform.auth("finance", admin=True),
    )
    assert latest.json()["runId"] == run["runId"]


async def test_odd_partial_refunds_reconcile_without_findings(platform: Any, user: str) -> None:
    """growth: 26,240 credits for 2,499 cents; the ledger floors each share, so must the check."""
    purchase = await platform.buy(user, "growth")
    await platform.deliver(stripe_sim.session_completed(purchase))
    grant = 26_240_000
    await platform.wait_balance(user, grant)
    first = stripe_sim.charge_refunded(purchase, refunded_total_cents=1_249, refund_cents=1_249)
    second = stripe_sim.charge_refunded(purchase, refunded_total_cents=1_873, refund_cents=624)
    for event in (first, first, second):  # the first one redelivered
        answer = await platform.deliver(event)
        assert answer.status_code == 200, answer.text
    await platform.wait_balance(user, grant - grant * 1_873 // 2_499)
    assert (grant * 1_249) // 2_499 == 13_114_749  # the case that used to be reported

    run = (await reconcile(platform)).json()

    assert "refunds" in {c["name"] for c in run["checks"]}
    assert naming(run, user, purchase.purchase_id) == []


async def test_the_same_idempotency_key_returns_the_stored_run(platform: Any) -> None:
    key = f"rk-{uuid.uuid4().hex}"
    first = await reconcile(platform, key)
    again = await reconcile(platform, key)
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    url = f"{platform.stack.services['reconciler'].url}/api/admin/reconcile"
    headers = {**platform.auth("finance", admin=True), "Idempotency-Key": key}
    other = await platform.http.post(url, json={"date": "2026-01-01"}, headers=headers)
    assert other.status_code == 409


async def test_each_kind_of_break_is_caught_and_named(platform: Any) -> None:
    tag = uuid.uuid4().hex[:8]
    edited, drifted, unpaid_user, mismatch_user, usage_user = (
        f"{kind}-{tag}" for kind in ("edited", "drifted", "grantonly", "paidonly", "usage")
    )
    for who in (edited, drifted):
        await clean_workload(platform, who)
    # Payment without grant: a paid session whose amount does not match is refused a grant.
    mismatched = await platform.buy(mismatch_user, "professional")
    await platform.deliver(stripe_sim.session_completed(mismatched, amount_total=999))
    # The chain checkpoint must cover the journal before it is edited behind its back.
    await reconcile(platform)

    conn = await asyncpg.connect(platform.stack.postgres.dsn)
    try:
        grant_id = await grant_without_payment(conn, unpaid_user)
        usage_id = await usage_never_posted(conn, usage_user)
        async with conn.transaction():
            # A superuser switching triggers off is the one way past append-only.
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                "UPDATE ledger.journal_entries SET amount_millicredits = amount_millicredits + 1"
                " WHERE id = (SELECT min(id) FROM ledger.journal_entries WHERE user_id = $1)",
                edited,
            )
        await conn.execute(
            "UPDATE ledger.balances SET balance_millicredits = balance_millicredits + 7"
            " WHERE user_id = $1",
            drifted,
        )
    finally:
        await conn.close()

    run = (await reconcile(platform)).json()

    def kinds(*refs: str) -> set[str]:
        return {f["kind"] for f in naming(run, *refs)}

    assert "journal_edited" in {f["kind"] for f in run["findings"]}
    assert "balance_drift" in kinds(drifted)
    assert "payment_without_grant" in kinds(mismatched.purchase_id, mismatch_user)
    assert "grant_without_payment" in kinds(grant_id, unpaid_user)
    assert "usage_not_posted" in kinds(usage_id, usage_user)
    assert run["status"] == "findings"


async def grant_without_payment(conn: Any, user: str) -> str:
    """A purchase grant posted straight into the journal, with no payment behind it."""
    purchase_id, txn = str(uuid.uuid4()), uuid.uuid4()
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO ledger.journal_transactions (id, kind, user_id, reference_id, source)"
            " VALUES ($1, 'purchase', $2, $3, 'forged')",
            txn,
            user,
            purchase_id,
        )
        await conn.executemany(
            "INSERT INTO ledger.journal_entries (transaction_id, account, user_id,"
            " amount_millicredits, balance_after_millicredits) VALUES ($1, $2, $3, $4, $5)",
            [
                (txn, f"wallet:{user}", user, STARTER_GRANT, STARTER_GRANT),
                (txn, "stripe_clearing", None, -STARTER_GRANT, None),
            ],
        )
        await conn.execute(
            "INSERT INTO ledger.balances (user_id, balance_millicredits) VALUES ($1, $2)",
            user,
            STARTER_GRANT,
        )
        await conn.execute(
            "INSERT INTO ledger.purchase_grants (purchase_id, user_id, transaction_id,"
            " package_code, price_cents, currency, grant_millicredits, source)"
            " VALUES ($1, $2, $3, 'starter', 999, 'usd', $4, 'forged')",
            purchase_id,
            user,
            txn,
            STARTER_GRANT,
        )
    return purchase_id


async def usage_never_posted(conn: Any, user: str) -> str:
    """A charged usage record in metering that never reached the ledger."""
    usage_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO metering.usage_records (usage_id, user_id, model, input_tokens,"
        " output_tokens, charged_millicredits, priced_millicredits, cost_millicredits,"
        " rate_card_version, hold_id, idempotency_key, mode, response_body)"
        " VALUES ($1, $2, 'gpt-4o', 10, 10, 800, 800, 200, 'test', '', $3, 'charged', '{}')",
        usage_id,
        user,
        f"lost-{usage_id}",
    )
    return str(usage_id)


async def test_reconcile_and_statement_from_the_cli(
    platform: Any, user: str, billing: Any, tmp_path: Any
) -> None:
    await clean_workload(platform, user)
    env = {**os.environ, "BILLING_LOCAL_STACK": "test"}
    key = f"cli-{uuid.uuid4().hex}"
    ran = subprocess.run(
        [sys.executable, "-m", "billing_cli", "reconcile", "--date", today(), "--key", key],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    run = json.loads(ran.stdout)
    assert ran.returncode == (0 if run["status"] == "clean" else 1)
    assert naming(run, user) == []

    month = today()[:7]
    csv_text = billing("statement", "--user", user, "--month", month)
    assert csv_text.startswith("section,key,value")
    pdf = tmp_path / "statement.pdf"
    billing("statement", "--user", user, "--month", month, "--pdf", str(pdf))
    assert pdf.read_bytes().startswith(b"%PDF")
