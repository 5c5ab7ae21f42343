"""All SQL of the metering service."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from billing_platform.db import check_schema_name

from metering.records import ModelTotals, ShadowCharge, UsageRecord

# First key of the per-user advisory locks the caps take (the second is hashtext(user id));
# two-key locks never collide with the outbox relay's one-key lock.
GUARD_LOCK_SPACE = 0x6D657465  # "mete"


async def create_ledger_hold(
    conn: Any, ledger_schema: str, user_id: str, amount: int, key: str, ttl_s: int
) -> Any:
    """The ledger's ``create_hold`` function (the one grant metering has there): r_outcome
    (created, existing, key_reused, insufficient), r_hold_id, r_amount, r_balance, r_held."""
    schema = check_schema_name(ledger_schema)
    return await conn.fetchrow(
        f'SELECT * FROM "{schema}".create_hold($1, $2, $3, $4)', user_id, amount, key, ttl_s
    )


async def admit_charged_call(conn: Any, args: tuple[Any, ...]) -> Any:
    """``admit_charged_call`` (migrations 0004, 0012): claim, guardrails, rate limit, the ledger's
    hold and the in-flight row in one statement; the arguments as ``PgAdmissions`` orders
    them, the r_* columns as the migration describes them.

    Its transaction commits without waiting for the WAL flush. Nothing it writes is owed to
    anyone: a crash that loses it loses a claim, a reservation and a hold of a call that
    was not answered (no settlement can follow it, and a retry is admitted afresh), and the
    settlement's own commit, which waits, flushes the WAL up to and past it."""
    placeholders = ", ".join(f"${i}" for i in range(1, len(args) + 1))
    return await conn.fetchrow(
        f"SELECT a.* FROM admit_charged_call({placeholders}) a,"
        " set_config('synchronous_commit', 'off', true)",
        *args,
    )


async def claim_key(
    conn: Any,
    user_id: str,
    key: str,
    request_hash: str,
    takeover_after_s: float,
    usage_ids: tuple[str, str | None],
) -> tuple[int, str] | None:
    """Claim an idempotency key for a request's usage id (``claim_usage``, migration 0012):
    the attempt number and the usage id the claim holds (the first attempt's), or None when
    another request has the key. ``usage_ids``: the request's new id, and the id a claim made
    before 0012 stands for.

    A released claim (its attempt failed) or one abandoned in progress is taken over.
    """
    row = await conn.fetchrow(
        "SELECT r_attempt, r_usage_id FROM claim_usage($1, $2, $3, $4, $5, $6)",
        user_id,
        key,
        request_hash,
        takeover_after_s,
        *usage_ids,
    )
    if row["r_attempt"] is None:
        return None
    return row["r_attempt"], str(row["r_usage_id"])


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
    await conn.execute("SELECT release_claim($1, $2, true)", user_id, key)


@dataclass(frozen=True)
class Stored:
    """What storing a usage record found: whether it was new, and the user's last charged
    calls before it (their number and total; none asked for, none counted)."""

    new: bool
    recent_calls: int
    recent_total: int


async def store_usage(
    conn: Any,
    record: UsageRecord,
    correlation_id: str,
    outbox_row: tuple[str, bytes | None, bytes, str],
    history: int,
) -> Stored:
    """``record_usage`` (migration 0005), one statement: store a usage record, free its
    in-flight reservation, mark its key's claim done and, if the record is new, add its
    outbox row; and read the user's last ``history`` charged calls before it (for the
    anomaly check; 0: skip). ``new`` is False when its usage id or (user, key) was stored
    before."""
    row = await conn.fetchrow(
        "SELECT * FROM record_usage($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,"
        " $14, $15, $16, $17, $18, $19, $20, $21::jsonb, $22)",
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
        record.priced_millicredits,
        *outbox_row,
        history,
    )
    return Stored(bool(row["new"]), int(row["calls"]), int(row["total"]))


@dataclass(frozen=True)
class HoldToCapture:
    """A charged record's hold to capture: the ledger's topic and the headers of its posting
    event, the hold and the balance it saw (the answer's when the ledger cannot capture)."""

    ledger_topic: str
    ledger_headers: dict[str, str]
    hold_id: str
    balance_millicredits: int
    held_millicredits: int


