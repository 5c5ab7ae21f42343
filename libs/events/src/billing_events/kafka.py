"""Kafka publish/consume layer on confluent-kafka (librdkafka), plus topic admin on aiokafka.

Guarantees the rest of the platform builds on:
- the producer is idempotent (``acks=all``), so a retried send never duplicates a record;
- a consumer moves a partition's position only after the handler for those records
  returned, i.e. after their effect is durable. With an ``OffsetStore`` the position is
  written in the handler's own transaction (``billing_events.offsets.unit_of_work``) and read
  back on assignment; without one it is committed to Kafka after each batch. Either way a
  crash before the position is saved means the records are seen again, so every handler must
  be idempotent by a natural key;
- a failing record is retried with exponential backoff, and after the last attempt it is
  published to its dead-letter topic with the error, and the partition moves on;
- an outage of the infrastructure a handler depends on (the database or the broker unreachable,
  restarting, out of connections) is not the record's fault: the partition is held and the
  record retried with capped backoff for as long as the outage lasts, without counting towards
  its dead letter, and the consumer reports itself not ready meanwhile;
- trace context and the correlation id travel in record headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar, cast

import confluent_kafka
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from billing_platform import context, metrics, tracing
from billing_platform.outages import DependencyUnavailable, is_outage
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.trace import SpanKind

from billing_events.membership import Membership, group_state
from billing_events.offsets import OffsetScope, OffsetStore, enter_scope

log = logging.getLogger(__name__)

CORRELATION_HEADER = "correlation-id"
# What a record is, in terms a consumer can filter on without decoding it (e.g. a ledger
# transaction's kind), for consumers that need a few records of a busy topic.
KIND_HEADER = "kind"
M = TypeVar("M", bound=Message)


class PermanentError(Exception):
    """A failure that retrying cannot fix (e.g. an undecodable record): dead-letter at once."""


class _Unsettled(Exception):
    """The client's group membership has not settled within the deadline."""


class _Interrupted(Exception):
    """The consumer is stopping while a record waits for its infrastructure: commit nothing."""


def dead_letter_topic(topic: str) -> str:
    """``stripe.events.v1`` -> ``stripe.events.dlq.v1``; the contract's naming, generalised."""
    base, dot, version = topic.rpartition(".")
    if dot and version.startswith("v") and version[1:].isdigit():
        return f"{base}.dlq.{version}"
    return f"{topic}.dlq"


def timestamp_now() -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC))
    return ts


class InboundMessage(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    @classmethod
    def from_record(cls, record: confluent_kafka.Message) -> InboundMessage:
        # As this layer produces them: str names, bytes values (cast, not copied: hot path).
        headers = cast(list[tuple[str, bytes]] | None, record.headers())
        return cls(
            record.topic() or "",
            record.partition() or 0,
            record.offset() or 0,
            record.key(),
            record.value() or b"",
            tuple(headers) if headers else (),
            record.timestamp()[1],
        )

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None

    @property
    def correlation_id(self) -> str | None:
        return self.header(CORRELATION_HEADER)

    @property
    def trace_id(self) -> str | None:
        """The trace the record continues (W3C ``traceparent``: version-trace-span-flags)."""
        parts = (self.header("traceparent") or "").split("-")
        return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None

    def decode(self, message_type: type[M]) -> M:
        message = message_type()
        try:
            message.ParseFromString(self.value)
        except DecodeError as exc:
            raise PermanentError(f"cannot decode {message_type.__name__}: {exc}") from exc
        return message


Handler = Callable[[InboundMessage], Awaitable[None]]
# Whether a consumer needs a record at all; records it does not are passed over undecoded.
Wanted = Callable[[InboundMessage], bool]
# Applies a topic's fetched records together in one transaction (one or more partitions,
# each in order); it must be all or nothing, since a failed batch is handled again, each
# partition on its own and then record by record.
BatchHandler = Callable[[Sequence[InboundMessage]], Awaitable[None]]


async def probe(bootstrap: str) -> None:
    """Raise unless a broker answers a metadata request now (used by ``/readyz``)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
    try:
        await client.bootstrap()
    finally:
        await client.close()


async def ensure_topics(bootstrap: str, topics: Mapping[str, int]) -> list[str]:
    """Create the topics that do not exist yet; returns those created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, p, 1) for t, p in topics.items() if t not in existing]
        if missing:
            await admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        await admin.close()


