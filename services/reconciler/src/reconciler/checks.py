"""The reconciliation checks: one set-based query each, returning only the mismatching rows.

Every check is ``async def check_xxx(conn, schemas, period) -> list[Finding]`` and reads the
other services' schemas read-only (``schemas`` names them). Tolerance is zero millicredits.

Integrity checks (``period`` unused) cover the whole journal: transactions sum to zero,
balances equal their wallet entries, every ``balance_after`` equals the running sum, and
the hash chain still matches its checkpoints. Period checks cover one UTC day:

- usage is attributed to the day of its usage record, and its ledger posting (found by
  ``reference_id`` = usage id) goes with it wherever it falls, so a call made just before
  midnight and posted just after is not a mismatch on both days; a posting with no
  charged usage record at all belongs to the day it was posted;
- a payment belongs to the day of its first paid event, a grant to the day it was made,
  refunds to every day a refund event or refund posting happened.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from reconciler import chain
from reconciler.findings import Finding, Schemas
from reconciler.period import Period

# A check scans whole tables; the pool's default command timeout is for requests.
QUERY_TIMEOUT_S = 900.0

CheckFn = Callable[[Any, Schemas, Period], Awaitable[list[Finding]]]


@dataclass(frozen=True)
class Check:
    name: str
    run: CheckFn


async def _fetch(conn: Any, schemas: Schemas, sql: str, *args: Any) -> list[Any]:
    statement = schemas.qualify(sql, DIGEST=chain.digest_sql())
    rows: list[Any] = await conn.fetch(statement, *args, timeout=QUERY_TIMEOUT_S)
    return rows


def _refs(*values: Any) -> tuple[str, ...]:
    """Reference ids in order, flattening lists and leaving out empty values."""
    out: list[str] = []
    for value in values:
        items = value if isinstance(value, list | tuple) else [value]
        out.extend(str(v) for v in items if v is not None and str(v) != "")
    return tuple(dict.fromkeys(out))


# --- journal integrity ---------------------------------------------------------------

TRANSACTIONS_BALANCED = "transactions_balanced"
_UNBALANCED_SQL = """
SELECT t.id::text AS transaction_id, t.kind, t.user_id, t.reference_id,
       count(e.id) AS entries, coalesce(sum(e.amount_millicredits), 0)::bigint AS total
FROM {L}.journal_transactions t
LEFT JOIN {L}.journal_entries e ON e.transaction_id = t.id
GROUP BY t.id
HAVING count(e.id) = 0 OR sum(e.amount_millicredits) <> 0
ORDER BY t.created_at, t.id
"""


async def check_transactions_balanced(conn: Any, schemas: Schemas, period: Period) -> list[Finding]:
    """Every journal transaction has entries, and they sum to zero."""
    rows = await _fetch(conn, schemas, _UNBALANCED_SQL)
    return [_unbalanced(r) for r in rows]


def _unbalanced(row: Any) -> Finding:
    what = "has no entries" if row["entries"] == 0 else f"sums to {row['total']}"
    return Finding(
        check=TRANSACTIONS_BALANCED,
        kind="unbalanced_transaction",
        user_id=row["user_id"],
        references=_refs(row["transaction_id"], row["reference_id"]),
        expected_millicredits=0,
        actual_millicredits=row["total"],
        detail=f"{row['kind']} transaction {row['transaction_id']} {what}",
    )


BALANCES = "balances_match_journal"
_BALANCE_DRIFT_SQL = """
WITH wallets AS (
    SELECT user_id, sum(amount_millicredits) AS total, count(*) AS entries
    FROM {L}.journal_entries WHERE user_id IS NOT NULL GROUP BY user_id
)
SELECT coalesce(b.user_id, w.user_id) AS user_id,
       coalesce(w.total, 0)::bigint AS expected, b.balance_millicredits AS actual,
       coalesce(w.entries, 0) AS entries
