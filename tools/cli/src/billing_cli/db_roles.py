"""The local stack's database roles: per service, one that owns its schema and runs its
migrations, and one its ``serve`` process connects as.

They are made idempotently by the cluster's superuser before any migration runs, on a new
cluster or on one whose schemas an earlier stack built as the superuser: everything in a
service's schema is handed to its owner, so the owner can migrate it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# asyncpg and billing_platform load on use only: every `billing` command builds a Stack.

# Every object in a schema that is not its owner's, as the ALTER that hands it over.
# Sequences that belong to a column and row types follow their table.
_HAND_OVER_SQL = """
WITH ns AS (SELECT oid FROM pg_namespace WHERE nspname = $1),
me AS (SELECT oid FROM pg_roles WHERE rolname = $2)
SELECT format('ALTER %s %s OWNER TO %I', CASE c.relkind WHEN 'v' THEN 'VIEW'
           WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'S' THEN 'SEQUENCE'
           WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, c.oid::regclass, $2)
FROM pg_class c
WHERE c.relnamespace = (SELECT oid FROM ns) AND c.relowner <> (SELECT oid FROM me)
  AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                  AND d.objid = c.oid AND d.deptype IN ('a', 'i'))
UNION ALL
SELECT format('ALTER %s %s OWNER TO %I', CASE p.prokind WHEN 'a' THEN 'AGGREGATE'
           WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, p.oid::regprocedure, $2)
FROM pg_proc p
WHERE p.pronamespace = (SELECT oid FROM ns) AND p.proowner <> (SELECT oid FROM me)
UNION ALL
SELECT format('ALTER %s %s OWNER TO %I', CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
           t.oid::regtype, $2)
FROM pg_type t
WHERE t.typnamespace = (SELECT oid FROM ns) AND t.typowner <> (SELECT oid FROM me)
  AND (t.typtype IN ('e', 'd', 'r')
       OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
"""


@dataclass(frozen=True)
class ServiceRoles:
    schema: str
    owner: str
    runtime: str

    @classmethod
    def for_package(cls, package: str) -> ServiceRoles:
        # Each service's schema is named after its package (a valid schema name).
        return cls(package, f"{package}_owner", f"{package}_runtime")


async def provision(
    admin_dsn: str, services: list[ServiceRoles], passwords: dict[str, str]
) -> None:
    """Create (or re-password) each role and give each schema, whole, to its owner."""
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        # Two launchers at once (`billing up` and `billing migrate`) take turns.
        await conn.execute("SELECT pg_advisory_lock(hashtext('billing_cli.db_roles'))")
        for svc in services:
            for role in (svc.owner, svc.runtime):
                await _ensure_login_role(conn, role, passwords[role])
            await _ensure_schema(conn, svc.schema, svc.owner)
    finally:
        await conn.close()


async def _ensure_login_role(conn: Any, role: str, password: str) -> None:
    from billing_platform.db import quote_ident

    exists = await conn.fetchval("SELECT true FROM pg_roles WHERE rolname = $1", role)
    literal = "'" + password.replace("'", "''") + "'"
    # Re-set on every run, so the keys file stays the truth and no attribute creeps in.
    await conn.execute(
        f"{'ALTER' if exists else 'CREATE'} ROLE {quote_ident(role)} WITH LOGIN NOSUPERUSER"
        f" NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {literal}"
    )


async def _ensure_schema(conn: Any, schema: str, owner: str) -> None:
    from billing_platform.db import check_schema_name, quote_ident

    check_schema_name(schema)
    async with conn.transaction():
        await conn.execute(
            f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)} AUTHORIZATION {quote_ident(owner)}"
        )
        await conn.execute(f"ALTER SCHEMA {quote_ident(schema)} OWNER TO {quote_ident(owner)}")
        for statement in await conn.fetch(_HAND_OVER_SQL, schema, owner):
            await conn.execute(statement[0])
