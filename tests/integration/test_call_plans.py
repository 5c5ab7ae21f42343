"""The plans of a charged call's statements that read a user's history, on the real
PostgreSQL.

- The look-back at the user's last calls (metering's migration 0009): PostgreSQL's plan
  cache planned the usage record's statement and the anomaly check's look-back again on
  every call, since their look-back size is a parameter and a plan made for its value
  looked cheaper than a reusable one. The two functions now always take the reusable
  (generic) plan; that is only a saving if it is still the index scan of the user's latest
  charged calls.
- The expiry of a user's due holds, which every hold does first (the ledger's migration
  0014): it read every user's holds past their expiry time, a range that grows with all
  the calls since the last vacuum; it now reads the user's own active holds by expiry.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from billing_platform.db import Database

GENERIC_FUNCTIONS = ("record_usage", "recent_charges")
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
    look_back = await _look_back_sql(db)
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.execute("ANALYZE usage_records")
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE look_back(text, integer) AS {look_back}")
        try:
            plan = "\n".join(
                row[0] for row in await conn.fetch("EXPLAIN EXECUTE look_back('busy', 20)")
            )
            counted = await conn.fetchrow("EXECUTE look_back('busy', 20)")
        finally:
            await conn.execute("DEALLOCATE look_back")
    assert "usage_records_user_charged" in plan, plan
    assert "Sort" not in plan, plan
    assert "Seq Scan" not in plan, plan
    assert tuple(counted) == (20, 20 * 7)


async def _look_back_sql(db: Database) -> str:
    """recent_charges' statement, its arguments as parameters ($1 user, $2 how many)."""
    source = await db.pool.fetchval(
        "SELECT prosrc FROM pg_proc WHERE proname = 'recent_charges'"
        " AND pronamespace = $1::regnamespace",
        db.schema,
    )
    found = re.search(r"RETURN QUERY (.*?);", source, re.S)
    assert found is not None, source
    return found.group(1).replace("p_user_id", "$1").replace("p_limit", "$2")


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


async def test_a_hold_expires_the_users_due_holds_by_the_users_own_index(
    migrated_db: Any,
) -> None:
    db: Database = await migrated_db(f"t_{uuid.uuid4().hex[:12]}", "ledger")
    await db.pool.execute(
        "INSERT INTO holds (id, user_id, amount_millicredits, idempotency_key, status,"
        " expires_at) SELECT gen_random_uuid(), 'user-' || u, 5, 'k-' || n,"
        " CASE WHEN n % 50 = 0 THEN 'active' ELSE 'captured' END,"
        " now() - make_interval(secs => n) FROM generate_series(1, 40) u,"
        " generate_series(1, 500) n"
    )
    expiry = await _expiry_sql(db)
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.execute("ANALYZE holds")
        await conn.execute(f"PREPARE expire_due(text) AS {expiry}")
        try:
            plan = "\n".join(
                row[0] for row in await conn.fetch("EXPLAIN EXECUTE expire_due('user-7')")
            )
        finally:
            await conn.execute("DEALLOCATE expire_due")
    assert "holds_user_expiring" in plan, plan


async def _expiry_sql(db: Database) -> str:
    """create_hold's expiry of the user's due holds, the user as $1."""
    source = await db.pool.fetchval(
        "SELECT prosrc FROM pg_proc WHERE proname = 'create_hold'"
        " AND pronamespace = $1::regnamespace",
        db.schema,
    )
    found = re.search(
        r"(UPDATE holds SET status = 'expired'.*?RETURNING amount_millicredits)", source, re.S
    )
    assert found is not None, source
    return found.group(1).replace("p_user_id", "$1")
