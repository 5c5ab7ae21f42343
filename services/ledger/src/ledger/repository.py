"""All SQL of the ledger service."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from billing_events import audit
from billing_events.kafka import InboundMessage
from billing_events.v1 import audit_pb2
from billing_platform.db import check_schema_name

from ledger.journal import Posting


async def claim_message(
    conn: Any, message_key: str, kind: str, message: InboundMessage, trace_id: str | None
) -> bool:
    """Record a message as handled; False when it already was (a redelivery)."""
    inserted = await conn.fetchval(
        "INSERT INTO inbox (message_key, kind, topic, kafka_partition, kafka_offset,"
        " correlation_id, trace_id) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (message_key) DO NOTHING RETURNING true",
        message_key,
        kind,
        message.topic,
        message.partition,
        message.offset,
        message.correlation_id,
        trace_id,
    )
    return bool(inserted)


async def set_outcome(conn: Any, message_key: str, outcome: str, detail: str | None) -> None:
    await conn.execute(
        "UPDATE inbox SET outcome = $2, detail = $3 WHERE message_key = $1",
        message_key,
        outcome,
        detail,
    )


async def inbox_entry(conn: Any, message_key: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM inbox WHERE message_key = $1", message_key)
    return dict(row) if row else None


async def purchase_terms(conn: Any, checkout_schema: str, purchase_id: str) -> Any:
    """The purchase as checkout recorded it, read through checkout's published view."""
    schema = check_schema_name(checkout_schema)
    return await conn.fetchrow(
        "SELECT purchase_id, user_id, package_code, price_cents, currency,"
        f' grant_millicredits, stripe_session_id FROM "{schema}".purchase_terms'
        " WHERE purchase_id = $1",
        purchase_id,
    )


async def insert_transaction(
    conn: Any, transaction_id: str, posting: Posting, correlation_id: str
) -> datetime | None:
    """None when a unique rule (one grant per purchase, idempotency key) already holds it."""
    created: datetime | None = await conn.fetchval(
        "INSERT INTO journal_transactions (id, kind, user_id, reference_id, reverses_id,"
        " idempotency_key, correlation_id, source, details)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)"
        " ON CONFLICT DO NOTHING RETURNING created_at",
        transaction_id,
        posting.kind,
        posting.user_id,
        posting.reference_id,
        posting.reverses_id,
        posting.idempotency_key,
        correlation_id,
        posting.source,
        json.dumps(posting.details),
    )
    return created


async def apply_wallet_delta(conn: Any, user_id: str, delta: int) -> int:
    """Move the balance and return it; the row lock orders concurrent postings per user."""
    balance: int = await conn.fetchval(
        "INSERT INTO balances (user_id, balance_millicredits) VALUES ($1, $2)"
        " ON CONFLICT (user_id) DO UPDATE SET"
        " balance_millicredits = balances.balance_millicredits + EXCLUDED.balance_millicredits,"
        " updated_at = now() RETURNING balance_millicredits",
        user_id,
        delta,
    )
    return balance


async def insert_entries(
    conn: Any, transaction_id: str, posting: Posting, wallet_account: str, balance_after: int
) -> None:
    rows = [
        (
            transaction_id,
            e.account,
            posting.user_id if e.account == wallet_account else None,
            e.amount_millicredits,
            balance_after if e.account == wallet_account else None,
        )
        for e in posting.entries
    ]
    await conn.executemany(
        "INSERT INTO journal_entries (transaction_id, account, user_id, amount_millicredits,"
        " balance_after_millicredits) VALUES ($1, $2, $3, $4, $5)",
        rows,
    )


async def insert_grant(
    conn: Any, terms: Any, transaction_id: str, session_id: str | None, payment_intent: str | None
) -> None:
    await conn.execute(
        "INSERT INTO purchase_grants (purchase_id, user_id, transaction_id, package_code,"
        " price_cents, currency, grant_millicredits, stripe_session_id, payment_intent, source)"
        " SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, t.source"
        " FROM journal_transactions t WHERE t.id = $3",
        terms["purchase_id"],
        terms["user_id"],
        transaction_id,
        terms["package_code"],
        terms["price_cents"],
        terms["currency"],
        terms["grant_millicredits"],
        session_id,
        payment_intent,
    )


async def grant_for_refund(conn: Any, purchase_id: str | None, payment_intent: str | None) -> Any:
    """The grant a refund belongs to, locked so concurrent refunds apply one at a time."""
    return await conn.fetchrow(
        "SELECT * FROM purchase_grants WHERE purchase_id = $1"
        " OR ($1::text IS NULL AND payment_intent = $2) LIMIT 1 FOR UPDATE",
        purchase_id,
        payment_intent,
    )