async def topic_partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The topic's partitions as the broker describes them; [] when the topic is missing."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"] != 0:
        return []
    return [TopicPartition(topic, p["partition"]) for p in described["partitions"]]


def _librdkafka_logger() -> logging.Logger:
    return logging.getLogger("librdkafka")


def _on_client_error(error: confluent_kafka.KafkaError) -> None:
    # Broker connection errors are retried inside the client; they are worth a line, no more.
    log.warning("kafka client error", extra={"error": error.str(), "fatal": error.fatal()})


# How often an idle publisher's poller still serves the client's error and log callbacks.
PRODUCER_IDLE_POLL_S = 1.0


class KafkaPublisher:
    """Idempotent producer that stamps trace context and correlation id on every record.

    librdkafka batches and sends from its own threads; a poller thread serves its delivery
    reports and settles the callers' futures on the event loop, one hand-over per poll.
    """

    def __init__(self, bootstrap: str, client_id: str, *, linger_ms: int = 2) -> None:
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            # A publish waits at most this long for the broker, then fails (and is retried by
            # its caller: the outbox relay, the consumer's dead-letter path).
            "message.timeout.ms": 30_000,
            "error_cb": _on_client_error,
            "logger": _librdkafka_logger(),
        }
        self._tracer = tracing.tracer("billing.kafka")
        self._producer: confluent_kafka.Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: threading.Thread | None = None
        self._stopping = threading.Event()
        self._queued = threading.Event()  # set when a record is queued, to wake the poller
        self._reports: list[tuple[asyncio.Future[None], confluent_kafka.KafkaError | None]] = []

    async def start(self) -> None:
        if self._producer is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._producer = confluent_kafka.Producer(self._config)
        self._stopping.clear()
        self._poller = threading.Thread(
            target=self._serve_reports, name=f"kafka-producer:{self._config['client.id']}"
        )
        self._poller.start()

    async def stop(self) -> None:
        """Deliver what is queued (up to the message timeout), then stop."""
        if self._poller is None:
            return
        self._stopping.set()
        self._queued.set()
        await asyncio.to_thread(self._poller.join)
        self._poller = None
        self._producer = None

    def _serve_reports(self) -> None:
        producer = self._producer
        assert producer is not None
        while not self._stopping.is_set():
            producer.poll(0.05 if self._await_work(producer) else 0)
            self._hand_over()
        producer.flush(self._config["message.timeout.ms"] / 1000)
        self._hand_over()

    def _await_work(self, producer: confluent_kafka.Producer) -> bool:
        """Whether records are in flight; when none are, first sleep until one is queued or
        a second has passed (the client's errors and logs are served by polls too). An idle
        publisher polling in 50 ms ticks cost each service some 20 wake-ups a second."""
        if len(producer):
            return True
        self._queued.clear()
        # Cleared before looking again: a record queued meanwhile is counted, or sets it.
        return len(producer) > 0 or self._queued.wait(PRODUCER_IDLE_POLL_S)

    def _hand_over(self) -> None:
        if not self._reports or self._loop is None:
            return
        reports, self._reports = self._reports, []
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            self._loop.call_soon_threadsafe(_settle, reports)

    async def publish(
        self,
        topic: str,
        key: str | bytes | None,
        message: Message | bytes,
        *,
        correlation_id: str | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Publish one record and wait until the broker has it."""
        future = await self.enqueue(
            topic, key, message, correlation_id=correlation_id, headers=headers
        )
        await future

    async def enqueue(
        self,
        topic: str,
        key: str | bytes | None,
        message: Message | bytes,
        *,
        correlation_id: str | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[None]:
        """Queue a record for a batch; await the returned future for the broker's ack.

        ``headers`` given explicitly (an outbox row's, captured when it was written) are
        sent as they are, and continue the trace they carry; otherwise the record gets the
        current trace and correlation context, under a producer span.
        """
        value = message if isinstance(message, bytes) else message.SerializeToString()
        raw_key = key.encode() if isinstance(key, str) else key
        if headers is not None:
            future = await self._produce(topic, raw_key, value, list(headers))
        else:
            with self._tracer.start_as_current_span(f"{topic} publish", kind=SpanKind.PRODUCER):
                corr = correlation_id or context.current_correlation_id()
                stamped = tracing.inject_headers({CORRELATION_HEADER: corr})
                future = await self._produce(topic, raw_key, value, stamped)
        metrics.KAFKA_PUBLISHED.labels(topic).inc()
        return future

    async def _produce(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[None]:
        if self._producer is None or self._loop is None:
            raise RuntimeError("kafka publisher not started")
        wire: list[tuple[str, str | bytes | None]] = [*headers]
        future: asyncio.Future[None] = self._loop.create_future()

        def delivered(error: confluent_kafka.KafkaError | None, _: object) -> None:
            self._reports.append((future, error))  # on the poller thread

        while True:
            try:
                self._producer.produce(topic, value, key, headers=wire, on_delivery=delivered)
                if not self._queued.is_set():
                    self._queued.set()
                return future
            except BufferError:  # the client's queue is full: let it drain
                await asyncio.sleep(0.005)


def _settle(reports: list[tuple[asyncio.Future[None], confluent_kafka.KafkaError | None]]) -> None:
    for future, error in reports:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(confluent_kafka.KafkaException(error))


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    max_outage_backoff_s: float = 2.0

    def delay(self, failed_attempts: int) -> float:
        return float(min(self.max_backoff_s, self.initial_backoff_s * 2 ** (failed_attempts - 1)))

    def outage_delay(self, attempts: int) -> float:
        """Short and capped: the partition resumes within a couple of seconds of recovery."""
        exponent = min(attempts - 1, 16)
        return float(min(self.max_outage_backoff_s, self.initial_backoff_s * 2**exponent))


@dataclass
class _Failure:
    attempts: int = 0
    first_at: Timestamp | None = None
    error: BaseException | None = None

    def record(self, error: BaseException) -> None:
        if self.first_at is None:
            self.first_at = timestamp_now()
        self.attempts += 1
        self.error = error


# A topic's fetched partitions go to its batch handler together, in groups of at least this
# many records. A steady flow's fetch is one transaction instead of one per partition; a
# backlog's fetch of 500 records over six partitions still goes as six transactions at
# once, the service preparing one while the database applies another.
GROUP_RECORDS = 50
# How often positions that no unit of work saved reach the database, and all reach Kafka.
POSITION_FLUSH_S = 0.2
# How often the lag gauge is refreshed, from the client's cache (no broker round trip):
# well within a scrape interval; each refresh is a hop to the client's thread and back.
LAG_EVERY_S = 1.0
# A group membership not settled this long, with the broker answering, gets a new client.
SETTLE_DEADLINE_S = 60.0
# How long a client may take to copy its last positions and leave its group.
CLOSE_DEADLINE_S = 10.0


def batch_groups(
    partitions: Sequence[Sequence[InboundMessage]], at_least: int
) -> list[list[Sequence[InboundMessage]]]:
    """The partitions in groups of at least ``at_least`` records each, in order; what is
    left at the end joins the last group."""
    groups: list[list[Sequence[InboundMessage]]] = []
    current: list[Sequence[InboundMessage]] = []
    count = 0
    for messages in partitions:
        current.append(messages)
        count += len(messages)
        if count >= at_least:
            groups.append(current)
            current, count = [], 0
    if current and groups:
        groups[-1].extend(current)
    elif current:
        groups.append(current)
    return groups


def consumer_lags(
    positions: Mapping[tuple[str, int], int], highs: Mapping[tuple[str, int], int]
) -> dict[tuple[str, int], int]:
    """Records behind the high watermark, per partition; one whose high watermark is not
    known yet (negative: no fetch response so far) is left out rather than reported as 0."""
    return {
        tp: max(0, highs[tp] - position)
        for tp, position in positions.items()
        if highs.get(tp, -1) >= 0
    }


class ConsumerRunner:
    """Consumes topics with one handler each; moves only past what was handled or
    dead-lettered.

    A fetched batch is handled topic by topic, the topics concurrently. A topic with a batch
    handler takes its fetched partitions in one call, so in one unit of work that saves each
    partition's position (several calls, concurrently, when their records make more than
    one group of ``GROUP_RECORDS``: ``batch_groups``); if that fails for any reason but an
    outage, each partition is handled on its own (its records as one batch, then one by
    one), concurrently. Records within a partition keep their order.

    A handler failing because its database or broker is down holds its partitions and
    retries until the dependency is back (``check`` fails meanwhile, for readiness); only
    failures of the record itself count towards its dead letter. The client reconnects to
    the broker by itself; if the loop fails (the dead-letter publish, saving a position),
    the consumer is rebuilt and what was not saved comes back. So is a client whose group
    membership has not settled within ``settle_deadline_s`` while the broker answers
    (``billing_events.membership``).

    With ``offsets`` the positions live in the service's database (see
    ``billing_events.offsets``) and are copied to Kafka every ``POSITION_FLUSH_S``, for lag
    tooling only.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        group_id: str,
        handlers: Mapping[str, Handler],
        publisher: KafkaPublisher,
        retry: RetryPolicy | None = None,
        client_id: str | None = None,
        batch_handlers: Mapping[str, BatchHandler] | None = None,
        offsets: OffsetStore | None = None,
        max_records: int = 500,
        wanted: Mapping[str, Wanted] | None = None,
        linger_ms: int = 0,
        settle_deadline_s: float = SETTLE_DEADLINE_S,
    ) -> None:
        self._bootstrap = bootstrap
        self.group_id = group_id
        self._handlers = dict(handlers)
        self._batch_handlers = dict(batch_handlers or {})
        self._publisher = publisher
        self._retry = retry or RetryPolicy()
        self._client_id = client_id or group_id
        self._offsets = offsets
        self._max_records = max_records
        self._wanted = dict(wanted or {})
        self._linger_ms = linger_ms
        self._settle_deadline_s = settle_deadline_s
        self._membership = Membership(time.monotonic())
        # From zero, so the alert's increase() counts the first replacement too.
        metrics.KAFKA_CONSUMER_REBUILDS.labels(group_id, self._client_id)
        self._tracer = tracing.tracer("billing.kafka")
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stalled: set[tuple[str, int]] = set()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"kafka:{self._client_id}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsaved: dict[tuple[str, int], int] = {}
        self._to_commit: dict[tuple[str, int], int] = {}
        self._positions: dict[tuple[str, int], int] = {}  # for the lag gauge
        self._owned: set[tuple[str, int]] = set()  # touched on the client's thread only
        self._flushed_at = 0.0
        self._failing: Exception | None = None

    async def start(self) -> None:
        self._stopping.clear()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run_forever(), name=f"consumer:{self.group_id}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None

    async def _run_forever(self) -> None:
        pause = 0.5
        while not self._stopping.is_set():
            try:
                await self._consume_until_stopped()
                return
            except asyncio.CancelledError:
                raise
            except _Interrupted:
                return  # stopping mid-outage: the unsaved records come back on restart
            except Exception as exc:
                if self._failing is None:  # that client had worked: start the backoff afresh
                    pause = 0.5
                # E.g. the positions could not be read on assignment: not ready till it works.
                self._failing = exc
                log.error(
                    "consumer loop failed; reconnecting",
                    extra={"group": self.group_id, "client": self._client_id},
                    exc_info=not isinstance(exc, _Unsettled),  # its message says it all
                )
                await self._sleep_unless_stopping(pause)
                pause = min(pause * 2, 10.0)

    def _config(self) -> dict[str, Any]:
        lingering = (
            # The broker answers a fetch once it has this much, or the linger is over.
            {"fetch.wait.max.ms": self._linger_ms, "fetch.min.bytes": 1 << 20}
            if self._linger_ms
            else {}
        )
        return {
            **lingering,
            "bootstrap.servers": self._bootstrap,
            "group.id": self.group_id,
            "client.id": self._client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 3_000,
            "error_cb": _on_client_error,
            "logger": _librdkafka_logger(),
            "statistics.interval.ms": self._statistics_interval_ms(),
            "stats_cb": self._on_statistics,
            "on_commit": self._on_commit,
        }

    def _on_commit(self, error: confluent_kafka.KafkaError | None, partitions: list[Any]) -> None:
        """A copy of the positions that did not reach Kafka goes again with the next flush,
        unless a newer one waits or the partition has gone to another member (runs on the
        client's thread, within a poll)."""
        if error is None:
            return
        for p in partitions:
            if p.offset >= 0 and (p.topic, p.partition) in self._owned:
                self._to_commit.setdefault((p.topic, p.partition), p.offset)

    def _statistics_interval_ms(self) -> int:
        """Six looks per deadline, at most one every 10 s: the group state is all it reads."""
        return int(min(10_000, max(500, self._settle_deadline_s * 1000 / 6)))

    def _on_statistics(self, statistics: str) -> None:
        """Runs on the client's thread, within a poll."""
        try:
            group = group_state(statistics)
        except (ValueError, IndexError):  # not worth losing the consumer over
            log.warning("unreadable client statistics", extra={"group": self.group_id})
            return
        if group is not None:
            self._membership.seen(group, time.monotonic())

    async def _in_thread(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The client is driven from one thread; the loop waits for it without blocking."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: call(*args, **kwargs))

    async def _consume_until_stopped(self) -> None:
        consumer = confluent_kafka.Consumer(self._config())
        self._membership.restart(time.monotonic())
        # Its own task, not the loop's: a handler that hangs must not freeze the gauge.
        lag = asyncio.create_task(self._report_lag(consumer))
        try:
            await self._in_thread(
                consumer.subscribe,
                list(self._handlers),
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
            )
            while not self._stopping.is_set():
                records = await self._in_thread(self._fetch, consumer)
                self._failing = None
                if records:
                    await self._handle_fetched(consumer, records)
                await self._flush_positions(consumer)
                await self._check_settled()
        finally:
            lag.cancel()
            with contextlib.suppress(Exception):
                await self._save_unsaved()
            await self._close(consumer)
            self._forget(list(self._positions))

    async def _check_settled(self) -> None:
        """Give up on the client if its membership has not settled within the deadline
        while the broker answers (were the broker down, a new client would wait the same)."""
        now = time.monotonic()
        waited = self._membership.unsettled_for(now)
        if waited < self._settle_deadline_s:
            return
        try:
            await probe(self._bootstrap)
        except Exception:
            self._membership.restart(now)  # the broker is down: look again a deadline later
            return
        metrics.KAFKA_CONSUMER_REBUILDS.labels(self.group_id, self._client_id).inc()
        raise _Unsettled(f"group membership {self._membership.last} for {waited:.0f} s, broker up")

    async def _close(self, consumer: confluent_kafka.Consumer) -> None:
        """Copy the last positions to Kafka and leave the group, on a thread of its own: a
        client whose membership never settled may never finish, and is left behind after
        ``CLOSE_DEADLINE_S`` (the broker drops it once its session times out, or a
        rebalance has waited its poll interval for it)."""
        await self._in_thread(lambda: None)  # the client's thread has nothing left running
        offsets = self._take_to_commit()

        def close() -> None:
            with contextlib.suppress(confluent_kafka.KafkaException):
                if offsets:
                    consumer.commit(offsets=offsets, asynchronous=False)
            consumer.close()

        closing = threading.Thread(target=close, name=f"kafka-close:{self._client_id}", daemon=True)
        closing.start()
        await asyncio.to_thread(closing.join, CLOSE_DEADLINE_S)
        if closing.is_alive():
            log.error(
                "consumer client did not close in time; left behind",
                extra={"group": self.group_id, "client": self._client_id},
            )

    def _fetch(self, consumer: confluent_kafka.Consumer) -> list[confluent_kafka.Message]:
        """Wait for one record (at most half a second), then take what else is buffered."""
        first = consumer.poll(0.5)
        if first is None:
            return []
        return [first, *consumer.consume(self._max_records - 1, 0)]

    def _on_assign(
        self, consumer: confluent_kafka.Consumer, partitions: list[confluent_kafka.TopicPartition]
    ) -> None:
        """Resume from the positions the database holds (runs on the client's thread)."""
        if self._offsets is not None and self._loop is not None:
            wanted = [(p.topic, p.partition) for p in partitions]
            load = self._offsets.load(self.group_id, wanted)
            stored = asyncio.run_coroutine_threadsafe(load, self._loop).result(30)
            # No row: this database never applied a record of the partition (new, or restored
            # to before it did), so everything Kafka retains is replayed; inboxes absorb it.
            for p in partitions:
                p.offset = stored.get((p.topic, p.partition), confluent_kafka.OFFSET_BEGINNING)
            # Kafka's copy may be behind what the database holds (a copy lost to an outage or
            # a rebalance); the next flush refreshes it even if no record comes.
            self._to_commit.update(stored)
            log.info(
                "partitions assigned",
                extra={
                    "group": self.group_id,
                    "client": self._client_id,
                    "resume_from": {f"{t}[{p}]": o for (t, p), o in stored.items()},
                },
            )
        consumer.assign(partitions)
        self._owned = {(p.topic, p.partition) for p in partitions}
        metrics.KAFKA_ASSIGNED.labels(self.group_id, self._client_id).set(len(partitions))

    def _on_revoke(
        self, consumer: confluent_kafka.Consumer, partitions: list[confluent_kafka.TopicPartition]
    ) -> None:
        consumer.unassign()
        self._owned = set()
        metrics.KAFKA_ASSIGNED.labels(self.group_id, self._client_id).set(0)
        self._forget([(p.topic, p.partition) for p in partitions])

    def _forget(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Drop the lag of partitions no longer owned: their new owner reports it."""
        for topic, partition in partitions:
            self._positions.pop((topic, partition), None)
            self._to_commit.pop((topic, partition), None)  # its new owner copies it
            with contextlib.suppress(KeyError):  # never measured
                metrics.KAFKA_LAG.remove(self.group_id, topic, str(partition))

    async def _report_lag(self, consumer: confluent_kafka.Consumer) -> None:
        while True:
            await asyncio.sleep(LAG_EVERY_S)
            await self._in_thread(self._measure_lag, consumer)

    def _measure_lag(self, consumer: confluent_kafka.Consumer) -> None:
        """Runs on the client's thread, as revocation does, so a partition revoked is not
        set again; only owned partitions count (a batch fetched before a revocation may
        still move a revoked one's position)."""
        owned = {(p.topic, p.partition) for p in consumer.assignment()}
        positions = {tp: o for tp, o in list(self._positions.items()) if tp in owned}
        highs = {
            tp: consumer.get_watermark_offsets(confluent_kafka.TopicPartition(*tp), cached=True)[1]
            for tp in positions
        }
        for (topic, partition), lag in consumer_lags(positions, highs).items():
            metrics.KAFKA_LAG.labels(self.group_id, topic, str(partition)).set(lag)

    async def _handle_fetched(
        self, consumer: confluent_kafka.Consumer, records: Sequence[confluent_kafka.Message]
    ) -> None:
        by_partition, reached = self._sorted(records)
        by_topic: dict[str, list[list[InboundMessage]]] = {}
        for messages in by_partition.values():
            by_topic.setdefault(messages[0].topic, []).append(messages)
        groups = [g for parts in by_topic.values() for g in batch_groups(parts, GROUP_RECORDS)]
        done = await asyncio.gather(*(self._handle_partitions(g) for g in groups))
        self._positions.update(reached)
        if self._offsets is None:
            await self._commit_to_kafka(consumer, reached)
            return
        handled = [result for results in done for result in results]
        saved = {tp for tp, offset, was_saved in handled if was_saved and offset == reached[tp]}
        # Positions no unit of work saved (records passed over, dead-lettered, or with no
        # database effect) are saved lazily: replaying those records changes nothing.
        self._unsaved.update({tp: o for tp, o in reached.items() if tp not in saved})
        self._to_commit.update(reached)

    def _sorted(
        self, records: Sequence[confluent_kafka.Message]
    ) -> tuple[dict[tuple[str, int], list[InboundMessage]], dict[tuple[str, int], int]]:
        """The wanted records by partition, and the position each partition reaches."""
        by_partition: dict[tuple[str, int], list[InboundMessage]] = {}
        reached: dict[tuple[str, int], int] = {}
        for record in records:
            error = record.error()
            if error is not None:
                if error.fatal():
                    raise confluent_kafka.KafkaException(error)
                log.warning("kafka fetch error", extra={"error": error.str()})
                continue
            message = InboundMessage.from_record(record)
            tp = (message.topic, message.partition)
            reached[tp] = message.offset + 1
            wanted = self._wanted.get(message.topic)
            if wanted is None or wanted(message):
                by_partition.setdefault(tp, []).append(message)
            else:
                metrics.KAFKA_CONSUMED.labels(message.topic, self.group_id, "passed_over").inc()
        return by_partition, reached

    async def _handle_partitions(
        self, partitions: Sequence[Sequence[InboundMessage]]
    ) -> list[tuple[Any, int, bool]]:
        """Fetched partitions of one topic: in one batch when there are several (one
        transaction and one commit instead of one each), else, or if that failed, each on
        its own; the position each reaches and whether a unit of work saved it."""
        together = self._batch_handlers.get(partitions[0][0].topic)
        if together is not None and len(partitions) > 1:
            lasts = [self._scope(messages[-1]) for messages in partitions]
            enter_scope([s for s in lasts if s is not None])
            if await self.handle_batch(together, [m for ms in partitions for m in ms]):
                return [
                    ((ms[0].topic, ms[0].partition), ms[-1].offset + 1, s is not None and s.saved)
                    for ms, s in zip(partitions, lasts, strict=True)
                ]
        return list(await asyncio.gather(*(self._handle_partition(m) for m in partitions)))

    async def _handle_partition(self, messages: Sequence[InboundMessage]) -> tuple[Any, int, bool]:
        """Handle a partition's records; returns its position and whether a unit of work
        already saved it."""
        last = self._scope(messages[-1])
        together = self._batch_handlers.get(messages[0].topic)
        enter_scope(last)
        if (
            together is None
            or len(messages) == 1
            or not await self.handle_batch(together, messages)
        ):
            for message in messages:
                enter_scope(last if message is messages[-1] else self._scope(message))
                await self.handle(message)
        tp = (messages[0].topic, messages[0].partition)
        return tp, messages[-1].offset + 1, last is not None and last.saved

    def _scope(self, message: InboundMessage) -> OffsetScope | None:
        if self._offsets is None:
            return None
        return OffsetScope(self.group_id, message.topic, message.partition, message.offset + 1)

    async def _commit_to_kafka(
        self, consumer: confluent_kafka.Consumer, reached: Mapping[tuple[str, int], int]
    ) -> None:
        if not reached:  # nothing but fetch errors came back
            return
        offsets = [confluent_kafka.TopicPartition(t, p, o) for (t, p), o in reached.items()]
        await self._in_thread(consumer.commit, offsets=offsets, asynchronous=False)

    async def _flush_positions(self, consumer: confluent_kafka.Consumer) -> None:
        """Every few tenths of a second: the lazy positions to the database, and a copy of
        all to Kafka for lag tooling (the database's stays the one that counts)."""
        if time.monotonic() - self._flushed_at < POSITION_FLUSH_S:
            return
        self._flushed_at = time.monotonic()
        await self._save_unsaved()
        offsets = self._take_to_commit()
        if offsets:
            await self._in_thread(consumer.commit, offsets=offsets, asynchronous=True)

    async def _save_unsaved(self) -> None:
        if not self._unsaved or self._offsets is None:
            return
        unsaved, self._unsaved = self._unsaved, {}
        try:
            await self._offsets.store(self.group_id, unsaved)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._unsaved = {**unsaved, **self._unsaved}  # next time, then

    def _take_to_commit(self) -> list[confluent_kafka.TopicPartition]:
        reached, self._to_commit = self._to_commit, {}
        return [confluent_kafka.TopicPartition(t, p, o) for (t, p), o in reached.items()]

    async def handle_batch(
        self, batch_handler: BatchHandler, messages: Sequence[InboundMessage]
    ) -> bool:
        """Apply the records in one go; False when that failed and each must go on its own.

        Only an outage is waited out here: any other failure may be one poison record, which
        the record-by-record path isolates (its attempts, then its dead letter).
        """
        first = messages[0]
        context.correlation_id_var.set(first.correlation_id or context.new_id())
        parent = tracing.extract_context(first.headers)
        name = f"{first.topic} process batch"
        held = {(m.topic, m.partition) for m in messages}
        with self._tracer.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER):
            outages = 0
            while True:
                try:
                    await batch_handler(messages)
                    break
                except Exception as exc:
                    if not is_outage(exc):
                        log.warning(
                            "batch failed; handling its records on their own",
                            extra={
                                "topic": first.topic,
                                "partitions": len(held),
                                "records": len(messages),
                            },
                            exc_info=exc,
                        )
                        return False
                    outages += 1
                    self._stalled.update(held)
                    await self._wait_out_outage(first, exc, outages)
        self._stalled.difference_update(held)
        metrics.KAFKA_CONSUMED.labels(first.topic, self.group_id, "ok").inc(len(messages))
        return True

    async def handle(self, message: InboundMessage) -> None:
        """Run the handler with retries; dead-letter after the last attempt."""
        context.correlation_id_var.set(message.correlation_id or context.new_id())
        parent = tracing.extract_context(message.headers)
        name = f"{message.topic} process"
        with self._tracer.start_as_current_span(name, context=parent, kind=SpanKind.CONSUMER):
            failure = await self._attempt(message)
            self._stalled.discard((message.topic, message.partition))
            if failure is None:
                metrics.KAFKA_CONSUMED.labels(message.topic, self.group_id, "ok").inc()
                return
            await self._dead_letter(message, failure)

    async def _attempt(self, message: InboundMessage) -> _Failure | None:
        handler = self._handlers[message.topic]
        failure = _Failure()
        outage_attempts = 0
        while True:
            try:
                await handler(message)
                return None
            except Exception as exc:
                if not isinstance(exc, PermanentError) and is_outage(exc):
                    outage_attempts += 1
                    await self._wait_out_outage(message, exc, outage_attempts)
                    continue
                failure.record(exc)
                if isinstance(exc, PermanentError) or failure.attempts >= self._retry.max_attempts:
                    return failure
                metrics.KAFKA_HANDLER_RETRIES.labels(message.topic, self.group_id).inc()
                log.warning(
                    "handler failed; will retry",
                    extra={
                        "topic": message.topic,
                        "offset": message.offset,
                        "attempt": failure.attempts,
                        "error": type(exc).__name__,
                    },
                )
                await asyncio.sleep(self._retry.delay(failure.attempts))

    async def _wait_out_outage(
        self, message: InboundMessage, error: Exception, attempts: int
    ) -> None:
        """Hold the partition until the dependency is back; the record is not at fault."""
        self._stalled.add((message.topic, message.partition))
        metrics.KAFKA_OUTAGE_RETRIES.labels(message.topic, self.group_id).inc()
        if attempts == 1 or attempts % 20 == 0:
            log.warning(
                "dependency unavailable; holding the partition and retrying",
                extra={
                    "topic": message.topic,
                    "partition": message.partition,
                    "offset": message.offset,
                    "attempt": attempts,
                    "error": type(error).__name__,
                },
            )
        await self._sleep_unless_stopping(self._retry.outage_delay(attempts))
        if self._stopping.is_set():
            raise _Interrupted(f"{message.topic}[{message.partition}]@{message.offset}")

    async def check(self) -> None:
        """Readiness: fails while any partition waits for its database or broker, or the
        loop itself cannot run (rebuilding the consumer after a failure)."""
        if self._failing is not None:
            raise DependencyUnavailable(f"consumer loop failing: {self._failing!r}"[:300])
        if self._stalled:
            held = ", ".join(f"{t}[{p}]" for t, p in sorted(self._stalled))
            raise DependencyUnavailable(f"waiting for a dependency on {held}")

    async def _dead_letter(self, message: InboundMessage, failure: _Failure) -> None:
        from billing_events.v1 import common_pb2, dlq_pb2

        error = failure.error
        letter = dlq_pb2.DeadLetter(
            meta=common_pb2.EventMeta(
                event_id=context.new_id(),
                occurred_at=timestamp_now(),
                correlation_id=context.current_correlation_id(),
                producer=self._client_id,
            ),
            original_topic=message.topic,
            original_partition=message.partition,
            original_offset=message.offset,
            original_key=message.key or b"",
            original_value=message.value,
            original_headers=dict(message.headers),
            consumer_group=self.group_id,
            error_type=type(error).__name__,
            error_message=str(error)[:2000],
            attempts=failure.attempts,
            first_failed_at=failure.first_at or timestamp_now(),
            last_failed_at=timestamp_now(),
        )
        dlq = dead_letter_topic(message.topic)
        await self._publisher.publish(dlq, message.key, letter)
        metrics.KAFKA_DEAD_LETTERED.labels(message.topic, self.group_id).inc()
        metrics.KAFKA_CONSUMED.labels(message.topic, self.group_id, "dead_lettered").inc()
        log.error(
            "record dead-lettered",
            extra={
                "topic": message.topic,
                "offset": message.offset,
                "dlq": dlq,
                "attempts": failure.attempts,
                "error": type(error).__name__,
            },
        )

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
