"""All SQL of the reconciler service, except the checks' own queries (``checks``).

The reconciler's tables are reached through the pool's search_path; the hash chain's
statements and the figures read from other services name every schema (``Schemas``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from billing_events.kafka import CORRELATION_HEADER
from billing_platform import tracing
from billing_platform.db import session_lock

from reconciler import chain
from reconciler.findings import Finding, Schemas
from reconciler.period import Period
from reconciler.runs import ChainHead, CheckCount, RunRecord, RunRequest

# Waiting for another run, or extending the chain over a large journal, outlasts the pool's
# per-request command timeout.
LONG_TIMEOUT_S = 3600.0


# --- read model ----------------------------------------------------------------------


@dataclass(frozen=True)
class SeenTable:
    """A read-model table, written a batch at a time: its columns and their array types."""

    name: str
    key: str
    columns: tuple[tuple[str, str], ...]

    def insert_sql(self) -> str:
        names = ", ".join(c for c, _ in self.columns)
        # jsonb travels as text (asyncpg's default codec) and is cast once it is a column.
        arrays = ", ".join(
            f"${i}::{'text' if t == 'jsonb' else t}[]" for i, (_, t) in enumerate(self.columns, 1)
        )
        values = ", ".join(f"{c}::{t}" for c, t in self.columns)
        return (
            f"INSERT INTO {self.name} ({names}) SELECT {values} FROM unnest({arrays})"
            f" AS r({names}) ON CONFLICT ({self.key}) DO NOTHING"
        )


SEEN_STRIPE_EVENTS = SeenTable(
    "seen_stripe_events",
    "event_id",
    (
        ("event_id", "text"),
        ("type", "text"),
        ("object_id", "text"),
        ("purchase_id", "text"),
        ("amount", "bigint"),
        ("amount_refunded", "bigint"),
        ("created", "timestamptz"),
        ("payload", "jsonb"),
    ),
)
SEEN_USAGE_RECORDS = SeenTable(
    "seen_usage_records",
    "usage_id",
    (
        ("usage_id", "text"),
        ("user_id", "text"),
        ("model", "text"),
        ("mode", "text"),
        ("charged_millicredits", "bigint"),
        ("cost_millicredits", "bigint"),
        ("created", "timestamptz"),
    ),
)
SEEN_LEDGER_TRANSACTIONS = SeenTable(
    "seen_ledger_transactions",
    "transaction_id",
    (
        ("transaction_id", "text"),
        ("kind", "text"),
        ("user_id", "text"),
        ("reference_id", "text"),
        ("wallet_delta_millicredits", "bigint"),
        ("posted_at", "timestamptz"),
    ),
)


async def insert_seen(conn: Any, table: SeenTable, rows: Sequence[Any]) -> int:
    """Rows (dataclasses whose fields are the table's columns, in order) in one statement;
    how many were new (a row whose key is there already, or earlier in ``rows``, is not)."""
    if not rows:
        return 0
    columns = [[getattr(r, c) for r in rows] for c, _ in table.columns]
    status = await conn.execute(table.insert_sql(), *columns)
    return int(status.rsplit(" ", 1)[1])  # "INSERT 0 <rows>"


# --- runs ----------------------------------------------------------------------------


@asynccontextmanager
async def run_lock(conn: Any, schema: str) -> AsyncIterator[None]:
    """One run at a time across replicas. A session lock, taken before the run's
    transaction begins, so its snapshot already sees the run that held the lock."""
    key = zlib.crc32(f"{schema}.reconcile".encode())
    async with session_lock(conn, key, LONG_TIMEOUT_S):
        yield


@dataclass(frozen=True)
class StoredKey:
    run_id: str
    request_hash: str


async def run_by_key(conn: Any, key: str) -> StoredKey | None:
    row = await conn.fetchrow(
        "SELECT id::text AS run_id, request_hash FROM reconciliation_runs"
        " WHERE idempotency_key = $1",
        key,
    )
    return StoredKey(row["run_id"], row["request_hash"]) if row else None


async def insert_run(conn: Any, record: RunRecord, request: RunRequest) -> None:
    head = record.journal_head
    await conn.execute(
        "INSERT INTO reconciliation_runs (id, period_date, period_from, period_to, trigger,"
        " requested_by, status, started_at, finished_at, duration_ms, findings_count,"
        " check_counts, stripe_api_sessions_seen, journal_last_entry_id, journal_chain_hash,"
        " idempotency_key, request_hash)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13, $14, $15,"
        " $16, $17)",
        record.run_id,
        record.period.day,
        record.period.start,
        record.period.end,
        request.trigger,
        request.requested_by,
        record.status,
        record.started_at,
        record.finished_at,
        record.duration_ms,
        len(record.findings),
        json.dumps([{"name": c.name, "findings": c.findings} for c in record.checks]),
        record.stripe_api_sessions_seen,
        head.last_entry_id if head else None,
        head.chain_hash if head else None,
        request.idempotency_key,
        request.request_hash,
    )


async def insert_failed_run(
    conn: Any, run_id: str, request: RunRequest, started: datetime, error: str
) -> None:
    await conn.execute(
        "INSERT INTO reconciliation_runs (id, period_date, period_from, period_to, trigger,"
        " requested_by, status, started_at, finished_at, duration_ms, error)"
        " VALUES ($1, $2, $3, $4, $5, $6, 'failed', $7, now(),"
        " greatest(0, (extract(epoch FROM now() - $7) * 1000)::bigint), $8)",
        run_id,
        request.period.day,
        request.period.start,
        request.period.end,
        request.trigger,
        request.requested_by,
        started,
        error,
    )


async def insert_findings(conn: Any, run_id: str, findings: Sequence[Finding]) -> None:
    await conn.executemany(
        "INSERT INTO findings (run_id, check_name, kind, user_id, reference_ids,"
        " expected_millicredits, actual_millicredits, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [
            (
                run_id,
                f.check,
                f.kind,
                f.user_id,
                list(f.references),
                f.expected_millicredits,
                f.actual_millicredits,
                f.detail,
            )
            for f in findings
        ],
    )


async def queue_alerts(
    conn: Any, topic: str, alerts: Sequence[tuple[str, bytes]], correlation_id: str
) -> None:
    """The run's alerts into the outbox, in its transaction (``write_outbox``, batched)."""
    headers = tracing.inject_headers({CORRELATION_HEADER: correlation_id})
    encoded = json.dumps({k: v.decode() for k, v in headers})
    await conn.executemany(
        "INSERT INTO outbox (topic, message_key, payload, headers) VALUES ($1, $2, $3, $4::jsonb)",
        [(topic, key.encode(), payload, encoded) for key, payload in alerts],
    )


async def latest_run_id(conn: Any) -> str | None:
    run_id: str | None = await conn.fetchval(
        "SELECT id::text FROM reconciliation_runs WHERE status <> 'failed'"
        " ORDER BY finished_at DESC LIMIT 1"
    )
    return run_id


async def load_run(conn: Any, run_id: str) -> RunRecord:
    row = await conn.fetchrow(
        "SELECT id::text AS run_id, period_date, started_at, finished_at, duration_ms,"
        " check_counts, stripe_api_sessions_seen, journal_last_entry_id, journal_chain_hash"
        " FROM reconciliation_runs WHERE id = $1",
        run_id,
    )
    found = await conn.fetch(
        "SELECT check_name, kind, user_id, reference_ids, expected_millicredits,"
        " actual_millicredits, detail FROM findings WHERE run_id = $1 ORDER BY id",
        run_id,
    )
    return _record(row, [_finding(f) for f in found])


def _record(row: Any, findings: list[Finding]) -> RunRecord:
    head = (
        ChainHead(row["journal_last_entry_id"], bytes(row["journal_chain_hash"]))
        if row["journal_last_entry_id"] is not None
        else None
    )
    return RunRecord(
        run_id=row["run_id"],
        period=Period(row["period_date"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        duration_ms=row["duration_ms"],
        checks=tuple(CheckCount(**c) for c in json.loads(row["check_counts"])),
        findings=tuple(findings),
        stripe_api_sessions_seen=row["stripe_api_sessions_seen"],
        journal_head=head,
    )


def _finding(row: Any) -> Finding:
    return Finding(
        check=row["check_name"],
        kind=row["kind"],
        user_id=row["user_id"],
        references=tuple(row["reference_ids"]),
        expected_millicredits=row["expected_millicredits"],
        actual_millicredits=row["actual_millicredits"],
        detail=row["detail"],
    )


# --- the journal hash chain ----------------------------------------------------------

# Recompute the head segment (the last checkpointed one) and every later one from entries
# that have settled; a checkpointed segment is rewritten only while what it covered is
# still its prefix, so an edited segment keeps its checkpoint as evidence.
_EXTEND_CHAIN_SQL = """
WITH head AS (
    SELECT coalesce(max(segment_no), 0) AS segment_no FROM {R}.journal_chain
), settled AS (
    SELECT max(id) AS last_id FROM {L}.journal_entries
    WHERE created_at < now() - make_interval(secs => $2)
), entries AS (
    SELECT (e.id - 1) / $1 AS segment_no, e.id, {DIGEST} AS digest
    FROM {L}.journal_entries e
    JOIN {L}.journal_transactions t ON t.id = e.transaction_id
    WHERE e.id > (SELECT segment_no FROM head) * $1 AND e.id <= (SELECT last_id FROM settled)
), segments AS (
    SELECT segment_no, min(id) AS first_id, max(id) AS last_id, count(*)::int AS entry_count,
           {R}.chain_agg(digest ORDER BY id) AS segment_hash,
           array_agg(id ORDER BY id) AS entry_ids,
           string_agg(substring(digest FROM 1 FOR 8), ''::bytea ORDER BY id) AS entry_digests
    FROM entries
    GROUP BY segment_no
), growing AS (
    SELECT s.* FROM segments s
    LEFT JOIN {R}.journal_chain c ON c.segment_no = s.segment_no
    WHERE c.segment_no IS NULL
       OR (s.last_id > c.last_id
           AND s.entry_ids[1:c.entry_count] = c.entry_ids
           AND substring(s.entry_digests FROM 1 FOR length(c.entry_digests)) = c.entry_digests)
)
INSERT INTO {R}.journal_chain AS c (segment_no, first_id, last_id, entry_count, segment_hash,
                                    chain_hash, entry_ids, entry_digests, run_id)
SELECT segment_no, first_id, last_id, entry_count, segment_hash, ''::bytea, entry_ids,
       entry_digests, $3
FROM growing
ON CONFLICT (segment_no) DO UPDATE SET
    first_id = EXCLUDED.first_id, last_id = EXCLUDED.last_id,
    entry_count = EXCLUDED.entry_count, segment_hash = EXCLUDED.segment_hash,
    entry_ids = EXCLUDED.entry_ids, entry_digests = EXCLUDED.entry_digests,
    run_id = EXCLUDED.run_id, updated_at = now()
RETURNING segment_no
"""
_RECHAIN_SQL = """
UPDATE {R}.journal_chain c SET chain_hash = x.chain_hash
FROM (SELECT segment_no, {R}.chain_agg(segment_hash) OVER (ORDER BY segment_no) AS chain_hash
      FROM {R}.journal_chain) x
WHERE c.segment_no = x.segment_no AND c.segment_no >= $1
"""
_HEAD_SQL = """
SELECT last_id, chain_hash FROM {R}.journal_chain ORDER BY segment_no DESC LIMIT 1
"""


async def extend_journal_chain(
    conn: Any, schemas: Schemas, settle_s: float, run_id: str | None = None
) -> ChainHead | None:
    """Checkpoint the settled entries not covered yet; the chain's head afterwards."""
    digest = chain.digest_sql()
    extended = await conn.fetch(
        schemas.qualify(_EXTEND_CHAIN_SQL, DIGEST=digest),
        chain.SEGMENT_SIZE,
        settle_s,
        run_id,
        timeout=LONG_TIMEOUT_S,
    )
    if extended:
        first = min(r["segment_no"] for r in extended)
        await conn.execute(schemas.qualify(_RECHAIN_SQL), first, timeout=LONG_TIMEOUT_S)
    head = await conn.fetchrow(schemas.qualify(_HEAD_SQL))
    return ChainHead(head["last_id"], bytes(head["chain_hash"])) if head else None


# --- gauges --------------------------------------------------------------------------


@dataclass(frozen=True)
class DayFigures:
    outstanding_millicredits: int
    charged_millicredits: int
    cost_millicredits: int
    purchased_millicredits: int
    consumed_millicredits: int


# Margin counts the model cost of every call served (shadow and unbilled calls cost money
# too) against what was charged; purchases and consumption are the day's wallet moves.
_DAY_FIGURES_SQL = """
SELECT
  (SELECT coalesce(sum(balance_millicredits), 0) FROM {L}.balances)::bigint AS outstanding,
  (SELECT coalesce(sum(charged_millicredits), 0) FROM {M}.usage_records
    WHERE created_at >= $1 AND created_at < $2)::bigint AS charged,
  (SELECT coalesce(sum(cost_millicredits), 0) FROM {M}.usage_records
    WHERE created_at >= $1 AND created_at < $2)::bigint AS cost,
  (SELECT coalesce(sum(w.amount_millicredits), 0)
     FROM {L}.journal_transactions t
     JOIN {L}.journal_entries w ON w.transaction_id = t.id AND w.user_id IS NOT NULL
    WHERE t.kind = 'purchase' AND t.created_at >= $1 AND t.created_at < $2)::bigint AS purchased,
  (SELECT coalesce(-sum(w.amount_millicredits), 0)
     FROM {L}.journal_transactions t
     JOIN {L}.journal_entries w ON w.transaction_id = t.id AND w.user_id IS NOT NULL
    WHERE t.kind = 'usage' AND t.created_at >= $1 AND t.created_at < $2)::bigint AS consumed
"""


async def day_figures(conn: Any, schemas: Schemas, day: date) -> DayFigures:
    period = Period(day)
    row = await conn.fetchrow(schemas.qualify(_DAY_FIGURES_SQL), period.start, period.end)
    return DayFigures(
        row["outstanding"], row["charged"], row["cost"], row["purchased"], row["consumed"]
    )


async def alert_forwarded(conn: Any, alert_id: str) -> bool:
    found: bool | None = await conn.fetchval(
        "SELECT true FROM forwarded_alerts WHERE alert_id = $1", alert_id
    )
    return bool(found)


async def mark_alert_forwarded(conn: Any, alert_id: str, kind: str) -> None:
    await conn.execute(
        "INSERT INTO forwarded_alerts (alert_id, kind) VALUES ($1, $2)"
        " ON CONFLICT (alert_id) DO NOTHING",
        alert_id,
        kind,
    )