FROM {L}.balances b
FULL JOIN wallets w ON w.user_id = b.user_id
WHERE coalesce(w.total, 0) <> coalesce(b.balance_millicredits, 0)
ORDER BY 1
"""


async def check_balances(conn: Any, schemas: Schemas, period: Period) -> list[Finding]:
    """Each user's balance row equals the sum of that user's wallet entries."""
    rows = await _fetch(conn, schemas, _BALANCE_DRIFT_SQL)
    return [_drift(r) for r in rows]


def _drift(row: Any) -> Finding:
    actual = row["actual"]
    shown = "no balance row" if actual is None else f"balance {actual}"
    return Finding(
        check=BALANCES,
        kind="balance_drift",
        user_id=row["user_id"],
        expected_millicredits=row["expected"],
        actual_millicredits=actual or 0,
        detail=f"{shown}, wallet entries sum to {row['expected']} ({row['entries']} entries)",
    )


RUNNING_BALANCES = "running_balances"
# Where balance_after - running sum changes is where the running balance breaks: an edited
# amount shifts every later entry by the same offset, so only the first of them is named.
_BALANCE_AFTER_SQL = """
WITH running AS (
    SELECT id, transaction_id, user_id, balance_after_millicredits AS actual,
           sum(amount_millicredits) OVER w AS expected
    FROM {L}.journal_entries
    WHERE user_id IS NOT NULL
    WINDOW w AS (PARTITION BY user_id ORDER BY id ROWS UNBOUNDED PRECEDING)
), offsets AS (
    SELECT *, actual - expected AS off,
           lag(actual - expected, 1, 0::numeric) OVER (PARTITION BY user_id ORDER BY id) AS prev
    FROM running
)
SELECT id, transaction_id::text AS transaction_id, user_id,
       expected::bigint AS expected, actual
FROM offsets
WHERE off <> 0 AND off <> prev
ORDER BY user_id, id
"""


async def check_running_balances(conn: Any, schemas: Schemas, period: Period) -> list[Finding]:
    """Every wallet entry's balance_after equals the running sum of the user's entries."""
    rows = await _fetch(conn, schemas, _BALANCE_AFTER_SQL)
    return [_balance_after(r) for r in rows]


def _balance_after(row: Any) -> Finding:
    return Finding(
        check=RUNNING_BALANCES,
        kind="balance_after_mismatch",
        user_id=row["user_id"],
        references=_refs(f"entry:{row['id']}", row["transaction_id"]),
        expected_millicredits=row["expected"],
        actual_millicredits=row["actual"],
        detail=(
            f"entry {row['id']} says balance {row['actual']} but its running sum is "
            f"{row['expected']}; later entries keep this offset until the next break"
        ),
    )


JOURNAL_CHAIN = "journal_chain"
_CHAIN_SQL = """
WITH cp AS (
    SELECT segment_no, entry_count, segment_hash, chain_hash FROM {R}.journal_chain
), horizon AS (
    SELECT coalesce(max(last_id), 0) AS last_id FROM {R}.journal_chain
), current AS (
    SELECT (e.id - 1) / $1 AS segment_no, count(*) AS entry_count,
           {R}.chain_agg({DIGEST} ORDER BY e.id) AS segment_hash
    FROM {L}.journal_entries e
    JOIN {L}.journal_transactions t ON t.id = e.transaction_id
    WHERE e.id <= (SELECT last_id FROM horizon)
    GROUP BY 1
), mismatched AS (
    SELECT coalesce(cp.segment_no, c.segment_no) AS segment_no,
           cp.entry_count AS stored_count, c.entry_count AS current_count
    FROM cp FULL JOIN current c ON c.segment_no = cp.segment_no
    WHERE cp.segment_hash IS DISTINCT FROM c.segment_hash
), stored_entries AS (
    SELECT j.segment_no, u.id,
           substring(j.entry_digests FROM (u.ord::int - 1) * 8 + 1 FOR 8) AS digest
    FROM mismatched m
    JOIN {R}.journal_chain j ON j.segment_no = m.segment_no
    CROSS JOIN LATERAL unnest(j.entry_ids) WITH ORDINALITY AS u(id, ord)
), current_entries AS (
    SELECT m.segment_no, e.id, e.transaction_id::text AS transaction_id, e.user_id,
           substring({DIGEST} FROM 1 FOR 8) AS digest
    FROM mismatched m
    JOIN {L}.journal_entries e
      ON e.id BETWEEN m.segment_no * $1 + 1
                  AND least((m.segment_no + 1) * $1, (SELECT last_id FROM horizon))
    JOIN {L}.journal_transactions t ON t.id = e.transaction_id
), differing AS (
    SELECT coalesce(s.segment_no, c.segment_no) AS segment_no, coalesce(s.id, c.id) AS entry_id,
           c.transaction_id, c.user_id,
           CASE WHEN s.id IS NULL THEN 'inserted' WHEN c.id IS NULL THEN 'deleted'
                ELSE 'changed' END AS change
    FROM stored_entries s
    FULL JOIN current_entries c ON c.segment_no = s.segment_no AND c.id = s.id
    WHERE s.digest IS DISTINCT FROM c.digest
), first_difference AS (
    SELECT DISTINCT ON (segment_no) *, count(*) OVER (PARTITION BY segment_no) AS differing
    FROM differing
    ORDER BY segment_no, entry_id
), chained AS (
    SELECT segment_no, chain_hash,
           {R}.chain_agg(segment_hash) OVER (ORDER BY segment_no) AS expected
    FROM cp
)
SELECT 'segment' AS problem, m.segment_no, m.stored_count, m.current_count,
       f.entry_id, f.transaction_id, f.user_id, f.change, f.differing
