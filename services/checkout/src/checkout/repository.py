"""All SQL of the checkout service (asyncpg; the pool's search_path is the service schema)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from checkout.catalog import Package

_PURCHASE_COLUMNS = (
    "id, user_id, package_code, package_name, price_cents, currency, credits, bonus_credits,"
    " grant_millicredits, status, return_to, stripe_session_id, checkout_url, failure_code,"
    " refunded_millicredits, receipt_url, created_at, updated_at"
)


@dataclass(frozen=True)
class NewPurchase:
    id: str
    user_id: str
    package: Package
    return_to: str


# -- purchases ---------------------------------------------------------------------------


async def insert_purchase(conn: Any, p: NewPurchase) -> None:
    """A pending purchase with a snapshot of its package's terms."""
    pkg = p.package
    await conn.execute(
        "INSERT INTO purchases (id, user_id, package_code, package_name, price_cents,"
        " currency, credits, bonus_credits, grant_millicredits, status, return_to)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10)",
        p.id,
        p.user_id,
        pkg.code,
        pkg.name,
        pkg.price_cents,
        pkg.currency,
        pkg.credits,
        pkg.bonus_credits,
        pkg.grant_millicredits,
        p.return_to,
    )


async def attach_session(conn: Any, purchase_id: str, session_id: str, url: str) -> None:
    await conn.execute(
        "UPDATE purchases SET stripe_session_id = $2, checkout_url = $3, updated_at = now()"
        " WHERE id = $1",
        purchase_id,
        session_id,
        url,
    )


async def mark_failed(conn: Any, purchase_id: str, failure_code: str) -> None:
    await conn.execute(
        "UPDATE purchases SET status = 'failed', failure_code = $2, updated_at = now()"
        " WHERE id = $1 AND status = 'pending'",
        purchase_id,
        failure_code,
    )


async def purchase(conn: Any, purchase_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        f"SELECT {_PURCHASE_COLUMNS} FROM purchases WHERE id = $1", purchase_id
    )
    return dict(row) if row else None


async def lock_purchase(conn: Any, purchase_id: str) -> dict[str, Any] | None:
    """The purchase, locked until the end of the caller's transaction."""
    row = await conn.fetchrow(
        f"SELECT {_PURCHASE_COLUMNS} FROM purchases WHERE id = $1 FOR UPDATE", purchase_id
    )
    return dict(row) if row else None


async def set_status(
    conn: Any, purchase_id: str, status: str, refunded_millicredits: int, receipt_url: str | None
) -> None:
    await conn.execute(
        "UPDATE purchases SET status = $2, refunded_millicredits = $3, receipt_url = $4,"
        " updated_at = now() WHERE id = $1",
        purchase_id,
        status,
        refunded_millicredits,
        receipt_url,
    )


async def user_purchases(
    conn: Any, user_id: str, limit: int, before: tuple[datetime, str] | None
) -> list[dict[str, Any]]:
    """A user's purchases newest first, from just after the keyset position ``before``."""
    rows = await conn.fetch(
        f"SELECT {_PURCHASE_COLUMNS} FROM purchases WHERE user_id = $1"
        " AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))"
        " ORDER BY created_at DESC, id DESC LIMIT $4",
        user_id,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )
    return [dict(row) for row in rows]


# -- idempotency keys --------------------------------------------------------------------


async def claim_idempotency_key(
    conn: Any, user_id: str, key: str, request_hash: str, abandoned_after_s: float
) -> bool:
    """True when this request now holds the key: it was free, or an identical request's
    claim was abandoned (never finished within ``abandoned_after_s``)."""
    claimed = await conn.fetchval(
        "INSERT INTO idempotency_keys (user_id, idempotency_key, request_hash, state)"
        " VALUES ($1, $2, $3, 'in_progress')"
        " ON CONFLICT (user_id, idempotency_key) DO UPDATE SET created_at = now()"
        " WHERE idempotency_keys.state = 'in_progress'"
        " AND idempotency_keys.request_hash = EXCLUDED.request_hash"
        " AND idempotency_keys.created_at < now() - make_interval(secs => $4)"
        " RETURNING true",
        user_id,
        key,
        request_hash,
        abandoned_after_s,
    )
    return bool(claimed)