async def settle_charged_call(
    conn: Any,
    hold: HoldToCapture,
    record: UsageRecord,
    correlation_id: str,
    outbox_row: tuple[str, bytes | None, bytes, str],
    history: int,
) -> Any:
    """``settle_charged_call`` (migration 0005), one statement: capture ``hold`` for the
    record's ``charged_millicredits`` and store the record with what was charged, its body
    ended by the usage and the balance (``settled_body``), its outbox payload by the charge.
    r_outcome (the capture's), r_new, r_charged, r_transaction_id, r_balance, r_held,
    r_recent_calls, r_recent_total."""
    return await conn.fetchrow(
        "SELECT * FROM settle_charged_call($1, $2::jsonb, $3::uuid, $4, $5, $6, $7, $8, $9, $10,"
        " $11, $12, $13, $14, $15, $16, $17::json, $18, $19, $20, $21, $22::jsonb, $23)",
        hold.ledger_topic,
        json.dumps(hold.ledger_headers),
        hold.hold_id,
        hold.balance_millicredits,
        hold.held_millicredits,
        record.usage_id,
        record.user_id,
        record.model,
        record.input_tokens,
        record.output_tokens,
        record.charged_millicredits,
        record.cost_millicredits,
        record.rate_card_version,
        record.idempotency_key,
        record.provider_request_id,
        correlation_id,
        json.dumps(record.response_body),
        record.priced_millicredits,
        *outbox_row,
        history,
    )


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


# --- settling a call ----------------------------------------------------------------------


async def delete_inflight(conn: Any, usage_id: str) -> None:
    await conn.execute("DELETE FROM inflight_charges WHERE usage_id = $1", usage_id)


async def insert_review_flag(
    conn: Any, record: UsageRecord, average_millicredits: int, recent_calls: int
) -> bool:
    inserted = await conn.fetchval(
        "INSERT INTO review_flags (user_id, usage_id, model, charge_millicredits,"
        " average_millicredits, recent_calls) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (usage_id) DO NOTHING RETURNING true",
        record.user_id,
        record.usage_id,
        record.model,
        record.charged_millicredits,
        average_millicredits,
        recent_calls,
    )
    return bool(inserted)


async def insert_shadow_charge(conn: Any, record: UsageRecord, shadow: ShadowCharge) -> None:
    await conn.execute(
        "INSERT INTO shadow_charges (usage_id, user_id, model, input_tokens, output_tokens,"
        " charged_millicredits, mode, would_be_mode, rate_card_version)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (usage_id) DO NOTHING",
        record.usage_id,
        record.user_id,
        record.model,
        record.input_tokens,
        record.output_tokens,
        record.priced_millicredits,
        record.mode,
        shadow.would_be_mode,
        record.rate_card_version,
    )


# --- switches -----------------------------------------------------------------------------


async def feature_flags(conn: Any, checkout_schema: str) -> list[tuple[str, Any]]:
    """(name, value as JSON text) of every row of checkout's read-only feature_flags view."""
    schema = check_schema_name(checkout_schema)
    rows = await conn.fetch(f'SELECT name, value FROM "{schema}".feature_flags')
    return [(r["name"], r["value"]) for r in rows]


# --- caps and pauses ----------------------------------------------------------------------


