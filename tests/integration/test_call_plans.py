"""The plans of a charged call's statements that read a user's history, on the real
PostgreSQL.

- The look-back at the user's last calls (metering's migrations 0009, 0011): PostgreSQL's
  plan cache planned the usage record's statement and the anomaly check's look-back again
  on every call, since their look-back size is a parameter and a plan made for its value
  looked cheaper than a reusable one. The record's function and the admission, into whose
  statement the look-back (``recent_charges``, a SQL function) is inlined, now always take
  the reusable (generic) plan; that is only a saving if it is still the index scan of the
  user's latest charged calls.
- The expiry of a user's due holds, which every hold does first (the ledger's migrations
  0014 and 0016): it read every user's holds past their expiry time, a range that grows
  with all the calls since the last vacuum; it now reads the user's own active holds by
  expiry, also on a table whose statistics count no active hold (as between two vacuums).
- The check of a hot outbox's notify trigger (the ledger's migration 0018, metering's
  0013), which every charged call runs twice: it read the whole outbox table, whose rows are
  all deleted within a linger; it now reads the first entry of the index of waiting rows.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from billing_platform.db import Database

GENERIC_FUNCTIONS = ("record_usage", "admit_charged_call")
CALLS = 3_000


async def test_the_look_back_functions_always_take_a_generic_plan(migrated_db: Any) -> None:
    db: Database = await migrated_db(f"t_{uuid.uuid4().hex[:12]}", "metering")
    rows = await db.pool.fetch(
        "SELECT proname, proconfig FROM pg_proc"
        " WHERE proname = ANY($1::text[]) AND pronamespace = $2::regnamespace",
        list(GENERIC_FUNCTIONS),
        db.schema,
    )
    settings = {row["proname"]: row["proconfig"] or [] for row in rows}
    assert set(settings) == set(GENERIC_FUNCTIONS)
    for name, config in settings.items():
        assert "plan_cache_mode=force_generic_plan" in config, (name, config)


async def test_the_generic_look_back_reads_the_users_latest_calls_by_index(
    migrated_db: Any,
) -> None:
    db: Database = await migrated_db(f"t_{uuid.uuid4().hex[:12]}", "metering")
    await _calls(db, "busy", CALLS)
    await _calls(db, "other", CALLS // 3)
    look_back = "SELECT * FROM recent_charges($1, $2)"
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.execute("ANALYZE usage_records")
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        async with _prepared(conn, "text, integer", look_back):
            plan = await _plan(conn, "'busy', 20")
            counted = await conn.fetchrow("EXECUTE probe('busy', 20)")
    assert "usage_records_user_charged" in plan, plan
    assert "Function Scan" not in plan, plan  # inlined into the statement that calls it
    assert "Sort" not in plan, plan
    assert "Seq Scan" not in plan, plan
    assert tuple(counted) == (20, 20 * 7)


async def test_the_guard_state_is_read_inside_the_statement_that_calls_it(
    migrated_db: Any,
) -> None:
    db: Database = await migrated_db(f"t_{uuid.uuid4().hex[:12]}", "metering")
    async with db.pool.acquire() as conn, conn.transaction():
        statement = "SELECT * FROM guard_state($1, $2, $3, $4)"
        async with _prepared(conn, "text, timestamptz, timestamptz, timestamptz", statement):
            plan = await _plan(conn, "'busy', now(), now() - interval '1 hour', now()")
    assert "Function Scan" not in plan, plan
    assert "spend_days_pkey" in plan, plan


async def test_a_hold_expires_the_users_due_holds_by_the_users_own_index(
    migrated_db: Any,
) -> None:
    db: Database = await migrated_db(f"t_{uuid.uuid4().hex[:12]}", "ledger")
    # As a live table has them: every hold was made active and captured since, so the
    # indexes of active holds keep dead entries until a vacuum, and ANALYZE finds none active.
    await db.pool.execute(
        "INSERT INTO holds (id, user_id, amount_millicredits, idempotency_key, expires_at)"
        " SELECT gen_random_uuid(), 'user-' || u, 5, 'k-' || n,"
        " now() - make_interval(secs => n) FROM generate_series(1, 40) u,"
        " generate_series(1, 1500) n"
    )
    await db.pool.execute("UPDATE holds SET status = 'captured'")
    expiry = await _statement_of(
        db,
        "create_hold",
        r"(UPDATE holds SET status = 'expired'.*?RETURNING amount_millicredits)",
        {"p_user_id": "$1"},
    )
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.execute("ANALYZE holds")
        async with _prepared(conn, "text", expiry):
            plan = await _plan(conn, "'user-7'")
    assert "holds_user_expiring" in plan, plan


async def _statement_of(db: Database, function: str, pattern: str, params: dict[str, str]) -> str:
    """The statement of one of the schema's functions that ``pattern``'s first group finds in
    its source, with its arguments replaced by the parameters ``params`` maps them to."""
    source = await db.pool.fetchval(
        "SELECT prosrc FROM pg_proc WHERE proname = $1 AND pronamespace = $2::regnamespace",
        function,
        db.schema,
    )
    found = re.search(pattern, source, re.S)
    assert found is not None, source
    statement = found.group(1)
    for argument, param in params.items():
        statement = statement.replace(argument, param)
    return statement


@contextlib.asynccontextmanager
async def _prepared(conn: Any, types: str, statement: str) -> AsyncIterator[None]:
    """``statement`` prepared as ``probe`` on the connection, for as long as the block."""
    await conn.execute(f"PREPARE probe({types}) AS {statement}")
    try:
        yield
    finally:
        await conn.execute("DEALLOCATE probe")


async def _plan(conn: Any, arguments: str) -> str:
    return "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN EXECUTE probe({arguments})"))


async def _calls(db: Database, user: str, count: int) -> None:
    """``count`` charged calls of 7 millicredits, one a second until now, and as many
    unbilled ones (which the look-back must pass over)."""
    await db.pool.execute(
        "INSERT INTO usage_records (usage_id, user_id, model, input_tokens, output_tokens,"
        " charged_millicredits, cost_millicredits, rate_card_version, hold_id,"
        " idempotency_key, mode, response_body, priced_millicredits, created_at)"
        " SELECT gen_random_uuid(), $1, 'gpt-4o-mini', 25, 20,"
        " CASE WHEN n % 2 = 0 THEN 7 ELSE 0 END, 3, 'v', 'h', $1 || '-' || n,"
        " CASE WHEN n % 2 = 0 THEN 'charged' ELSE 'unbilled' END, '{}', 7,"
        " now() - make_interval(secs => n) FROM generate_series(1, $2 * 2) n",
        user,
        count,
    )


async def test_the_quiet_notify_reads_the_oldest_waiting_row_by_index(migrated_db: Any) -> None:
    db: Database = await migrated_db(f"t_{uuid.uuid4().hex[:12]}", "ledger")
    # As under load between two vacuums: the statistics taken while rows were waiting, every
    # row published (moved out) since. The check of 0012 read the table's pages then.
    await db.pool.execute("ALTER TABLE outbox SET (autovacuum_enabled = false)")
    await db.pool.execute(
        "INSERT INTO outbox (topic, message_key, payload, headers)"
        " SELECT 'billing.ledger.v1', 'u', repeat('x', 200)::bytea, '{}'"
        " FROM generate_series(1, 2000)"
    )
    await db.pool.execute("ANALYZE outbox")
    await db.pool.execute("DELETE FROM outbox")
    check = await _statement_of(
        db,
        "outbox_notify",
        r"IF coalesce\((.*?), true\) THEN",
        {"(SELECT min(id) FROM new_rows)": "$1"},
    )
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        async with _prepared(conn, "bigint", f"SELECT {check}"):
            plan = await _plan(conn, "9000")
    assert "outbox_unpublished" in plan, plan
    assert "Seq Scan" not in plan, plan
