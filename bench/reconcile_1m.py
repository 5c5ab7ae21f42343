"""Time of a full reconciliation over a journal of a million entries or more.

Uses the dev stack's PostgreSQL only (port 15432, durable commits), started if it is not
running and stopped afterwards unless ``--keep`` or it was running already. Nothing else
of the stack is started.

1. Fresh schemas ``bench_<hex>_{ledger,metering,webhook,checkout,reconciler}`` get each
   service's own migrations.
2. One UTC day (yesterday) of consistent data is bulk-loaded with set-based SQL, in one
   durable transaction: per user a checkout purchase, its verified paid
   ``checkout.session.completed`` event as webhook-ingest stores it, the ledger's purchase
   posting (3 entries) and grant; then ``--calls-per-user`` charged calls, each a metering
   usage record and its usage posting (2 entries). ``balance_after`` is the running sum per
   user and ``balances`` the total. The reconciler's read model is filled as its consumers
   would have filled it, so the stream-lag check scans real rows. The default number of
   calls is the smallest that takes the journal to 1,000,000 entries. The load runs with
   ``session_replication_role = replica`` (the stack's user is the cluster's superuser) to
   skip the journal's per-row triggers: that is only a shortcut for generating data, the
   services themselves never do it. The tables are then vacuumed and analyzed, as
   autovacuum would have done by the time a daily run comes.
3. The reconciler's own run, ``Reconciler.run`` as the API calls it, with its real checks
   and hash chain, is timed three times: the first run (builds the chain's checkpoints over
   the whole journal), a second one (recomputes the chain against those checkpoints) and,
   after one entry's amount is edited behind the journal's back (as superuser, triggers
   off), a third that must find it. Each check is timed inside the run; "chain
   checkpoints" is the rest of the run's own duration, and "store + commit" what the wall
   time adds to it. Stripe is not asked (the run records its session count as unknown, as
   when Stripe does not answer) and the alerts' relay and the gauges are idle.

Exits non-zero if a clean run finds anything (and prints it) or the edit goes unnoticed.

Run: ``./scripts/run python bench/reconcile_1m.py [--users 20000] [--calls-per-user N] [--keep]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import asyncpg
from billing_cli.stripe_sim import API_VERSION
from billing_platform.db import Database, migrate_package
from checkout.catalog import PACKAGES, Package
from ledger import journal
from ledger.holds import REVENUE
from metering.pricing import price
from metering.rate_card import RateCard, load_rate_cards
from pipeline import dev_postgres
from reconciler.checks import Check
from reconciler.findings import Finding, Schemas
from reconciler.main import run_context
from reconciler.period import Period, yesterday
from reconciler.runs import RunRecord, RunRequest
from reconciler.service import Reconciler
from reconciler.settings import Settings

TARGET_ENTRIES = 1_000_000
PURCHASE_ENTRIES, USAGE_ENTRIES = 3, 2
# Purchases spread over the day's first 12 h, each user's calls over the 10 h after it,
# so the whole day has settled (older than the chain's 5 min) soon after midnight.
PURCHASE_SPREAD_S, USAGE_SPREAD_S = 43_200.0, 36_000.0
MAX_INPUT_TOKENS, MAX_OUTPUT_TOKENS = 1999, 799
EDIT_MILLICREDITS = 1000
SCHEMA_PACKAGES = {
    "ledger": "ledger",
    "metering": "metering",
    "webhook": "webhook_ingest",
    "checkout": "checkout",
    "reconciler": "reconciler",
}
LOADED_TABLES = (
    "{L}.journal_transactions, {L}.journal_entries, {L}.balances, {L}.purchase_grants, "
    "{M}.usage_records, {W}.stripe_events, {C}.purchases, {R}.seen_stripe_events, "
    "{R}.seen_usage_records, {R}.seen_ledger_transactions"
)

# --- the data ------------------------------------------------------------------------

_USERS_SQL = """
CREATE TEMP TABLE bench_users ON COMMIT DROP AS
WITH drawn AS (
    SELECT u AS user_no, gen_random_uuid() AS purchase_id, gen_random_uuid() AS transaction_id,
           gen_random_uuid()::text AS correlation_id,
           $1::timestamptz + make_interval(secs => 60 + (u - 1) * $3::float8 / $2::int) AS paid_at
    FROM generate_series(1, $2::int) u
), bought AS (
    SELECT d.*, 'bench-user-' || lpad(d.user_no::text, 7, '0') AS user_id,
           'cs_bench_' || md5('cs' || d.purchase_id::text) AS session_id,
           'evt_bench_' || md5('evt' || d.purchase_id::text) AS event_id,
           'pi_bench_' || md5('pi' || d.purchase_id::text) AS payment_intent,
           p.code AS package_code, p.name AS package_name, p.price_cents, p.currency,
           p.credits, p.bonus_credits, p.grant_millicredits
    FROM drawn d
    JOIN unnest($4::text[], $5::text[], $6::int[], $7::text[], $8::bigint[], $9::bigint[],
                $10::bigint[])
         WITH ORDINALITY AS p(code, name, price_cents, currency, credits, bonus_credits,
                              grant_millicredits, no)
      ON p.no = (d.user_no - 1) % cardinality($4::text[]) + 1
)
SELECT b.*, jsonb_build_object(
    'id', b.event_id, 'object', 'event', 'api_version', $11::text,
    'created', extract(epoch FROM b.paid_at)::bigint - 2, 'livemode', false,
    'type', 'checkout.session.completed', 'pending_webhooks', 1,
    'request', jsonb_build_object('id', NULL, 'idempotency_key', NULL),
    'data', jsonb_build_object('object', jsonb_build_object(
        'id', b.session_id, 'object', 'checkout.session', 'mode', 'payment',
        'status', 'complete', 'payment_status', 'paid',
        'amount_total', b.price_cents, 'amount_subtotal', b.price_cents,
        'currency', b.currency, 'client_reference_id', b.purchase_id::text,
        'metadata', jsonb_build_object('purchase_id', b.purchase_id::text,
                                       'user_id', b.user_id, 'package_code', b.package_code),
        'payment_intent', b.payment_intent, 'payment_method_types', jsonb_build_array('card'),
        'customer', NULL, 'url', NULL,
        'created', extract(epoch FROM b.paid_at)::bigint - 180,
        'expires_at', extract(epoch FROM b.paid_at)::bigint - 180 + 86400,
        'livemode', false))) AS payload
