"""asyncpg pool bound to one service schema, and the versioned migration runner.

Migrations are ``NNNN_name.sql`` files shipped inside each service package. They are
applied in order, each in its own transaction, under an advisory lock so two migration
jobs (e.g. a Helm Job racing a local run) cannot interleave. A changed file that was
already applied is refused rather than silently diverging.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

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
    )


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


async def migrate(conn: Any, schema: str, migrations: list[Migration]) -> list[str]:
    """Apply pending migrations to ``schema``; returns the names applied."""
    check_schema_name(schema)
    lock_key = int(hashlib.sha256(schema.encode()).hexdigest()[:15], 16)
    await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
    try:
        await _ensure_bookkeeping(conn, schema)
        return await _apply_pending(conn, schema, migrations)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)


async def _ensure_bookkeeping(conn: Any, schema: str) -> None:
    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    await conn.execute(
        f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
        " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
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


async def migrate_package(dsn: str, schema: str, package: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn, schema, load_migrations(package))
    finally:
        await conn.close()


class Database:
    """The service's pool as a lifecycle part, with a readiness ping."""

    def __init__(self, dsn: str, schema: str, min_size: int = 2, max_size: int = 10) -> None:
        self._dsn = dsn
        self.schema = check_schema_name(schema)
        self._sizes = (min_size, max_size)
        self._pool: Any = None

    @classmethod
    def for_service(cls, settings: ServiceSettings) -> Database:
        return cls(
            settings.infra.database_url,
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