async def grant_of(conn: Any, purchase_id: str) -> Any:
    return await conn.fetchrow("SELECT * FROM purchase_grants WHERE purchase_id = $1", purchase_id)


async def record_refund(
    conn: Any, purchase_id: str, refunded_cents: int, clawed_back_millicredits: int
) -> None:
    await conn.execute(
        "UPDATE purchase_grants SET refunded_cents = $2, clawed_back_millicredits = $3"
        " WHERE purchase_id = $1",
        purchase_id,
        refunded_cents,
        clawed_back_millicredits,
    )


async def balance(conn: Any, user_id: str) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT balance_millicredits, held_millicredits FROM balances WHERE user_id = $1", user_id
    )
    return (row["balance_millicredits"], row["held_millicredits"]) if row else (0, 0)


_WALLET_ENTRY_COLUMNS = (
    "e.id AS entry_id, t.id AS transaction_id, t.kind, e.amount_millicredits,"
    " e.balance_after_millicredits, t.reference_id, t.correlation_id, e.created_at,"
    " t.details ->> 'model' AS model"
)


async def wallet_entries_newest_first(
    conn: Any, user_id: str, before_entry_id: int | None, limit: int
) -> list[Any]:
    rows: list[Any] = await conn.fetch(
        f"SELECT {_WALLET_ENTRY_COLUMNS} FROM journal_entries e"
        " JOIN journal_transactions t ON t.id = e.transaction_id"
        " WHERE e.user_id = $1 AND ($2::bigint IS NULL OR e.id < $2)"
        " ORDER BY e.id DESC LIMIT $3",
        user_id,
        before_entry_id,
        limit,
    )
    return rows


async def wallet_entries_oldest_first(
    conn: Any, user_id: str, after_entry_id: int, limit: int
) -> list[Any]:
    rows: list[Any] = await conn.fetch(
        f"SELECT {_WALLET_ENTRY_COLUMNS} FROM journal_entries e"
        " JOIN journal_transactions t ON t.id = e.transaction_id"
        " WHERE e.user_id = $1 AND e.id > $2 ORDER BY e.id LIMIT $3",
        user_id,
        after_entry_id,
        limit,
    )
    return rows


async def transaction_of_user(conn: Any, transaction_id: str, user_id: str) -> Any:
    return await conn.fetchrow(
        "SELECT id, kind, reference_id FROM journal_transactions"
        " WHERE id = $1::uuid AND user_id = $2",
        transaction_id,
        user_id,
    )


async def transaction_by_idempotency_key(conn: Any, key: str) -> Any:
    return await conn.fetchrow(
        "SELECT t.id, t.kind, t.user_id, t.reference_id, e.amount_millicredits,"
        " e.balance_after_millicredits FROM journal_transactions t"
        " JOIN journal_entries e ON e.transaction_id = t.id AND e.user_id IS NOT NULL"
        " WHERE t.idempotency_key = $1",
        key,
    )


async def insert_audit(
    conn: Any, record: audit_pb2.AdminActionRecorded, reference_id: str | None = None
) -> bool:
    """Keep an admin action's record; False when its event id is already kept."""
    meta = record.meta
    occurred = meta.occurred_at.ToDatetime(tzinfo=UTC) if meta.HasField("occurred_at") else None
    inserted = await conn.fetchval(
        "INSERT INTO audit_log (event_id, actor, action, target, target_user_id, reference_id,"
        " reason, correlation_id, details, source, occurred_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11)"
        " ON CONFLICT (event_id) DO NOTHING RETURNING true",
        meta.event_id,
        record.actor,
        record.action,
        record.target,
        record.target_user_id or None,
        reference_id,
        record.reason or None,
        meta.correlation_id or None,
        json.dumps(audit.details_of(record)),
        meta.producer or None,
        occurred,
    )
    return bool(inserted)


@dataclass(frozen=True)
class AuditFilter:
    action: str | None = None
    actor: str | None = None
    target: str | None = None
    target_user_id: str | None = None
    correlation_id: str | None = None


