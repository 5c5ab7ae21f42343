"""CPU of a charged call's database work: its admission and its settlement, as the gateway
makes them now, against the statements of earlier releases, in the same run on the same
PostgreSQL.

- **after**: ``admit_charged_call`` (metering's migration 0006: the ledger's ``create_hold``
  called by name; 0007: the caps read running totals; 0011: the guard reads inlined into
  it; 0012: the claim keeps the usage id), then ``settle_charged_call`` (0005: the ledger's
  ``capture_hold`` and the usage record in one statement), through metering's own
  ``PgAdmissions`` and ``PgUsageStore``, with the ledger's ``capture_hold`` of migration
  0013 (the balance row moved once per capture) and usage ids in creation order;
- **cbd6315**: the same settlement after the admission of 0006 with the PL/pgSQL guard
  reads of 0007 and 0004 (and 0009's plan setting) and the claim of 0004, re-created
  beside today's, and random usage ids, as before metering's migrations 0011 and 0012;
- **f329260**: the admission of migration 0004 (``create_hold`` through ``EXECUTE``, the
  caps summing the user's records of the day and of the hour), then ``capture_hold`` of
  0009 as a statement of its own with the posting-event encoder of ledger migration 0010,
  then the usage record in a second statement.

The earlier definitions are re-created, from the migration files, in their own schemas
only.

Uses the dev stack's PostgreSQL only (port 15432, durable commits), started if it is not
running and stopped afterwards unless it was running already. A pair of fresh schemas
(ledger and metering) per way gets the migrations; ``--users`` users are funded in each.
The rounds alternate the ways, so a slow minute of the machine weighs on all. Each round
runs ``--calls`` calls from ``--workers`` connections at once. Per way it prints the
medians over rounds of PostgreSQL's CPU (every process of the cluster) and the client's
(asyncpg, encoding) per call, and the calls per second.

``--history N`` gives each user N charged calls made earlier in the day (f329260: the caps
sum the day's records; later: metering's migration 0007 keeps running totals), and their
holds, captured since and not yet vacuumed away.

Run: ``./scripts/run python bench/charged_call_sql.py [--calls 2000] [--rounds 5]
[--history 0] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
from billing_cli.layout import Layout
from billing_cli.stack import Stack
from billing_events.outbox import OutboxRecord, outbox_headers
from billing_events.topics import Topics
from billing_platform import ratelimit
from billing_platform.db import Database, SchemaAccess, load_migrations, migrate_package
from billing_platform.ids import time_ordered_uuid
from billing_platform.ratelimit import Limit
from metering import bodies, guardrails, repository
from metering.admission import AdmissionRules, Admitted, PgAdmissions, Ticket
from metering.db_access import ledger_search_paths
from metering.guardrails import Caps
from metering.ledger_client import Balance, Hold
from metering.model_client import TokenUsage
from metering.records import CHARGED, UsageRecord
from metering.usage_store import PgUsageStore
from pipeline import GENERATOR, cpu_snapshot, dev_postgres

TOPICS = Topics()
UNCAPPED = Caps(10**12, 10**12, 10**12)
RULES = AdmissionRules(UNCAPPED, Limit("bench", 10**9), 300, 300, 120)
ESTIMATE, CHARGE = 4_000, 1_234
HEAD = {"id": "chatcmpl-bench", "message": {"role": "assistant", "content": "four words"}}


class Relay:
    def poke(self) -> None:
        """The bench publishes nothing: the outbox rows stay."""


def usage(user: str, key: str, usage_id: str, hold_id: str) -> UsageRecord:
    return UsageRecord(
        usage_id=usage_id,
        user_id=user,
        model="gpt-4o-mini",
        input_tokens=25,
        output_tokens=20,
        charged_millicredits=CHARGE,
        uncollected_millicredits=0,
        priced_millicredits=CHARGE,
        cost_millicredits=300,
        rate_card_version="2026-11-01",
        hold_id=hold_id,
        idempotency_key=key,
        provider_request_id="chatcmpl-bench",
        transaction_id=None,
        response_body={**HEAD, "billingMode": CHARGED},
        mode=CHARGED,
    )


# --- the statements of earlier releases ---------------------------------------------------


def _definition(package: str, migration: str, name: str) -> str:
    """``CREATE [OR REPLACE] FUNCTION name(...) ... END $$;`` from a migration file."""
    sql = next(m.sql for m in load_migrations(package) if m.name == migration)
    found = re.search(rf"CREATE (OR REPLACE )?FUNCTION {name}\(", sql)
    assert found is not None, (migration, name)
    start = found.start()
    return sql[start : sql.index("END $$;", start) + len("END $$;")]


def two_update_capture() -> str:
    """The ledger's ``capture_hold`` as migration 0009 defined it (until e821c73)."""
    capture = _definition("ledger", "0009_capture_function.sql", "capture_hold")
    return capture.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def landed_definitions() -> str:
    """Metering's functions as cbd6315 had them, beside today's: the PL/pgSQL guard reads
    (0007, 0004 with 0009's plan setting), the claim of 0004 and the admission of 0006."""
    recent = _definition("metering", "0004_admission.sql", "recent_charges")
    return "\n".join((
        _definition("metering", "0004_admission.sql", "claim_request"),
        _definition("metering", "0007_spend_totals.sql", "guard_state"),
        recent.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1),
        "ALTER FUNCTION recent_charges(text, integer) SET plan_cache_mode = force_generic_plan;",
        _definition("metering", "0006_admission_static_hold.sql", "admit_charged_call"),
    ))  # fmt: skip