FROM bought b
"""

_CALLS_SQL = """
CREATE TEMP TABLE bench_calls ON COMMIT DROP AS
WITH calls AS (
    SELECT u.user_no, u.user_id, u.paid_at, k AS call_no,
           1 + floor(random() * cardinality($1::text[]))::int AS model_no,
           50 + floor(random() * ($7::int - 49))::bigint AS input_tokens,
           20 + floor(random() * ($8::int - 19))::bigint AS output_tokens
    FROM bench_users u CROSS JOIN generate_series(1, $5::int) k
), priced AS (
    SELECT c.*, r.model, r.markup,
           c.input_tokens * r.input_rate + c.output_tokens * r.output_rate AS cost
    FROM calls c
    JOIN unnest($1::text[], $2::numeric[], $3::numeric[], $4::numeric[])
         WITH ORDINALITY AS r(model, input_rate, output_rate, markup, no) ON r.no = c.model_no
)
SELECT user_no, user_id, call_no, model, input_tokens, output_tokens,
       ceil(cost)::bigint AS cost_millicredits,
       ceil(cost * markup)::bigint AS charged_millicredits,
       gen_random_uuid() AS usage_id, gen_random_uuid() AS transaction_id,
       gen_random_uuid() AS hold_id, gen_random_uuid()::text AS correlation_id,
       paid_at + make_interval(secs => call_no * $6::float8 / ($5::int + 1)) AS at
