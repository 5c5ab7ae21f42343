"""asyncpg pool bound to one service schema, and the versioned migration runner.

Migrations are ``NNNN_name.sql`` files shipped inside each service package. They are
applied in order, each in its own transaction, under an advisory lock so two migration
jobs (e.g. a Helm Job racing a local run) cannot interleave. A changed file that was
already applied is refused rather than silently diverging.

After the migrations, the same lock held, the schema's grants are re-derived from the
catalog and the service's ``SchemaAccess`` (role names come from settings, because they
differ per deployment; migration SQL names none).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

import asyncpg

from billing_platform.settings import ServiceSettings

log = logging.getLogger(__name__)

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class SchemaAccess:
    """Who may do what in one service's schema, besides the role that owns it.

    The runtime role gets rows, never structure: SELECT, INSERT, UPDATE, DELETE on tables
    (less where declared below), SELECT on views, USAGE on sequences. It owns nothing, so it
    cannot ALTER, DROP or disable a trigger, and it gets no TRUNCATE, REFERENCES or TRIGGER.
    """

    runtime_role: str = ""
    # Rows are only ever added (the migrations' triggers refuse the rest): SELECT, INSERT.
    append_only: tuple[str, ...] = ()
    # Rows change but are never removed: no DELETE.
    keep_rows: tuple[str, ...] = ()
    # Relation -> other services' roles that may SELECT it (their only right here).
    readers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Function signature, e.g. "create_hold(text, bigint)" -> other services' roles that may
    # EXECUTE it (the runtime role may too; nobody else, PUBLIC included).
    executors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Function signature -> other services' schemas whose functions it calls by name: its
    # search_path becomes this schema, then those. Schemas are settings of a deployment, so
    # they are bound here, at migrate time; a static call keeps its plan for the session,
    # where a call built with EXECUTE is parsed and planned every time.
    search_paths: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_schema_name(schema: str) -> str:
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"invalid schema name: {schema!r}")
    return schema


async def create_pool(dsn: str, schema: str, min_size: int = 2, max_size: int = 10) -> Any:
    check_schema_name(schema)
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": schema, "application_name": schema},
        command_timeout=30,
        reset=keep_session,
        # asyncpg closes a connection idle for 5 minutes by default. Its next use then pays
        # for a new backend and for planning every statement again (about 22 ms on an idle
        # machine, several times that under load), and a burst of traffic pays it on
        # several connections at once: one such burst stalled the gateway for 129-230 ms.
        max_inactive_connection_lifetime=0,
    )


async def keep_session(conn: Any) -> None:
    """What a pooled connection needs on release beyond asyncpg's own rollback: nothing.

    asyncpg's default sends ``RESET ALL; UNLISTEN *; pg_advisory_unlock_all(); CLOSE ALL``,
    one round trip per release, several per request. No pooled connection here keeps session
    state: settings are ``SET LOCAL``, advisory locks are transaction-scoped or released in a
    ``finally`` that terminates the connection when it cannot (``session_lock``), LISTEN runs
    on connections of its own, and cursors live inside transactions. asyncpg still rolls
    back a transaction left open.
    """


@asynccontextmanager
async def session_lock(conn: Any, key: int, wait_s: float | None = None) -> AsyncIterator[None]:
    """A session advisory lock held for the block on a pooled connection.

    The pool does not reset connections (``keep_session``): if the unlock fails, the
    connection is closed, which is what releases the lock then."""
    await conn.execute("SELECT pg_advisory_lock($1)", key, timeout=wait_s)
    try:
        yield
    finally:
        try:
            await conn.execute("SELECT pg_advisory_unlock($1)", key)
        except BaseException:
            conn.terminate()
            raise


def load_migrations(package: str) -> list[Migration]:
    """Migrations from ``<package>/migrations/*.sql``, ordered, with unique versions."""
    folder = resources.files(package).joinpath("migrations")
    found: dict[int, Migration] = {}
    if not folder.is_dir():
        return []  # a service without tables yet still gets its schema and bookkeeping
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.fullmatch(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{package}: two migrations with version {version}")
        found[version] = Migration(version, entry.name, entry.read_text())
    return [found[v] for v in sorted(found)]


async def migrate(
    conn: Any, schema: str, migrations: list[Migration], access: SchemaAccess | None = None
) -> list[str]:
    """Apply pending migrations to ``schema``, then its grants; returns the names applied."""
    check_schema_name(schema)
    lock_key = int(hashlib.sha256(schema.encode()).hexdigest()[:15], 16)
    await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
    try:
        await _ensure_bookkeeping(conn, schema)
        applied = await _apply_pending(conn, schema, migrations)
        if access is not None:
            await grant_access(conn, schema, access)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)


async def _ensure_bookkeeping(conn: Any, schema: str) -> None:
    # CREATE SCHEMA checks the database's CREATE right even with IF NOT EXISTS; the role that
    # owns an existing schema need not have it, so only a missing schema is created.
    if not await conn.fetchval("SELECT true FROM pg_namespace WHERE nspname = $1", schema):
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await conn.execute(
        f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
        " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    # Kafka consumer positions, committed with the effects they cover (billing_events.offsets).
    await conn.execute(
        f'CREATE TABLE IF NOT EXISTS "{schema}".consumer_offsets ('
        " group_id text NOT NULL, topic text NOT NULL, partition integer NOT NULL,"
        " next_offset bigint NOT NULL CHECK (next_offset >= 0),"
        " updated_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (group_id, topic, partition))"
    )


async def _apply_pending(conn: Any, schema: str, migrations: list[Migration]) -> list[str]:
    rows = await conn.fetch(f'SELECT version, checksum FROM "{schema}".schema_migrations')
    applied = {r["version"]: r["checksum"] for r in rows}
    done: list[str] = []
    for m in migrations:
        if m.version in applied:
            if applied[m.version] != m.checksum:
                raise MigrationError(f"{schema}: applied migration {m.name} was modified")
            continue
        async with conn.transaction():
            await conn.execute(f'SET LOCAL search_path TO "{schema}"')
            await conn.execute(m.sql)
            await conn.execute(
                f'INSERT INTO "{schema}".schema_migrations (version, name, checksum)'
                " VALUES ($1, $2, $3)",
                m.version,
                m.name,
                m.checksum,
            )
        log.info("migration applied", extra={"schema": schema, "migration": m.name})
        done.append(m.name)
    return done


async def grant_access(conn: Any, schema: str, access: SchemaAccess) -> None:
    """Re-derive the schema's grants from the catalog, in one transaction and idempotently:
    a relation re-created or newly declared append-only ends up exactly as declared."""
    relations = await _relations(conn, schema)
    declared = {*access.append_only, *access.keep_rows, *access.readers}
    if missing := sorted(declared - relations.keys()):
        raise MigrationError(f"{schema}: declared relations do not exist: {missing}")
    for signature in {*access.executors, *access.search_paths}:
        target = f"{quote_ident(schema)}.{signature}"
        if not await conn.fetchval("SELECT to_regprocedure($1) IS NOT NULL", target):
            raise MigrationError(f"{schema}: declared function does not exist: {signature}")
    me = await conn.fetchval("SELECT current_user")  # the owner: it has every right already
    statements = _reader_grants(schema, access, me) + _executor_grants(schema, access, me)
    statements += _search_paths(schema, access)
    if access.runtime_role and access.runtime_role != me:
        statements = _runtime_grants(schema, relations, access) + statements
    if statements:
        async with conn.transaction():
            await conn.execute(";\n".join(statements))


async def _relations(conn: Any, schema: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT c.relname, c.relkind::text FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S')",
        schema,
    )
    return {r["relname"]: r["relkind"] for r in rows}


def _reader_grants(schema: str, access: SchemaAccess, me: str) -> list[str]:
    statements: list[str] = []
    for relation, roles in sorted(access.readers.items()):
        for role in sorted({quote_ident(r) for r in roles if r and r != me}):
            statements.append(f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {role}")
            target = f"{quote_ident(schema)}.{quote_ident(relation)}"
            statements.append(f"GRANT SELECT ON {target} TO {role}")
    return statements


def _executor_grants(schema: str, access: SchemaAccess, me: str) -> list[str]:
    statements: list[str] = []
    for signature, roles in sorted(access.executors.items()):
        target = f"FUNCTION {quote_ident(schema)}.{signature}"
        statements.append(f"REVOKE ALL ON {target} FROM PUBLIC")
        for role in sorted(
            {quote_ident(r) for r in (access.runtime_role, *roles) if r and r != me}
        ):
            statements.append(f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {role}")
            statements.append(f"GRANT EXECUTE ON {target} TO {role}")
    return statements


def _search_paths(schema: str, access: SchemaAccess) -> list[str]:
    statements: list[str] = []
    for signature, others in sorted(access.search_paths.items()):
        path = ", ".join(quote_ident(check_schema_name(s)) for s in (schema, *others))
        target = f"FUNCTION {quote_ident(schema)}.{signature}"
        statements.append(f"ALTER {target} SET search_path = {path}")
    return statements


def _runtime_grants(schema: str, relations: dict[str, str], access: SchemaAccess) -> list[str]:
    role = quote_ident(access.runtime_role)
    statements = [f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {role}"]
    for name, kind in sorted(relations.items()):
        target = (
            f"{'SEQUENCE' if kind == 'S' else 'TABLE'} {quote_ident(schema)}.{quote_ident(name)}"
        )
        # Revoked first, so a right the declaration no longer allows is taken back.
        statements.append(f"REVOKE ALL ON {target} FROM {role}")
        statements.append(f"GRANT {_runtime_privileges(name, kind, access)} ON {target} TO {role}")
    return statements


def _runtime_privileges(name: str, kind: str, access: SchemaAccess) -> str:
    if kind == "S":
        return "USAGE, SELECT"
    if kind in ("v", "m") or name == "schema_migrations":
        return "SELECT"
    if name in access.append_only:
        return "SELECT, INSERT"
    if name in access.keep_rows:
        return "SELECT, INSERT, UPDATE"
    return "SELECT, INSERT, UPDATE, DELETE"


async def migrate_package(
    dsn: str, schema: str, package: str, access: SchemaAccess | None = None
) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn, schema, load_migrations(package), access)
    finally:
        await conn.close()


class HasPool(Protocol):
    """Anything that lends connections: a ``Database``, or a test's stand-in."""

    @property
    def pool(self) -> Any: ...


class Database:
    """The service's pool as a lifecycle part, with a readiness ping."""

    def __init__(self, dsn: str, schema: str, min_size: int = 2, max_size: int = 10) -> None:
        self._dsn = dsn
        self.schema = check_schema_name(schema)
        self._sizes = (min(min_size, max_size), max_size)
        self._pool: Any = None

    @classmethod
    def for_service(cls, settings: ServiceSettings) -> Database:
        return cls(
            settings.runtime_dsn,
            settings.db_schema,
            settings.db_pool_min,
            settings.db_pool_max,
        )

    @property
    def dsn(self) -> str:
        return self._dsn

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("database pool not started")
        return self._pool

    async def start(self) -> None:
        self._pool = await create_pool(self._dsn, self.schema, *self._sizes)

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ping(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
