"""The local stack's components, each able to install, start, stop and report readiness."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx

from billing_cli import db_roles, installers
from billing_cli.db_roles import ServiceRoles
from billing_cli.layout import Layout
from billing_cli.procs import LaunchError, ProcessManager, pid_alive, port_open, wait_until


class Component:
    name = "component"

    def __init__(self, layout: Layout, procs: ProcessManager) -> None:
        self.layout = layout
        self.procs = procs

    @property
    def url(self) -> str:
        raise NotImplementedError

    def install(self) -> None:
        """Fetch what the component runs (no-op when cached)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> bool:
        return self.procs.stop(self.name)

    def running(self) -> bool:
        return self.procs.running_pid(self.name) is not None

    def ready(self) -> bool:
        raise NotImplementedError

    def wait_ready(self, timeout: float) -> None:
        exited = False

        def settled() -> bool:
            nonlocal exited
            exited = not self.running()
            return exited or self.ready()

        if not wait_until(settled, timeout, 0.25) or exited:
            why = "exited" if exited else f"not ready after {timeout:.0f}s"
            raise LaunchError(f"{self.name} {why}; last log lines:\n{self.procs.tail(self.name)}")


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class Postgres(Component):
    """A private cluster on 127.0.0.1; as root it runs as the ``postgres`` system user."""

    name = "postgres"
    database = "billing"
    user = "billing"

    def __init__(self, layout: Layout, procs: ProcessManager, password: str) -> None:
        super().__init__(layout, procs)
        self.password = password
        self.data = layout.state / "postgres" / "data"
        self.bindir: Path | None = None
        # Settings of WAL archiving (see billing_cli.backups); none on the throwaway stacks.
        self.archive_options = ""

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.layout.postgres_port}/{self.database}"

    @property
    def dsn(self) -> str:
        """The URL with the password: for settings only, never printed in status."""
        return (
            f"postgresql://{self.user}:{self.password}@127.0.0.1:"
            f"{self.layout.postgres_port}/{self.database}"
        )

    def role_dsn(self, role: str, password: str) -> str:
        """A DSN for one of the services' roles (see ``billing_cli.db_roles``)."""
        secret = quote(password, safe="")
        return f"postgresql://{role}:{secret}@127.0.0.1:{self.layout.postgres_port}/{self.database}"

    def ensure_roles(self, services: list[ServiceRoles], passwords: dict[str, str]) -> None:
        asyncio.run(db_roles.provision(self.dsn, services, passwords))

    def install(self) -> None:
        self.bindir = installers.ensure_postgres()

    def _as_owner(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def _tool(self, name: str) -> str:
        # Only install() may install; status checks must not run apt behind the user's back.
        self.bindir = self.bindir or installers.postgres_bindir()
        if self.bindir is None:
            raise LaunchError("PostgreSQL server not installed: run `billing setup`")
        return str(self.bindir / name)

    def _run(self, cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self._as_owner(cmd), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LaunchError(f"postgres {what} failed: {(result.stdout + result.stderr)[-1500:]}")
        return result

    def _prepare_dirs(self) -> None:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        self.procs.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs.log_file(self.name).touch()
        if os.geteuid() == 0:
            shutil.chown(self.data.parent, "postgres", "postgres")
            shutil.chown(self.procs.log_file(self.name), "postgres", "postgres")

    def _initdb(self) -> None:
        pwfile = self.data.parent / "pwfile"
        pwfile.write_text(self.password)
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        try:
            self._run(
                [
                    self._tool("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.user,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=peer",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
                "initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def running(self) -> bool:
        # Not `pg_ctl status`: it counts a killed postmaster that is not reaped yet (a zombie)
        # as running, and a start would then return at once with no server behind it.
        pid = self._lock_pid()
        return pid is not None and pid_alive(pid)

    def _lock_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def _await_reaped(self) -> None:
        """A killed postmaster still in the process table makes a new one refuse its lock file."""
        pid = self._lock_pid()
        if pid is not None and not wait_until(lambda: not Path(f"/proc/{pid}").exists(), 30, 0.1):
            raise LaunchError(f"postgres: the old postmaster (pid {pid}) was never reaped")

    def start(self) -> None:
        self.install()
        self._prepare_dirs()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        if self.running():
            return
        self._await_reaped()
        port = self.layout.postgres_port
        if port_open(port):
            raise LaunchError(f"postgres: port {port} is in use by another process")
        sock = self.data.parent
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={sock} "
            "-c max_connections=300 -c shared_buffers=128MB"
        ) + self.archive_options
        if self.layout.port_offset:
            # The throwaway test cluster trades crash safety of the OS for speed.
            opts += " -c fsync=off -c full_page_writes=off"
            if not self.layout.acknowledged_commits_durable:
                opts += " -c synchronous_commit=off"
        self._run(
            [
                self._tool("pg_ctl"),
                "start",
                "-D",
                str(self.data),
                "-w",
                "-t",
                "60",
                "-l",
                str(self.procs.log_file(self.name)),
                "-o",
                opts,
            ],
            "start",
        )
        self._ensure_database()

    def _ensure_database(self) -> None:
        import asyncpg

        async def create() -> None:
            admin_url = self.dsn.rsplit("/", 1)[0] + "/postgres"
            conn = await asyncpg.connect(admin_url)
            try:
                exists = await conn.fetchval(
                    "SELECT 1 FROM pg_database WHERE datname = $1", self.database
                )
                if not exists:
                    await conn.execute(f'CREATE DATABASE "{self.database}"')
            finally:
                await conn.close()

        asyncio.run(create())

    def stop(self) -> bool:
        if not self.running():
            return False
        self._run([self._tool("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w"], "stop")
        return True

    def ready(self) -> bool:
        try:
            pg_isready = self._tool("pg_isready")
        except LaunchError:  # not installed: not ready, and status never installs
            return False
        cmd = [
            pg_isready,
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.layout.postgres_port),
        ]
        return subprocess.run(cmd, check=False).returncode == 0


class Kafka(Component):
    """A single KRaft broker+controller; its data dir survives restarts."""

    name = "kafka"

    @property
    def home(self) -> Path:
        return self.layout.state / "kafka"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.layout.kafka_port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def install(self) -> None:
        installers.ensure_kafka(self.layout)

    def _write_config(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        ctl = self.layout.kafka_controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{ctl}",
            "listeners": f"PLAINTEXT://{self.bootstrap},CONTROLLER://127.0.0.1:{ctl}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.home / "data"),
            "num.partitions": "3",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
        }
        config = self.home / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = self.home / "log4j.properties"
        log4j.write_text(
            "log4j.rootLogger=WARN, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka.server.KafkaRaftServer=INFO\n"
        )
        return config

    def _java(self, main: str, *args: str, heap: str = "256m") -> list[str]:
        libs = installers.kafka_libs(self.layout)
        return [
            "java",
            f"-Xmx{heap}",
            "-XX:+UseG1GC",
            f"-Dlog4j.configuration=file:{self.home / 'log4j.properties'}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def _format_storage(self, config: Path) -> None:
        if (self.home / "data" / "meta.properties").exists():
            return
        cluster_file = self.home / "cluster.id"
        if not cluster_file.exists() or cluster_file.read_text().startswith("-"):
            cluster_file.write_text(_kafka_cluster_id())
        cmd = self._java(
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "-t",
            cluster_file.read_text().strip(),
            "-c",
            str(config),
        )
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LaunchError(f"kafka storage format failed: {result.stderr[-1500:]}")

    def start(self) -> None:
        self.install()
        if self.running():
            return
        config = self._write_config()
        self._format_storage(config)
        cmd = self._java("kafka.Kafka", str(config), heap="768m")
        self.procs.start(self.name, cmd, dict(os.environ), self.layout.kafka_port)

    def ready(self) -> bool:
        if not port_open(self.layout.kafka_port):
            return False
        from billing_events.kafka import probe

        try:
            asyncio.run(asyncio.wait_for(probe(self.bootstrap), 5))
        except Exception:
            return False
        return True

    def create_topics(self, namespace: str = "") -> list[str]:
        from billing_events.kafka import ensure_topics
        from billing_events.topics import Topics

        return asyncio.run(ensure_topics(self.bootstrap, Topics(namespace).all()))


def _kafka_cluster_id() -> str:
    """A random id in Kafka's form; never starting with "-", which its CLI takes for a flag."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class StripeMock(Component):
    name = "stripe-mock"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.layout.stripe_mock_port}"

    def install(self) -> None:
        installers.ensure_stripe_mock(self.layout)

    def start(self) -> None:
        binary = installers.ensure_stripe_mock(self.layout)
        port = self.layout.stripe_mock_port
        # stripe-mock also serves HTTPS, by default on :12112 on every interface; pinning
        # it next to the HTTP port keeps it on loopback and lets two stacks run side by side.
        cmd = [
            str(binary),
            "-http-addr",
            f"127.0.0.1:{port}",
            "-https-addr",
            f"127.0.0.1:{port + 1}",
        ]
        self.procs.start(self.name, cmd, dict(os.environ), port)

    def ready(self) -> bool:
        try:
            response = httpx.get(
                f"{self.url}/v1/balance",
                timeout=1.0,
                headers={"Authorization": "Bearer sk_test_ready"},
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200


class DevLLM(Component):
    name = "devllm"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.layout.devllm_port}/v1"

    def start(self) -> None:
        cmd = [sys.executable, "-m", "devllm", "--port", str(self.layout.devllm_port)]
        self.procs.start(self.name, cmd, dict(os.environ), self.layout.devllm_port)

    def ready(self) -> bool:
        return _http_ok(f"http://127.0.0.1:{self.layout.devllm_port}/health")


class Prometheus(Component):
    """A Prometheus scraping every service with the platform's alert rules loaded, so alerts
    can be seen firing locally (``billing up --with-monitoring``)."""

    name = "prometheus"

    def __init__(self, layout: Layout, procs: ProcessManager, services: dict[str, int]) -> None:
        super().__init__(layout, procs)
        self._services = services  # name -> port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.layout.prometheus_port}"

    @property
    def rules(self) -> Path:
        return self.layout.root / "deploy" / "monitoring" / "alerts.yaml"

    def install(self) -> None:
        installers.ensure_prometheus()

    def config(self) -> dict[str, object]:
        targets = [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"service": name}}
            for name, port in sorted(self._services.items())
        ]
        return {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "rule_files": [str(self.rules)],
            "scrape_configs": [{"job_name": "billing", "static_configs": targets}],
        }

    def start(self) -> None:
        binary = installers.ensure_prometheus()
        folder = self.layout.state / "prometheus"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=2))  # YAML is a superset of JSON
        cmd = [
            str(binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.layout.prometheus_port}",
            "--storage.tsdb.retention.time=2d",
        ]
        self.procs.start(self.name, cmd, dict(os.environ), self.layout.prometheus_port)

    def ready(self) -> bool:
        return _http_ok(f"{self.url}/-/ready")


class Web(Component):
    """The Credits page (``web/``), built with npm and served with its ``config.json``."""

    name = "web"

    def __init__(self, layout: Layout, procs: ProcessManager, services: dict[str, str]) -> None:
        super().__init__(layout, procs)
        self._services = services  # name -> base URL

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.layout.web_port}"

    @property
    def dist(self) -> Path:
        return self.layout.root / "web" / "dist"

    def install(self) -> None:
        installers.ensure_web_build(self.layout.root / "web")

    def config(self) -> dict[str, object]:
        """What the page reads at start: the services' URLs and the links it shows."""
        return {
            "checkoutUrl": self._services["checkout"],
            "ledgerUrl": self._services["ledger"],
            "meteringUrl": self._services["metering"],
            "reconcilerUrl": self._services["reconciler"],
            # The host product's pages; the dev stack has none, so these are placeholders.
            "pricingUrl": f"{self.url}/pricing",
            "termsUrl": f"{self.url}/terms",
            "refundPolicyUrl": f"{self.url}/refund-policy",
            # Dev only: `/credits#token=<JWT>` signs in; a deployment's config says false.
            "dev": True,
        }

    def start(self) -> None:
        self.install()
        config = self.layout.state / "web" / "config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps(self.config(), indent=2))
        port = self.layout.web_port
        cmd = [sys.executable, "-m", "billing_cli.webapp", "--dist", str(self.dist)]
        cmd += ["--config", str(config), "--port", str(port)]
        self.procs.start(self.name, cmd, dict(os.environ), port)

    def ready(self) -> bool:
        return _http_ok(f"{self.url}/config.json")


class Service(Component):
    def __init__(
        self, layout: Layout, procs: ProcessManager, name: str, package: str, env: dict[str, str]
    ) -> None:
        super().__init__(layout, procs)
        self.name = name
        self.package = package
        self.env = env

    @property
    def port(self) -> int:
        return self.layout.service_port(self.name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        prefix = self.package.upper() + "_"
        return {
            **os.environ,
            **self.env,
            f"{prefix}PORT": str(self.port),
            f"{prefix}HOST": "127.0.0.1",
        }

    def migrate(self) -> str:
        cmd = [sys.executable, "-m", self.package, "migrate"]
        result = subprocess.run(cmd, env=self._env(), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise LaunchError(f"{self.name} migrations failed:\n{result.stderr[-2000:]}")
        return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""

    def start(self) -> None:
        cmd = [sys.executable, "-m", self.package, "serve"]
        self.procs.start(self.name, cmd, self._env(), self.port)

    def ready(self) -> bool:
        return _http_ok(f"{self.url}/readyz")