FROM mismatched m LEFT JOIN first_difference f USING (segment_no)
UNION ALL
SELECT 'checkpoint', min(segment_no), NULL, NULL, NULL, NULL, NULL, NULL, NULL
FROM chained WHERE chain_hash <> expected
HAVING count(*) > 0
ORDER BY 2, 1
"""


async def check_journal_chain(conn: Any, schemas: Schemas, period: Period) -> list[Finding]:
    """Recompute the hash chain over the journal and compare it with the checkpoints."""
    rows = await _fetch(conn, schemas, _CHAIN_SQL, chain.SEGMENT_SIZE)
    return [_edited(r) for r in rows]


def _edited(row: Any) -> Finding:
    segment = row["segment_no"]
    first = segment * chain.SEGMENT_SIZE + 1
    where = f"segment {segment} (entry ids {first}-{first + chain.SEGMENT_SIZE - 1})"
    return Finding(
        check=JOURNAL_CHAIN,
        kind="journal_edited",
        user_id=row["user_id"],
        references=_refs(
            f"entry:{row['entry_id']}" if row["entry_id"] else None,
            row["transaction_id"],
            f"segment:{segment}",
        ),
        detail=_edited_detail(row, where),
    )


def _edited_detail(row: Any, where: str) -> str:
    if row["problem"] == "checkpoint":
        return f"stored chain hashes do not follow from the segment hashes from {where}"
    if row["entry_id"] is None:
        return f"{where}: segment hash differs from its checkpoint but no entry digest does"
    return (
        f"journal entry {row['entry_id']} was {row['change']} after its checkpoint; {where}: "
        f"{row['differing']} entries differ, {row['stored_count'] or 0} checkpointed, "
        f"{row['current_count'] or 0} now"
    )


# --- usage vs ledger -----------------------------------------------------------------

_PERIOD_USAGE = """
usage AS (
    SELECT u.usage_id::text AS usage_id, u.user_id, u.model,
           u.charged_millicredits AS charged
    FROM {M}.usage_records u
    WHERE u.mode = 'charged' AND u.created_at >= $1 AND u.created_at < $2
)"""
_POSTING_COLUMNS = """
    SELECT t.id, t.reference_id, t.user_id, t.created_at,
           coalesce(t.details ->> 'model', '') AS model, -w.amount_millicredits AS amount
    FROM {L}.journal_transactions t
    JOIN {L}.journal_entries w ON w.transaction_id = t.id AND w.user_id IS NOT NULL"""

USAGE_TOTALS = "usage_totals"
_USAGE_TOTALS_SQL = f"""
WITH {_PERIOD_USAGE},
period_postings AS (
    {_POSTING_COLUMNS}
    JOIN usage u ON u.usage_id = t.reference_id
    WHERE t.kind = 'usage'
    UNION ALL
    {_POSTING_COLUMNS}
    LEFT JOIN {{M}}.usage_records r ON r.usage_id::text = t.reference_id AND r.mode = 'charged'
    WHERE t.kind = 'usage' AND t.created_at >= $1 AND t.created_at < $2 AND r.usage_id IS NULL
), charged AS (
    SELECT user_id, model, sum(charged) AS total, count(*) AS n FROM usage GROUP BY 1, 2
), posted AS (
    SELECT user_id, model, sum(amount) AS total, count(*) AS n FROM period_postings GROUP BY 1, 2
)
SELECT coalesce(c.user_id, p.user_id) AS user_id, coalesce(c.model, p.model) AS model,
       coalesce(c.total, 0)::bigint AS expected, coalesce(p.total, 0)::bigint AS actual,
       coalesce(c.n, 0) AS records, coalesce(p.n, 0) AS postings