# The ledger's migration 0014 undone: holds expire through the index of every user's.
WITHOUT_USER_EXPIRY_INDEX = "DROP INDEX holds_user_expiring"


def previous_definitions() -> tuple[str, str]:
    """(ledger's, metering's) SQL re-creating the functions as f329260 had them."""
    event = _definition("ledger", "0010_posting_event_cost.sql", "usage_posted_event")
    ledger = f"{event}\n{two_update_capture()}"
    admit = _definition("metering", "0004_admission.sql", "admit_charged_call")
    guard = _definition("metering", "0004_admission.sql", "guard_state")
    claim = _definition("metering", "0004_admission.sql", "claim_request")  # dropped by 0012
    admit = admit.replace("FUNCTION admit_", "FUNCTION previous_admit_", 1)
    admit = admit.replace("FROM guard_state(", "FROM previous_guard_state(")
    guard = guard.replace("FUNCTION guard_state(", "FUNCTION previous_guard_state(", 1)
    return ledger, f"{claim}\n{guard}\n{admit}"


# The usage record's statement of f329260 (repository.store_usage then).
PREVIOUS_RECORD = (
    "WITH stored AS (INSERT INTO usage_records (usage_id, user_id, model, input_tokens,"
    " output_tokens, charged_millicredits, uncollected_millicredits, cost_millicredits,"
    " rate_card_version, hold_id, idempotency_key, provider_request_id, transaction_id,"
    " mode, correlation_id, response_body, priced_millicredits)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::json,"
    " $17) ON CONFLICT DO NOTHING RETURNING true),"
    " freed AS (DELETE FROM inflight_charges WHERE usage_id = $1),"
    " done AS (UPDATE request_claims SET state = 'done'"
    " WHERE user_id = $2 AND idempotency_key = $11),"
    " published AS (INSERT INTO outbox (topic, message_key, payload, headers)"
    " SELECT $18, $19, $20, $21::jsonb WHERE EXISTS (SELECT FROM stored)),"
    " recent AS (SELECT charged_millicredits FROM usage_records"
    " WHERE $22::int > 0 AND user_id = $2 AND mode = 'charged' AND usage_id <> $1"
    " ORDER BY created_at DESC LIMIT $22)"
    " SELECT EXISTS (SELECT FROM stored) AS new, (SELECT count(*) FROM recent) AS calls,"
    " (SELECT coalesce(sum(charged_millicredits), 0) FROM recent)::bigint AS total"
)


