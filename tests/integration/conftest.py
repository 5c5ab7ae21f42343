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
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from billing_cli import keys, stripe_sim
from billing_cli.layout import Layout
from billing_cli.procs import ProcessManager, wait_until
from billing_cli.stack import Stack
from billing_events.kafka import KafkaPublisher, ensure_topics
from billing_events.topics import CONTRACT_TOPICS, STRIPE_EVENTS, Topics
from billing_events.v1 import stripe_pb2
from billing_platform.db import Database, SchemaAccess, migrate_package
from metering.db_access import ledger_search_paths


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


# The suite sends far more purchases and webhooks from 127.0.0.1 than the production
# per-IP limits allow; the rate-limit tests run their own service with the defaults.
SUITE_SERVICE_ENV = {
    "CHECKOUT_PURCHASE_RATE_LIMIT_PER_MINUTE": "1000000",
    "METERING_RATE_LIMIT_PER_MINUTE": "1000000",
    "WEBHOOK_INGEST_RATE_LIMIT_PER_MINUTE": "1000000",
    "LEDGER_DLQ_DEPTH_INTERVAL_S": "1",
    "LEDGER_HOLD_SWEEP_INTERVAL_S": "1",
    # Runs happen when a test asks; every journal entry may join the hash chain at once.
    "RECONCILER_SCHEDULE_INTERVAL_S": "0",
    "RECONCILER_CHAIN_SETTLE_S": "0",
}


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    stack = Stack(Layout.test(), service_env=SUITE_SERVICE_ENV)
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


MigratedDb = Callable[..., Awaitable[Database]]


@pytest.fixture
async def migrated_db(stack: Stack) -> AsyncIterator[MigratedDb]:
    """Apply a service package's migrations to a schema (and ``access``, if given) and open
    a pool on it."""
    opened: list[Database] = []

    async def make(schema: str, package: str, access: SchemaAccess | None = None) -> Database:
        await migrate_package(stack.postgres.dsn, schema, package, access)
        db = Database(stack.postgres.dsn, schema, 1, 4)
        await db.start()
        opened.append(db)
        return db

    yield make
    for db in opened:
        await db.stop()


@dataclass(frozen=True)
class MeteringDbs:
    """A ledger schema and a metering schema bound to it, as ``metering migrate`` binds
    them: its admission and settlement call the ledger's hold functions by name."""

    ledger: Database
    metering: Database
    ledger_schema: str


@pytest.fixture
async def metering_dbs(migrated_db: MigratedDb) -> MeteringDbs:
    ledger_schema = f"t_{uuid.uuid4().hex[:12]}"
    ledger = await migrated_db(ledger_schema, "ledger")
    access = SchemaAccess(search_paths=ledger_search_paths(ledger_schema))
    metering = await migrated_db(f"t_{uuid.uuid4().hex[:12]}", "metering", access)
    return MeteringDbs(ledger, metering, ledger_schema)


RecordCharge = Callable[..., Awaitable[None]]


@pytest.fixture
def record_charge() -> RecordCharge:
    """``await record_charge(metering_db, user, amount, at, mode="charged")``: a usage record
    made at ``at``, as the caps, the anomaly check and the totals read them."""

    async def write(
        db: Database, user: str, amount: int, at: datetime, mode: str = "charged"
    ) -> None:
        await db.pool.execute(
            "INSERT INTO usage_records (usage_id, user_id, model, input_tokens, output_tokens,"
            " charged_millicredits, cost_millicredits, rate_card_version, hold_id,"
            " idempotency_key, mode, response_body, priced_millicredits, created_at)"
            " VALUES ($1, $2, 'gpt-4o', 1, 1, $3, 0, 'v', 'h', $4, $5, '{}', $3, $6)",
            uuid.uuid4(),
            user,
            amount,
            f"k-{uuid.uuid4().hex}",
            mode,
            at,
        )

    return write