async def audit_newest_first(
    conn: Any, where: AuditFilter, before_id: int | None, limit: int
) -> list[Any]:
    """The audit trail, newest record first, optionally filtered and before ``before_id``."""
    rows: list[Any] = await conn.fetch(
        "SELECT id, event_id, actor, action, target, target_user_id, reference_id, reason,"
        " correlation_id, details, source, occurred_at, created_at FROM audit_trail"
        " WHERE ($1::text IS NULL OR action = $1) AND ($2::text IS NULL OR actor = $2)"
        " AND ($3::text IS NULL OR target = $3) AND ($4::text IS NULL OR target_user_id = $4)"
        " AND ($5::text IS NULL OR correlation_id = $5) AND ($6::bigint IS NULL OR id < $6)"
        " ORDER BY id DESC LIMIT $7",
        where.action,
        where.actor,
        where.target,
        where.target_user_id,
        where.correlation_id,
        before_id,
        limit,
    )
    return rows


# --- holds -------------------------------------------------------------------------------
# Lock order everywhere: the user's balances row first, then hold rows.


async def lock_balance(conn: Any, user_id: str) -> Any:
    return await conn.fetchrow(
        "SELECT balance_millicredits, held_millicredits FROM balances"
        " WHERE user_id = $1 FOR UPDATE",
        user_id,
    )


async def expire_due_holds(conn: Any, user_id: str) -> int:
    """Expire the user's overdue holds and free what they held; returns how many."""
    freed = await conn.fetchrow(
        "WITH due AS (UPDATE holds SET status = 'expired', settled_at = now()"
        " WHERE user_id = $1 AND status = 'active' AND expires_at <= now()"
        " RETURNING amount_millicredits)"
        " SELECT count(*) AS n, coalesce(sum(amount_millicredits), 0) AS amount FROM due",
        user_id,
    )
    if freed["n"]:
        await unhold(conn, user_id, freed["amount"])
    return int(freed["n"])


async def unhold(conn: Any, user_id: str, amount: int) -> None:
    await conn.execute(
        "UPDATE balances SET held_millicredits = held_millicredits - $2, updated_at = now()"
        " WHERE user_id = $1",
        user_id,
        amount,
    )


async def create_hold(conn: Any, user_id: str, amount: int, key: str, ttl_s: int) -> Any:
    """The ``create_hold`` function's answer: r_outcome (created, existing, key_reused,
    insufficient), the hold and the user's balance and held amount after it."""
    return await conn.fetchrow(
        "SELECT * FROM create_hold($1, $2, $3, $4)", user_id, amount, key, ttl_s
    )


async def capture_hold(
    conn: Any,
    hold_id: str,
    usage: Any,
    correlation_id: str,
    headers: dict[str, str],
    topic: str,
) -> Any:
    """The ``capture_hold`` function's answer: r_outcome (captured, captured_other,
    hold_not_found), r_user_id, r_status, r_charged, r_transaction_id, r_balance, r_held."""
    return await conn.fetchrow(
        "SELECT * FROM capture_hold($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10)",
        hold_id,
        usage.usage_id,
        usage.amount_millicredits,
        usage.model,
        usage.input_tokens,
        usage.output_tokens,
        usage.rate_card_version,
        correlation_id,
        json.dumps(headers),
        topic,
    )


async def hold_owner(conn: Any, hold_id: str) -> str | None:
    owner: str | None = await conn.fetchval(
        "SELECT user_id FROM holds WHERE id = $1::uuid", hold_id
    )
    return owner


async def lock_hold(conn: Any, hold_id: str) -> Any:
    return await conn.fetchrow("SELECT * FROM holds WHERE id = $1::uuid FOR UPDATE", hold_id)


async def settle_hold(
    conn: Any,
    hold_id: str,
    status: str,
    usage_id: str | None,
    charged: int | None,
    transaction_id: str | None,
) -> None:
    await conn.execute(
        "UPDATE holds SET status = $2, usage_id = $3, charged_millicredits = $4,"
        " transaction_id = $5, settled_at = now() WHERE id = $1::uuid",
        hold_id,
        status,
        usage_id,
        charged,
        transaction_id,
    )


async def usage_posting(conn: Any, usage_id: str) -> Any:
    return await conn.fetchrow(
        "SELECT t.id, t.user_id, e.amount_millicredits FROM journal_transactions t"
        " JOIN journal_entries e ON e.transaction_id = t.id AND e.user_id IS NOT NULL"
        " WHERE t.kind = 'usage' AND t.reference_id = $1",
        usage_id,
    )


async def users_with_due_holds(conn: Any, limit: int) -> list[str]:
    rows = await conn.fetch(
        "SELECT DISTINCT user_id FROM holds WHERE status = 'active' AND expires_at <= now()"
        " LIMIT $1",
        limit,
    )
    return [r["user_id"] for r in rows]


