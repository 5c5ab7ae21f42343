"""After the load: wait until the pipeline is quiet, then hold the platform to the record.

The record (``Model``) is what clients did and saw; the platform's side is read from the
database (the ledger's journal, metering's usage records), the reconciler's API and the
dead-letter topics. ``lost`` counts money the record expects and the journal lacks;
``doubled`` counts postings beyond what the record allows.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from billing_events.kafka import topic_partitions
from billing_events.topics import LEDGER_DLQ, STRIPE_EVENTS_DLQ, USAGE_DLQ, Topics

from billing_cli.chaos.model import Charge, Model, Purchase
from billing_cli.dlq import read_letters, replay_group_for

Tx = dict[str, Any]


@dataclass
class Report:
    lost: int = 0
    doubled: int = 0
    failures: list[str] = field(default_factory=list)
    per_check: Counter[str] = field(default_factory=Counter)
    reconciliation: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, check: str, detail: str, lost: int = 0, doubled: int = 0) -> None:
        self.per_check[check] += 1
        self.failures.append(f"{check}: {detail}")
        self.lost += lost
        self.doubled += doubled


# --- quiet -------------------------------------------------------------------------------


async def pipeline_state(dsn: str, bootstrap: str) -> dict[str, int]:
    """What is still moving: unpublished outbox rows, consumer lag, active holds, postings."""
    conn = await asyncpg.connect(dsn)
    try:
        schemas = await conn.fetch(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'outbox'"
        )
        outbox = 0
        for row in schemas:
            outbox += await conn.fetchval(
                f'SELECT count(*) FROM "{row["table_schema"]}".outbox WHERE published_at IS NULL'
            )
        holds = await conn.fetchval("SELECT count(*) FROM ledger.holds WHERE status = 'active'")
        journal = await conn.fetchval("SELECT count(*) FROM ledger.journal_entries")
    finally:
        await conn.close()
    return {
        "outbox": outbox,
        "lag": await consumer_lag(bootstrap),
        "holds": holds,
        "journal": journal,
    }


async def consumer_lag(bootstrap: str) -> int:
    """Records on consumed topics that their groups have not committed past, summed."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        groups = [g[0] for g in await admin.list_consumer_groups()]
        committed: dict[TopicPartition, int] = {}
        for group in groups:
            for tp, meta in (await admin.list_consumer_group_offsets(group)).items():
                committed[TopicPartition(f"{group}|{tp.topic}", tp.partition)] = meta.offset
    finally:
        await admin.close()
    pairs = {(k.topic.split("|", 1)[0], k.topic.split("|", 1)[1]) for k in committed}
    topics = {topic for _, topic in pairs}
    partitions = {t: await topic_partitions(bootstrap, t) for t in topics}
    ends = await _end_offsets(bootstrap, [tp for tps in partitions.values() for tp in tps])
    lag = 0
    for group, topic in pairs:
        for tp in partitions[topic]:
            done = committed.get(TopicPartition(f"{group}|{topic}", tp.partition), 0)
            lag += max(0, ends.get(tp, 0) - done)
    return lag