FROM priced
"""

# Entry ids are assigned here, in time order, so each user's running balance follows id
# order exactly as the ledger's row lock makes it.
_POSTINGS_SQL = """
CREATE TEMP TABLE bench_postings ON COMMIT DROP AS
WITH moves AS (
    SELECT transaction_id, 'purchase' AS kind, user_no, user_id, 0 AS call_no, paid_at AS at,
           grant_millicredits AS delta, price_cents::bigint * $1::bigint AS cash,
           $2::int AS entries
    FROM bench_users
    UNION ALL
    SELECT transaction_id, 'usage', user_no, user_id, call_no, at, -charged_millicredits, 0,
           $3::int
    FROM bench_calls
), ordered AS (
    SELECT *, row_number() OVER (ORDER BY at, user_no, call_no) AS no FROM moves
)
SELECT transaction_id, kind, user_id, at, delta, cash,
       (sum(entries) OVER (ORDER BY no ROWS UNBOUNDED PRECEDING) - entries)::bigint
           AS entries_before,
       (sum(delta) OVER (PARTITION BY user_no ORDER BY no ROWS UNBOUNDED PRECEDING))::bigint
           AS balance_after
FROM ordered
"""

_TRANSACTIONS_SQL = """
INSERT INTO {L}.journal_transactions
    (id, kind, user_id, reference_id, correlation_id, source, details, created_at)
SELECT * FROM (
    SELECT transaction_id, 'purchase', user_id, purchase_id::text, correlation_id,
           'stripe:' || event_id,
           jsonb_build_object('package_code', package_code, 'price_cents', price_cents),
           paid_at
    FROM bench_users
    UNION ALL
    SELECT transaction_id, 'usage', user_id, usage_id::text, correlation_id,
           'hold:' || hold_id,
           jsonb_build_object('model', model, 'input_tokens', input_tokens,
                              'output_tokens', output_tokens, 'rate_card_version', $1::text,
                              'requested_millicredits', charged_millicredits,
                              'hold_id', hold_id::text),
           at
    FROM bench_calls
) t
ORDER BY 8
"""

_ENTRIES_SQL = """
INSERT INTO {L}.journal_entries
    (id, transaction_id, account, user_id, amount_millicredits, balance_after_millicredits,
     created_at)
SELECT p.entries_before + x.no, p.transaction_id, x.account, x.user_id, x.amount,
       x.balance_after, p.at
FROM bench_postings p
CROSS JOIN LATERAL (VALUES
    (1, $1::text || p.user_id, p.user_id, p.delta, p.balance_after),
    (2, $2::text, NULL::text, -p.cash, NULL::bigint),
    (3, $3::text, NULL::text, p.cash - p.delta, NULL::bigint)
) x(no, account, user_id, amount, balance_after)
WHERE p.kind = 'purchase'
UNION ALL
SELECT p.entries_before + x.no, p.transaction_id, x.account, x.user_id, x.amount,
       x.balance_after, p.at
FROM bench_postings p
CROSS JOIN LATERAL (VALUES
    (1, $1::text || p.user_id, p.user_id, p.delta, p.balance_after),
    (2, $4::text, NULL::text, -p.delta, NULL::bigint)
) x(no, account, user_id, amount, balance_after)
WHERE p.kind = 'usage'
ORDER BY 1
"""

_LEDGER_REST_SQL = """
SELECT setval(pg_get_serial_sequence('{L}.journal_entries', 'id'), max(id))
FROM {L}.journal_entries;
INSERT INTO {L}.balances (user_id, balance_millicredits, held_millicredits, updated_at)
SELECT user_id, sum(delta), 0, max(at) FROM bench_postings GROUP BY user_id ORDER BY user_id;
INSERT INTO {L}.purchase_grants
    (purchase_id, user_id, transaction_id, package_code, price_cents, currency,
     grant_millicredits, stripe_session_id, payment_intent, source, granted_at)
SELECT purchase_id::text, user_id, transaction_id, package_code, price_cents, currency,
       grant_millicredits, session_id, payment_intent, 'stripe:' || event_id, paid_at
