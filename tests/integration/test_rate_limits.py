"""Rate limits counted in PostgreSQL: the statement on the real database, and two replicas
of a service (each its own process, one schema) admitting the limit together, not twice it.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from billing_cli import keys
from billing_platform.ratelimit import Limit, Limited, RateLimitSweeper, take

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # a whole minute


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- the statement -------------------------------------------------------------------------


async def test_concurrent_requests_on_many_connections_admit_exactly_the_limit(
    migrated_db: Any, schema: str
) -> None:
    db = await migrated_db(schema, "metering")
    limit = Limit("t", 5)
    conns = [
        await asyncpg.connect(db.dsn, server_settings={"search_path": schema}) for _ in range(12)
    ]
    try:
        verdicts = await asyncio.gather(*(take(conn, limit, "alice", at(10)) for conn in conns))
    finally:
        for conn in conns:
            await conn.close()

    assert verdicts.count(None) == 5
    async with db.pool.acquire() as conn:
        assert await conn.fetchval("SELECT hits FROM rate_limit_hits WHERE key = 't:alice'") == 5


async def test_the_previous_window_counts_by_the_share_still_inside(
    migrated_db: Any, schema: str
) -> None:
    db = await migrated_db(schema, "metering")
    limit = Limit("t", 6)
    async with db.pool.acquire() as conn:
        first = [await take(conn, limit, "bob", at(50)) for _ in range(7)]
        # 45 s into the next window a quarter of the previous one still counts: ceil(1.5) = 2.
        second = [await take(conn, limit, "bob", at(105)) for _ in range(5)]
        other = await take(conn, limit, "carol", at(105))

    assert first == [None] * 6 + [Limited(20)]  # the 7th: 10 s left, then 1/6 of the next
    assert second[:4] == [None] * 4
    # 2 + 4 = 6: one more fits when ceil(6 x left / 60) <= 1, i.e. 10 s left, 5 s from now.
    assert second[4] == Limited(5)
    assert other is None


async def test_the_sweeper_deletes_only_windows_that_no_longer_count(
    migrated_db: Any, schema: str
) -> None:
    db = await migrated_db(schema, "metering")
    limit = Limit("t", 3)
    async with db.pool.acquire() as conn:
        for seconds in (0, 60, 120, 180):
            assert await take(conn, limit, "dave", at(seconds)) is None

    deleted = await RateLimitSweeper(db, keep_s=120, clock=lambda: at(185)).sweep()

    async with db.pool.acquire() as conn:
        left = await conn.fetch("SELECT window_start FROM rate_limit_hits ORDER BY 1")
    # At 185 s the windows of 180 s and 120 s count; 60 s and 0 s are gone for good.
    assert deleted == 2
    assert [r["window_start"] for r in left] == [at(120), at(180)]


# --- two replicas ---------------------------------------------------------------------------


def chat_body(n: int) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": f"hello {n} [[tokens=5]]"}],
        "max_tokens": 20,
    }


async def test_two_metering_replicas_together_allow_the_limit_per_user(
    platform: Any, user: str, run_service: Any
) -> None:
    await platform.give(user, 10_000_000)
    env = {"METERING_RATE_LIMIT_PER_MINUTE": "5"}
    with run_service("metering", env) as one, run_service("metering", env) as two:
        urls = [f"{replica.url}/api/ai/chat" for replica in (one, two)] * 6
        answers = await asyncio.gather(
            *(
                platform.http.post(url, json=chat_body(i), headers=platform.auth(user))
                for i, url in enumerate(urls)
            )
        )
        token = keys.mint_token(platform.stack.layout, "usage-importer", ["service"])
        reconcile = await platform.http.post(
            f"{two.url}/api/usage/reconcile",
            json={
                "userId": user,
                "model": "gpt-4o-mini",
                "inputTokens": 10,
                "outputTokens": 10,
                "idempotencyKey": f"import-{uuid.uuid4().hex[:8]}",
            },
            headers={"Authorization": f"Bearer {token}"},
        )
        await platform.give(f"{user}-b", 10_000_000)
        someone_else = await platform.http.post(
            urls[0], json=chat_body(99), headers=platform.auth(f"{user}-b")
        )

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 5 + [429] * 7, [a.text for a in answers]
    refused = [a for a in answers if a.status_code == 429]
    for answer in refused:
        body = answer.json()
        assert body["error"] == "rate_limited"
        assert int(answer.headers["Retry-After"]) == body["retryAfterSeconds"] >= 1
    assert reconcile.status_code == 429, reconcile.text  # the same user's budget
    assert someone_else.status_code == 200, someone_else.text
    records = await platform.sql(
        "SELECT count(*) FROM metering.usage_records WHERE user_id = $1", user
    )
    assert records == 5
    balance = await platform.balance(user)
    assert balance["heldMillicredits"] == 0


async def test_two_checkout_replicas_together_allow_ten_purchases_per_ip(
    platform: Any, user: str, run_service: Any, fresh_ip_client: httpx.AsyncClient
) -> None:
    with run_service("checkout", {}) as one, run_service("checkout", {}) as two:
        urls = [f"{replica.url}/api/purchases" for replica in (one, two)] * 7
        answers = await asyncio.gather(
            *(
                fresh_ip_client.post(
                    url, json={"packageCode": "starter"}, headers=platform.auth(user)
                )
                for url in urls
            )
        )

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] * 10 + [429] * 4, [a.text for a in answers]
    for answer in (a for a in answers if a.status_code == 429):
        assert answer.json()["error"] == "rate_limited"
        assert int(answer.headers["Retry-After"]) == answer.json()["retryAfterSeconds"] >= 1
    purchases = await platform.sql(
        "SELECT count(*) FROM checkout.purchases WHERE user_id = $1", user
    )
    assert purchases == 10