async def _end_offsets(bootstrap: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends
    finally:
        await consumer.stop()


async def wait_quiet(dsn: str, bootstrap: str, timeout_s: float) -> dict[str, int]:
    """Poll until nothing is pending and the journal stood still; the last state seen."""
    deadline = time.monotonic() + timeout_s
    previous: dict[str, int] | None = None
    state: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            state = await pipeline_state(dsn, bootstrap)
        except (OSError, asyncpg.PostgresError) as exc:
            state = {"error": 1}
            print(f"quiet poll failed: {exc!r}")
        pending = state.get("outbox", 1) + state.get("lag", 1) + state.get("holds", 1)
        if "error" not in state and pending == 0 and previous == state:
            return state
        previous = state
        await asyncio.sleep(1.0)
    return state


# --- the platform's side ------------------------------------------------------------------


@dataclass
class Books:
    txs: list[Tx]
    usage_records: dict[tuple[str, str], Tx]
    balances: dict[str, Tx]
    wallet_sums: dict[str, int]

    def of(self, kind: str) -> dict[str, list[Tx]]:
        by_ref: dict[str, list[Tx]] = defaultdict(list)
        for tx in self.txs:
            if tx["kind"] == kind:
                by_ref[tx["reference_id"]].append(tx)
        return by_ref


async def read_books(dsn: str, users: list[str]) -> Books:
    conn = await asyncpg.connect(dsn)
    try:
        txs = await conn.fetch(
            "SELECT t.id, t.kind, t.user_id, t.reference_id, t.idempotency_key,"
            " coalesce(sum(e.amount_millicredits) FILTER (WHERE e.user_id IS NOT NULL), 0)"
            " AS wallet FROM ledger.journal_transactions t"
            " JOIN ledger.journal_entries e ON e.transaction_id = t.id"
            " WHERE t.user_id = ANY($1) GROUP BY t.id",
            users,
        )
        records = await conn.fetch(
            "SELECT usage_id::text, user_id, idempotency_key, charged_millicredits, mode"
            " FROM metering.usage_records WHERE user_id = ANY($1)",
            users,
        )
        balances = await conn.fetch("SELECT * FROM ledger.balances WHERE user_id = ANY($1)", users)
        sums = await conn.fetch(
            "SELECT user_id, sum(amount_millicredits) AS total FROM ledger.journal_entries"
            " WHERE user_id = ANY($1) AND account = 'wallet:' || user_id GROUP BY user_id",
            users,
        )
    finally:
        await conn.close()
    return Books(
        txs=[dict(t) for t in txs],
        usage_records={(r["user_id"], r["idempotency_key"]): dict(r) for r in records},
        balances={b["user_id"]: dict(b) for b in balances},
        wallet_sums={s["user_id"]: int(s["total"]) for s in sums},
    )


# --- the checks ----------------------------------------------------------------------------


def check_grants(model: Model, books: Books, report: Report) -> None:
    """Every paid purchase granted once, in full; nothing for an unpaid or unknown one."""
    grants = books.of("purchase")
    for p in model.purchases:
        got = grants.pop(p.purchase_id, [])
        allowed = 0 if p.payment == "none" else 1
        if p.payment == "confirmed" and not got:
            report.fail("grants", f"paid purchase {p.purchase_id} never granted", lost=1)
        if len(got) > allowed:
            report.fail("grants", f"{p.purchase_id} ({p.paid_by}) granted {len(got)}x", doubled=1)
        for tx in got:
            if tx["wallet"] != p.grant_millicredits:
                report.fail(
                    "grants", f"{p.purchase_id} granted {tx['wallet']}, not {p.grant_millicredits}"
                )
    for ref, txs in grants.items():
        report.fail("grants", f"grant of {ref} that no client paid ({len(txs)}x)", doubled=len(txs))


def check_clawbacks(model: Model, books: Books, report: Report) -> None:
    """Refunds claw back floor(grant * refunded / price), once, whatever the redeliveries."""
    refunds = books.of("refund")
    granted = set(books.of("purchase"))
    for p in model.purchases:
        taken = -sum(tx["wallet"] for tx in refunds.pop(p.purchase_id, []))
        want = _acceptable(p) if p.purchase_id in granted else {0}
        if taken not in want:
            short = taken < min(want)
            report.fail(
                "clawbacks",
                f"{p.purchase_id}: clawed back {taken}, expected one of {sorted(want)}",
                lost=int(short),
                doubled=int(not short),
            )
    for ref in refunds:
        report.fail("clawbacks", f"refund posted for {ref}, never refunded by a client", doubled=1)


def _acceptable(p: Purchase) -> set[int]:
    return p.acceptable_clawbacks()


def check_usage(model: Model, books: Books, report: Report) -> None:
    """Each charge a client saw posted once, for that amount; no usage posted twice."""
    postings = books.of("usage")
    records = dict(books.usage_records)
    for c in model.charges:
        record = records.pop((c.user_id, c.metering_key), None)
        _check_charge(c, record, postings, report)
    for (user, key), record in records.items():  # keys no client of this run used
        report.fail("usage", f"usage record {record['usage_id']} ({user}, {key}) unexplained")
    # A capture may land and its caller die before the record is stored; if the client then
    # gave up, that posting has no record. Each such client call explains at most one.
    spare = Counter(
        c.user_id
        for c in model.charges
        if c.outcome == "unknown" and (c.user_id, c.metering_key) not in books.usage_records
    )
    for ref, txs in postings.items():
        spare[txs[0]["user_id"]] -= len(txs)
        if len(txs) > 1 or spare[txs[0]["user_id"]] < 0:
            report.fail("usage", f"usage {ref} posted {len(txs)}x, no record", doubled=len(txs))


def _check_charge(
    c: Charge, record: Tx | None, postings: dict[str, list[Tx]], report: Report
) -> None:
    usage_id = c.usage_id or (record["usage_id"] if record else None)
    got = postings.pop(usage_id, []) if usage_id else []
    charged = int(record["charged_millicredits"]) if record else 0
    name = f"{c.kind} {c.key}"
    if c.outcome == "confirmed" and c.charged_millicredits != charged:
        report.fail("usage", f"{name}: client saw {c.charged_millicredits}, record says {charged}")
    if len(got) > 1:
        report.fail("usage", f"{name}: usage {usage_id} posted {len(got)}x", doubled=len(got) - 1)
    if charged > 0 and not got:
        report.fail("usage", f"{name}: charge of {charged} never posted", lost=1)
    for tx in got:
        if -tx["wallet"] != charged:
            report.fail("usage", f"{name}: posted {-tx['wallet']}, charged {charged}")
    if c.outcome == "confirmed" and c.charged_millicredits > 0 and record is None:
        report.fail("usage", f"{name}: charge seen by the client has no usage record", lost=1)


def check_adjustments(model: Model, books: Books, report: Report) -> None:
    """Each adjustment answered 201 posted once, for its amount."""
    by_key: dict[str, list[Tx]] = defaultdict(list)
    for tx in books.txs:
        if tx["kind"] in ("adjustment", "reversal"):
            by_key[tx["idempotency_key"] or f"no key {tx['id']}"].append(tx)
    for adj in model.adjustments:
        got = by_key.pop(f"adjustment:{adj.key}", [])
        if adj.outcome == "confirmed" and not got:
            report.fail("adjustments", f"{adj.key} answered 201 but not posted", lost=1)
        if len(got) > 1 or (got and adj.outcome == "none"):
            report.fail("adjustments", f"{adj.key} posted {len(got)}x", doubled=len(got))
        for tx in got:
            if tx["wallet"] != adj.amount_millicredits:
                report.fail("adjustments", f"{adj.key} posted {tx['wallet']}")
    for key, txs in by_key.items():
        report.fail("adjustments", f"adjustment {key} no client made", doubled=len(txs))


def check_balances(model: Model, books: Books, report: Report) -> None:
    """Balance = its wallet entries; nothing held; below zero only with refund debt."""
    refunded = {tx["user_id"] for tx in books.txs if tx["kind"] == "refund"}
    for user in model.users:
        row = books.balances.get(user)
        balance = int(row["balance_millicredits"]) if row else 0
        if balance != books.wallet_sums.get(user, 0):
            report.fail(
                "balances", f"{user}: balance {balance} != entries {books.wallet_sums.get(user, 0)}"
            )
        if row and row["held_millicredits"] != 0:
            report.fail("balances", f"{user}: {row['held_millicredits']} still held")
        if balance < 0 and user not in refunded:
            report.fail("balances", f"{user}: balance {balance} below zero without refund debt")


async def reconcile(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], days: list[date], report: Report
) -> None:
    """A reconciliation run of each day the load touched; every finding is a failure."""
    for day in days:
        answer = await http.post(url, json={"date": day.isoformat()}, headers=headers, timeout=300)
        if answer.status_code != 200:
            report.fail("reconciliation", f"{day}: {answer.status_code} {answer.text[:300]}")
            continue
        run = answer.json()
        report.reconciliation.append(
            {"date": day.isoformat(), "status": run["status"], "findings": len(run["findings"])}
        )
        report.findings.extend(run["findings"])


async def dead_letters(bootstrap: str, namespace: str, report: Report) -> None:
    """Every dead letter is a failure: the workload sends nothing poisonous."""
    topics = Topics(namespace)
    for base in (STRIPE_EVENTS_DLQ, USAGE_DLQ, LEDGER_DLQ):
        letters = await read_letters(bootstrap, topics.name(base), replay_group_for(namespace))
        report.dead_letters.extend(x.as_dict() for x in letters)


def check_books(model: Model, books: Books, report: Report) -> None:
    check_grants(model, books, report)
    check_clawbacks(model, books, report)
    check_usage(model, books, report)
    check_adjustments(model, books, report)
    check_balances(model, books, report)
