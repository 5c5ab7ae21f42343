"""Integration fixtures: the real broker, database, stripe-mock and services, started once.

The stack is the launcher's test layout (own data dirs, ports +10000), so a running dev
stack is never touched. Tests isolate themselves with a fresh topic namespace (which also
namespaces consumer groups) and a fresh DB schema.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest
from billing_cli.layout import Layout
from billing_cli.procs import ProcessManager, wait_until
from billing_cli.stack import Stack
from billing_events.kafka import KafkaPublisher, ensure_topics
from billing_events.topics import Topics
from billing_platform.db import Database, migrate_package


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    stack = Stack(Layout.test())
    stack.down()  # a previous run that crashed leaves nothing behind
    try:
        stack.up(lambda label, s: print(f"  {label} ({s:.1f}s)", file=sys.stderr))
        yield stack
    finally:
        stack.down()


@pytest.fixture
def namespace(stack: Stack) -> Topics:
    topics = Topics(f"t{uuid.uuid4().hex[:10]}")
    stack.kafka.wait_ready(60)
    asyncio.run(ensure_topics(stack.kafka.bootstrap, topics.all()))
    return topics


@pytest.fixture
def schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def publisher(stack: Stack) -> AsyncIterator[KafkaPublisher]:
    pub = KafkaPublisher(stack.kafka.bootstrap, client_id="test-publisher")
    await pub.start()
    yield pub
    await pub.stop()


MigratedDb = Callable[[str, str], Awaitable[Database]]


@pytest.fixture
async def migrated_db(stack: Stack) -> AsyncIterator[MigratedDb]:
    """Apply a service package's migrations to a schema and open a pool on it."""
    opened: list[Database] = []

    async def make(schema: str, package: str) -> Database:
        await migrate_package(stack.postgres.dsn, schema, package)
        db = Database(stack.postgres.dsn, schema, 1, 4)
        await db.start()
        opened.append(db)
        return db

    yield make
    for db in opened:
        await db.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServiceProcess:
    """One service run as its own process, exactly as ``billing up`` runs it."""

    def __init__(self, procs: ProcessManager, name: str, port: int) -> None:
        self.procs = procs
        self.name = name
        self.url = f"http://127.0.0.1:{port}"

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def metric(self, name: str, **labels: str) -> float:
        """The value of one Prometheus sample, 0 when absent."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith(f"{name}{{") and all(p in line for p in want.split(",")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


RunService = Callable[[str, dict[str, str]], AbstractContextManager["ServiceProcess"]]


@pytest.fixture
def run_service(stack: Stack, tmp_path: Path) -> RunService:
    """Start a service package as its own process (``with run_service(pkg, env) as svc``)."""
    return functools.partial(service_process, stack, tmp_path)


@contextmanager
def service_process(
    stack: Stack, tmp_path: Path, package: str, env: dict[str, str]
) -> Iterator[ServiceProcess]:
    port = free_port()
    prefix = package.upper() + "_"
    procs = ProcessManager(tmp_path / "run", tmp_path / "logs")
    full_env = {**os.environ, **stack.env(), **env, f"{prefix}PORT": str(port)}
    procs.start(package, [sys.executable, "-m", package, "serve"], full_env, port)
    proc = ServiceProcess(procs, package, port)
    try:
        if not wait_until(proc.ready, 30):
            raise AssertionError(f"{package} not ready:\n{procs.tail(package, 40)}")
        yield proc
    finally:
        procs.stop(package)
