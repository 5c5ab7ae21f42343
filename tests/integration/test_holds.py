"""Holds in the ledger: reserve, capture, release, expire, and usage records off the topic.

Credits are given with an admin adjustment; the hold API is called with a `service` token,
as metering calls it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC
from typing import Any

import asyncpg
import pytest
from billing_cli import keys
from billing_events.kafka import KafkaPublisher
from billing_events.topics import Topics
from billing_events.v1 import ledger_pb2, usage_pb2

CALL = 5_000  # millicredits one call reserves in these tests


def service_auth(platform: Any) -> dict[str, str]:
    token = keys.mint_token(platform.stack.layout, "metering", ["service"])
    return {"Authorization": f"Bearer {token}"}


async def hold(platform: Any, user: str, amount: int, key: str, ttl: int = 120) -> Any:
    return await platform.http.post(
        f"{platform.ledger}/internal/holds",
        json={
            "userId": user,
            "amountMillicredits": amount,
            "idempotencyKey": key,
            "ttlSeconds": ttl,
        },
        headers=service_auth(platform),
    )


async def capture(platform: Any, hold_id: str, amount: int, usage_id: str) -> Any:
    return await platform.http.post(
        f"{platform.ledger}/internal/holds/{hold_id}/capture",
        json={
            "amountMillicredits": amount,
            "usageId": usage_id,
            "model": "gpt-4o",
            "inputTokens": 1000,
            "outputTokens": 500,
            "rateCardVersion": "test",
        },
        headers=service_auth(platform),
    )


async def test_hold_capture_release_and_the_402_body(platform: Any, user: str) -> None:
    await platform.give(user, 12_000)
    first = await hold(platform, user, 10_000, "k1")
    assert first.status_code == 201, first.text
    assert first.json()["availableMillicredits"] == 2_000
    again = await hold(platform, user, 10_000, "k1")
    assert again.status_code == 200
    assert again.json()["holdId"] == first.json()["holdId"]

    refused = await hold(platform, user, 3_000, "k2")
    assert refused.status_code == 402
    body = refused.json()
    assert body["error"] == "insufficient_credits"
    assert (body["requiredMillicredits"], body["currentMillicredits"]) == (3_000, 2_000)
    assert (body["requiredCredits"], body["currentCredits"]) == ("3.000", "2.000")

    hold_id = first.json()["holdId"]
    usage_a, usage_b = f"usage-a-{user}", f"usage-b-{user}"
    charged = await capture(platform, hold_id, 7_500, usage_a)
    assert charged.status_code == 200, charged.text
    assert charged.json()["chargedMillicredits"] == 7_500
    assert charged.json()["balanceMillicredits"] == 4_500
    assert charged.json()["heldMillicredits"] == 0
    repeat = await capture(platform, hold_id, 7_500, usage_a)
    assert repeat.json() == charged.json()
    other = await capture(platform, hold_id, 1, usage_b)
    assert other.status_code == 409

    balance = await platform.balance(user)
    assert (balance["balanceMillicredits"], balance["heldMillicredits"]) == (4_500, 0)
    ledger = await platform.http.get(f"{platform.ledger}/api/ledger", headers=platform.auth(user))
    newest = ledger.json()["entries"][0]
    assert (newest["kind"], newest["model"], newest["referenceId"]) == (
        "usage",
        "gpt-4o",
        usage_a,
    )


async def test_holds_and_postings_get_ids_in_the_order_they_are_made(
    platform: Any, user: str
) -> None:
    """Holds and capture transactions (the ledger's SQL) and other postings (its Python)
    get version 7 ids, the milliseconds they were made at first: new rows go to the right
    of their indexes instead of to random leaves."""
    await platform.give(user, 3 * CALL)
    holds = []
    for n in range(3):
        made = await hold(platform, user, CALL, f"ordered-{n}")
        assert made.status_code == 201, made.text
        holds.append(uuid.UUID(made.json()["holdId"]))
        await asyncio.sleep(0.005)
    assert [h.version for h in holds] == [7, 7, 7]
    assert holds == sorted(holds)
    charged = await capture(platform, str(holds[0]), CALL, f"usage-ordered-{user}")
    assert charged.status_code == 200, charged.text
    rows = await platform.sql(
        "SELECT array_agg(id ORDER BY created_at) FROM ledger.journal_transactions"
        " WHERE user_id = $1",
        user,
    )
    given, captured = rows  # the adjustment (Python), then the capture (SQL)
    assert (given.version, captured.version) == (7, 7)
    assert given < captured
    made_at = {t.int >> 80 for t in (*holds, given, captured)}
    now_ms = int(await platform.sql("SELECT extract(epoch FROM now()) * 1000"))
    assert all(now_ms - 60_000 < ms <= now_ms + 1_000 for ms in made_at), (made_at, now_ms)


async def test_a_capture_publishes_its_posting_encoded_by_the_database(
    platform: Any, user: str
) -> None:
    """The capture function writes the LedgerTransactionPosted itself; it must decode to
    what the posting says, as if the generated classes had written it."""
    await platform.give(user, 20_000)
    held = (await hold(platform, user, 10_000, "encoded")).json()
    usage_id = f"usage-encoded-{user}"
    answer = (await capture(platform, held["holdId"], 7_250, usage_id)).json()

    conn = await asyncpg.connect(platform.stack.postgres.dsn)
    try:
        row = await conn.fetchrow(
            "SELECT o.payload, o.headers, t.created_at, t.correlation_id"
            " FROM (SELECT id, topic, message_key, payload, headers FROM ledger.outbox"
            " UNION ALL SELECT id, topic, message_key, payload, headers"
            " FROM ledger.outbox_published) o"
            " JOIN ledger.journal_transactions t ON t.reference_id = $1"
            " WHERE o.topic = $2 AND o.message_key = convert_to($3, 'UTF8')"
            " ORDER BY o.id DESC LIMIT 1",
            usage_id,
            Topics(platform.stack.topic_namespace).ledger,
            user,
        )
    finally:
        await conn.close()
    event = ledger_pb2.LedgerTransactionPosted.FromString(row["payload"])
    assert event.transaction_id == answer["transactionId"]
    assert (event.kind, event.user_id, event.reference_id) == (
        ledger_pb2.TRANSACTION_KIND_USAGE,
        user,
        usage_id,
    )
    assert [(e.account, e.amount_millicredits) for e in event.entries] == [
        (f"wallet:{user}", -7_250),
        ("revenue", 7_250),
    ]
    assert event.balance_after_millicredits == 12_750 == answer["balanceMillicredits"]
    assert event.posted_at.ToDatetime(UTC) == row["created_at"]
    assert event.meta.occurred_at == event.posted_at
    assert (event.meta.producer, event.meta.correlation_id) == ("ledger", row["correlation_id"])
    assert len(event.meta.event_id) == 32
    headers = json.loads(row["headers"])
    assert headers["kind"] == "usage"
    assert headers["correlation-id"] == row["correlation_id"]
    assert "traceparent" in headers


async def test_capture_above_the_hold_takes_only_what_is_available(
    platform: Any, user: str
) -> None:
    await platform.give(user, 6_000)
    held = (await hold(platform, user, 4_000, "over")).json()
    over = await capture(platform, held["holdId"], 9_000, f"usage-over-{user}")
    assert over.json()["chargedMillicredits"] == 6_000
    assert over.json()["uncollectedMillicredits"] == 3_000
    assert (await platform.balance(user))["balanceMillicredits"] == 0


async def test_release_frees_the_hold_and_charges_nothing(platform: Any, user: str) -> None:
    await platform.give(user, 10_000)
    held = (await hold(platform, user, 8_000, "rel")).json()
    url = f"{platform.ledger}/internal/holds/{held['holdId']}/release"
    released = await platform.http.post(url, headers=service_auth(platform))
    assert released.status_code == 200
    assert released.json()["status"] == "released"
    assert released.json()["availableMillicredits"] == 10_000
    twice = await platform.http.post(url, headers=service_auth(platform))
    assert twice.json()["status"] == "released"
    assert (await platform.balance(user))["balanceMillicredits"] == 10_000


async def test_hundred_concurrent_holds_never_reserve_more_than_the_balance(
    platform: Any, user: str
) -> None:
    await platform.give(user, 10 * CALL)
    answers = await asyncio.gather(*(hold(platform, user, CALL, f"c-{i}") for i in range(100)))
    statuses = [a.status_code for a in answers]
    assert statuses.count(201) == 10
    assert statuses.count(402) == 90
    granted = [a.json()["holdId"] for a in answers if a.status_code == 201]
    captures = await asyncio.gather(*(capture(platform, h, CALL, f"u-{h}") for h in granted))
    assert all(c.json()["chargedMillicredits"] == CALL for c in captures)
    balance = await platform.balance(user)
    assert (balance["balanceMillicredits"], balance["heldMillicredits"]) == (0, 0)
    lowest = await platform.sql(
        "SELECT min(balance_after_millicredits) FROM ledger.journal_entries WHERE user_id = $1",
        user,
    )
    assert lowest == 0


async def test_holds_expire_by_themselves(platform: Any, user: str) -> None:
    await platform.give(user, 5_000)
    assert (await hold(platform, user, 5_000, "short", ttl=1)).status_code == 201
    assert (await platform.balance(user))["availableMillicredits"] == 0

    async def freed() -> bool:
        return bool((await platform.balance(user))["heldMillicredits"] == 0)

    await platform.eventually(freed, "the hold never expired", timeout=15)
    status = await platform.sql(
        "SELECT status FROM ledger.holds WHERE user_id = $1 AND idempotency_key = 'short'", user
    )
    assert status == "expired"
    assert (await hold(platform, user, 5_000, "after")).status_code == 201


@pytest.mark.parametrize("with_hold", [True, False])
async def test_usage_records_on_the_topic_are_posted_once(
    platform: Any, user: str, publisher: KafkaPublisher, with_hold: bool
) -> None:
    await platform.give(user, 20_000)
    hold_id = (await hold(platform, user, 9_000, "topic")).json()["holdId"] if with_hold else ""
    usage_id = f"usage-{uuid.uuid4().hex[:10]}"
    record = usage_pb2.UsageRecorded(
        usage_id=usage_id,
        user_id=user,
        model="gpt-4o-mini",
        input_tokens=100,
        output_tokens=50,
        charged_millicredits=7_000,
        rate_card_version="test",
        hold_id=hold_id,
        mode=usage_pb2.BILLING_MODE_CHARGED,
    )
    shadow = usage_pb2.UsageRecorded(
        usage_id=f"{usage_id}-shadow",
        user_id=user,
        model="gpt-4o-mini",
        charged_millicredits=3_000,
        mode=usage_pb2.BILLING_MODE_SHADOW,
    )
    last = usage_pb2.UsageRecorded(
        usage_id=f"{usage_id}-last",
        user_id=user,
        model="gpt-4o-mini",
        charged_millicredits=1_000,
        rate_card_version="test",
        mode=usage_pb2.BILLING_MODE_CHARGED,
    )
    topic = Topics("").usage
    for message in (record, record, shadow, record, last):
        await publisher.publish(topic, user, message)
    # One key, one partition, taken in order: once the last record is posted, every record
    # before it has been handled (a duplicate or a shadow record leaves no trace of its own).
    await platform.wait_balance(user, 12_000)
    postings = await platform.sql(
        "SELECT count(*) FROM ledger.journal_transactions WHERE kind = 'usage' AND user_id = $1",
        user,
    )
    assert postings == 2
    balance = await platform.balance(user)
    assert (balance["balanceMillicredits"], balance["heldMillicredits"]) == (12_000, 0)


async def test_only_services_may_hold(platform: Any, user: str) -> None:
    answer = await platform.http.post(
        f"{platform.ledger}/internal/holds",
        json={"userId": user, "amountMillicredits": 1, "idempotencyKey": "x"},
        headers=platform.auth(user),
    )
    assert answer.status_code == 403