FROM charged c
FULL JOIN posted p ON p.user_id = c.user_id AND p.model = c.model
WHERE coalesce(c.total, 0) <> coalesce(p.total, 0)
ORDER BY 1, 2
"""


async def check_usage_totals(conn: Any, schemas: Schemas, period: Period) -> list[Finding]:
    """Per user and model: metering's charged usage equals the ledger's usage postings."""
    rows = await _fetch(conn, schemas, _USAGE_TOTALS_SQL, period.start, period.end)
    return [_usage_mismatch(r) for r in rows]


def _usage_mismatch(row: Any) -> Finding:
    return Finding(
        check=USAGE_TOTALS,
        kind="usage_mismatch",
        user_id=row["user_id"],
        expected_millicredits=row["expected"],
        actual_millicredits=row["actual"],
        detail=(
            f"model {row['model'] or '(none)'}: metering charged {row['expected']} in "
            f"{row['records']} records, the ledger posted {row['actual']} in "
            f"{row['postings']} postings"
        ),
    )


USAGE_POSTINGS = "usage_postings"
# A record charged 0 (nothing was available) has no posting by design: only > 0 is owed one.
_USAGE_POSTINGS_SQL = f"""
WITH {_PERIOD_USAGE}
SELECT u.usage_id, u.user_id, u.model, u.charged AS expected,
       count(DISTINCT t.id) AS postings,
       coalesce(-sum(w.amount_millicredits), 0)::bigint AS actual,
       coalesce(array_agg(DISTINCT t.id::text) FILTER (WHERE t.id IS NOT NULL), ARRAY[]::text[])
           AS transaction_ids
FROM usage u
LEFT JOIN {{L}}.journal_transactions t ON t.kind = 'usage' AND t.reference_id = u.usage_id
LEFT JOIN {{L}}.journal_entries w ON w.transaction_id = t.id AND w.user_id IS NOT NULL
WHERE u.charged > 0
GROUP BY u.usage_id, u.user_id, u.model, u.charged
HAVING count(DISTINCT t.id) <> 1
ORDER BY u.user_id, u.usage_id
"""


async def check_usage_postings(conn: Any, schemas: Schemas, period: Period) -> list[Finding]:
    """Every charged usage record of the period has exactly one ledger posting."""
    rows = await _fetch(conn, schemas, _USAGE_POSTINGS_SQL, period.start, period.end)
    return [_usage_posting(r) for r in rows]


def _usage_posting(row: Any) -> Finding:
    twice = row["postings"] > 1
    return Finding(
        check=USAGE_POSTINGS,
        kind="usage_posted_twice" if twice else "usage_not_posted",
        user_id=row["user_id"],
        references=_refs(row["usage_id"], row["transaction_ids"]),
        expected_millicredits=row["expected"],
        actual_millicredits=row["actual"],
        detail=(
            f"usage {row['usage_id']} ({row['model']}) charged {row['expected']}: "
            f"{row['postings']} ledger postings"
        ),
    )


POSTINGS_HAVE_USAGE = "postings_have_usage"
_POSTING_WITHOUT_USAGE_SQL = f"""
{_POSTING_COLUMNS}
LEFT JOIN {{M}}.usage_records r ON r.usage_id::text = t.reference_id
WHERE t.kind = 'usage' AND t.created_at >= $1 AND t.created_at < $2
  AND (r.usage_id IS NULL OR r.mode <> 'charged')