# --- statements and the accounting export ------------------------------------------------
# A user's wallet entries are stamped (created_at) after the balance lock, so their
# timestamps follow the order the balance moved in; statements cut months on them.


async def balance_before(conn: Any, user_id: str, before: datetime) -> int:
    """The balance after the user's last wallet entry before ``before``; 0 if none."""
    balance: int | None = await conn.fetchval(
        "SELECT balance_after_millicredits FROM journal_entries"
        " WHERE user_id = $1 AND created_at < $2 ORDER BY created_at DESC, id DESC LIMIT 1",
        user_id,
        before,
    )
    return balance or 0


async def wallet_entries_between(
    conn: Any, user_id: str, start: datetime, end: datetime
) -> list[Any]:
    """The user's wallet entries in [start, end), in posting order, with what statements show."""
    rows: list[Any] = await conn.fetch(
        "SELECT t.id AS transaction_id, t.kind, e.amount_millicredits,"
        " e.balance_after_millicredits, t.reference_id, e.created_at,"
        " t.details ->> 'model' AS model,"
        " (t.details ->> 'input_tokens')::bigint AS input_tokens,"
        " (t.details ->> 'output_tokens')::bigint AS output_tokens,"
        " (t.details ->> 'price_cents')::bigint AS price_cents,"
        " (t.details ->> 'refund_cents')::bigint AS refund_cents"
        " FROM journal_entries e JOIN journal_transactions t ON t.id = e.transaction_id"
        " WHERE e.user_id = $1 AND e.created_at >= $2 AND e.created_at < $3"
        " ORDER BY e.created_at, e.id",
        user_id,
        start,
        end,
    )
    return rows


async def journal_day_rows(
    conn: Any, end: datetime, after: tuple[datetime, str], limit: int
) -> list[Any]:
    """Non-wallet entries of up to ``limit`` transactions posted after ``after`` and before
    ``end``, keyset-ordered by (created_at, id). A transaction with no such entry still
    gives one row, with a NULL account, so the caller's keyset moves past it.
    """
    rows: list[Any] = await conn.fetch(
        "WITH batch AS (SELECT id, kind, user_id, reference_id, created_at, details"
        "   FROM journal_transactions WHERE created_at < $1 AND (created_at, id) > ($2, $3)"
        "   ORDER BY created_at, id LIMIT $4)"
        " SELECT b.id AS transaction_id, b.kind, b.user_id, b.reference_id, b.created_at,"
        " e.account, e.amount_millicredits,"
        " b.details ->> 'package_code' AS package_code, b.details ->> 'model' AS model,"
        " b.details ->> 'input_tokens' AS input_tokens,"
        " b.details ->> 'output_tokens' AS output_tokens,"
        " b.details ->> 'refund_cents' AS refund_cents, b.details ->> 'reason' AS reason"
        " FROM batch b LEFT JOIN journal_entries e ON e.transaction_id = b.id"
        "   AND e.user_id IS NULL AND e.amount_millicredits <> 0"
        " ORDER BY b.created_at, b.id, e.id",
        end,
        after[0],
        after[1],
        limit,
    )
    return rows


# --- batches: one statement per step for a whole fetched batch ----------------------------


@dataclass(frozen=True)
class Claim:
    message_key: str
    kind: str
    message: InboundMessage
    # Known before the claim (an event the ledger ignores): written with it, not after.
    outcome: str | None = None


async def claim_messages(conn: Any, claims: Sequence[Claim], trace_id: str | None) -> set[str]:
    """Record messages as handled; the keys that were new (the rest are redeliveries).

    Each row keeps the trace its record carries (``trace_id``, the batch's, when none)."""
    rows = await conn.fetch(
        "INSERT INTO inbox (message_key, kind, topic, kafka_partition, kafka_offset,"
        " correlation_id, trace_id, outcome)"
        " SELECT k, kind, topic, p, o, c, coalesce(t, $7), r FROM unnest($1::text[],"
        " $2::text[], $3::text[], $4::int[], $5::bigint[], $6::text[], $8::text[], $9::text[])"
        " AS m(k, kind, topic, p, o, c, t, r)"
        " ON CONFLICT (message_key) DO NOTHING RETURNING message_key",
        [c.message_key for c in claims],
        [c.kind for c in claims],
        [c.message.topic for c in claims],
        [c.message.partition for c in claims],
        [c.message.offset for c in claims],
        [c.message.correlation_id for c in claims],
        trace_id,
        [c.message.trace_id for c in claims],
        [c.outcome for c in claims],
    )
    return {r["message_key"] for r in rows}