FROM bench_users ORDER BY paid_at;
"""

_CHECKOUT_AND_WEBHOOK_SQL = """
INSERT INTO {C}.purchases
    (id, user_id, package_code, package_name, price_cents, currency, credits, bonus_credits,
     grant_millicredits, status, stripe_session_id, checkout_url, created_at, updated_at)
SELECT purchase_id::text, user_id, package_code, package_name, price_cents, currency, credits,
       bonus_credits, grant_millicredits, 'fulfilled', session_id,
       'https://checkout.stripe.com/c/pay/' || session_id,
       paid_at - interval '3 minutes', paid_at
FROM bench_users ORDER BY paid_at;
INSERT INTO {W}.stripe_events
    (event_id, type, object_id, livemode, api_version, stripe_created, payload,
     correlation_id, received_at)
SELECT event_id, 'checkout.session.completed', session_id, false, payload ->> 'api_version',
       paid_at - interval '2 seconds', convert_to(payload::text, 'UTF8'), correlation_id,
       paid_at - interval '1 second'
FROM bench_users ORDER BY paid_at;
"""

_USAGE_RECORDS_SQL = """
INSERT INTO {M}.usage_records
    (usage_id, user_id, model, input_tokens, output_tokens, charged_millicredits,
     uncollected_millicredits, cost_millicredits, rate_card_version, hold_id, idempotency_key,
     provider_request_id, transaction_id, mode, correlation_id, response_body, created_at,
     priced_millicredits)
SELECT usage_id, user_id, model, input_tokens, output_tokens, charged_millicredits, 0,
       cost_millicredits, $1::text, hold_id::text, 'chat:' || user_id || ':' || usage_id,
       'chatcmpl-' || md5(usage_id::text), transaction_id::text, 'charged', correlation_id,
       json_build_object(
           'id', 'chatcmpl-' || md5(usage_id::text), 'object', 'chat.completion',
           'created', extract(epoch FROM at)::bigint, 'model', model,
           'message', json_build_object('role', 'assistant', 'content', 'ok'),
           'usage', json_build_object('inputTokens', input_tokens,
                                      'outputTokens', output_tokens,
                                      'chargedMillicredits', charged_millicredits)),
       at, charged_millicredits
FROM bench_calls ORDER BY at
"""

_READ_MODEL_SQL = """
INSERT INTO {R}.seen_stripe_events
    (event_id, type, object_id, purchase_id, amount, created, payload, seen_at)
SELECT event_id, 'checkout.session.completed', session_id, purchase_id::text, price_cents,
       paid_at - interval '2 seconds', payload, paid_at
FROM bench_users ORDER BY paid_at;
INSERT INTO {R}.seen_usage_records
    (usage_id, user_id, model, mode, charged_millicredits, cost_millicredits, created, seen_at)
SELECT usage_id::text, user_id, model, 'charged', charged_millicredits, cost_millicredits, at,
       at + interval '1 second'
FROM bench_calls ORDER BY at;
INSERT INTO {R}.seen_ledger_transactions
    (transaction_id, kind, user_id, reference_id, wallet_delta_millicredits, posted_at, seen_at)
SELECT t.id::text, t.kind, t.user_id, t.reference_id, p.delta, t.created_at,
       t.created_at + interval '1 second'
FROM {L}.journal_transactions t JOIN bench_postings p ON p.transaction_id = t.id
ORDER BY t.created_at;
"""

_COUNTS_SQL = """
SELECT (SELECT count(*) FROM {L}.journal_entries) AS entries,
       (SELECT count(*) FROM {L}.journal_transactions) AS transactions,
       (SELECT count(*) FROM {L}.balances) AS users,
       (SELECT count(*) FROM {M}.usage_records) AS usage_records
