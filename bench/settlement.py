"""CPU of a charged call's settlement: the capture and the usage record as one statement
(``settle_charged_call``) against the same work as two (the ledger's ``capture_hold``, then
``record_usage``, each its own transaction, as the gateway settled before metering's
migration 0005), measured in the same run on the same PostgreSQL.

Uses the dev stack's PostgreSQL only (port 15432, durable commits), started if it is not
running and stopped afterwards unless it was running already. Fresh schemas get the
ledger's and metering's migrations; ``--users`` users are funded. Each round makes
``--calls`` holds (not measured), then settles them from ``--workers`` connections at
once, one way or the other; the rounds alternate between the two ways, so a slow minute
of the machine weighs on both. Per way it prints the median over rounds of: PostgreSQL's
CPU (every process of the cluster) and the client's (asyncpg and the record's encoding)
per settlement, and the settlements per second.

Run: ``./scripts/run python bench/settlement.py [--calls 2000] [--rounds 6] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import asyncpg
from billing_cli.layout import Layout
from billing_cli.stack import Stack
from billing_events.outbox import OutboxRecord, outbox_headers
from billing_events.topics import Topics
from billing_platform.db import SchemaAccess, migrate_package
from metering import bodies, repository
from metering.db_access import ledger_search_paths
from metering.ledger_client import Balance
from metering.model_client import TokenUsage
from metering.records import CHARGED, UsageRecord
from pipeline import GENERATOR, cpu_snapshot

TOPICS = Topics()
HEAD = {"id": "chatcmpl-bench", "message": {"role": "assistant", "content": "four words of text"}}
HOLD_MILLICREDITS, CHARGE_MILLICREDITS = 4_000, 1_234
Settle = Callable[[asyncpg.Connection, str, str, UsageRecord], Awaitable[None]]


def record(user: str, hold_id: str) -> UsageRecord:
    return UsageRecord(
        usage_id=str(uuid.uuid4()),
        user_id=user,
        model="gpt-4o-mini",
        input_tokens=25,
        output_tokens=20,
        charged_millicredits=CHARGE_MILLICREDITS,
        uncollected_millicredits=0,
        priced_millicredits=CHARGE_MILLICREDITS,
        cost_millicredits=300,
        rate_card_version="2026-11-01",
        hold_id=hold_id,
        idempotency_key=f"chat:{user}:{uuid.uuid4().hex}",
        provider_request_id="chatcmpl-bench",
        transaction_id=None,
        response_body={**HEAD, "billingMode": CHARGED},
        mode=CHARGED,
    )


def answer(usage: UsageRecord, charged: int, balance: int, held: int) -> dict[str, Any]:
    tokens = TokenUsage(usage.input_tokens, usage.output_tokens)
    return bodies.settled(
        usage.response_body, tokens, charged, Balance(balance, held, balance - held)
    )


def outbox_row(usage: UsageRecord, charge: int) -> Any:
    event = usage.event("corr-bench")
    event.charged_millicredits = charge
    return OutboxRecord(TOPICS.usage, usage.user_id, event, "corr-bench").columns()


async def two_statements(
    conn: asyncpg.Connection, ledger: str, hold_id: str, usage: UsageRecord
) -> None:
    """Before: the capture, then the record built from its answer."""
    captured = await conn.fetchrow(
        f'SELECT * FROM "{ledger}".capture_hold($1::uuid, $2, $3, $4, $5, $6, $7, $8,'
        " $9::jsonb, $10)",
        hold_id,
        usage.usage_id,
        usage.charged_millicredits,
        usage.model,
        usage.input_tokens,
        usage.output_tokens,
        usage.rate_card_version,
        "corr-bench",
        json.dumps(outbox_headers("corr-bench")),
        TOPICS.ledger,
    )
    charged = captured["r_charged"]
    stored = replace(
        usage,
        transaction_id=str(captured["r_transaction_id"]),
        response_body=answer(usage, charged, captured["r_balance"], captured["r_held"]),
    )
    await repository.store_usage(conn, stored, "corr-bench", outbox_row(usage, charged), 0)


async def one_statement(
    conn: asyncpg.Connection, ledger: str, hold_id: str, usage: UsageRecord
) -> None:
    """After: ``settle_charged_call``."""
    target = repository.HoldToCapture(
        TOPICS.ledger, outbox_headers("corr-bench"), hold_id, 10**9, HOLD_MILLICREDITS
    )
    row = await repository.settle_charged_call(
        conn, target, usage, "corr-bench", outbox_row(usage, 0), 0
    )
    answer(usage, row["r_charged"], row["r_balance"], row["r_held"])  # as the store does


class Bench:
    def __init__(self, dsn: str, ledger: str, metering: str, args: argparse.Namespace) -> None:
        self.dsn, self.ledger, self.metering, self.args = dsn, ledger, metering, args
        self.users = [f"bench-{i}" for i in range(args.users)]

    async def pool(self, schema: str) -> asyncpg.Pool:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self.args.workers,
            max_size=self.args.workers,
            server_settings={"search_path": schema},
        )
        return pool

    async def fund(self, pool: asyncpg.Pool) -> None:
        await pool.executemany(
            "INSERT INTO balances (user_id, balance_millicredits) VALUES ($1, $2)",
            [(u, 10**12) for u in self.users],
        )

    async def holds(self, pool: asyncpg.Pool) -> list[tuple[str, str]]:
        made = []
        for i in range(self.args.calls):
            user = self.users[i % len(self.users)]
            hold_id = await pool.fetchval(
                "SELECT r_hold_id FROM create_hold($1, $2, $3, 120)",
                user,
                HOLD_MILLICREDITS,
                uuid.uuid4().hex,
            )
            made.append((user, str(hold_id)))
        return made

    async def round(
        self, pool: asyncpg.Pool, ledger_pool: asyncpg.Pool, settle: Settle
    ) -> dict[str, float]:
        work = [record(user, hold) for user, hold in await self.holds(ledger_pool)]
        queue = iter(work)

        async def worker() -> None:
            async with pool.acquire() as conn:
                for usage in queue:
                    await settle(conn, self.ledger, usage.hold_id, usage)

        roots = {"postgres": postmaster_pid()}
        before, started = cpu_snapshot(roots), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(self.args.workers)))
        seconds, after = time.perf_counter() - started, cpu_snapshot(roots)
        n = len(work)
        return {
            "postgres_us": (after["postgres"] - before["postgres"]) / n * 1e6,
            "client_us": (after[GENERATOR] - before[GENERATOR]) / n * 1e6,
            "per_s": n / seconds,
        }

    async def run(self) -> dict[str, dict[str, float]]:
        pool, ledger_pool = await self.pool(self.metering), await self.pool(self.ledger)
        await self.fund(ledger_pool)
        ways: dict[str, Settle] = {
            "two statements (before)": two_statements,
            "one statement (after)": one_statement,
        }
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
        for r in range(self.args.rounds):
            for name, settle in ways.items():
                rounds[name].append(await self.round(pool, ledger_pool, settle))
                print(f"round {r + 1}: {name}: {rounds[name][-1]}", file=sys.stderr)
        await pool.close()
        await ledger_pool.close()
        return {
            name: {k: statistics.median(x[k] for x in runs) for k in runs[0]}
            for name, runs in rounds.items()
        }


def postmaster_pid() -> int:
    pidfile = Stack(Layout.dev()).postgres.data / "postmaster.pid"
    return int(pidfile.read_text().split()[0])


async def bench(dsn: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    tag = uuid.uuid4().hex[:8]
    ledger, metering = f"bench_{tag}_ledger", f"bench_{tag}_metering"
    await migrate_package(dsn, ledger, "ledger")
    access = SchemaAccess(search_paths=ledger_search_paths(ledger))
    await migrate_package(dsn, metering, "metering", access)
    try:
        return await Bench(dsn, ledger, metering, args).run()
    finally:
        conn = await asyncpg.connect(dsn)
        await conn.execute(f'DROP SCHEMA "{ledger}" CASCADE; DROP SCHEMA "{metering}" CASCADE')
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--calls", type=int, default=2000, help="settlements per round")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per way, alternating")
    parser.add_argument("--workers", type=int, default=4, help="connections settling at once")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    postgres = Stack(Layout.dev()).postgres
    postgres.install()
    was_running = postgres.running()
    postgres.start()
    postgres.wait_ready(90)
    try:
        figures = asyncio.run(bench(postgres.dsn, args))
    finally:
        if not was_running:
            postgres.stop()
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"medians of {args.rounds} rounds of {args.calls} settlements, {args.workers} at once")
    print(f"{'':28} {'PostgreSQL us':>14} {'client us':>10} {'per s':>8}")
    for name, f in figures.items():
        print(f"{name:28} {f['postgres_us']:14.0f} {f['client_us']:10.0f} {f['per_s']:8.0f}")


if __name__ == "__main__":
    main()