async def set_outcomes(conn: Any, outcomes: Mapping[str, str | tuple[str, str | None]]) -> None:
    """Each message's outcome, optionally with its detail: key -> outcome | (outcome, detail)."""
    if not outcomes:
        return
    pairs = [o if isinstance(o, tuple) else (o, None) for o in outcomes.values()]
    await conn.execute(
        "UPDATE inbox SET outcome = o.outcome, detail = o.detail"
        " FROM unnest($1::text[], $2::text[], $3::text[]) AS o(message_key, outcome, detail)"
        " WHERE inbox.message_key = o.message_key",
        list(outcomes),
        [p[0] for p in pairs],
        [p[1] for p in pairs],
    )


async def lock_balances(conn: Any, user_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(balance, held) of each user that has a balance, locked in one order for everyone."""
    rows = await conn.fetch(
        "SELECT user_id, balance_millicredits, held_millicredits FROM balances"
        " WHERE user_id = ANY($1::text[]) ORDER BY user_id FOR UPDATE",
        list(user_ids),
    )
    return {r["user_id"]: (r["balance_millicredits"], r["held_millicredits"]) for r in rows}


async def usage_postings(conn: Any, usage_ids: Sequence[str]) -> dict[str, str]:
    """The user each of these usage ids was already posted to."""
    rows = await conn.fetch(
        "SELECT reference_id, user_id FROM journal_transactions"
        " WHERE kind = 'usage' AND reference_id = ANY($1::text[])",
        list(usage_ids),
    )
    return {r["reference_id"]: r["user_id"] for r in rows}


@dataclass(frozen=True)
class NewTransaction:
    transaction_id: str
    posting: Posting
    correlation_id: str


async def insert_transactions(conn: Any, rows: Sequence[NewTransaction]) -> dict[str, datetime]:
    """Insert in order; the creation time of each one a unique rule did not refuse."""
    inserted = await conn.fetch(
        "INSERT INTO journal_transactions (id, kind, user_id, reference_id, reverses_id,"
        " idempotency_key, correlation_id, source, details)"
        " SELECT i, kind, u, ref, rev, key, corr, src, d::jsonb FROM unnest($1::uuid[],"
        " $2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[],"
        " $9::text[]) WITH ORDINALITY AS t(i, kind, u, ref, rev, key, corr, src, d, n)"
        " ORDER BY n ON CONFLICT DO NOTHING RETURNING id, created_at",
        [r.transaction_id for r in rows],
        [r.posting.kind for r in rows],
        [r.posting.user_id for r in rows],
        [r.posting.reference_id for r in rows],
        [r.posting.reverses_id for r in rows],
        [r.posting.idempotency_key for r in rows],
        [r.correlation_id for r in rows],
        [r.posting.source for r in rows],
        [json.dumps(r.posting.details) for r in rows],
    )
    return {str(r["id"]): r["created_at"] for r in inserted}


@dataclass(frozen=True)
class NewEntry:
    transaction_id: str
    account: str
    user_id: str | None
    amount_millicredits: int
    balance_after: int | None


async def insert_entries_many(conn: Any, entries: Sequence[NewEntry]) -> None:
    """Insert in order, so entry ids follow each wallet's running balance."""
    await conn.execute(
        "INSERT INTO journal_entries (transaction_id, account, user_id, amount_millicredits,"
        " balance_after_millicredits)"
        " SELECT t, a, u, m, b FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[],"
        " $5::bigint[]) WITH ORDINALITY AS e(t, a, u, m, b, n) ORDER BY n",
        [e.transaction_id for e in entries],
        [e.account for e in entries],
        [e.user_id for e in entries],
        [e.amount_millicredits for e in entries],
        [e.balance_after for e in entries],
    )


async def apply_wallet_deltas(conn: Any, deltas: dict[str, int]) -> None:
    """Move each user's balance once for the whole batch (users named once each)."""
    await conn.execute(
        "INSERT INTO balances (user_id, balance_millicredits)"
        " SELECT u, d FROM unnest($1::text[], $2::bigint[]) AS w(u, d)"
        " ON CONFLICT (user_id) DO UPDATE SET"
        " balance_millicredits = balances.balance_millicredits + EXCLUDED.balance_millicredits,"
        " updated_at = now()",
        list(deltas),
        list(deltas.values()),
    )