"""

_EDIT_TARGET_SQL = """
SELECT e.id, e.user_id, e.amount_millicredits
FROM {L}.journal_entries e JOIN {L}.journal_transactions t ON t.id = e.transaction_id
WHERE t.kind = 'usage' AND e.user_id IS NOT NULL
  AND e.id >= (SELECT max(id) / 2 FROM {L}.journal_entries)
ORDER BY e.id
LIMIT 1
"""
_EDIT_SQL = (
    "UPDATE {L}.journal_entries SET amount_millicredits = amount_millicredits - $2 WHERE id = $1"
)


@dataclass(frozen=True)
class Dataset:
    period: Period
    users: int
    calls_per_user: int
    packages: tuple[Package, ...]
    card: RateCard


Step = tuple[str, tuple[Any, ...]]


def package_arrays(packages: Sequence[Package]) -> tuple[list[Any], ...]:
    return (
        [p.code for p in packages],
        [p.name for p in packages],
        [p.price_cents for p in packages],
        [p.currency for p in packages],
        [p.credits for p in packages],
        [p.bonus_credits for p in packages],
        [p.grant_millicredits for p in packages],
    )


def rate_arrays(card: RateCard) -> tuple[list[Any], ...]:
    return (
        [r.model for r in card.rates],
        [r.input_usd_per_1m for r in card.rates],
        [r.output_usd_per_1m for r in card.rates],
        [r.markup for r in card.rates],
    )


def load_steps(data: Dataset) -> list[Step]:
    users = (data.period.start, data.users, PURCHASE_SPREAD_S, *package_arrays(data.packages))
    calls = (*rate_arrays(data.card), data.calls_per_user, USAGE_SPREAD_S)
    accounts = (journal.wallet(""), journal.STRIPE_CLEARING, journal.PROMOTIONAL, REVENUE)
    entries_per = (journal.MILLICREDITS_PER_CENT, PURCHASE_ENTRIES, USAGE_ENTRIES)
    return [
        (_USERS_SQL, (*users, API_VERSION)),
        (_CALLS_SQL, (*calls, MAX_INPUT_TOKENS, MAX_OUTPUT_TOKENS)),
        (_POSTINGS_SQL, entries_per),
        ("ANALYZE bench_users, bench_calls, bench_postings", ()),
        (_TRANSACTIONS_SQL, (data.card.version,)),
        (_ENTRIES_SQL, accounts),
        (_LEDGER_REST_SQL, ()),
        (_CHECKOUT_AND_WEBHOOK_SQL, ()),
        (_USAGE_RECORDS_SQL, (data.card.version,)),
        (_READ_MODEL_SQL, ()),
    ]


async def load(conn: Any, schemas: Schemas, data: Dataset) -> None:
    async with conn.transaction():
        # Data generation only: skips the append-only and zero-sum triggers (and foreign
        # keys) that would otherwise fire once per row; the checks below judge the result.
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("SET LOCAL work_mem = '256MB'")
        for sql, args in load_steps(data):
            await conn.execute(schemas.qualify(sql), *args)


async def timed_load(conn: Any, schemas: Schemas, data: Dataset) -> tuple[float, float]:
    started = time.perf_counter()
    await load(conn, schemas, data)
    loaded = time.perf_counter()
    await conn.execute(schemas.qualify(f"VACUUM (ANALYZE) {LOADED_TABLES}"))
    return loaded - started, time.perf_counter() - loaded


# --- schemas -------------------------------------------------------------------------


def bench_schemas() -> Schemas:
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    return Schemas(**{field: f"{prefix}_{field}" for field in SCHEMA_PACKAGES})


async def create_schemas(dsn: str, schemas: Schemas) -> float:
    started = time.perf_counter()
    for field, package in SCHEMA_PACKAGES.items():
        await migrate_package(dsn, getattr(schemas, field), package)
    return time.perf_counter() - started


async def drop_schemas(dsn: str, schemas: Schemas) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for field in SCHEMA_PACKAGES:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{getattr(schemas, field)}" CASCADE')
    finally:
        await conn.close()


# --- runs ----------------------------------------------------------------------------


class NoStripe:
    """Stripe is not asked: the run stores its session count as unknown (None)."""

    async def count(self, period: Period) -> int | None:
        return None


class Idle:
    """Neither an outbox relay nor gauges: only the run itself is measured."""

    def poke(self) -> None:
        return None

    async def refresh(self, day: date | None = None) -> None:
        return None


class CheckTimes:
    """Wraps each check so a run reports how long every one of them took."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, check: Check) -> Check:
        async def timed(conn: Any, schemas: Schemas, period: Period) -> list[Finding]:
            started = time.perf_counter()
            try:
                return await check.run(conn, schemas, period)
            finally:
                self.seconds[check.name] = time.perf_counter() - started

        return Check(check.name, timed)