async def lock_user_guard(conn: Any, user_id: str) -> None:
    """Serialise the cap checks of one user until the end of the caller's transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", GUARD_LOCK_SPACE, user_id)


async def pause_of(conn: Any, user_id: str) -> Any:
    return await conn.fetchrow(
        "SELECT user_id, reason, paused_at, resumed_at, resumed_by, resume_reason"
        " FROM user_pauses WHERE user_id = $1",
        user_id,
    )


async def paused_users(conn: Any, limit: int) -> list[Any]:
    """The pauses not lifted yet, most recent first."""
    rows: list[Any] = await conn.fetch(
        "SELECT user_id, reason, paused_at, resumed_at, resumed_by, resume_reason"
        " FROM user_pauses WHERE resumed_at IS NULL ORDER BY paused_at DESC, user_id LIMIT $1",
        limit,
    )
    return rows


async def pause_user(conn: Any, user_id: str, reason: str, at: datetime) -> None:
    """Pause the user (again, if an admin resumed an earlier pause)."""
    await conn.execute(
        "INSERT INTO user_pauses (user_id, reason, paused_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (user_id) DO UPDATE SET reason = EXCLUDED.reason,"
        " paused_at = EXCLUDED.paused_at, resumed_at = NULL, resumed_by = NULL,"
        " resume_reason = NULL",
        user_id,
        reason,
        at,
    )


async def resume_user(conn: Any, user_id: str, actor: str, reason: str, at: datetime) -> Any:
    """The pause, now resumed; None when the user is not paused."""
    return await conn.fetchrow(
        "UPDATE user_pauses SET resumed_at = $3, resumed_by = $2, resume_reason = $4"
        " WHERE user_id = $1 AND resumed_at IS NULL"
        " RETURNING user_id, reason, paused_at, resumed_at, resumed_by, resume_reason",
        user_id,
        actor,
        at,
        reason,
    )


async def cap_override(conn: Any, user_id: str) -> Any:
    return await conn.fetchrow(
        "SELECT per_request_millicredits, per_day_millicredits, per_hour_millicredits,"
        " updated_by, reason, updated_at FROM user_caps WHERE user_id = $1",
        user_id,
    )


async def set_cap_override(
    conn: Any,
    user_id: str,
    caps: tuple[int | None, int | None, int | None],
    actor: str,
    reason: str,
) -> Any:
    return await conn.fetchrow(
        "INSERT INTO user_caps (user_id, per_request_millicredits, per_day_millicredits,"
        " per_hour_millicredits, updated_by, reason) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (user_id) DO UPDATE SET"
        " per_request_millicredits = EXCLUDED.per_request_millicredits,"
        " per_day_millicredits = EXCLUDED.per_day_millicredits,"
        " per_hour_millicredits = EXCLUDED.per_hour_millicredits,"
        " updated_by = EXCLUDED.updated_by, reason = EXCLUDED.reason, updated_at = now()"
        " RETURNING per_request_millicredits, per_day_millicredits, per_hour_millicredits,"
        " updated_by, reason, updated_at",
        user_id,
        *caps,
        actor,
        reason,
    )


async def guard_state(
    conn: Any, user_id: str, day_start: datetime, hour_start: datetime, now: datetime
) -> Any:
    """What the guardrails weigh a call against, in one round trip: the user's pause
    (``pause_*`` and the resume columns, NULL when never paused), cap override (the columns
    of ``cap_override``, and ``cap_user_id``, NULL when none),
    what was charged since ``day_start`` and after ``hour_start``, and the worst case in
    flight (expired reservations excluded)."""
    return await conn.fetchrow(
        "SELECT * FROM guard_state($1, $2, $3, $4)", user_id, day_start, hour_start, now
    )


async def window_charges(conn: Any, user_id: str, since: datetime) -> list[tuple[datetime, int]]:
    """(created_at, charged) of the user's charged records after ``since``, oldest first."""
    rows = await conn.fetch(
        "SELECT created_at, charged_millicredits FROM usage_records"
        " WHERE user_id = $1 AND mode = 'charged' AND created_at > $2"
        " ORDER BY created_at, usage_id",
        user_id,
        since,
    )
    return [(r["created_at"], int(r["charged_millicredits"])) for r in rows]


async def insert_inflight(
    conn: Any, usage_id: str, user_id: str, estimate: int, now: datetime, expires_at: datetime
) -> None:
    """Count the call in flight (``reserve_inflight``: a crashed attempt's row is replaced,
    the user's expired ones deleted)."""
    await conn.execute(
        "SELECT reserve_inflight($1, $2, $3, $4, $5)", usage_id, user_id, estimate, now, expires_at
    )


async def insert_guardrail_change(
    conn: Any, action: str, user_id: str, actor: str, reason: str, details: dict[str, Any]
) -> None:
    await conn.execute(
        "INSERT INTO guardrail_changes (action, user_id, actor, reason, details)"
        " VALUES ($1, $2, $3, $4, $5::jsonb)",
        action,
        user_id,
        actor,
        reason,
        json.dumps(details),
    )


async def review_flags(conn: Any, user_id: str | None, limit: int) -> list[Any]:
    """Newest first; every user's when ``user_id`` is None."""
    rows: list[Any] = await conn.fetch(
        "SELECT id, user_id, usage_id::text AS usage_id, model, charge_millicredits,"
        " average_millicredits, recent_calls, created_at FROM review_flags"
        " WHERE $1::text IS NULL OR user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
        user_id,
        limit,
    )
    return rows
