"""Least privilege in the database: the stack's services connect as runtime roles that can
change rows, never structure, and read other services' data only through what is meant
for them.

Each check runs as the role itself, inside a transaction that is rolled back. Statements
are written to touch no row (``WHERE false``): a refusal can then only come from the
privilege check, never from the append-only triggers, which would raise another error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import asyncpg
import pytest
from billing_cli.stack import Stack
from billing_platform.db import MigrationError, SchemaAccess, migrate_package

SCHEMAS = ("checkout", "webhook_ingest", "ledger", "metering", "reconciler")

# (schema, table, one of the triggers that keep it append-only)
APPEND_ONLY = [
    ("ledger", "journal_transactions", "journal_transactions_append_only"),
    ("ledger", "journal_entries", "journal_entries_append_only"),
    ("ledger", "audit_log", "audit_log_append_only"),
    ("checkout", "feature_switch_changes", "feature_switch_changes_no_update_delete"),
    ("metering", "guardrail_changes", "guardrail_changes_no_update_delete"),
]

# What the reconciler's checks read in the other services' schemas.
RECONCILED = [
    "ledger.journal_transactions",
    "ledger.journal_entries",
    "ledger.balances",
    "ledger.inbox",
    "ledger.purchase_grants",
    "metering.usage_records",
    "webhook_ingest.stripe_events",
    "checkout.purchase_terms",
]

Connect = Callable[[str], AbstractAsyncContextManager[asyncpg.Connection]]


@pytest.fixture
def as_role(stack: Stack) -> Connect:
    """``async with as_role("ledger_runtime") as conn``: a connection as that role, in a
    transaction that is rolled back whatever happened."""

    @asynccontextmanager
    async def connect(role: str) -> AsyncIterator[asyncpg.Connection]:
        dsn = stack.postgres.role_dsn(role, stack.db_passwords[role])
        conn = await asyncpg.connect(dsn)
        tx = conn.transaction()
        await tx.start()
        try:
            yield conn
        finally:
            await tx.rollback()
            await conn.close()

    return connect


async def refused(as_role: Connect, role: str, statement: str) -> str:
    """The message of the privilege error ``statement`` gets when ``role`` runs it."""
    async with as_role(role) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as caught:
            await conn.execute(statement)
    return str(caught.value)


@pytest.mark.parametrize(("schema", "table", "trigger"), APPEND_ONLY)
async def test_runtime_role_cannot_change_empty_or_unguard_an_append_only_table(
    as_role: Connect, schema: str, table: str, trigger: str
) -> None:
    role, qualified = f"{schema}_runtime", f"{schema}.{table}"
    async with as_role(role) as conn:  # what it needs: read and append
        await conn.fetchval(f"SELECT count(*) FROM {qualified}")
        assert await conn.fetchval("SELECT has_table_privilege($1, 'INSERT')", qualified)

    denied = f"permission denied for table {table}"
    update = f"UPDATE {qualified} SET id = id WHERE false"
    assert denied in await refused(as_role, role, update)
    assert denied in await refused(as_role, role, f"DELETE FROM {qualified} WHERE false")
    assert denied in await refused(as_role, role, f"TRUNCATE {qualified}")
    disable = f"ALTER TABLE {qualified} DISABLE TRIGGER {trigger}"
    assert f"must be owner of table {table}" in await refused(as_role, role, disable)
    bypass = "SET session_replication_role = replica"  # the other way to skip triggers
    assert "session_replication_role" in await refused(as_role, role, bypass)


@pytest.mark.parametrize("schema", SCHEMAS)
async def test_runtime_role_changes_rows_never_structure(as_role: Connect, schema: str) -> None:
    role = f"{schema}_runtime"
    async with as_role(role) as conn:
        # Pick any plain table of its own it may write to, to show the runtime rights work.
        table = await conn.fetchval(
            "SELECT table_name FROM information_schema.table_privileges WHERE grantee = $1"
            " AND table_schema = $2 AND privilege_type = 'DELETE' ORDER BY 1 LIMIT 1",
            role,
            schema,
        )
        assert table is not None, f"{role} may delete from no table of {schema}"
        await conn.execute(f"DELETE FROM {schema}.{table} WHERE false")

    owner_only = f"must be owner of table {table}"
    alter = f"ALTER TABLE {schema}.{table} ADD COLUMN intruder int"
    assert owner_only in await refused(as_role, role, alter)
    assert owner_only in await refused(as_role, role, f"DROP TABLE {schema}.{table}")
    create = f"CREATE TABLE {schema}.intruder (id int)"
    assert f"permission denied for schema {schema}" in await refused(as_role, role, create)
    truncate = f"TRUNCATE {schema}.{table}"
    assert f"permission denied for table {table}" in await refused(as_role, role, truncate)


@pytest.mark.parametrize(
    ("role", "allowed", "denied"),
    [
        (
            "ledger_runtime",
            "checkout.purchase_terms",
            ["checkout.purchases", "checkout.feature_flags", "metering.usage_records"],
        ),
        (
            "metering_runtime",
            "checkout.feature_flags",
            ["checkout.feature_switches", "checkout.purchase_terms", "ledger.balances"],
        ),
        ("checkout_runtime", None, ["ledger.balances", "webhook_ingest.stripe_events"]),
        ("webhook_ingest_runtime", None, ["ledger.journal_entries", "checkout.purchase_terms"]),
    ],
)
async def test_runtime_role_reads_other_schemas_only_through_its_views(
    as_role: Connect, role: str, allowed: str | None, denied: list[str]
) -> None:
    if allowed is not None:
        async with as_role(role) as conn:
            await conn.fetchval(f"SELECT count(*) FROM {allowed}")
    for relation in denied:
        message = await refused(as_role, role, f"SELECT count(*) FROM {relation}")
        schema, name = relation.split(".")
        assert f"permission denied for schema {schema}" in message or name in message


async def test_reconciler_reads_what_it_checks_and_writes_only_its_own_schema(
    as_role: Connect,
) -> None:
    role = "reconciler_runtime"
    async with as_role(role) as conn:
        for relation in RECONCILED:
            await conn.fetchval(f"SELECT count(*) FROM {relation}")
        await conn.execute(
            "INSERT INTO reconciler.forwarded_alerts (alert_id, kind)"
            " VALUES ('test-db-roles', 'test')"
        )
    for relation in RECONCILED:
        name = relation.split(".")[1]
        for write in (
            f"INSERT INTO {relation} SELECT * FROM {relation} WHERE false",
            f"DELETE FROM {relation} WHERE false",
        ):
            assert f"permission denied for {'view' if 'terms' in name else 'table'} {name}" in (
                await refused(as_role, role, write)
            )
    create = "CREATE TABLE ledger.intruder (id int)"
    assert "permission denied for schema ledger" in await refused(as_role, role, create)


async def test_every_table_a_trigger_guards_is_closed_to_its_runtime_role(stack: Stack) -> None:
    """A table the migrations guard with a BEFORE UPDATE/DELETE/TRUNCATE trigger gets no such
    right: a new append-only table left out of its service's declaration fails here."""
    conn = await asyncpg.connect(stack.postgres.dsn)
    try:
        rows = await conn.fetch(
            "SELECT n.nspname AS schema, c.relname AS table, op, has_table_privilege("
            " n.nspname || '_runtime', c.oid, op) AS granted"
            " FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " CROSS JOIN (VALUES (8, 'DELETE'), (16, 'UPDATE'), (32, 'TRUNCATE')) AS x(bit, op)"
            " WHERE n.nspname = ANY($1::text[]) AND NOT t.tgisinternal"
            " AND t.tgtype & 2 = 2 AND t.tgtype & x.bit = x.bit",
            list(SCHEMAS),
        )
    finally:
        await conn.close()
    guarded = {(r["schema"], r["table"]) for r in rows}
    assert {(s, t) for s, t, _ in APPEND_ONLY} <= guarded
    assert [dict(r) for r in rows if r["granted"]] == []