@dataclass(frozen=True)
class Timing:
    wall_s: float
    record: RunRecord
    checks: dict[str, float]

    @property
    def run_s(self) -> float:
        return self.record.duration_ms / 1000

    @property
    def chain_s(self) -> float:
        return self.run_s - sum(self.checks.values())


def reconciler_for(db: Database, schemas: Schemas, timer: CheckTimes) -> Reconciler:
    settings = Settings(
        db_schema=schemas.reconciler,
        ledger_schema=schemas.ledger,
        metering_schema=schemas.metering,
        webhook_schema=schemas.webhook,
        checkout_schema=schemas.checkout,
    )
    ctx = run_context(settings)
    timed = dataclasses.replace(ctx, checks=tuple(timer.wrap(c) for c in ctx.checks))
    return Reconciler(db, timed, NoStripe(), Idle(), Idle())


async def timed_run(reconciler: Reconciler, timer: CheckTimes, period: Period) -> Timing:
    timer.seconds = {}
    request = RunRequest(period, period.day.isoformat(), "api", "bench")
    started = time.perf_counter()
    answer = await reconciler.run(request)
    return Timing(time.perf_counter() - started, answer.record, dict(timer.seconds))


async def edit_one_entry(conn: Any, schemas: Schemas) -> Any:
    """Take EDIT_MILLICREDITS more from one wallet entry mid-journal, as an intruder would."""
    target = await conn.fetchrow(schemas.qualify(_EDIT_TARGET_SQL))
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(schemas.qualify(_EDIT_SQL), target["id"], EDIT_MILLICREDITS)
    return target


# --- report --------------------------------------------------------------------------


def print_dataset(counts: Any, migrate_s: float, load_s: float, vacuum_s: float) -> None:
    for label, value in (
        ("users", counts["users"]),
        ("journal transactions", counts["transactions"]),
        ("journal entries", counts["entries"]),
        ("usage records", counts["usage_records"]),
    ):
        print(f"  {label:30}{value:>12,}")
    print(f"  {'migrations (5 schemas)':30}{migrate_s:>10.1f} s")
    print(f"  {'load (one transaction)':30}{load_s:>10.1f} s")
    print(f"  {'vacuum analyze':30}{vacuum_s:>10.1f} s")


def print_line(label: str, values: Sequence[float], fmt: str = "{:10.2f}") -> None:
    print(f"  {label:30}" + "".join(fmt.format(v) for v in values))


def print_runs(runs: Sequence[tuple[str, Timing]]) -> None:
    print(f"\n  {'seconds':30}" + "".join(f"{label:>10}" for label, _ in runs))
    for name in runs[0][1].checks:
        print_line(name, [t.checks.get(name, 0.0) for _, t in runs])
    print_line("chain checkpoints", [t.chain_s for _, t in runs])
    print_line("store + commit", [t.wall_s - t.run_s for _, t in runs])
    print_line("run total (wall)", [t.wall_s for _, t in runs])
    print_line("findings", [len(t.record.findings) for _, t in runs], "{:10.0f}")


