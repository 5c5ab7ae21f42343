"""The whole local platform: infrastructure first, then migrations, then the services."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from billing_cli import keys
from billing_cli.backups import Backups
from billing_cli.components import (
    Component,
    DevLLM,
    Kafka,
    Postgres,
    Prometheus,
    Service,
    StripeMock,
    Web,
)
from billing_cli.db_roles import ServiceRoles
from billing_cli.layout import SERVICES, Layout
from billing_cli.procs import LaunchError, ProcessManager

Reporter = Callable[[str, float], None]


def _quiet(_: str, __: float) -> None:
    return None


class Stack:
    def __init__(
        self,
        layout: Layout,
        topic_namespace: str = "",
        service_env: dict[str, str] | None = None,
    ) -> None:
        self.layout = layout
        self.topic_namespace = topic_namespace
        self.procs = ProcessManager(layout.run, layout.logs)
        self.secrets = keys.ensure_secrets(layout)
        _, self.public_key = keys.ensure_keys(layout)
        self.postgres = Postgres(layout, self.procs, self.secrets["postgres_password"])
        self.backups = Backups(layout, self.postgres)
        if self.backups.enabled:
            self.postgres.archive_options = self.backups.archive_options()
        self.db_roles = {pkg: ServiceRoles.for_package(pkg) for pkg, _ in SERVICES.values()}
        names = [role for r in self.db_roles.values() for role in (r.owner, r.runtime)]
        self.db_passwords = keys.ensure_db_passwords(layout, names)
        self.kafka = Kafka(layout, self.procs)
        self.stripe_mock = StripeMock(layout, self.procs)
        self.devllm = DevLLM(layout, self.procs)
        # Settings for the services only (e.g. test-suite limits); not part of `billing env`.
        env = {**self.env(), **self.role_env(), **(service_env or {})}
        self.services = {
            name: Service(layout, self.procs, name, pkg, env) for name, (pkg, _) in SERVICES.items()
        }
        ports = {name: svc.port for name, svc in self.services.items()}
        self.prometheus = Prometheus(layout, self.procs, ports)
        self.web = Web(layout, self.procs, {name: s.url for name, s in self.services.items()})

    @property
    def infrastructure(self) -> list[Component]:
        return [self.postgres, self.kafka, self.stripe_mock, self.devllm]

    @property
    def components(self) -> list[Component]:
        return [*self.infrastructure, *self.services.values(), self.web]

    def env(self) -> dict[str, str]:
        """The dev settings every service reads (``billing env`` prints them, and
        ``role_env``). Alone, they connect as the cluster's superuser: what ad-hoc processes
        on schemas of their own (the integration tests') use."""
        web = self.layout.web_port
        values = {
            "BILLING_DATABASE_URL": self.postgres.dsn,
            "BILLING_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "BILLING_TOPIC_NAMESPACE": self.topic_namespace,
            "BILLING_JWT_PUBLIC_KEYS": str(self.public_key),
            "BILLING_JWT_ISSUER": keys.ISSUER,
            "BILLING_JWT_AUDIENCE": keys.AUDIENCE,
            "BILLING_ENVIRONMENT": "test" if self.layout.port_offset else "dev",
            "BILLING_STRIPE_API_KEY": self.secrets["stripe_api_key"],
            "BILLING_STRIPE_API_BASE": self.stripe_mock.url,
            "BILLING_STRIPE_WEBHOOK_SECRETS": self.secrets["stripe_webhook_secret"],
            "BILLING_OPENAI_BASE_URL": self.devllm.url,
            "BILLING_OPENAI_API_KEY": self.secrets["openai_api_key"],
            # The local web app (the Credits page) is the one origin browsers may call from,
            # and where Stripe Checkout sends the buyer back to.
            "BILLING_CORS_ALLOWED_ORIGINS": f"http://localhost:{web},http://127.0.0.1:{web}",
            "CHECKOUT_PUBLIC_BASE_URL": f"http://127.0.0.1:{web}",
            # metering reserves and captures credits through the ledger's internal API.
            "METERING_LEDGER_URL": f"http://127.0.0.1:{self.layout.service_port('ledger')}",
            "METERING_LEDGER_TOKEN": keys.mint_token(
                self.layout, "metering", ["service"], ttl_s=30 * 24 * 3600
            ),
        }
        return {k: v for k, v in values.items() if v != ""}

    def role_env(self) -> dict[str, str]:
        """Each service's own DSNs (``serve``: its runtime role; ``migrate``: its schema's
        owner) and the other services' roles its ``migrate`` lets read what they need."""
        values: dict[str, str] = {}
        dsn = {role: self.postgres.role_dsn(role, pw) for role, pw in self.db_passwords.items()}
        for pkg, roles in self.db_roles.items():
            values[f"{pkg.upper()}_DATABASE_URL"] = dsn[roles.runtime]
            values[f"{pkg.upper()}_MIGRATE_DATABASE_URL"] = dsn[roles.owner]
        runtime = {pkg: roles.runtime for pkg, roles in self.db_roles.items()}
        values["CHECKOUT_DB_LEDGER_ROLE"] = runtime["ledger"]
        values["CHECKOUT_DB_METERING_ROLE"] = runtime["metering"]
        values["LEDGER_DB_METERING_ROLE"] = runtime["metering"]
        for pkg in ("checkout", "ledger", "metering", "webhook_ingest"):
            values[f"{pkg.upper()}_DB_RECONCILER_ROLE"] = runtime["reconciler"]
        return values

    def ensure_db_roles(self, report: Reporter = _quiet) -> None:
        """The services' roles and schema owners, before any migration (needs Postgres up)."""
        with _timed(report, "database roles ready"):
            self.postgres.ensure_roles(list(self.db_roles.values()), self.db_passwords)

    def install(self, report: Reporter = _quiet) -> None:
        for part in [*self.infrastructure, self.web]:
            with _timed(report, f"{part.name} installed"):
                part.install()
        if self.backups.enabled:
            with _timed(report, "pgbackrest installed"):
                self.backups.install()

    def up(
        self, report: Reporter = _quiet, services: bool = True, monitoring: bool = False
    ) -> None:
        self.install(report)
        if self.backups.enabled:
            self.backups.configure()
        for part in self.infrastructure:
            with _timed(report, f"{part.name} ready at {part.url}"):
                part.start()
                part.wait_ready(90)
        if self.backups.enabled:
            with _timed(report, f"WAL archived to {self.backups.home / 'repo'}"):
                self.backups.ensure_stanza()
        with _timed(report, "topics created"):
            self.kafka.create_topics(self.topic_namespace)
        self.ensure_db_roles(report)
        if services:
            self.start_services(report)
        if monitoring:
            self.start_monitoring(report)

    def start_monitoring(self, report: Reporter = _quiet) -> None:
        with _timed(report, f"prometheus ready at {self.prometheus.url}"):
            self.prometheus.install()
            self.prometheus.start()
            self.prometheus.wait_ready(60)

    def start_services(self, report: Reporter = _quiet) -> None:
        for svc in self.services.values():
            with _timed(report, f"{svc.name} migrated"):
                svc.migrate()
        for svc in self.services.values():
            svc.start()
        for svc in self.services.values():
            with _timed(report, f"{svc.name} ready at {svc.url}"):
                svc.wait_ready(60)
        with _timed(report, f"web ready at {self.web.url}/credits"):
            self.web.start()
            self.web.wait_ready(30)

    def restore(self, target: datetime, report: Reporter = _quiet) -> None:
        """The database as it was at ``target``, with the services running on it again.

        What the current WAL holds is archived first, so any moment up to now can be
        reached. The services stop before and start after: their consumers then resume
        from the positions the restored database holds, and Kafka replays the rest."""
        if not self.backups.enabled:
            raise LaunchError(f"the {self.layout.name} stack does not archive WAL")
        if target > datetime.now(UTC):
            raise LaunchError(f"{target.isoformat()} is in the future")
        if self.postgres.running():
            with _timed(report, "WAL archived up to now"):
                self.backups.flush_wal()
        for svc in self.services.values():
            svc.stop()
        self.postgres.stop()
        with _timed(report, f"database restored to {target.isoformat()}"):
            self.backups.restore(target)
            self.postgres.start()
            self.backups.wait_promoted(120)
        self.start_services(report)

    def down(self, report: Reporter = _quiet) -> None:
        for part in [self.prometheus, *reversed(self.components)]:
            started = time.monotonic()
            if part.stop():
                report(f"{part.name} stopped", time.monotonic() - started)

    def status(self) -> dict[str, dict[str, Any]]:
        """Every component; Prometheus only while it runs (it is optional)."""
        monitoring = [self.prometheus] if self.prometheus.running() else []
        return {
            part.name: {"url": part.url, "running": part.running(), "ready": part.ready()}
            for part in [*self.components, *monitoring]
        }


@contextmanager
def _timed(report: Reporter, label: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    report(label, time.monotonic() - started)