async def test_the_stack_runs_each_service_as_its_runtime_role_on_a_schema_its_owner_owns(
    stack: Stack,
) -> None:
    conn = await asyncpg.connect(stack.postgres.dsn)
    try:
        sessions = await conn.fetch(
            "SELECT DISTINCT application_name AS schema, usename FROM pg_stat_activity"
            " WHERE application_name = ANY($1::text[])",
            list(SCHEMAS),
        )
        owners = await conn.fetch(
            "SELECT n.nspname AS schema, pg_get_userbyid(c.relowner) AS owner, count(*) AS n"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = ANY($1::text[]) GROUP BY 1, 2",
            list(SCHEMAS),
        )
    finally:
        await conn.close()
    assert sorted((r["schema"], r["usename"]) for r in sessions) == [
        (s, f"{s}_runtime") for s in sorted(SCHEMAS)
    ]
    assert sorted((r["schema"], r["owner"]) for r in owners) == [
        (s, f"{s}_owner") for s in sorted(SCHEMAS)
    ]


async def test_a_declared_relation_that_does_not_exist_fails_the_migration(
    stack: Stack, schema: str
) -> None:
    access = SchemaAccess(append_only=("journal_entries", "no_such_table"))
    with pytest.raises(MigrationError, match="no_such_table"):
        await migrate_package(stack.postgres.dsn, schema, "ledger", access)


async def test_metering_calls_the_ledgers_hold_functions_through_its_bound_search_path(
    stack: Stack, as_role: Connect
) -> None:
    """``metering migrate`` put the ledger's schema after metering's own on the search_path
    of the two functions that call the ledger's by name; every other function keeps its
    own schema only."""
    conn = await asyncpg.connect(stack.postgres.dsn)
    try:
        paths = dict(
            await conn.fetch(
                "SELECT p.proname, array_to_string(p.proconfig, ',') FROM pg_proc p"
                " JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = 'metering' AND p.proconfig IS NOT NULL"
            )
        )
    finally:
        await conn.close()
    # The admission's reusable plans: metering's migrations 0011 and 0012.
    admit = "search_path=metering, ledger,plan_cache_mode=force_generic_plan"
    assert paths["admit_charged_call"] == admit
    assert paths["settle_charged_call"] == "search_path=metering, ledger"
    assert paths["claim_usage"] == "search_path=metering"
    async with as_role("metering_runtime") as runtime:
        # A hold the ledger refuses for want of credit: its answer came through the call.
        row = await runtime.fetchrow(
            "SELECT * FROM metering.admit_charged_call('nobody-db-roles', gen_random_uuid(),"
            " NULL, 'k', false, 'h', 60, 1000, now(), now(), now(), 1000000, 1000000, 1000000,"
            " now(), 1, 'rk', now(), now(), 100, 1000, 60000, 60, 20)"
        )
    assert (row["r_outcome"], row["r_balance"]) == ("insufficient", 0)


async def test_a_bound_function_that_does_not_exist_fails_the_migration(
    stack: Stack, schema: str
) -> None:
    access = SchemaAccess(search_paths={"no_such_function(text)": ("ledger",)})
    with pytest.raises(MigrationError, match="no_such_function"):
        await migrate_package(stack.postgres.dsn, schema, "ledger", access)
