"""Event-pipeline throughput and CPU cost, against a plain transaction on the same PostgreSQL.

Brings the dev stack up (restarted with the webhook per-IP limit lifted; durable commits)
and measures, in one run:

1. anchor: pgbench runs ``bench/plain_posting.sql`` (update a balance, insert a transaction
   and its two entries, commit; ``synchronous_commit = on``) with 16 clients on scratch
   tables in the schema ``bench_plain``, dropped afterwards -> plain postings/s.
2. ledger: ``--users`` fresh users are funded with admin adjustments, then ``--records``
   charged ``UsageRecorded`` records (no hold, unique usage ids, 1-100 millicredits) are
   produced to ``billing.usage.v1`` as fast as the producer goes; postings/s is
   records / (time from the first send until the ledger's consumer group has moved past
   every one of them: the positions its schema keeps, or Kafka's copy). A second round puts
   half of the records on one user (a hot account). Both are compared with the anchor; the
   journal is then checked to hold one usage posting per record.
   Then a burst: ``--burst`` verified ``customer.created`` envelopes produced at once to
   ``stripe.events.v1`` (as webhook-ingest would publish them); how long after the last one
   every consumer group of that topic has caught up.
3. webhooks: vegeta (installed pinned into ``.local/bin``) sends, open loop, ``--seconds``
   of distinct, correctly signed ``customer.created`` events (which the ledger ignores) at
   each of ``--rates``; targets are generated just before each step, so signatures are
   fresh. Per rate: accepted/s, latency percentiles, errors, and how long after the last
   request the outbox and every consumer of ``stripe.events.v1`` took to catch up.
4. CPU: utime+stime of every process of the stack (PostgreSQL: the postmaster, its live
   children and the ones it reaped; Kafka's JVM; each service; stripe-mock and devllm) and
   of the load generator (this process and the tools it ran) before and after each phase,
   from ``/proc``. A phase ends when the whole pipeline is quiet (outboxes published, every
   consumer group caught up), so the events' downstream work counts too.

Run: ``./scripts/run python bench/pipeline.py [--quick] [--json] [--users 500]
[--records 20000] [--burst 10000] [--rates 100,200,500,1000] [--seconds 10]
[--stack dev|test] [--keep]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from billing_cli import installers, keys, stripe_sim
from billing_cli.components import Postgres
from billing_cli.layout import Layout
from billing_cli.stack import Stack
from billing_events.kafka import KafkaPublisher, timestamp_now, topic_partitions
from billing_events.topics import AUDIT, LEDGER, STRIPE_EVENTS, USAGE, Topics
from billing_events.v1 import common_pb2, usage_pb2
from webhook_ingest.events import envelope_from_body

LIFTED_LIMITS = {"WEBHOOK_INGEST_RATE_LIMIT_PER_MINUTE": "100000000"}
PLAIN_SCRIPT = Path(__file__).with_name("plain_posting.sql")
PLAIN_SCHEMA = """
DROP SCHEMA IF EXISTS bench_plain CASCADE;
CREATE SCHEMA bench_plain;
CREATE TABLE bench_plain.balances (user_id text PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE bench_plain.transactions (
    id bigserial PRIMARY KEY, kind text NOT NULL, user_id text NOT NULL,
    amount bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE bench_plain.entries (
    id bigserial PRIMARY KEY,
    transaction_id bigint NOT NULL REFERENCES bench_plain.transactions (id),
    account text NOT NULL, amount bigint NOT NULL);
CREATE INDEX ON bench_plain.entries (transaction_id);
"""
PLAIN_CLIENTS = 16
# Who consumes what (each service's consumer group is named after it): a group that has not
# committed on a topic yet still counts all of the topic as its lag.
CONSUMERS = {
    "ledger": (STRIPE_EVENTS, USAGE, AUDIT),
    "checkout": (STRIPE_EVENTS, LEDGER),
    "reconciler": (STRIPE_EVENTS, USAGE, LEDGER),
}
FUND_MILLICREDITS = 10**8
POLL_S = 0.1  # while timing a drain
QUIET_POLL_S = 0.25  # while waiting for the rest of the pipeline (fewer looks, less noise)
QUIET_TIMEOUT_S = 900.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
GENERATOR = "load generator"
# Part of Kafka's CPU, shown apart and not added again: the JVM's compiler threads. A broker
# started for a run is still compiling its hot paths minutes later; one that has run for
# days is not.
KAFKA_JIT = "(kafka: JIT)"


@contextlib.contextmanager
def dev_postgres(keep: bool = False) -> Iterator[Postgres]:
    """The dev stack's PostgreSQL alone (port 15432, durable commits), started if it is not
    running; stopped afterwards unless it was running already or ``keep``."""
    postgres = Stack(Layout.dev()).postgres
    postgres.install()
    was_running = postgres.running()
    postgres.start()
    postgres.wait_ready(90)
    try:
        yield postgres
    finally:
        if not (keep or was_running):
            postgres.stop()


# --- CPU seconds per process, from /proc ------------------------------------------------


def _proc_table() -> tuple[dict[int, list[int]], dict[int, float]]:
    """Children of every pid, and each pid's CPU: its own and its reaped children's."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = sum(int(f) for f in fields[11:15]) / CLK_TCK
    return children, cpu


def _tree_cpu(root: int, children: dict[int, list[int]], cpu: dict[int, float]) -> float:
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


def _own_cpu() -> float:
    """This process and the tools it ran and waited for (pgbench, vegeta)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    tools = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + tools.ru_utime + tools.ru_stime


def stack_roots(stack: Stack) -> dict[str, int]:
    roots: dict[str, int] = {}
    for part in stack.components:
        pid = stack.procs.running_pid(part.name)
        if part.name == "postgres":
            pidfile = stack.postgres.data / "postmaster.pid"
            pid = int(pidfile.read_text().split()[0]) if pidfile.exists() else None
        if pid is not None:
            roots[part.name] = pid
    return roots


def cpu_snapshot(roots: dict[str, int]) -> dict[str, float]:
    children, cpu = _proc_table()
    snapshot = {name: _tree_cpu(pid, children, cpu) for name, pid in roots.items()}
    snapshot[GENERATOR] = _own_cpu()
    if "kafka" in roots:
        snapshot[KAFKA_JIT] = _compiler_cpu(roots["kafka"])
    return snapshot


def _compiler_cpu(jvm: int) -> float:
    """CPU of a JVM's JIT compiler threads (HotSpot names them "C1/C2 CompilerThread<n>")."""
    total = 0
    for stat in Path(f"/proc/{jvm}/task").glob("*/stat"):
        with contextlib.suppress(OSError, IndexError):
            text = stat.read_text()
            if text[text.index("(") + 1 :].startswith(("C1 Compiler", "C2 Compiler")):
                total += sum(int(f) for f in text.rsplit(")", 1)[1].split()[11:13])
    return total / CLK_TCK


def summed(cpu: dict[str, float]) -> float:
    """All processes' CPU (Kafka's compiler threads are in Kafka's already)."""
    return sum(v for k, v in cpu.items() if k != KAFKA_JIT)


# --- results ------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    events: int
    seconds: float
    cpu_s: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def cpu_ms_per_event(self) -> dict[str, float]:
        per = {k: v * 1000 / self.events for k, v in self.cpu_s.items()} if self.events else {}
        return {**per, "total": summed(per)}


@dataclass
class Results:
    idle_cpu_ms_per_s: dict[str, float]
    phases: list[Phase]


class Meter:
    """CPU of every process between ``start`` and ``stop``."""

    def __init__(self, stack: Stack) -> None:
        self.roots = stack_roots(stack)
        self.before: dict[str, float] = {}

    def start(self) -> None:
        self.before = cpu_snapshot(self.roots)

    def stop(self) -> dict[str, float]:
        after = cpu_snapshot(self.roots)
        return {k: max(0.0, after[k] - self.before.get(k, 0.0)) for k in after}


# --- the pipeline's state: consumer lag and outboxes --------------------------------------


class Pipeline:
    """Cheap, repeated looks at Kafka lag and unpublished outbox rows (clients kept open)."""

    def __init__(self, stack: Stack, db: asyncpg.Connection) -> None:
        self.bootstrap = stack.kafka.bootstrap
        self.topics = Topics(stack.topic_namespace)
        # Other groups on the broker (an old replay, say) are not part of the pipeline.
        self.groups = [self.topics.name(service) for service in stack.services]
        self.consumes = {
            self.topics.name(group): {self.topics.name(t) for t in topics}
            for group, topics in CONSUMERS.items()
        }
        self.db = db
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
        self.partitions: dict[str, list[TopicPartition]] = {}
        self.outboxes: list[str] = []
        self.position_tables: list[str] = []

    async def start(self) -> None:
        await self.admin.start()
        await self.consumer.start()
        rows = await self.db.fetch(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'outbox'"
        )
        self.outboxes = [row["table_schema"] for row in rows]
        rows = await self.db.fetch(
            "SELECT table_schema FROM information_schema.tables"
            " WHERE table_name = 'consumer_offsets'"
        )
        self.position_tables = [row["table_schema"] for row in rows]

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        if topic not in self.partitions:
            self.partitions[topic] = await topic_partitions(self.bootstrap, topic)
        return self.partitions[topic]

    async def lag(self, topics: set[str] | None = None, group: str | None = None) -> int:
        """Records the group (or every service's) has not committed past, on ``topics``."""
        committed = await self._committed([group] if group else self.groups)
        pairs = {(name, tp.topic) for name, tp in committed}
        for name in [group] if group else self.groups:
            pairs |= {(name, topic) for topic in self.consumes.get(name, ())}
        pairs = {(name, topic) for name, topic in pairs if topics is None or topic in topics}
        wanted = [tp for t in {t for _, t in pairs} for tp in await self._partitions(t)]
        ends: dict[TopicPartition, int] = await self.consumer.end_offsets(wanted) if wanted else {}
        return sum(
            max(0, ends.get(tp, 0) - committed.get((name, tp), 0))
            for name, topic in pairs
            for tp in self.partitions[topic]
        )

    async def _committed(self, groups: list[str]) -> dict[tuple[str, TopicPartition], int]:
        """Each group's positions: the services keep theirs in their own schema (Kafka gets
        a copy a little later); any other group's are in Kafka."""
        committed: dict[tuple[str, TopicPartition], int] = {}
        for name in groups:
            for tp, meta in (await self.admin.list_consumer_group_offsets(name)).items():
                committed[(name, tp)] = max(0, meta.offset)
        for schema in self.position_tables:
            rows = await self.db.fetch(
                f'SELECT group_id, topic, partition, next_offset FROM "{schema}".consumer_offsets'
                " WHERE group_id = ANY($1::text[])",
                groups,
            )
            for r in rows:
                key = (r["group_id"], TopicPartition(r["topic"], r["partition"]))
                committed[key] = max(committed.get(key, 0), r["next_offset"])
        return committed

    async def unpublished(self) -> int:
        total = 0
        for schema in self.outboxes:
            total += await self.db.fetchval(
                f'SELECT count(*) FROM "{schema}".outbox WHERE published_at IS NULL'
            )
        return int(total)

    async def quiet(self) -> None:
        """Until every outbox is published and every group has caught up on every topic."""
        await until(lambda: self._is_quiet(), "the pipeline to go quiet", QUIET_POLL_S)

    async def _is_quiet(self) -> bool:
        return await self.unpublished() == 0 and await self.lag() == 0


async def until(check: Callable[[], Awaitable[bool]], what: str, interval: float = POLL_S) -> None:
    deadline = time.monotonic() + QUIET_TIMEOUT_S
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {QUIET_TIMEOUT_S:.0f} s")
        await asyncio.sleep(interval)


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- 1. the anchor: plain per-posting transactions with pgbench ---------------------------


async def anchor(stack: Stack, db: asyncpg.Connection, users: int, seconds: int) -> Phase:
    await db.execute(PLAIN_SCHEMA)
    await db.execute(
        "INSERT INTO bench_plain.balances"
        " SELECT 'u' || n, $1::bigint FROM generate_series(1, $2) n",
        FUND_MILLICREDITS,
        users,
    )
    meter = Meter(stack)
    try:
        meter.start()
        out = await run_tool(pgbench_command(stack, users, seconds), pgbench_env(stack))
        cpu = meter.stop()
    finally:
        await db.execute("DROP SCHEMA bench_plain CASCADE")
    done = int(_match(r"number of transactions actually processed: (\d+)", out))
    tps = float(_match(r"tps = ([\d.]+) \(without initial connection time\)", out))
    latency = float(_match(r"latency average = ([\d.]+) ms", out))
    settings = {k: await db.fetchval(f"SHOW {k}") for k in ("synchronous_commit", "fsync")}
    extra = {"tps": tps, "latency_avg_ms": latency, "clients": PLAIN_CLIENTS, **settings}
    # pgbench's own tps excludes connection set-up; the rate reported is that one.
    return Phase("anchor: plain posting (pgbench)", done, done / tps, cpu, extra)


def pgbench_command(stack: Stack, users: int, seconds: int) -> list[str]:
    bindir = installers.postgres_bindir()
    if bindir is None:
        raise RuntimeError("pgbench not found: PostgreSQL's server packages are not installed")
    pg = stack.postgres
    return [
        str(bindir / "pgbench"),
        *("-h", "127.0.0.1", "-p", str(stack.layout.postgres_port), "-U", pg.user),
        *("-n", "-M", "prepared", "-c", str(PLAIN_CLIENTS), "-j", "2", "-T", str(seconds)),
        *("-D", f"users={users}", "-f", str(PLAIN_SCRIPT), pg.database),
    ]


def pgbench_env(stack: Stack) -> dict[str, str]:
    return {
        **os.environ,
        "PGPASSWORD": stack.postgres.password,
        "PGOPTIONS": "-c synchronous_commit=on",
    }


async def run_tool(cmd: list[str], env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}):\n{text[-2000:]}")
    return text


def _match(pattern: str, text: str) -> str:
    found = re.search(pattern, text)
    if found is None:
        raise RuntimeError(f"no {pattern!r} in the output:\n{text[-2000:]}")
    return found.group(1)


# --- 2. ledger postings from billing.usage.v1 ---------------------------------------------


async def fund(stack: Stack, users: list[str]) -> None:
    token = keys.mint_token(stack.layout, "bench", ["admin"], mfa=True)
    url = f"{stack.services['ledger'].url}/api/admin/adjustments"
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {token}"}) as http:

        async def one(user: str) -> None:
            async with gate:
                answer = await http.post(
                    url,
                    json={
                        "userId": user,
                        "amountMillicredits": FUND_MILLICREDITS,
                        "reason": "pipeline benchmark credits",
                        "referenceId": f"fund-{user}",
                    },
                )
                answer.raise_for_status()

        await asyncio.gather(*(one(u) for u in users))


def usage_id(run: str, hot: bool, n: int) -> str:
    return f"{run}-{'hot' if hot else 'spread'}-{n:06d}"


def usage_records(run: str, users: list[str], count: int, hot: bool) -> list[tuple[str, bytes]]:
    """(key, value) of ``count`` charged records; ``hot``: half of them for the first user."""
    rng = random.Random(f"{run}-{hot}")  # noqa: S311 - load shape, not security
    records = []
    for n in range(count):
        user = users[0] if hot and n % 2 == 0 else users[rng.randrange(len(users))]
        usage = usage_id(run, hot, n)
        record = usage_pb2.UsageRecorded(
            meta=common_pb2.EventMeta(
                event_id=str(uuid.uuid4()),
                occurred_at=timestamp_now(),
                correlation_id=usage,
                producer="bench",
            ),
            usage_id=usage,
            user_id=user,
            model="gpt-4o-mini",
            input_tokens=rng.randint(10, 2000),
            output_tokens=rng.randint(10, 800),
            charged_millicredits=rng.randint(1, 100),
            cost_millicredits=1,
            rate_card_version="bench",
            mode=usage_pb2.BILLING_MODE_CHARGED,
            idempotency_key=usage,
        )
        records.append((user, record.SerializeToString()))
    return records


async def produce(stack: Stack, records: list[tuple[str, bytes]], topic: str = USAGE) -> None:
    publisher = KafkaPublisher(stack.kafka.bootstrap, client_id="bench-pipeline")
    await publisher.start()
    try:
        name = Topics(stack.topic_namespace).name(topic)
        pending = [await publisher.enqueue(name, key, value) for key, value in records]
        await asyncio.gather(*pending)
    finally:
        await publisher.stop()


async def ledger_round(
    stack: Stack, pipe: Pipeline, run: str, users: list[str], count: int, hot: bool
) -> Phase:
    records = usage_records(run, users, count, hot)
    usage, ledger = {pipe.topics.usage}, pipe.topics.name("ledger")
    meter = Meter(stack)
    meter.start()
    started = time.perf_counter()
    await produce(stack, records)
    produced = time.perf_counter() - started
    await until(lambda: _caught_up(pipe, usage, ledger), "the ledger to drain the usage topic")
    drained = time.perf_counter() - started
    await pipe.quiet()
    settled = time.perf_counter() - started
    cpu = meter.stop()
    posted = await pipe.db.fetchval(
        "SELECT count(*) FROM ledger.journal_transactions"
        " WHERE kind = 'usage' AND reference_id = ANY($1::text[])",
        [usage_id(run, hot, n) for n in range(count)],
    )
    name = f"ledger postings, {'half on one user' if hot else f'{len(users)} users'}"
    extra = {"produce_s": produced, "settle_s": settled, "posted": int(posted), "hot": hot}
    return Phase(name, count, drained, cpu, extra)


async def _caught_up(pipe: Pipeline, topics: set[str], group: str) -> bool:
    return await pipe.lag(topics, group) == 0


# --- 3. a burst of verified Stripe events: how soon every consumer has caught up ----------


def stripe_burst(run: str, count: int) -> list[tuple[str, bytes]]:
    """Verified ``customer.created`` envelopes, as webhook-ingest publishes them."""
    records: list[tuple[str, bytes]] = []
    for n in range(count):
        key = f"cus_{run}_{n:06d}"
        customer = {"id": key, "object": "customer", "email": None}
        envelope = envelope_from_body(
            stripe_sim.encode(stripe_sim.event("customer.created", customer))
        )
        records.append((key, envelope.SerializeToString()))
    return records


async def burst_round(stack: Stack, pipe: Pipeline, run: str, count: int) -> Phase:
    records = stripe_burst(run, count)
    stripe = {pipe.topics.stripe_events}
    meter = Meter(stack)
    meter.start()
    started = time.perf_counter()
    await produce(stack, records, STRIPE_EVENTS)
    produced = time.perf_counter()
    await until(lambda: _every_group_caught_up(pipe, stripe), "the consumers to catch up")
    caught_up = time.perf_counter()
    await pipe.quiet()
    cpu = meter.stop()
    extra = {"produce_s": produced - started, "lag_zero_after_s": caught_up - produced}
    return Phase(f"burst of {count} Stripe events", count, caught_up - started, cpu, extra)


async def _every_group_caught_up(pipe: Pipeline, topics: set[str]) -> bool:
    return await pipe.lag(topics) == 0


# --- 4. webhooks through webhook-ingest, open loop ----------------------------------------


def webhook_targets(stack: Stack, path: Path, count: int, run: str) -> None:
    """vegeta's JSON targets: distinct ``customer.created`` events, signed now."""
    url = f"{stack.services['webhook-ingest'].url}/webhooks/stripe"
    secret = stack.secrets["stripe_webhook_secret"]
    with path.open("w") as out:
        for n in range(count):
            customer = {"id": f"cus_{run}_{n:06d}", "object": "customer", "email": None}
            body = stripe_sim.encode(stripe_sim.event("customer.created", customer))
            target = {
                "method": "POST",
                "url": url,
                "body": base64.b64encode(body).decode(),
                "header": {
                    "Content-Type": ["application/json"],
                    "Stripe-Signature": [stripe_sim.sign(body, secret)],
                },
            }
            out.write(json.dumps(target) + "\n")


async def webhook_step(
    stack: Stack, pipe: Pipeline, vegeta: Path, workdir: Path, rate: int, seconds: int
) -> Phase:
    targets, results = workdir / f"targets-{rate}.json", workdir / f"results-{rate}.bin"
    run = f"bench{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(webhook_targets, stack, targets, rate * seconds, run)
    meter = Meter(stack)
    meter.start()
    await run_tool(
        [
            str(vegeta),
            "attack",
            *("-format=json", f"-targets={targets}", f"-rate={rate}/1s"),
            *(f"-duration={seconds}s", "-timeout=30s", f"-output={results}"),
        ]
    )
    attack_end = time.perf_counter()
    await pipe.quiet()
    drain = time.perf_counter() - attack_end
    cpu = meter.stop()
    report = json.loads(await run_tool([str(vegeta), "report", "-type=json", str(results)]))
    return webhook_phase(rate, report, drain, cpu)


def webhook_phase(rate: int, report: dict[str, Any], drain: float, cpu: dict[str, float]) -> Phase:
    codes: dict[str, int] = report.get("status_codes") or {}
    accepted = sum(n for code, n in codes.items() if code.startswith("2"))
    took = (report["duration"] + report["wait"]) / 1e9
    latency = {k: report["latencies"][k] / 1e6 for k in ("50th", "90th", "99th", "max")}
    extra = {
        "rate": rate,
        "requests": report["requests"],
        "latency_ms": latency,
        "status_codes": codes,
        "errors": len(report.get("errors") or []),
        "error_samples": (report.get("errors") or [])[:3],
        "catch_up_s": drain,
    }
    return Phase(f"webhooks at {rate}/s", accepted, took, cpu, extra)


# --- the run ------------------------------------------------------------------------------


@dataclass
class Options:
    users: int
    records: int
    rates: list[int]
    seconds: int
    burst: int


async def idle(stack: Stack, pipe: Pipeline, seconds: int) -> dict[str, float]:
    """CPU ms per second of each process while nothing happens: the floor under the figures."""
    await pipe.quiet()
    meter = Meter(stack)
    meter.start()
    await asyncio.sleep(seconds)
    return {name: cpu * 1000 / seconds for name, cpu in meter.stop().items()}


async def run(stack: Stack, opts: Options, vegeta: Path) -> Results:
    db = await asyncpg.connect(stack.postgres.dsn)
    pipe = Pipeline(stack, db)
    await pipe.start()
    try:
        progress(f"idle: {opts.seconds} s")
        floor = await idle(stack, pipe, opts.seconds)
        return Results(floor, await _phases(stack, db, pipe, opts, vegeta))
    finally:
        await pipe.stop()
        await db.close()


async def _phases(
    stack: Stack, db: asyncpg.Connection, pipe: Pipeline, opts: Options, vegeta: Path
) -> list[Phase]:
    progress(f"anchor: pgbench, {PLAIN_CLIENTS} clients, {opts.seconds} s")
    phases = [await anchor(stack, db, opts.users, opts.seconds)]
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    users = [f"{run_id}-u{n:04d}" for n in range(opts.users)]
    progress(f"funding {len(users)} users")
    await fund(stack, users)
    await pipe.quiet()
    for hot in (False, True):
        progress(f"ledger: {opts.records} usage records{' (hot account)' if hot else ''}")
        phases.append(await ledger_round(stack, pipe, run_id, users, opts.records, hot))
    progress(f"burst: {opts.burst} Stripe events produced at once")
    phases.append(await burst_round(stack, pipe, run_id, opts.burst))
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        for rate in opts.rates:
            progress(f"webhooks: {rate}/s for {opts.seconds} s")
            phases.append(await webhook_step(stack, pipe, vegeta, Path(tmp), rate, opts.seconds))
    return phases


def report_table(results: Results) -> Iterator[str]:
    phases = results.phases
    anchor_rate = phases[0].rate
    yield f"{'phase':38}{'events':>8}{'seconds':>9}{'per s':>9}{'x anchor':>10}"
    for p in phases:
        compared = p is phases[0] or "hot" in p.extra  # postings, against plain postings
        versus = f"{p.rate / anchor_rate:10.3f}" if compared else ""
        yield f"{p.name:38}{p.events:8d}{p.seconds:9.2f}{p.rate:9.0f}{versus}"
    ledger = [p for p in phases if "hot" in p.extra]
    if len(ledger) == 2:
        ratio = ledger[1].rate / ledger[0].rate
        yield f"hot account / spread postings/s: {ratio:.2f}"
        for p in ledger:
            yield (
                f"  {p.name}: produced in {p.extra['produce_s']:.1f} s, quiet after"
                f" {p.extra['settle_s']:.1f} s, {p.extra['posted']}/{p.events} posted"
            )
    for p in phases:
        if "lag_zero_after_s" in p.extra:
            yield (
                f"  {p.name}: produced in {p.extra['produce_s']:.1f} s, every consumer caught"
                f" up {p.extra['lag_zero_after_s']:.2f} s after the last one"
            )
    a = phases[0].extra
    yield (
        f"anchor: {a['clients']} clients, synchronous_commit={a['synchronous_commit']},"
        f" fsync={a['fsync']}, latency avg {a['latency_avg_ms']:.2f} ms"
    )
    yield ""
    yield from webhook_table([p for p in phases if "latency_ms" in p.extra])
    yield ""
    yield from cpu_table(results)


def webhook_table(steps: list[Phase]) -> Iterator[str]:
    if not steps:
        return
    yield (
        f"{'webhooks':10}{'sent':>7}{'2xx':>7}{'2xx/s':>8}{'p50 ms':>9}{'p90 ms':>9}"
        f"{'p99 ms':>9}{'max ms':>9}{'errors':>8}{'catch-up s':>12}"
    )
    for p in steps:
        lat = p.extra["latency_ms"]
        yield (
            f"{str(p.extra['rate']) + '/s':10}{p.extra['requests']:7d}{p.events:7d}"
            f"{p.rate:8.0f}{lat['50th']:9.1f}{lat['90th']:9.1f}{lat['99th']:9.1f}"
            f"{lat['max']:9.1f}{p.extra['errors']:8d}{p.extra['catch_up_s']:12.1f}"
        )


def cpu_table(results: Results) -> Iterator[str]:
    per = [p.cpu_ms_per_event() for p in results.phases]
    floor = {**results.idle_cpu_ms_per_s, "total": summed(results.idle_cpu_ms_per_s)}
    labels = [_short(p.name) for p in results.phases]
    yield "CPU ms per event (idle: CPU ms per second with no load, included in the others)"
    yield f"{'process':16}{'idle ms/s':>10}" + "".join(f"{label:>12}" for label in labels)
    for name in floor:
        figures = "".join(f"{row.get(name, 0.0):12.3f}" for row in per)
        yield f"{name:16}{floor[name]:10.2f}{figures}"


def _short(name: str) -> str:
    if name.startswith("anchor"):
        return "pgbench"
    if name.startswith("ledger"):
        return "ledger hot" if "one user" in name else "ledger"
    if name.startswith("burst"):
        return "burst"
    return "wh " + name.split()[-1]


def as_json(results: Results) -> str:
    rows = [
        {**asdict(p), "rate": p.rate, "cpu_ms_per_event": p.cpu_ms_per_event()}
        for p in results.phases
    ]
    figures = {"anchor_rate": rows[0]["rate"], "idle_cpu_ms_per_s": results.idle_cpu_ms_per_s}
    return json.dumps({**figures, "phases": rows}, indent=2)


def parse_args() -> tuple[argparse.Namespace, Options]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer records, rates 100 and 200")
    parser.add_argument("--json", action="store_true", help="figures as JSON (table: stderr)")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--records", type=int)
    parser.add_argument("--burst", type=int, help="Stripe events produced at once")
    parser.add_argument("--rates", help="webhooks per second, comma-separated")
    parser.add_argument("--seconds", type=int, default=10, help="per pgbench and rate step")
    parser.add_argument("--stack", choices=["dev", "test"], default="dev")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    records = args.records or (5000 if args.quick else 20000)
    rates = args.rates or ("100,200" if args.quick else "100,200,500,1000")
    burst = args.burst or (2000 if args.quick else 10000)
    opts = Options(args.users, records, [int(r) for r in rates.split(",")], args.seconds, burst)
    return args, opts


def main() -> None:
    args, opts = parse_args()
    layout = Layout.test() if args.stack == "test" else Layout.dev()
    vegeta = installers.ensure_vegeta(layout)
    stack = Stack(layout, service_env=LIFTED_LIMITS)
    stack.down()  # webhook-ingest must run with the lifted limit above
    stack.up()
    try:
        results = asyncio.run(run(stack, opts, vegeta))
    finally:
        if not args.keep:
            stack.down()
    table = "\n".join(report_table(results))
    if args.json:  # the figures for scripts on stdout, the table still for the reader
        progress(table)
        print(as_json(results))
    else:
        print(table)


if __name__ == "__main__":
    main()