ORDER BY t.created_at, t.id
"""


async def check_postings_have_usage(conn: Any, schemas: Schemas, period: Period) -> list[Finding]:
    """Every usage posting of the period names a charged usage record."""
    rows = await _fetch(conn, schemas, _POSTING_WITHOUT_USAGE_SQL, period.start, period.end)
    return [_posting_without_usage(r) for r in rows]


def _posting_without_usage(row: Any) -> Finding:
    return Finding(
        check=POSTINGS_HAVE_USAGE,
        kind="posting_without_usage",
        user_id=row["user_id"],
        references=_refs(str(row["id"]), row["reference_id"]),
        expected_millicredits=0,
        actual_millicredits=row["amount"],
        detail=(
            f"usage posting {row['id']} of {row['amount']} ({row['model'] or 'no model'}) "
            f"names usage {row['reference_id']}, which metering has no charged record of"
        ),
    )


# --- payments vs grants --------------------------------------------------------------

_PAID_TYPES = "('checkout.session.completed', 'checkout.session.async_payment_succeeded')"
# The verified events webhook-ingest stored are the payments: a session completed as paid,
# or an async payment that succeeded. The purchase is named as the ledger reads it.
_PAID_EVENTS = f"""
session_events AS (
    SELECT e.event_id, e.type, e.object_id, coalesce(e.stripe_created, e.received_at) AS at,
           convert_from(e.payload, 'UTF8')::jsonb -> 'data' -> 'object' AS obj
    FROM {{W}}.stripe_events e
    WHERE e.type IN {_PAID_TYPES}
), paid_events AS (
    SELECT event_id, object_id, at,
           nullif(coalesce(nullif(obj ->> 'client_reference_id', ''),
                           obj -> 'metadata' ->> 'purchase_id'), '') AS purchase_id,
           (obj ->> 'amount_total')::bigint AS amount_total,
           lower(obj ->> 'currency') AS currency
    FROM session_events
    WHERE type = 'checkout.session.async_payment_succeeded'
       OR obj ->> 'payment_status' = 'paid'
)"""

PAYMENTS_GRANTED = "payments_granted"
_PAYMENTS_SQL = f"""
WITH {_PAID_EVENTS}, paid AS (
    SELECT coalesce(purchase_id, 'session:' || object_id) AS purchase_key, purchase_id,
           min(at) AS paid_at, max(amount_total) AS amount_total, max(currency) AS currency,
           array_agg(DISTINCT object_id) AS session_ids, array_agg(DISTINCT event_id) AS event_ids
    FROM paid_events
    GROUP BY 1, 2
)
SELECT p.purchase_id, p.session_ids, p.event_ids, p.amount_total, p.currency,
       cardinality(p.session_ids) AS sessions, pt.purchase_id IS NOT NULL AS known,
       pt.user_id, pt.price_cents,
       lower(pt.currency) AS terms_currency, pt.grant_millicredits AS terms_grant,
       g.purchase_id IS NOT NULL AS granted, g.transaction_id::text AS transaction_id,
       g.user_id AS grant_user, g.price_cents AS grant_price,
       g.grant_millicredits AS grant_recorded, w.amount_millicredits AS grant_posted
FROM paid p
LEFT JOIN {{C}}.purchase_terms pt ON pt.purchase_id = p.purchase_id
LEFT JOIN {{L}}.purchase_grants g ON g.purchase_id = p.purchase_id
LEFT JOIN {{L}}.journal_entries w ON w.transaction_id = g.transaction_id AND w.user_id IS NOT NULL
WHERE p.paid_at >= $1 AND p.paid_at < $2
  AND (g.purchase_id IS NULL OR pt.purchase_id IS NULL OR cardinality(p.session_ids) > 1
       OR g.grant_millicredits <> pt.grant_millicredits
       OR g.price_cents <> pt.price_cents
       OR g.user_id <> pt.user_id
       OR w.amount_millicredits IS DISTINCT FROM pt.grant_millicredits)
ORDER BY p.paid_at, p.purchase_key
"""


async def check_payments_granted(conn: Any, schemas: Schemas, period: Period) -> list[Finding]:
    """Every paid Checkout Session has one grant, equal to its purchase's terms."""
    rows = await _fetch(conn, schemas, _PAYMENTS_SQL, period.start, period.end)
    return [_payment(r) for r in rows]


def _payment(row: Any) -> Finding:
    # One grant per purchase: a second paid session for it is a payment nothing covers.
    grant_differs = row["granted"] and row["sessions"] == 1
    expected = row["terms_grant"] * row["sessions"] if row["terms_grant"] is not None else None
    return Finding(
        check=PAYMENTS_GRANTED,
        kind="grant_amount_mismatch" if grant_differs else "payment_without_grant",
        user_id=row["user_id"] or row["grant_user"],
        references=_refs(
            row["purchase_id"], row["session_ids"], row["event_ids"], row["transaction_id"]
        ),
        expected_millicredits=row["terms_grant"] if grant_differs else expected,
        actual_millicredits=row["grant_posted"] or 0,
        detail=_grant_detail(row) if grant_differs else _no_grant_detail(row),
    )