class Before:
    """The call as f329260 made it: three statements, the hold through EXECUTE."""

    def __init__(self, db: Database, ledger: str) -> None:
        self.db, self.ledger = db, ledger

    async def call(self, user: str) -> None:
        key, usage_id = f"chat:{user}:{uuid.uuid4().hex}", str(uuid.uuid4())
        now = datetime.now(UTC)
        async with self.db.pool.acquire() as conn:
            admitted = await conn.fetchrow(
                "SELECT * FROM previous_admit_charged_call("
                + ", ".join(f"${i}" for i in range(1, 25))
                + ")",
                *self._admit_args(user, key, usage_id, now),
            )
            assert admitted["r_outcome"] == "admitted", admitted["r_outcome"]
        hold_id = str(admitted["r_hold_id"])
        async with self.db.pool.acquire() as conn:
            captured = await self._capture(conn, hold_id, usage_id)
        record = usage(user, key, usage_id, hold_id)
        charged, balance, held = captured["r_charged"], captured["r_balance"], captured["r_held"]
        tokens = TokenUsage(record.input_tokens, record.output_tokens)
        body = bodies.settled(
            record.response_body, tokens, charged, Balance(balance, held, balance - held)
        )
        record = replace(
            record, transaction_id=str(captured["r_transaction_id"]), response_body=body
        )
        event = record.event("corr-bench")
        row = OutboxRecord(TOPICS.usage, user, event, "corr-bench").columns()
        async with self.db.pool.acquire() as conn:
            await conn.fetchrow(PREVIOUS_RECORD, *_record_args(record), *row, 0)

    def _admit_args(self, user: str, key: str, usage_id: str, now: datetime) -> tuple[Any, ...]:
        caps = (UNCAPPED.per_request, UNCAPPED.per_day, UNCAPPED.per_hour)
        return (
            user, usage_id, key, True, "h", 300.0, ESTIMATE, now, guardrails.day_start(now),
            now - guardrails.WINDOW, *caps, now, repository.GUARD_LOCK_SPACE,
            *ratelimit.take_args(RULES.rate, user, now), self.ledger, 120,
            guardrails.ANOMALY_HISTORY,
        )  # fmt: skip

    async def _capture(self, conn: asyncpg.Connection, hold_id: str, usage_id: str) -> Any:
        return await conn.fetchrow(
            f'SELECT * FROM "{self.ledger}".capture_hold($1::uuid, $2, $3, $4, $5, $6, $7, $8,'
            " $9::jsonb, $10)",
            hold_id, usage_id, CHARGE, "gpt-4o-mini", 25, 20, "2026-11-01", "corr-bench",
            json.dumps(outbox_headers("corr-bench")), TOPICS.ledger,
        )  # fmt: skip


def _record_args(r: UsageRecord) -> tuple[Any, ...]:
    return (
        r.usage_id, r.user_id, r.model, r.input_tokens, r.output_tokens, r.charged_millicredits,
        r.uncollected_millicredits, r.cost_millicredits, r.rate_card_version, r.hold_id,
        r.idempotency_key, r.provider_request_id, r.transaction_id, r.mode, "corr-bench",
        json.dumps(r.response_body), r.priced_millicredits,
    )  # fmt: skip


class After:
    """The call as the gateway makes it now: two statements, through metering's own code."""

    def __init__(self, db: Database) -> None:
        self.admissions = PgAdmissions(db, RULES)
        self.store = PgUsageStore(db, TOPICS, Relay(), takeover_after_s=300)

    async def call(self, user: str) -> None:
        key, usage_id = f"chat:{user}:{uuid.uuid4().hex}", str(time_ordered_uuid())
        ticket = Ticket(user, usage_id, key, True, "h", ESTIMATE)
        admitted = await self.admissions.admit(ticket, datetime.now(UTC))
        assert isinstance(admitted, Admitted), admitted
        record = usage(user, key, admitted.usage_id, admitted.hold.hold_id)
        await self.store.record(record, None, admitted.history, admitted.hold)