# A pending starter purchase (9.99 USD, 9,990 credits) as checkout would have created it.
STARTER_ROW = (
    "INSERT INTO {table} (id, user_id, package_code, package_name, price_cents, currency,"
    " credits, bonus_credits, grant_millicredits, status, return_to, stripe_session_id)"
    " VALUES ($1, $2, 'starter', 'Starter', 999, 'usd', 9990, 0, 9990000, 'pending', '/', $3)"
)
PendingPurchase = Callable[[Database, str], Awaitable[stripe_sim.SimPurchase]]


@pytest.fixture
def pending_purchase() -> PendingPurchase:
    """Write a pending starter purchase of ``user`` into a checkout schema's table."""

    async def make(checkout: Database, user: str) -> stripe_sim.SimPurchase:
        session = f"cs_test_{uuid.uuid4().hex[:8]}"
        purchase = stripe_sim.SimPurchase(str(uuid.uuid4()), user, "starter", 999, "usd", session)
        await checkout.pool.execute(
            STARTER_ROW.format(table="purchases"),
            purchase.purchase_id,
            purchase.user_id,
            purchase.stripe_session_id,
        )
        return purchase

    return make


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
    # Folders per port: two replicas of one package in a test keep their own pid files.
    procs = ProcessManager(tmp_path / f"run-{port}", tmp_path / f"logs-{port}")
    # Connected as the superuser, as the fixtures that migrate the fresh test schemas are:
    # a runtime role has rights on the stack's own schemas only (test_db_roles covers those).
    own_db = {f"{prefix}DATABASE_URL": stack.postgres.dsn}
    full_env = {**os.environ, **stack.env(), **own_db, **env, f"{prefix}PORT": str(port)}
    procs.start(package, [sys.executable, "-m", package, "serve"], full_env, port)
    proc = ServiceProcess(procs, package, port)
    try:
        if not wait_until(proc.ready, 30):
            raise AssertionError(f"{package} not ready:\n{procs.tail(package, 40)}")
        yield proc
    finally:
        procs.stop(package)