def _no_grant_detail(row: Any) -> str:
    if row["granted"]:
        sessions = ", ".join(row["session_ids"])
        return (
            f"purchase {row['purchase_id']} was paid by {row['sessions']} sessions ({sessions})"
            " and granted once"
        )
    if row["purchase_id"] is None:
        return "paid Checkout Session names no purchase, so nothing was granted"
    purchase = f"purchase {row['purchase_id']}"
    if not row["known"]:
        return f"paid Checkout Session for unknown {purchase}; nothing was granted"
    if row["amount_total"] != row["price_cents"]:
        return (
            f"{purchase} paid {row['amount_total']} cents but is priced "
            f"{row['price_cents']} cents; nothing was granted"
        )
    if row["currency"] != row["terms_currency"]:
        return f"{purchase} paid in {row['currency']}, priced in {row['terms_currency']}"
    return f"{purchase} was paid ({row['amount_total']} cents) but has no grant"


def _grant_detail(row: Any) -> str:
    if not row["known"]:
        return f"grant for purchase {row['purchase_id']}, which checkout does not know"
    return (
        f"purchase {row['purchase_id']} of user {row['user_id']} for {row['price_cents']} cents "
        f"grants {row['terms_grant']}; the grant records user {row['grant_user']}, "
        f"{row['grant_price']} cents, {row['grant_recorded']} and posted {row['grant_posted']}"
    )


GRANTS_PAID = "grants_paid"
_GRANTS_SQL = f"""
WITH {_PAID_EVENTS}
SELECT g.purchase_id, g.user_id, g.transaction_id::text AS transaction_id,
       g.grant_millicredits, g.source, g.stripe_session_id
FROM {{L}}.purchase_grants g
WHERE g.granted_at >= $1 AND g.granted_at < $2
  AND NOT EXISTS (SELECT 1 FROM paid_events p WHERE p.purchase_id = g.purchase_id)
  AND (g.stripe_session_id IS NULL
       OR NOT EXISTS (SELECT 1 FROM paid_events p WHERE p.object_id = g.stripe_session_id))
ORDER BY g.granted_at, g.purchase_id
"""


async def check_grants_paid(conn: Any, schemas: Schemas, period: Period) -> list[Finding]:
    """Every grant of the period has a stored paid event for its purchase or session."""
    rows = await _fetch(conn, schemas, _GRANTS_SQL, period.start, period.end)
    return [_grant_without_payment(r) for r in rows]


def _grant_without_payment(row: Any) -> Finding:
    return Finding(
        check=GRANTS_PAID,
        kind="grant_without_payment",
        user_id=row["user_id"],
        references=_refs(row["purchase_id"], row["stripe_session_id"], row["transaction_id"]),
        expected_millicredits=0,
        actual_millicredits=row["grant_millicredits"],
        detail=(
            f"purchase {row['purchase_id']} was granted {row['grant_millicredits']} "
            f"({row['source']}) with no stored paid Checkout Session event"
        ),
    )


