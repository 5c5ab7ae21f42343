"""Operating the purchase path: dead letters and replays, rate limits, switches, Stripe
outages, idempotent purchase creation, and the README walk-through with the `billing` CLI."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import httpx
from billing_cli import dlq, stripe_sim
from billing_cli.stack import Stack
from billing_events.dlq_depth import replay_group
from billing_events.topics import Topics

STARTER_GRANT = 9_990 * 1000
DLQ = Topics("").stripe_events_dlq


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(w in line for w in want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # released again: nothing listens there


async def letters_for(stack: Stack, purchase_id: str) -> list[dlq.Letter]:
    letters = await dlq.read_letters(stack.kafka.bootstrap, DLQ, replay_group(""))
    return [x for x in letters if purchase_id.encode() in x.message.original_value]


async def test_poison_event_is_dead_lettered_and_replays_once_after_the_fix(
    platform: Any, user: str, stack: Stack
) -> None:
    ledger_url = stack.services["ledger"].url
    # A paid session for a purchase the ledger cannot see: five attempts, then the DLQ.
    stuck = stripe_sim.SimPurchase(
        str(uuid.uuid4()), user, "starter", 999, "usd", f"cs_stuck_{user}"
    )
    event = stripe_sim.session_completed(stuck)
    assert (await platform.deliver(event)).status_code == 200

    async def dead_lettered() -> bool:
        return bool(await letters_for(stack, stuck.purchase_id))

    await platform.eventually(dead_lettered, "the poison event never reached the DLQ", 40)
    [letter] = await letters_for(stack, stuck.purchase_id)
    assert letter.attempts == 5
    assert "not visible yet" in letter.error_message
    assert not letter.replayed

    async def depth_at_least_one() -> bool:
        return metric(ledger_url, "billing_dlq_depth", topic=DLQ) >= 1

    await platform.eventually(depth_at_least_one, "DLQ depth gauge never showed the letter")

    # Later events keep flowing while the poison one waits in the DLQ.
    other_user = f"{user}-other"
    fine = await platform.buy(other_user, "starter")
    await platform.deliver(stripe_sim.session_completed(fine))
    await platform.wait_balance(other_user, STARTER_GRANT)

    await platform.insert_starter_row(stuck)  # the fix: the purchase now exists
    replayed = await dlq.replay(stack.kafka.bootstrap, DLQ, replay_group(""), None)
    assert letter.offset in [x.offset for x in replayed]
    await platform.wait_balance(user, STARTER_GRANT)
    assert all(x.replayed for x in await letters_for(stack, stuck.purchase_id))
    assert await dlq.replay(stack.kafka.bootstrap, DLQ, replay_group(""), None) == []

    async def depth_zero() -> bool:
        return metric(ledger_url, "billing_dlq_depth", topic=DLQ) == 0

    await platform.eventually(depth_zero, "DLQ depth gauge did not drop after the replay")
    assert (await platform.deliver(event)).json()["duplicate"] is True
    grants = await platform.sql(
        "SELECT count(*) FROM ledger.journal_transactions WHERE reference_id = $1",
        stuck.purchase_id,
    )
    assert grants == 1
    assert (await platform.balance(user))["balanceMillicredits"] == STARTER_GRANT


async def test_admin_webhook_replay_republishes_without_a_second_grant(
    platform: Any, user: str, stack: Stack, billing: Any
) -> None:
    ledger_url = stack.services["ledger"].url
    purchase = await platform.buy(user, "starter")
    event = stripe_sim.session_completed(purchase)
    await platform.deliver(event)
    await platform.wait_balance(user, STARTER_GRANT)
    labels = {"event_type": "checkout.session.completed", "outcome": "duplicate"}
    duplicates_before = metric(ledger_url, "ledger_stripe_events_received_total", **labels)

    out = billing("webhook", "replay", "--event-id", event["id"])
    assert event["id"] in out

    async def seen_again() -> bool:
        seen = metric(ledger_url, "ledger_stripe_events_received_total", **labels)
        return seen > duplicates_before

    await platform.eventually(seen_again, "the replayed event never reached the ledger")
    assert (await platform.balance(user))["balanceMillicredits"] == STARTER_GRANT
    replay_url = f"{platform.webhooks}/api/admin/webhooks/replay"
    admin = platform.auth("ops", admin=True)
    missing = await platform.http.post(replay_url, json={"eventId": "evt_nope"}, headers=admin)
    assert missing.status_code == 404
    assert missing.json()["error"] == "event_not_found"
    forbidden = await platform.http.post(
        replay_url, json={"eventId": event["id"]}, headers=platform.auth(user)
    )
    assert forbidden.status_code == 403


async def test_readme_walk_through_with_the_cli(platform: Any, user: str, billing: Any) -> None:
    token = billing("token", "--user", user).strip()
    created = await platform.http.post(
        f"{platform.checkout}/api/purchases",
        json={"packageCode": "starter", "returnTo": "/chat"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "pending"
    assert body["checkoutUrl"].startswith("https://checkout.stripe.com/")

    out = billing("stripe", "simulate-payment", body["purchaseId"])
    assert "checkout.session.completed" in out
    await platform.wait_balance(user, STARTER_GRANT)
    balance = (await platform.balance(user))["balanceCredits"]
    assert balance == "9990.000"
    await platform.wait_status(body["purchaseId"], "fulfilled")

    # The history names the purchase with the receipt of its charge (charge.succeeded).
    async def receipted() -> bool:
        page = await platform.http.get(
            f"{platform.checkout}/api/purchases", headers=platform.auth(user)
        )
        assert page.status_code == 200, page.text
        [row] = page.json()["purchases"]
        return bool(row["receiptUrl"])

    await platform.eventually(receipted, "the receipt link never arrived")
    got = await platform.purchase(body["purchaseId"])
    assert got["receiptUrl"].startswith("https://pay.stripe.com/receipts/")


async def test_purchase_idempotency_key_and_server_side_prices(platform: Any, user: str) -> None:
    url = f"{platform.checkout}/api/purchases"
    headers = {**platform.auth(user), "Idempotency-Key": f"idem-{user}"}
    body = {"packageCode": "enterprise", "returnTo": "/billing", "amount": 1}
    first = await platform.http.post(url, json=body, headers=headers)
    again = await platform.http.post(url, json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    other = await platform.http.post(url, json={**body, "packageCode": "starter"}, headers=headers)
    assert other.status_code == 409
    purchase = await platform.purchase(first.json()["purchaseId"])
    assert (purchase["priceCents"], purchase["grantMillicredits"]) == (9999, 119_990_000)
    unknown = await platform.http.post(
        url, json={"packageCode": "gold"}, headers=platform.auth(user)
    )
    assert unknown.status_code == 422
    assert unknown.json()["error"] == "unknown_package"
    stranger = await platform.http.get(
        f"{platform.checkout}/api/purchases/{purchase['purchaseId']}",
        headers=platform.auth("someone-else"),
    )
    assert stranger.status_code == 404


async def test_stripe_outage_fails_the_purchase_and_rate_limit_applies(
    platform: Any, user: str, run_service: Any, fresh_ip_client: httpx.AsyncClient
) -> None:
    env = {"BILLING_STRIPE_API_BASE": f"http://127.0.0.1:{closed_port()}"}
    with run_service("checkout", env) as checkout:
        url = f"{checkout.url}/api/purchases"
        answers = [
            await fresh_ip_client.post(
                url, json={"packageCode": "starter"}, headers=platform.auth(user)
            )
            for _ in range(11)
        ]
    assert [a.status_code for a in answers] == [502] * 10 + [429]
    assert answers[0].json()["error"] == "stripe_unavailable"
    assert answers[10].json()["error"] == "rate_limited"
    failed = await platform.purchase(answers[0].json()["purchaseId"])
    assert failed["status"] == "failed"
    assert (await platform.balance(user))["balanceMillicredits"] == 0


async def test_purchases_switch_flips_at_run_time_without_restart(platform: Any, user: str) -> None:
    admin = platform.auth("ops", admin=True)
    features = f"{platform.checkout}/api/admin/features"
    buy = {"packageCode": "starter"}
    off = await platform.http.patch(
        features, json={"purchasesEnabled": False, "reason": "incident drill"}, headers=admin
    )
    assert off.status_code == 200, off.text
    try:

        async def refused() -> bool:
            answer = await platform.http.post(
                f"{platform.checkout}/api/purchases", json=buy, headers=platform.auth(user)
            )
            return bool(
                answer.status_code == 503 and answer.json()["error"] == "purchases_disabled"
            )

        await platform.eventually(refused, "purchases were not switched off", timeout=10)
        meta = await platform.http.get(f"{platform.checkout}/api/v1/meta/features")
        assert meta.json()["purchasesEnabled"] is False
        packages = await platform.http.get(f"{platform.checkout}/api/packages")
        assert len(packages.json()) == 5
    finally:
        back = await platform.http.patch(
            features, json={"purchasesEnabled": True, "reason": "drill over"}, headers=admin
        )
        assert back.status_code == 200, back.text
    await platform.buy(user, "starter")  # selling again, same process, no restart
    logged = await platform.sql(
        "SELECT count(*) FROM checkout.feature_switch_changes"
        " WHERE name = 'purchasesEnabled' AND reason IN ('incident drill', 'drill over')"
        " AND actor = 'ops' AND changed_at > now() - interval '1 minute'"
    )
    assert logged >= 2


async def test_webhook_rate_limit_per_source_ip(platform: Any, user: str, run_service: Any) -> None:
    with run_service("webhook_ingest", {"WEBHOOK_INGEST_RATE_LIMIT_PER_MINUTE": "3"}) as ingest:
        purchase = stripe_sim.SimPurchase(str(uuid.uuid4()), user, "starter", 999, "usd", None)
        url = f"{ingest.url}/webhooks/stripe"
        answers = await asyncio.gather(
            *(
                stripe_sim.send(
                    platform.http,
                    url,
                    stripe_sim.session_completed(purchase, created=1),
                    platform.webhook_secret,
                )
                for _ in range(4)
            )
        )
    statuses = sorted(a.status_code for a in answers)
    assert statuses[-1] == 429
    assert statuses.count(429) == 1


async def test_purchase_history_pages_newest_first_and_is_the_users_own(
    platform: Any, user: str
) -> None:
    made = [(await platform.buy(user, "starter")).purchase_id for _ in range(3)]
    url = f"{platform.checkout}/api/purchases"
    first = await platform.http.get(url, params={"limit": 2}, headers=platform.auth(user))
    assert first.status_code == 200, first.text
    cursor = first.json()["nextCursor"]
    assert cursor
    rest = await platform.http.get(
        url, params={"limit": 2, "cursor": cursor}, headers=platform.auth(user)
    )
    assert rest.json()["nextCursor"] is None
    seen = [p["purchaseId"] for p in first.json()["purchases"] + rest.json()["purchases"]]
    assert seen == made[::-1]
    assert all(p["receiptUrl"] is None for p in rest.json()["purchases"])

    other = await platform.http.get(url, params={"userId": user}, headers=platform.auth("eve"))
    assert other.status_code == 403, other.text
    admin = await platform.http.get(
        url, params={"userId": user}, headers=platform.auth("ops", admin=True)
    )
    assert [p["purchaseId"] for p in admin.json()["purchases"]] == made[::-1]
    forged = await platform.http.get(url, params={"cursor": "bm9wZQ"}, headers=platform.auth(user))
    assert forged.status_code == 400
    assert forged.json()["error"] == "invalid_cursor"