def print_findings(title: str, findings: Sequence[Finding], limit: int = 20) -> None:
    print(f"\n{title}")
    for (check, kind), n in sorted(Counter((f.check, f.kind) for f in findings).items()):
        print(f"  {check:30}{kind:30}{n:>6}")
    for finding in findings[:limit]:
        print(f"    - {finding.kind}: {finding.detail}")
    if len(findings) > limit:
        print(f"    ... and {len(findings) - limit} more")


# --- the bench -----------------------------------------------------------------------


async def reconcile_runs(conn: Any, db: Database, schemas: Schemas, period: Period) -> int:
    timer = CheckTimes()
    reconciler = reconciler_for(db, schemas, timer)
    first = await timed_run(reconciler, timer, period)
    second = await timed_run(reconciler, timer, period)
    clean = [("run 1", first), ("run 2", second)]
    if first.record.findings or second.record.findings:
        print_runs(clean)
        print_findings("findings on clean data:", first.record.findings + second.record.findings)
        return 1
    edited = await edit_one_entry(conn, schemas)
    third = await timed_run(reconciler, timer, period)
    print_runs([*clean, ("run 3", third)])
    print("\n  run 1 builds the chain's checkpoints, run 2 verifies against them,")
    print(
        f"  run 3 follows the edit of entry {edited['id']:,} (usage posting of "
        f"{edited['user_id']}):\n  amount {edited['amount_millicredits']:,} -> "
        f"{edited['amount_millicredits'] - EDIT_MILLICREDITS:,} millicredits, triggers off"
    )
    print_findings("findings after the edit:", third.record.findings)
    return 0 if third.record.findings else 1


async def measure(conn: Any, dsn: str, schemas: Schemas, data: Dataset) -> int:
    migrate_s = await create_schemas(dsn, schemas)
    load_s, vacuum_s = await timed_load(conn, schemas, data)
    print_dataset(await conn.fetchrow(schemas.qualify(_COUNTS_SQL)), migrate_s, load_s, vacuum_s)
    db = Database(dsn, schemas.reconciler, min_size=1, max_size=2)
    await db.start()
    try:
        return await reconcile_runs(conn, db, schemas, data.period)
    finally:
        await db.stop()


async def bench(dsn: str, data: Dataset, keep: bool) -> int:
    schemas = bench_schemas()
    prefix = schemas.ledger.removesuffix("_ledger")
    print(f"reconciliation of {data.period.day} (UTC) in schemas {prefix}_*")
    conn = await asyncpg.connect(dsn)
    try:
        return await measure(conn, dsn, schemas, data)
    finally:
        await conn.close()
        if not keep:
            await drop_schemas(dsn, schemas)


# --- arguments -----------------------------------------------------------------------


def worst_call(card: RateCard) -> int:
    return max(
        price(rate, MAX_INPUT_TOKENS, MAX_OUTPUT_TOKENS).charged_millicredits for rate in card.rates
    )


def dataset(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Dataset:
    if args.users < 1:
        parser.error("--users must be at least 1")
    per_user = math.ceil((TARGET_ENTRIES - PURCHASE_ENTRIES * args.users) / USAGE_ENTRIES)
    calls = args.calls_per_user
    if calls is None:
        calls = max(1, math.ceil(per_user / args.users))
    card = load_rate_cards()[-1]
    # The ledger never charges past the balance: every user's calls must fit their grant.
    packages = tuple(p for p in PACKAGES if p.grant_millicredits >= calls * worst_call(card))
    if calls < 1 or not packages:
        parser.error(f"--calls-per-user {calls}: one purchase cannot pay for that many calls")
    return Dataset(yesterday(datetime.now(UTC)), args.users, calls, packages, card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument(
        "--calls-per-user", type=int, help="default: enough for 1,000,000 journal entries"
    )
    parser.add_argument("--keep", action="store_true", help="keep the schemas and PostgreSQL")
    args = parser.parse_args()
    data = dataset(parser, args)
    with dev_postgres(keep=args.keep) as postgres:
        code = asyncio.run(bench(postgres.dsn, data, args.keep))
    sys.exit(code)


if __name__ == "__main__":
    main()
