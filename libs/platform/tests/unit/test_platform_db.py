"""The database helpers that need no server: migration loading and schema names."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
from billing_platform.db import (
    Database,
    Migration,
    MigrationError,
    check_schema_name,
    load_migrations,
    session_lock,
)

_packages = itertools.count()


def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str]) -> str:
    """A fresh importable package with ``migrations/<files>``; returns its name."""
    name = f"migpkg_{next(_packages)}"
    folder = tmp_path / name / "migrations"
    folder.mkdir(parents=True)
    (tmp_path / name / "__init__.py").write_text("")
    for filename, sql in files.items():
        (folder / filename).write_text(sql)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_migrations_load_in_version_order_with_checksums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = _package(
        tmp_path,
        monkeypatch,
        {
            "0002_b.sql": "CREATE TABLE b ();",
            "0001_a.sql": "CREATE TABLE a ();",
            "0010_later_one.sql": "CREATE TABLE c ();",
            "README.md": "not a migration",
            "3_short.sql": "SELECT 1;",
            "0003_Upper.sql": "SELECT 1;",
        },
    )

    migrations = load_migrations(package)

    assert [(m.version, m.name) for m in migrations] == [
        (1, "0001_a.sql"),
        (2, "0002_b.sql"),
        (10, "0010_later_one.sql"),
    ]
    assert migrations[0].sql == "CREATE TABLE a ();"
    assert migrations[0].checksum == hashlib.sha256(b"CREATE TABLE a ();").hexdigest()


def test_checksum_changes_when_the_sql_changes() -> None:
    assert Migration(1, "0001_a.sql", "x").checksum != Migration(1, "0001_a.sql", "y").checksum


def test_duplicate_versions_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = _package(
        tmp_path, monkeypatch, {"0001_a.sql": "SELECT 1;", "0001_again.sql": "SELECT 2;"}
    )

    with pytest.raises(MigrationError, match="version 1"):
        load_migrations(package)


def test_package_without_migrations_folder_has_no_migrations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "nomig_pkg").mkdir()
    (tmp_path / "nomig_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))

    # git does not keep empty folders: a service without tables yet must still migrate.
    assert load_migrations("nomig_pkg") == []


def test_ledger_package_ships_its_migrations() -> None:
    migrations = load_migrations("ledger")

    assert len(migrations) >= 1
    assert migrations[0].version == 1
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    assert all(m.sql.strip() for m in migrations)


@pytest.mark.parametrize("name", ["ledger", "public", "_x", "webhook_ingest", "a" * 63])
def test_valid_schema_names_are_accepted(name: str) -> None:
    assert check_schema_name(name) == name


@pytest.mark.parametrize(
    "name", ["bad-name", 'x"; drop', "Ledger", "", "1ledger", "a" * 64, "led ger"]
)
def test_invalid_schema_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        check_schema_name(name)


def test_schema_name_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        check_schema_name("ledger\n")


def test_database_refuses_a_bad_schema_before_connecting() -> None:
    with pytest.raises(ValueError, match="invalid schema name"):
        Database("postgresql://nowhere/db", 'x"; drop')


def test_database_pool_is_unavailable_before_start() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = Database("postgresql://nowhere/db", "ledger").pool


def test_schema_access_of_each_service_names_its_append_only_tables() -> None:
    from checkout.db_access import schema_access as checkout_access
    from checkout.settings import Settings as CheckoutSettings
    from ledger.db_access import schema_access as ledger_access
    from ledger.settings import Settings as LedgerSettings

    ledger = ledger_access(LedgerSettings(db_runtime_role="l_rt", db_reconciler_role="rec"))
    checkout = checkout_access(
        CheckoutSettings(db_ledger_role="l_rt", db_metering_role="m_rt", db_reconciler_role="rec")
    )

    assert ledger.runtime_role == "l_rt"
    assert set(ledger.append_only) == {"journal_transactions", "journal_entries", "audit_log"}
    assert ledger.readers["journal_entries"] == ("rec",)
    assert checkout.append_only == ("feature_switch_changes",)
    assert dict(checkout.readers) == {
        "purchase_terms": ("l_rt", "rec"),
        "feature_flags": ("m_rt",),
    }


class _LockConn:
    """Records statements; the unlock fails as on a connection that just broke."""

    def __init__(self, unlock_fails: bool) -> None:
        self.statements: list[str] = []
        self.terminated = False
        self._unlock_fails = unlock_fails

    async def execute(self, query: str, *args: object, timeout: float | None = None) -> None:
        self.statements.append(query)
        if self._unlock_fails and "unlock" in query:
            raise ConnectionError("connection lost")

    def terminate(self) -> None:
        self.terminated = True


async def test_a_session_lock_is_released_after_its_block() -> None:
    conn = _LockConn(unlock_fails=False)
    async with session_lock(conn, 42):
        assert conn.statements == ["SELECT pg_advisory_lock($1)"]
    assert conn.statements[-1] == "SELECT pg_advisory_unlock($1)"
    assert not conn.terminated


async def test_a_lock_that_cannot_be_released_closes_its_connection() -> None:
    # Pooled connections are not reset on release: a kept lock would outlive the block.
    conn = _LockConn(unlock_fails=True)
    with pytest.raises(ConnectionError):
        async with session_lock(conn, 42):
            pass
    assert conn.terminated
