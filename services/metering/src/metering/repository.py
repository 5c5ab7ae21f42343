"""All SQL of the metering service."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from metering.records import ModelTotals, UsageRecord


async def claim_key(
    conn: Any, user_id: str, key: str, request_hash: str, takeover_after_s: float
) -> int | None:
    """Claim an idempotency key; the attempt number, or None when another request has it.

    A released claim (its attempt failed) or one abandoned in progress is taken over.
    """
    attempt: int | None = await conn.fetchval(
        "INSERT INTO request_claims (user_id, idempotency_key, request_hash)"
        " VALUES ($1, $2, $3)"
        " ON CONFLICT (user_id, idempotency_key) DO UPDATE SET"
        " state = 'in_progress', attempt = request_claims.attempt + 1,"
        " request_hash = EXCLUDED.request_hash, claimed_at = now()"
        " WHERE request_claims.state = 'released' OR (request_claims.state = 'in_progress'"
        " AND request_claims.claimed_at < now() - make_interval(secs => $4))"
        " RETURNING attempt",
        user_id,
        key,
        request_hash,
        takeover_after_s,
    )
    return attempt


async def claimed_key(conn: Any, user_id: str, key: str) -> Any:
    """The claim with the answer stored for it, if any (state, request_hash, response_body)."""
    return await conn.fetchrow(
        "SELECT c.state, c.request_hash, u.response_body FROM request_claims c"
        " LEFT JOIN usage_records u"
        " ON u.user_id = c.user_id AND u.idempotency_key = c.idempotency_key"
        " WHERE c.user_id = $1 AND c.idempotency_key = $2",
        user_id,
        key,
    )


async def release_claim(conn: Any, user_id: str, key: str) -> None:
    await conn.execute(
        "UPDATE request_claims SET state = 'released'"
        " WHERE user_id = $1 AND idempotency_key = $2 AND state = 'in_progress'",
        user_id,
        key,
    )


async def finish_claim(conn: Any, user_id: str, key: str) -> None:
    await conn.execute(
        "UPDATE request_claims SET state = 'done' WHERE user_id = $1 AND idempotency_key = $2",
        user_id,
        key,
    )


async def insert_usage(conn: Any, record: UsageRecord, correlation_id: str) -> bool:
    """Store a usage record; False when its usage id or (user, key) is already stored."""
    inserted = await conn.fetchval(
        "INSERT INTO usage_records (usage_id, user_id, model, input_tokens, output_tokens,"
        " charged_millicredits, uncollected_millicredits, cost_millicredits,"
        " rate_card_version, hold_id, idempotency_key, provider_request_id, transaction_id,"
        " mode, correlation_id, response_body)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::json)"
        " ON CONFLICT DO NOTHING RETURNING true",
        record.usage_id,
        record.user_id,
        record.model,
        record.input_tokens,
        record.output_tokens,
        record.charged_millicredits,
        record.uncollected_millicredits,
        record.cost_millicredits,
        record.rate_card_version,
        record.hold_id,
        record.idempotency_key,
        record.provider_request_id,
        record.transaction_id,
        record.mode,
        correlation_id,
        json.dumps(record.response_body),
    )
    return bool(inserted)


async def stored_body(conn: Any, user_id: str, key: str) -> dict[str, Any] | None:
    body = await conn.fetchval(
        "SELECT response_body FROM usage_records WHERE user_id = $1 AND idempotency_key = $2",
        user_id,
        key,
    )
    return decode_body(body)


def decode_body(body: Any) -> dict[str, Any] | None:
    """asyncpg hands json over as text."""
    if body is None:
        return None
    decoded: dict[str, Any] = json.loads(body) if isinstance(body, str) else body
    return decoded


async def totals_by_model(
    conn: Any, user_id: str, start: datetime, end: datetime
) -> list[ModelTotals]:
    rows = await conn.fetch(
        "SELECT model, count(*) AS calls, sum(input_tokens)::bigint AS input_tokens,"
        " sum(output_tokens)::bigint AS output_tokens,"
        " sum(charged_millicredits)::bigint AS charged_millicredits"
        " FROM usage_records WHERE user_id = $1 AND created_at >= $2 AND created_at < $3"
        " GROUP BY model ORDER BY model",
        user_id,
        start,
        end,
    )
    return [ModelTotals(**dict(r)) for r in rows]