class Landed(After):
    """The call as cbd6315 made it: random usage ids (uuid5 of the user and the key then),
    the admission of metering's 0006 with PL/pgSQL guard reads, the same settlement."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.db = db

    async def call(self, user: str) -> None:
        key, usage_id = f"chat:{user}:{uuid.uuid4().hex}", str(uuid.uuid4())
        ticket = Ticket(user, usage_id, key, True, "h", ESTIMATE)
        args = list(self.admissions._args(ticket, datetime.now(UTC)))
        del args[2]  # 0006 had no p_usage_id_before
        async with self.db.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT * FROM admit_charged_call({', '.join(f'${i + 1}' for i in range(23))})",
                *args,
            )
        assert row["r_outcome"] == "admitted", row["r_outcome"]
        balance, held = row["r_balance"], row["r_held"]
        hold = Hold(
            str(row["r_hold_id"]), row["r_hold_amount"], Balance(balance, held, balance - held)
        )
        history = guardrails.History(row["r_recent_calls"], row["r_recent_total"])
        record = usage(user, key, usage_id, hold.hold_id)
        await self.store.record(record, None, history, hold)


# --- the run --------------------------------------------------------------------------------


Call = Callable[[str], Awaitable[None]]


async def schemas(dsn: str, tag: str, users: int, history: int) -> tuple[Database, str, list[str]]:
    """A migrated, funded pair of schemas, each user with ``history`` charged calls made
    earlier today: metering's pool, the ledger's schema, the names."""
    ledger, metering = f"bench_{tag}_ledger", f"bench_{tag}_metering"
    await migrate_package(dsn, ledger, "ledger")
    access = SchemaAccess(search_paths=ledger_search_paths(ledger))
    await migrate_package(dsn, metering, "metering", access)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f'INSERT INTO "{ledger}".balances (user_id, balance_millicredits)'
            " SELECT 'bench-' || i, 1000000000000 FROM generate_series(1, $1) i",
            users,
        )
        await conn.execute(
            f'INSERT INTO "{metering}".usage_records (usage_id, user_id, model, input_tokens,'
            " output_tokens, charged_millicredits, cost_millicredits, rate_card_version, hold_id,"
            " idempotency_key, mode, response_body, priced_millicredits, created_at)"
            " SELECT gen_random_uuid(), 'bench-' || u, 'gpt-4o-mini', 25, 20, 1234, 300, 'v',"
            " 'h', 'past-' || u || '-' || n, 'charged', '{}', 1234,"
            " date_trunc('day', now(), 'UTC') + (now() - date_trunc('day', now(), 'UTC'))"
            " * n / ($2 + 1) FROM generate_series(1, $1) u, generate_series(1, $2) n",
            users,
            history,
        )
        await _earlier_holds(conn, ledger, users, history)
        # Statistics as a live database has them: the plan cache weighs its choices on them.
        await conn.execute(f'ANALYZE "{metering}".usage_records, "{ledger}".holds')
    finally:
        await conn.close()
    return Database(dsn, metering, 1, 8), ledger, [f"bench-{i}" for i in range(1, users + 1)]


async def _earlier_holds(conn: asyncpg.Connection, ledger: str, users: int, history: int) -> None:
    """The holds of the earlier calls, made active and captured since (their expiry time
    passed), as a live table has them between two vacuums: their entries in the indexes of
    active holds are dead, not gone. Autovacuum is off for this table, so every round
    meets the same state."""
    await conn.execute(f'ALTER TABLE "{ledger}".holds SET (autovacuum_enabled = false)')
    await conn.execute(
        f'INSERT INTO "{ledger}".holds (id, user_id, amount_millicredits, idempotency_key,'
        " expires_at, created_at) SELECT gen_random_uuid(), 'bench-' || u, 4000,"
        " 'past-' || u || '-' || n, now() - make_interval(secs => n), now() - make_interval("
        "secs => n + 120) FROM generate_series(1, $1) u, generate_series(1, $2) n",
        users,
        history,
    )
    await conn.execute(
        f"UPDATE \"{ledger}\".holds SET status = 'captured', settled_at = now()"
        " WHERE idempotency_key LIKE 'past-%'"
    )


async def round_of(call: Call, users: list[str], args: argparse.Namespace) -> dict[str, float]:
    queue = iter(range(args.calls))

    async def worker() -> None:
        for i in queue:
            await call(users[i % len(users)])

    roots = {"postgres": postmaster_pid()}
    before, started = cpu_snapshot(roots), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.workers)))
    seconds, after = time.perf_counter() - started, cpu_snapshot(roots)
    return {
        "postgres_us": (after["postgres"] - before["postgres"]) / args.calls * 1e6,
        "client_us": (after[GENERATOR] - before[GENERATOR]) / args.calls * 1e6,
        "per_s": args.calls / seconds,
    }


def postmaster_pid() -> int:
    pidfile = Stack(Layout.dev()).postgres.data / "postmaster.pid"
    return int(pidfile.read_text().split()[0])


async def bench(dsn: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    tag = uuid.uuid4().hex[:8]
    old_db, old_ledger, users = await schemas(dsn, f"{tag}_b", args.users, args.history)
    landed_db, landed_ledger, _ = await schemas(dsn, f"{tag}_l", args.users, args.history)
    new_db, _, _ = await schemas(dsn, f"{tag}_a", args.users, args.history)
    ledger_sql, metering_sql = previous_definitions()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'SET search_path = "{old_ledger}"; {ledger_sql}')
        await conn.execute(f'SET search_path = "{old_db.schema}"; {metering_sql}')
        path = f'"{landed_db.schema}", "{landed_ledger}"'
        await conn.execute(f"SET search_path = {path}; {landed_definitions()}")
        await conn.execute(f'SET search_path = "{old_ledger}"; {WITHOUT_USER_EXPIRY_INDEX}')
        for db in (old_db, landed_db, new_db):
            await db.start()
        ways: dict[str, Call] = {
            "f329260": Before(old_db, old_ledger).call,
            "cbd6315": Landed(landed_db).call,
            "after": After(new_db).call,
        }
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
        for r in range(args.rounds):
            for name, call in ways.items():
                rounds[name].append(await round_of(call, users, args))
                print(f"round {r + 1}, {name}: {rounds[name][-1]}", file=sys.stderr)
        return {
            n: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for n, rs in rounds.items()
        }
    finally:
        for db in (old_db, landed_db, new_db):
            await db.stop()
        for schema in (f"bench_{tag}_b", f"bench_{tag}_l", f"bench_{tag}_a"):
            await conn.execute(
                f'DROP SCHEMA "{schema}_ledger" CASCADE; DROP SCHEMA "{schema}_metering" CASCADE'
            )
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per way, alternating")
    parser.add_argument("--workers", type=int, default=4, help="connections calling at once")
    parser.add_argument(
        "--history", type=int, default=0, help="charged calls each user made earlier today"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with dev_postgres() as postgres:
        figures = asyncio.run(bench(postgres.dsn, args))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(
        f"medians of {args.rounds} rounds of {args.calls} calls, {args.workers} at once,"
        f" {args.history} earlier calls per user today"
    )
    print(f"{'':20} {'PostgreSQL us':>14} {'client us':>10} {'calls/s':>8}")
    for name, f in figures.items():
        print(f"{name:20} {f['postgres_us']:14.0f} {f['client_us']:10.0f} {f['per_s']:8.0f}")


if __name__ == "__main__":
    main()