REFUNDS = "refunds"
# Stripe reports amount_refunded cumulatively per charge, so a charge's latest (largest)
# figure is its total; the ledger claws back floor(grant * refunded / price), capped at the
# price, and records the totals on the grant. div() floors as the ledger does: sum() of
# bigint is numeric, and a numeric quotient cast to bigint would round instead.
_REFUNDS_SQL = """
WITH refund_events AS (
    SELECT e.object_id AS charge_id, coalesce(e.stripe_created, e.received_at) AS at,
           convert_from(e.payload, 'UTF8')::jsonb -> 'data' -> 'object' AS obj
    FROM {W}.stripe_events e
    WHERE e.type = 'charge.refunded'
), charges AS (
    SELECT charge_id, max((obj ->> 'amount_refunded')::bigint) AS refunded_cents,
           max(nullif(obj -> 'metadata' ->> 'purchase_id', '')) AS purchase_id,
           max(coalesce(obj -> 'payment_intent' ->> 'id', obj ->> 'payment_intent'))
               AS payment_intent,
           bool_or(at >= $1 AND at < $2) AS in_period
    FROM refund_events
    GROUP BY charge_id
), stripe_side AS (
    SELECT coalesce(g.purchase_id, c.purchase_id, 'charge:' || c.charge_id) AS purchase_key,
           sum(c.refunded_cents)::bigint AS refunded_cents, bool_or(c.in_period) AS in_period,
           array_agg(c.charge_id ORDER BY c.charge_id) AS charge_ids
    FROM charges c
    LEFT JOIN {L}.purchase_grants g
      ON (c.purchase_id IS NOT NULL AND g.purchase_id = c.purchase_id)
      OR (c.purchase_id IS NULL AND g.payment_intent = c.payment_intent)
    GROUP BY 1
), posted AS (
    SELECT t.reference_id AS purchase_key, -sum(w.amount_millicredits) AS clawed_back,
           bool_or(t.created_at >= $1 AND t.created_at < $2) AS in_period,
           array_agg(t.id::text ORDER BY t.created_at) AS transaction_ids
    FROM {L}.journal_transactions t
    JOIN {L}.journal_entries w ON w.transaction_id = t.id AND w.user_id IS NOT NULL
    WHERE t.kind = 'refund'
    GROUP BY t.reference_id
), compared AS (
    SELECT coalesce(s.purchase_key, p.purchase_key) AS purchase_key,
           g.purchase_id IS NOT NULL AS granted, g.user_id, g.price_cents, g.grant_millicredits,
           g.refunded_cents AS recorded_cents, g.clawed_back_millicredits AS recorded_claw,
           coalesce(s.refunded_cents, 0) AS stripe_cents,
           least(coalesce(s.refunded_cents, 0), g.price_cents) AS owed_cents,
           coalesce(p.clawed_back, 0)::bigint AS posted_claw,
           div(g.grant_millicredits * least(coalesce(s.refunded_cents, 0), g.price_cents),
               g.price_cents)::bigint AS expected_claw,
           coalesce(s.charge_ids, ARRAY[]::text[]) AS charge_ids,
           coalesce(p.transaction_ids, ARRAY[]::text[]) AS transaction_ids,
           coalesce(s.in_period, false) OR coalesce(p.in_period, false) AS in_period
    FROM stripe_side s
    FULL JOIN posted p ON p.purchase_key = s.purchase_key
    LEFT JOIN {L}.purchase_grants g ON g.purchase_id = coalesce(s.purchase_key, p.purchase_key)
)
SELECT * FROM compared
WHERE in_period
  AND (NOT granted OR recorded_cents <> owed_cents OR posted_claw <> expected_claw
       OR recorded_claw <> posted_claw)
ORDER BY purchase_key
"""


async def check_refunds(conn: Any, schemas: Schemas, period: Period) -> list[Finding]:
    """Refunds Stripe reported match the grant's refunded cents and the clawbacks posted."""
    rows = await _fetch(conn, schemas, _REFUNDS_SQL, period.start, period.end)
    return [_refund(r) for r in rows]


def _refund(row: Any) -> Finding:
    return Finding(
        check=REFUNDS,
        kind="refund_mismatch",
        user_id=row["user_id"],
        references=_refs(row["purchase_key"], row["charge_ids"], row["transaction_ids"]),
        expected_millicredits=row["expected_claw"],
        actual_millicredits=row["posted_claw"],
        detail=_refund_detail(row),
    )


def _refund_detail(row: Any) -> str:
    if not row["granted"]:
        return (
            f"Stripe refunded {row['stripe_cents']} cents for {row['purchase_key']}, "
            f"which has no grant (clawed back {row['posted_claw']})"
        )
    return (
        f"purchase {row['purchase_key']}: Stripe refunded {row['stripe_cents']} cents "
        f"(owed {row['owed_cents']} of {row['price_cents']}), the grant records "
        f"{row['recorded_cents']} cents and {row['recorded_claw']} clawed back, "
        f"refund postings claw back {row['posted_claw']} of {row['expected_claw']} owed"
    )


# --- stream lag ----------------------------------------------------------------------

