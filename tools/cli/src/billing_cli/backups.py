"""Backups and point-in-time recovery of the local stack's PostgreSQL, with pgBackRest.

The dev stack archives every WAL segment to a pgBackRest repository next to its data
directory (``.local/stack/postgres/pgbackrest``), so wiping the cluster wipes its backups
with it and a stale repository never blocks the next ``billing up``. ``billing backup``
takes a full or incremental backup; ``billing restore --to T`` stops the services,
restores the cluster to the moment T, promotes it and starts the services again. They
resume from the consumer positions the restored database holds, so Kafka replays every
record after T and the inboxes turn each into exactly one effect.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from billing_cli import installers
from billing_cli.components import Postgres
from billing_cli.layout import Layout
from billing_cli.procs import LaunchError, wait_until

STANZA = "billing"
BACKUP_TYPES = ("full", "diff", "incr")


@dataclass(frozen=True)
class BackupSet:
    label: str
    kind: str
    started: datetime
    stopped: datetime
    size_bytes: int

    @classmethod
    def of(cls, raw: dict[str, Any]) -> BackupSet:
        stamp = raw["timestamp"]
        return cls(
            raw["label"],
            raw["type"],
            datetime.fromtimestamp(stamp["start"], UTC),
            datetime.fromtimestamp(stamp["stop"], UTC),
            int(raw.get("info", {}).get("size", 0)),
        )


def parse_target(text: str) -> datetime:
    """An ISO 8601 moment; one without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise LaunchError(f"--to {text!r} is not an ISO 8601 time") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Backups:
    """pgBackRest for one layout's cluster: configuration, archiving, backup, restore."""

    def __init__(self, layout: Layout, postgres: Postgres) -> None:
        self.layout = layout
        self.postgres = postgres
        self.home = postgres.data.parent / "pgbackrest"
        self.config = self.home / "pgbackrest.conf"

    @property
    def enabled(self) -> bool:
        return self.layout.archives_wal

    @property
    def role(self) -> str:
        # pgBackRest logs in over the socket, where peer authentication maps the OS user
        # it runs as to a database role of the same name.
        return "postgres" if os.geteuid() == 0 else getpass.getuser()

    def archive_options(self) -> str:
        """postgres options that send every finished WAL segment to the repository."""
        push = f"pgbackrest --config={self.config} --stanza={STANZA} archive-push %p"
        # A quiet stack still closes a segment a minute, which bounds what a restore loses.
        return f" -c archive_mode=on -c archive_command='{push}' -c archive_timeout=60"

    def install(self) -> None:
        installers.ensure_pgbackrest()

    def configure(self) -> None:
        """Write the configuration (before postgres starts: its archive_command reads it)."""
        for part in ("repo", "log", "lock", "spool"):
            (self.home / part).mkdir(parents=True, exist_ok=True)
        self.config.write_text(self._config_text())
        if os.geteuid() == 0:
            for path in [self.home, *self.home.rglob("*")]:
                shutil.chown(path, "postgres", "postgres")

    def _config_text(self) -> str:
        return "\n".join(
            [
                "[global]",
                f"repo1-path={self.home / 'repo'}",
                "repo1-retention-full=2",
                f"log-path={self.home / 'log'}",
                f"lock-path={self.home / 'lock'}",
                f"spool-path={self.home / 'spool'}",
                "log-level-console=warn",
                "log-level-file=info",
                "start-fast=y",
                "compress-type=lz4",
                "",
                f"[{STANZA}]",
                f"pg1-path={self.postgres.data}",
                f"pg1-port={self.layout.postgres_port}",
                f"pg1-socket-path={self.postgres.data.parent}",
                f"pg1-user={self.role}",
                "",
            ]
        )

    def ensure_stanza(self) -> None:
        """The repository's stanza and the role pgBackRest logs in as (postgres is up)."""
        asyncio.run(self._ensure_role())
        self._run("stanza-create")

    async def _ensure_role(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.postgres.dsn)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", self.role)
            if not exists:
                await conn.execute(f'CREATE ROLE "{self.role}" LOGIN SUPERUSER')
        finally:
            await conn.close()

    def backup(self, kind: str | None = None) -> BackupSet:
        """A backup of the running cluster: full when none exists yet, else ``kind``."""
        if kind is not None and kind not in BACKUP_TYPES:
            raise LaunchError(f"backup type must be one of {', '.join(BACKUP_TYPES)}")
        self._require_running()
        self.ensure_stanza()
        chosen = kind or ("incr" if self.sets() else "full")
        self._run(f"--type={chosen}", "backup")
        return self.sets()[-1]

    def sets(self) -> list[BackupSet]:
        out = self._run("--output=json", "info").stdout
        stanzas: list[dict[str, Any]] = json.loads(out or "[]")
        return [BackupSet.of(raw) for s in stanzas for raw in s.get("backup", [])]

    def flush_wal(self) -> None:
        """Archive the current WAL segment, so a restore can reach every commit made so far."""
        self._require_running()
        self._run("check")

    def restore(self, target: datetime) -> None:
        """Replace the (stopped) cluster with its state at ``target``; promote on reaching it."""
        if self.postgres.running():
            raise LaunchError("stop postgres before a restore")
        stamp = target.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
        self._run(
            "--delta",
            "--type=time",
            f"--target={stamp}",
            "--target-action=promote",
            "restore",
        )

    def wait_promoted(self, timeout: float) -> None:
        async def primary() -> bool:
            import asyncpg

            try:
                conn = await asyncpg.connect(self.postgres.dsn, timeout=2)
            except (OSError, asyncpg.PostgresError):
                return False
            try:
                return not await conn.fetchval("SELECT pg_is_in_recovery()")
            finally:
                await conn.close()

        if not wait_until(lambda: asyncio.run(primary()), timeout, 0.2):
            raise LaunchError(f"postgres did not finish recovery: {self.postgres_log_tail()}")

    def postgres_log_tail(self) -> str:
        log = self.postgres.procs.log_file(self.postgres.name)
        return "\n".join(log.read_text(errors="replace").splitlines()[-15:])

    def _require_running(self) -> None:
        if not self.enabled:
            raise LaunchError(f"the {self.layout.name} stack does not archive WAL")
        if not self.postgres.running():
            raise LaunchError("postgres is not running: `billing up` first")

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["pgbackrest", f"--config={self.config}", f"--stanza={STANZA}", *args]
        owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run([*owner, *cmd], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            detail = (result.stdout + result.stderr).strip()[-1500:]
            raise LaunchError(f"pgbackrest {args[-1]} failed: {detail}")
        return result