async def idempotency_key(conn: Any, user_id: str, key: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT request_hash, state, response_status, response_body FROM idempotency_keys"
        " WHERE user_id = $1 AND idempotency_key = $2",
        user_id,
        key,
    )
    if row is None:
        return None
    stored = dict(row)
    if stored["response_body"] is not None:
        stored["response_body"] = json.loads(stored["response_body"])
    return stored


async def complete_idempotency_key(
    conn: Any, user_id: str, key: str, status: int, body: dict[str, Any]
) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET state = 'done', response_status = $3,"
        " response_body = $4::jsonb WHERE user_id = $1 AND idempotency_key = $2",
        user_id,
        key,
        status,
        json.dumps(body),
    )


async def release_idempotency_key(conn: Any, user_id: str, key: str) -> None:
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE user_id = $1 AND idempotency_key = $2"
        " AND state = 'in_progress'",
        user_id,
        key,
    )


# -- feature switches --------------------------------------------------------------------


@dataclass(frozen=True)
class SwitchChange:
    name: str
    old_value: Any
    new_value: Any
    actor: str
    reason: str
    correlation_id: str | None


async def seed_feature_switches(
    conn: Any, values: dict[str, Any], actor: str, reason: str
) -> list[str]:
    """Rows for the switches that have none (never overwriting one), each logged as its
    first value; the names seeded. Safe when replicas start at once."""
    rows = await conn.fetch(
        "WITH seeded AS ("
        " INSERT INTO feature_switches (name, value, updated_by)"
        " SELECT key, value, $2 FROM jsonb_each($1::jsonb)"
        " ON CONFLICT (name) DO NOTHING RETURNING name, value)"
        " INSERT INTO feature_switch_changes (name, old_value, new_value, actor, reason)"
        " SELECT name, NULL, value, $2, $3 FROM seeded RETURNING name",
        json.dumps(values),
        actor,
        reason,
    )
    return [r["name"] for r in rows]


async def feature_switches(conn: Any) -> list[dict[str, Any]]:
    """Every switch row: name, value (decoded JSON), updated_by, updated_at."""
    rows = await conn.fetch(
        "SELECT name, value, updated_by, updated_at FROM feature_switches ORDER BY name"
    )
    return [{**dict(r), "value": json.loads(r["value"])} for r in rows]


async def lock_feature_switches(conn: Any) -> dict[str, Any]:
    """Name -> value of every switch, locked until the end of the caller's transaction."""
    rows = await conn.fetch("SELECT name, value FROM feature_switches ORDER BY name FOR UPDATE")
    return {r["name"]: json.loads(r["value"]) for r in rows}


async def set_feature_switch(conn: Any, name: str, value: Any, actor: str) -> None:
    await conn.execute(
        "INSERT INTO feature_switches (name, value, updated_by) VALUES ($1, $2::jsonb, $3)"
        " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value,"
        " updated_by = EXCLUDED.updated_by, updated_at = now()",
        name,
        json.dumps(value),
        actor,
    )


async def insert_feature_switch_change(conn: Any, change: SwitchChange) -> None:
    await conn.execute(
        "INSERT INTO feature_switch_changes"
        " (name, old_value, new_value, actor, reason, correlation_id)"
        " VALUES ($1, $2::jsonb, $3::jsonb, $4, $5, $6)",
        change.name,
        None if change.old_value is None else json.dumps(change.old_value),
        json.dumps(change.new_value),
        change.actor,
        change.reason,
        change.correlation_id,
    )


# -- inbox -------------------------------------------------------------------------------


async def claim_message(conn: Any, message_key: str) -> bool:
    """Record a consumed message as handled; False when it already was (a redelivery)."""
    inserted = await conn.fetchval(
        "INSERT INTO inbox (message_key) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true",
        message_key,
    )
    return bool(inserted)