STREAM_LAG = "stream_lag"
# Three ways the streams and the ledger drift apart, each only after the grace period:
# a paid session seen on stripe.events.v1 without a grant; a charged usage record seen on
# billing.usage.v1 without a posting; a journal transaction never seen on
# billing.ledger.v1 (only since this reconciler first consumed that topic, so history
# from before it was deployed is not counted as lag). The ledger's inbox says whether it
# consumed the event and what it decided.
_STREAM_LAG_SQL = f"""
SELECT 'payment' AS source, coalesce(s.purchase_id, s.object_id) AS subject, pt.user_id,
       s.event_id AS reference, s.object_id AS detail_ref, s.created AS since,
       NULL::bigint AS amount, li.outcome, li.detail AS ledger_detail
FROM (
    SELECT DISTINCT ON (coalesce(purchase_id, object_id)) *
    FROM {{R}}.seen_stripe_events
    WHERE type IN {_PAID_TYPES}
      AND (type = 'checkout.session.async_payment_succeeded'
           OR payload -> 'data' -> 'object' ->> 'payment_status' = 'paid')
      AND created >= $1 AND created < now() - make_interval(secs => $2)
    ORDER BY coalesce(purchase_id, object_id), created
) s
LEFT JOIN {{C}}.purchase_terms pt ON pt.purchase_id = s.purchase_id
LEFT JOIN {{L}}.inbox li ON li.message_key = 'stripe:' || s.event_id
WHERE NOT EXISTS (SELECT 1 FROM {{L}}.purchase_grants g WHERE g.purchase_id = s.purchase_id)
  AND NOT EXISTS (SELECT 1 FROM {{L}}.purchase_grants g WHERE g.stripe_session_id = s.object_id)
UNION ALL
SELECT 'usage', u.usage_id, u.user_id, u.usage_id, u.model, u.created,
       u.charged_millicredits, li.outcome, li.detail
FROM {{R}}.seen_usage_records u
LEFT JOIN {{L}}.inbox li ON li.message_key = 'usage:' || u.usage_id
WHERE u.mode = 'charged' AND u.charged_millicredits > 0
  AND u.created >= $1 AND u.created < now() - make_interval(secs => $2)
  AND NOT EXISTS (SELECT 1 FROM {{L}}.journal_transactions t
                  WHERE t.kind = 'usage' AND t.reference_id = u.usage_id)
UNION ALL
SELECT 'ledger', t.id::text, t.user_id, t.reference_id, t.kind, t.created_at,
       NULL, NULL, NULL
FROM {{L}}.journal_transactions t
WHERE t.created_at >= $1 AND t.created_at < now() - make_interval(secs => $2)
  AND t.created_at >= (SELECT min(seen_at) FROM {{R}}.seen_ledger_transactions)
  AND NOT EXISTS (SELECT 1 FROM {{R}}.seen_ledger_transactions s
                  WHERE s.transaction_id = t.id::text)
ORDER BY 6, 1, 2
"""


async def check_stream_lag(
    conn: Any, schemas: Schemas, period: Period, *, grace_s: float = 300.0
) -> list[Finding]:
    """What the topics delivered (since the period began) that the ledger does not show."""
    rows = await _fetch(conn, schemas, _STREAM_LAG_SQL, period.start, grace_s)
    return [_lag(r) for r in rows]


def _lag(row: Any) -> Finding:
    return Finding(
        check=STREAM_LAG,
        kind="stream_lag",
        user_id=row["user_id"],
        references=_refs(row["subject"], row["reference"]),
        expected_millicredits=row["amount"],
        actual_millicredits=0 if row["amount"] is not None else None,
        detail=f"{_lag_what(row)} since {row['since'].isoformat()}; {_ledger_said(row)}",
    )


def _lag_what(row: Any) -> str:
    if row["source"] == "payment":
        return f"paid session {row['detail_ref']} (purchase {row['subject']}) has no grant"
    if row["source"] == "usage":
        return f"charged usage {row['subject']} ({row['detail_ref']}) has no ledger posting"
    return f"{row['detail_ref']} transaction {row['subject']} was never seen on billing.ledger.v1"


def _ledger_said(row: Any) -> str:
    if row["source"] == "ledger":
        return "the ledger's outbox or this consumer is behind"
    if row["outcome"] is None:
        return "the ledger has not consumed the event"
    said = f" ({row['ledger_detail']})" if row["ledger_detail"] else ""
    return f"the ledger consumed it: {row['outcome']}{said}"


def all_checks(lag_grace_s: float) -> tuple[Check, ...]:
    """The checks of a run, in the order they run and are reported."""
    return (
        Check(TRANSACTIONS_BALANCED, check_transactions_balanced),
        Check(BALANCES, check_balances),
        Check(RUNNING_BALANCES, check_running_balances),
        Check(JOURNAL_CHAIN, check_journal_chain),
        Check(USAGE_TOTALS, check_usage_totals),
        Check(USAGE_POSTINGS, check_usage_postings),
        Check(POSTINGS_HAVE_USAGE, check_postings_have_usage),
        Check(PAYMENTS_GRANTED, check_payments_granted),
        Check(GRANTS_PAID, check_grants_paid),
        Check(REFUNDS, check_refunds),
        Check(STREAM_LAG, partial(check_stream_lag, grace_s=lag_grace_s)),
    )