class Platform:
    """The running platform as a client meets it: HTTP APIs, signed webhooks, the database."""

    def __init__(self, stack: Stack, http: httpx.AsyncClient) -> None:
        self.stack = stack
        self.http = http
        self.checkout = stack.services["checkout"].url
        self.webhooks = stack.services["webhook-ingest"].url
        self.ledger = stack.services["ledger"].url
        self.webhook_secret = stack.secrets["stripe_webhook_secret"]

    def auth(self, user: str, admin: bool = False, mfa: bool | None = None) -> dict[str, str]:
        """A user's or an admin's token; admins have stepped up with MFA unless ``mfa=False``."""
        stepped_up = admin if mfa is None else mfa
        token = keys.mint_token(self.stack.layout, user, ["admin"] if admin else [], mfa=stepped_up)
        return {"Authorization": f"Bearer {token}"}

    async def buy(self, user: str, package: str = "professional") -> stripe_sim.SimPurchase:
        created = await self.http.post(
            f"{self.checkout}/api/purchases",
            json={"packageCode": package, "returnTo": "/chat"},
            headers=self.auth(user),
        )
        assert created.status_code == 201, created.text
        return stripe_sim.SimPurchase.from_api(await self.purchase(created.json()["purchaseId"]))

    async def purchase(self, purchase_id: str) -> dict[str, Any]:
        got = await self.http.get(
            f"{self.checkout}/api/purchases/{purchase_id}", headers=self.auth("ops", admin=True)
        )
        assert got.status_code == 200, got.text
        body: dict[str, Any] = got.json()
        return body

    async def deliver(self, event: dict[str, Any], **kw: Any) -> httpx.Response:
        url = f"{self.webhooks}/webhooks/stripe"
        secret = kw.pop("secret", self.webhook_secret)
        return await stripe_sim.send(self.http, url, event, secret, **kw)

    async def balance(self, user: str) -> dict[str, Any]:
        got = await self.http.get(f"{self.ledger}/api/balance", headers=self.auth(user))
        assert got.status_code == 200, got.text
        body: dict[str, Any] = got.json()
        return body

    async def wait_balance(self, user: str, millicredits: int, timeout: float = 20) -> None:
        async def reached() -> bool:
            return bool((await self.balance(user))["balanceMillicredits"] == millicredits)

        await self.eventually(reached, f"{user} never reached {millicredits}", timeout)

    async def wait_status(self, purchase_id: str, status: str, timeout: float = 20) -> None:
        async def reached() -> bool:
            return bool((await self.purchase(purchase_id))["status"] == status)

        await self.eventually(reached, f"{purchase_id} never became {status}", timeout)

    @staticmethod
    async def eventually(
        check: Callable[[], Awaitable[bool]], why: str, timeout: float = 20
    ) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            assert time.monotonic() < deadline, why
            await asyncio.sleep(0.1)

    async def give(self, user: str, millicredits: int) -> None:
        """Credits for a test user, as an admin adjustment (the quickest honest way in)."""
        answer = await self.http.post(
            f"{self.ledger}/api/admin/adjustments",
            json={
                "userId": user,
                "amountMillicredits": millicredits,
                "reason": "test credits",
                "referenceId": f"seed-{uuid.uuid4().hex[:8]}",
            },
            headers=self.auth("ops", admin=True),
        )
        assert answer.status_code == 201, answer.text

    async def insert_starter_row(self, purchase: stripe_sim.SimPurchase) -> None:
        """A starter purchase row written straight into checkout's table, as if just created."""
        await self.sql(
            STARTER_ROW.format(table="checkout.purchases"),
            purchase.purchase_id,
            purchase.user_id,
            purchase.stripe_session_id,
        )

    async def sql(self, query: str, *args: Any) -> Any:
        """One value from the platform's database, as the cluster's superuser sees it."""
        conn = await asyncpg.connect(self.stack.postgres.dsn)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()


@pytest.fixture
async def platform(stack: Stack) -> AsyncIterator[Platform]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield Platform(stack, http)


@pytest.fixture
async def fresh_ip_client() -> AsyncIterator[httpx.AsyncClient]:
    """A client sending from a loopback address of its own (127.x.y.z): per-IP limits are
    counted in the database, shared with every other process that sees 127.0.0.1."""
    octets = uuid.uuid4().bytes
    address = f"127.{octets[0] % 254 + 1}.{octets[1]}.{octets[2] % 254 + 1}"
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(transport=transport, timeout=30) as http:
        yield http


@pytest.fixture
def user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


def run_billing(*args: str) -> str:
    env = {**os.environ, "BILLING_LOCAL_STACK": "test"}
    result = subprocess.run(
        [sys.executable, "-m", "billing_cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def billing() -> Callable[..., str]:
    """Run the `billing` CLI against the test stack; its stdout (asserting exit code 0)."""
    return run_billing


async def published_stripe_event_ids(bootstrap: str, topic: str) -> list[str]:
    """The Stripe event id of every record on a stripe.events topic, from its start to its end.

    The namespace fixture creates the topic with the contract's partition count.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(CONTRACT_TOPICS[STRIPE_EVENTS])]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        ids: list[str] = []
        while any([await consumer.position(p) < end for p, end in ends.items()]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                ids += [
                    stripe_pb2.StripeEventReceived.FromString(r.value or b"").stripe_event_id
                    for r in records
                ]
        return ids
    finally:
        await consumer.stop()


StripeEventIds = Callable[[str, str], Awaitable[list[str]]]


@pytest.fixture
def stripe_event_ids() -> StripeEventIds:
    """``await stripe_event_ids(bootstrap, topic)``: the event ids published on that topic."""
    return published_stripe_event_ids
